"""LoRA adapters at serving time: read and check a peft adapter folder, merge or attach it.

An adapter folder is peft's standard layout (``adapter_config.json`` and
``adapter_model.safetensors``), optionally with ``jupyter_ds_adapter.json``, the metadata
``jupyter-ds finetune`` writes (base model, FIM format, data digest, evaluation). Only
safetensors weights are read (never pickles: an adapter folder is untrusted input), and
only plain LoRA: adapters with new tokens or ``modules_to_save`` are refused, as vLLM
refuses them, so one adapter works on both.

Serving does not go through peft. peft wraps ``nn.Linear`` only, while the CPU default
quantizes the decoder to :class:`ds_engine.quantize.Int8Linear`; :class:`LoraLinear`
wraps either and adds ``scale * B(A(x))`` for the active adapter. The default adapter of
a model is merged into its float weights before quantization (no cost per token); the
adapters an admin loads later are attached, and a request selects one by name
(:meth:`AdapterSet.activate` before each forward).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ds_engine.templates import FIM_FORMATS, FimFormat

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
METADATA_FILE = "jupyter_ds_adapter.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_WEIGHTS_BYTES = 2 * 2**30
_KEY_RE = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$"
)


class AdapterError(Exception):
    """An adapter that cannot be used; ``status`` is 404 (unknown) or 422 (bad folder)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AdapterError(422, f"adapter name {name!r} must be 1-64 letters, digits, '.', "
                                f"'_' or '-', starting with a letter or digit")
    return name


@dataclass
class Adapter:
    """A checked adapter: its settings, FIM format and weights (module name -> A, B)."""

    name: str
    path: Path
    rank: int
    alpha: float
    targets: list[str]
    fim: FimFormat | None
    metadata: dict[str, Any]
    digest: str
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def base_model(self) -> str | None:
        return self.metadata.get("base_model")

    def describe(self) -> dict[str, Any]:
        ev = (self.metadata.get("eval") or {}).get("after") or {}
        return {
            "name": self.name,
            "path": str(self.path),
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": self.targets,
            "fim_format": self.fim.family if self.fim else None,
            "base_model": self.base_model,
            "digest": self.digest[:16],
            "data_digest": (self.metadata.get("data") or {}).get("digest"),
            "eval": {k: ev[k] for k in ("exact_match", "edit_similarity", "offered") if k in ev},
        }


def _fim_from_metadata(meta: dict[str, Any]) -> FimFormat | None:
    fim = meta.get("fim")
    if fim is None:
        return None
    if not isinstance(fim, dict) or not isinstance(fim.get("family"), str):
        raise AdapterError(422, "metadata 'fim' must be an object naming its 'family'")
    known = FIM_FORMATS.get(fim["family"])
    if known is not None:
        if fim.get("template", known.template) != known.template:
            raise AdapterError(422, f"metadata FIM template differs from {known.family}'s")
        return known
    template, sentinels = fim.get("template"), fim.get("sentinels")
    if not (isinstance(template, str) and "{prefix}" in template and "{suffix}" in template
            and isinstance(sentinels, list) and all(isinstance(s, str) for s in sentinels)):
        raise AdapterError(422, f"unknown FIM format {fim['family']!r} without a usable "
                                f"'template' and 'sentinels'")
    order = "spm" if template.index("{suffix}") < template.index("{prefix}") else "psm"
    return FimFormat(fim["family"], template, tuple(sentinels), order=order, detectable=False)


def read_adapter(path: str | Path, name: str) -> Adapter:
    """Read and check the adapter folder at ``path``; :class:`AdapterError` (422) if bad."""
    check_name(name)
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterError(422, f"adapter {name!r}: {folder} is not a folder")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterError(422, f"adapter {name!r}: no {CONFIG_FILE} in {folder}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterError(422, f"adapter {name!r}: {CONFIG_FILE} is not valid JSON ({exc})") \
            from None
    if not isinstance(config, dict):
        raise AdapterError(422, f"adapter {name!r}: {CONFIG_FILE} is not a JSON object")
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterError(422, f"adapter {name!r}: only LoRA adapters are supported "
                                f"(peft_type {config.get('peft_type')!r})")
    for key in ("modules_to_save", "trainable_token_indices"):
        if config.get(key):
            raise AdapterError(422, f"adapter {name!r}: '{key}' is set; plain LoRA only "
                                    f"(no new tokens or saved modules, as vLLM requires)")
    if config.get("use_dora"):
        raise AdapterError(422, f"adapter {name!r}: DoRA adapters are not supported")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, (int, float)):
        raise AdapterError(422, f"adapter {name!r}: 'r' and 'lora_alpha' must be numbers")
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise AdapterError(422, f"adapter {name!r}: no {WEIGHTS_FILE} in {folder} "
                                f"(only safetensors weights are read)")
    if weights_path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise AdapterError(422, f"adapter {name!r}: {WEIGHTS_FILE} is larger than 2 GiB")
    meta: dict[str, Any] = {}
    meta_path = folder / METADATA_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise AdapterError(422, f"adapter {name!r}: {METADATA_FILE} is not valid JSON "
                                    f"({exc})") from None
        if not isinstance(meta, dict):
            raise AdapterError(422, f"adapter {name!r}: {METADATA_FILE} is not an object")
    raw = weights_path.read_bytes()
    try:
        from safetensors.torch import load as load_safetensors

        tensors = load_safetensors(raw)
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise AdapterError(422, f"adapter {name!r}: corrupt {WEIGHTS_FILE} ({exc})") from None
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY_RE.match(key)
        if m is None:
            raise AdapterError(422, f"adapter {name!r}: unexpected tensor {key!r} "
                                    f"(plain LoRA has only lora_A / lora_B weights)")
        pairs.setdefault(m["module"], {})[m["ab"]] = tensor
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(422, f"adapter {name!r}: {module} lacks lora_A or lora_B")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise AdapterError(422, f"adapter {name!r}: {module} has shapes "
                                    f"{tuple(a.shape)}/{tuple(b.shape)}, not rank {rank}")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise AdapterError(422, f"adapter {name!r}: {module} holds NaN or infinite values")
        weights[module] = (a, b)
    if not weights:
        raise AdapterError(422, f"adapter {name!r}: {WEIGHTS_FILE} holds no LoRA weights")
    targets = config.get("target_modules") or sorted({m.rsplit(".", 1)[-1] for m in weights})
    return Adapter(
        name=name,
        path=folder.resolve(),
        rank=rank,
        alpha=float(alpha),
        targets=sorted(targets) if isinstance(targets, list) else [str(targets)],
        fim=_fim_from_metadata(meta),
        metadata=meta,
        digest=hashlib.sha256(raw).hexdigest(),
        weights=weights,
    )


def check_base(adapter: Adapter, lineage: str) -> None:
    """422 unless ``adapter`` was trained on ``lineage`` (when its metadata says on what).

    The lineage is the weights' name plus any adapter merged into them (see
    :attr:`ds_engine.loader.LoadedModel.lineage`): an adapter trained on the raw model
    does not fit the model with the default adapter merged, though the shapes agree.
    """
    base = adapter.base_model
    if base and base != lineage:
        raise AdapterError(422, f"adapter {adapter.name!r} was trained on {base!r}; this "
                                f"server's model is {lineage!r}")


def _target(model: nn.Module, module: str, a: torch.Tensor, b: torch.Tensor,
            adapter: str) -> nn.Module:
    """The model's module an adapter weight pair belongs to, shapes checked (else 422)."""
    try:
        target = model.get_submodule(module)
    except AttributeError:
        raise AdapterError(422, f"adapter {adapter!r} is incompatible with this model: it has "
                                f"no module {module}") from None
    if isinstance(target, LoraLinear):
        target = target.base
    in_f, out_f = getattr(target, "in_features", None), getattr(target, "out_features", None)
    if in_f is None or out_f is None:
        raise AdapterError(422, f"adapter {adapter!r}: {module} is not a linear layer")
    if a.shape[1] != in_f or b.shape[0] != out_f:
        raise AdapterError(422, f"adapter {adapter!r} is incompatible with this model: "
                                f"{module} is {in_f}->{out_f}, the adapter's is "
                                f"{a.shape[1]}->{b.shape[0]}")
    return target


def check_compatible(model: nn.Module, adapter: Adapter) -> None:
    """Raise 422 unless every weight pair of ``adapter`` fits a linear layer of ``model``."""
    for module, (a, b) in adapter.weights.items():
        _target(model, module, a, b, adapter.name)


@torch.no_grad()
def merge_adapter(model: nn.Module, adapter: Adapter) -> None:
    """Add ``scale * B @ A`` to the float weights of ``model`` (before any quantization)."""
    check_compatible(model, adapter)
    for module, (a, b) in adapter.weights.items():
        target = model.get_submodule(module)
        if not isinstance(target, nn.Linear):
            raise AdapterError(422, f"adapter {adapter.name!r}: cannot merge into {module} "
                                    f"({type(target).__name__}); merge before quantizing")
        delta = (b.float() @ a.float()) * adapter.scale
        target.weight += delta.to(target.weight.dtype)


class LoraLinear(nn.Module):
    """A linear layer (float or int8) plus the low-rank updates of attached adapters."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.adapters: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        self.active: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        entry = self.adapters.get(self.active) if self.active is not None else None
        if entry is None:
            return y
        a, b, scale = entry
        return y + (x.to(a.dtype) @ a.T @ b.T * scale).to(y.dtype)


class AdapterSet:
    """The adapters attached to one model, and which one the next forward uses.

    Not thread-safe by itself: the engine changes it and runs forwards on one thread.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        self.model = model
        self.dtype = dtype
        self.adapters: dict[str, Adapter] = {}
        self._layers: dict[str, LoraLinear] = {}
        self.active: str | None = None

    def __contains__(self, name: object) -> bool:
        return name in self.adapters

    @property
    def wrapped(self) -> bool:
        """Whether attaching has replaced any of the model's layers (for good: a detached
        adapter leaves its wrappers, inactive, in place)."""
        return bool(self._layers)

    def _wrap(self, module: str) -> LoraLinear:
        layer = self._layers.get(module)
        if layer is None:
            parent, _, child = module.rpartition(".")
            owner = self.model.get_submodule(parent) if parent else self.model
            layer = LoraLinear(getattr(owner, child))
            setattr(owner, child, layer)
            self._layers[module] = layer
        return layer

    def attach(self, adapter: Adapter) -> None:
        """Attach (or replace) ``adapter``; 422 if it does not fit the model."""
        check_compatible(self.model, adapter)
        self.detach(adapter.name)
        device = next(self.model.parameters()).device
        dtype = self.dtype if self.dtype != torch.bfloat16 else torch.float32
        for module, (a, b) in adapter.weights.items():
            layer = self._wrap(module)
            layer.adapters[adapter.name] = (a.to(device, dtype), b.to(device, dtype),
                                            adapter.scale)
            layer.active = self.active
        self.adapters[adapter.name] = adapter

    def detach(self, name: str) -> bool:
        if self.adapters.pop(name, None) is None:
            return False
        for layer in self._layers.values():
            layer.adapters.pop(name, None)
        if self.active == name:
            self.activate(None)
        return True

    def activate(self, name: str | None) -> None:
        """Make ``name`` (None: none) the adapter of the following forwards."""
        if name == self.active:
            return
        if name is not None and name not in self.adapters:
            raise AdapterError(404, f"unknown adapter {name!r}")
        for layer in self._layers.values():
            layer.active = name
        self.active = name
