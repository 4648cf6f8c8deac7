"""LoRA adapters at serving time: reading, checking, merging, attaching, switching, caches.

Adapters are real peft adapters (random, non-zero) on the tiny model; the reference for
every output is peft's own forward on the same weights.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from ds_engine.adapters import (
    METADATA_FILE,
    WEIGHTS_FILE,
    AdapterError,
    AdapterSet,
    merge_adapter,
    read_adapter,
)
from ds_engine.interface import GenerationRequest
from ds_engine.local import LocalEngine
from ds_engine.testing import make_tiny_adapter, make_tiny_model
from transformers import AutoModelForCausalLM

PROMPT = "def add(a, b):\n    return"


@pytest.fixture(scope="module")
def adapter_dirs(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_tiny_adapter(tiny_model_path, root / "a", seed=1),
        "b": make_tiny_adapter(tiny_model_path, root / "b", seed=2,
                               targets=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj")),
    }


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


def _ids(tiny_model_path: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    return tok(PROMPT, return_tensors="pt").input_ids


def test_read_adapter_describes_it(adapter_dirs) -> None:
    adapter = read_adapter(adapter_dirs["a"], "a")
    d = adapter.describe()
    assert (d["rank"], d["alpha"], d["fim_format"]) == (4, 8.0, "jupyter-ds-spm")
    assert sorted(d["targets"]) == ["q_proj", "v_proj"]
    assert len(adapter.weights) == 2 * 2  # two layers x (q, v)


def test_attached_and_merged_match_peft(tiny_model_path: Path, adapter_dirs) -> None:
    from peft import PeftModel

    ids = _ids(tiny_model_path)
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_path), adapter_dirs["b"]).eval()
    expected = _logits(reference, ids)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    plain = _logits(base, ids)
    assert not torch.allclose(plain, expected, atol=1e-4)  # the adapter changes the answer

    adapters = AdapterSet(base, torch.float32)
    adapters.attach(read_adapter(adapter_dirs["b"], "b"))
    adapters.activate("b")
    torch.testing.assert_close(_logits(base, ids), expected, atol=1e-5, rtol=1e-4)
    adapters.activate(None)
    torch.testing.assert_close(_logits(base, ids), plain)

    merged = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    merge_adapter(merged, read_adapter(adapter_dirs["b"], "b"))
    torch.testing.assert_close(_logits(merged, ids), expected, atol=1e-5, rtol=1e-4)


def _corrupt(src: Path, dst: Path, edit) -> Path:
    import shutil

    shutil.copytree(src, dst)
    edit(dst)
    return dst


@pytest.mark.parametrize(
    ("case", "edit", "reason"),
    [
        ("bad-json", lambda d: (d / "adapter_config.json").write_text("{"), "not valid JSON"),
        ("no-config", lambda d: (d / "adapter_config.json").unlink(), "no adapter_config"),
        ("truncated", lambda d: (d / WEIGHTS_FILE).write_bytes(
            (d / WEIGHTS_FILE).read_bytes()[:100]), "corrupt"),
        ("no-weights", lambda d: (d / WEIGHTS_FILE).unlink(), "only safetensors"),
        ("modules-to-save", lambda d: (d / "adapter_config.json").write_text(json.dumps(
            {**json.loads((d / "adapter_config.json").read_text()),
             "modules_to_save": ["lm_head"]})), "modules_to_save"),
        ("not-lora", lambda d: (d / "adapter_config.json").write_text(json.dumps(
            {**json.loads((d / "adapter_config.json").read_text()),
             "peft_type": "IA3"})), "only LoRA"),
        ("bad-fim", lambda d: (d / METADATA_FILE).write_text(json.dumps(
            {"fim": {"family": "nonsense"}})), "unknown FIM format"),
    ],
)
def test_bad_folders_are_422(adapter_dirs, tmp_path: Path, case, edit, reason) -> None:
    folder = _corrupt(adapter_dirs["a"], tmp_path / case, edit)
    with pytest.raises(AdapterError) as err:
        read_adapter(folder, case)
    assert err.value.status == 422 and reason in err.value.message


def test_bad_name_is_422(adapter_dirs) -> None:
    with pytest.raises(AdapterError) as err:
        read_adapter(adapter_dirs["a"], "../evil")
    assert err.value.status == 422


@pytest.fixture
def engine(tiny_model_path: Path):
    eng = LocalEngine(model_path=tiny_model_path, device="cpu", dtype="float32",
                      default_adapter="none")
    eng.load()
    yield eng
    eng.close()


async def _text(engine: LocalEngine, adapter: str | None, prompt: str = PROMPT) -> str:
    result = await engine.generate(GenerationRequest(prompt=prompt, max_tokens=12,
                                                     adapter=adapter))
    return result.text


async def test_load_use_switch_unload(engine: LocalEngine, adapter_dirs) -> None:
    plain = await _text(engine, None)
    assert engine.adapters() == []
    loaded = engine.load_adapter("a", str(adapter_dirs["a"]))
    assert loaded["state"] == "ready" and loaded["load_s"] < 5
    engine.load_adapter("b", str(adapter_dirs["b"]))
    with_a, with_b = await _text(engine, "a"), await _text(engine, "b")
    assert len({plain, with_a, with_b}) == 3
    # Concurrent requests for different adapters (one decode batch per adapter) give
    # the same answers as one at a time.
    together = await asyncio.gather(*(_text(engine, n) for n in ("a", None, "b", "a", None)))
    assert together == [with_a, plain, with_b, with_a, plain]
    # The adapter's template carries its FIM format; the base has none.
    assert engine.template_for("a").fim.family == "jupyter-ds-spm"
    assert engine.template_for(None).fim is None
    assert [a["name"] for a in engine.adapters()] == ["a", "b"]
    assert engine.unload_adapter("a")["state"] == "unloaded"
    with pytest.raises(AdapterError) as err:
        await _text(engine, "a")
    assert err.value.status == 404 and "'a'" in err.value.message
    with pytest.raises(AdapterError):
        engine.template_for("a")
    assert await _text(engine, "b") == with_b
    assert await _text(engine, None) == plain


async def test_caches_are_keyed_by_adapter(engine: LocalEngine, adapter_dirs) -> None:
    engine.load_adapter("a", str(adapter_dirs["a"]))
    long_prompt = PROMPT + "\n" + "x = 1\n" * 30
    first_plain = await _text(engine, None, long_prompt)
    first_a = await _text(engine, "a", long_prompt)
    assert first_plain != first_a
    hits = engine.info().counters.result_cache_hits
    assert await _text(engine, "a", long_prompt) == first_a
    assert engine.info().counters.result_cache_hits == hits + 1
    # A prompt that shares the long prefix reuses the KV of its own adapter only: the
    # answers equal those of an engine with no caches at all.
    fresh = LocalEngine(model_path=engine.model_path, device="cpu", dtype="float32",
                        default_adapter="none", prefix_cache_entries=0, result_cache_entries=0)
    fresh.load()
    try:
        fresh.load_adapter("a", str(adapter_dirs["a"]))
        other = long_prompt + "y = 2\n"
        for adapter in ("a", None):
            assert await _text(engine, adapter, other) == await _text(fresh, adapter, other)
    finally:
        fresh.close()


async def test_unload_waits_for_running_requests(engine: LocalEngine, adapter_dirs) -> None:
    engine.load_adapter("a", str(adapter_dirs["a"]))
    task = asyncio.ensure_future(engine.generate(
        GenerationRequest(prompt=PROMPT, max_tokens=400, adapter="a")))
    while engine.info().counters.active_requests == 0:
        await asyncio.sleep(0.01)
    answer = engine.unload_adapter("a")
    assert answer["state"] == "unloading" and answer["running_requests"] == 1
    result = await task
    assert result.token_count == 400  # it finished with its adapter
    assert engine.adapters() == []


def test_bad_adapters_leave_the_engine_serving(engine: LocalEngine, adapter_dirs,
                                               tmp_path: Path) -> None:
    other = make_tiny_model(tmp_path / "narrow", seed=3, hidden_size=32)
    mismatched = make_tiny_adapter(other, tmp_path / "mismatched", base_model="tiny-llama")
    with pytest.raises(AdapterError) as err:
        engine.load_adapter("m", str(mismatched))
    assert err.value.status == 422 and "incompatible" in err.value.message
    foreign = make_tiny_adapter(engine.model_path, tmp_path / "foreign", base_model="Other-7B")
    with pytest.raises(AdapterError) as err:
        engine.load_adapter("f", str(foreign))
    assert err.value.status == 422 and "trained on 'Other-7B'" in err.value.message
    with pytest.raises(AdapterError) as err:
        engine.unload_adapter("never-loaded")
    assert err.value.status == 404
    assert engine.adapters() == []
    assert asyncio.run(_text(engine, None))


async def test_default_adapter_is_merged(tiny_model_path: Path, adapter_dirs,
                                         engine: LocalEngine) -> None:
    engine.load_adapter("a", str(adapter_dirs["a"]))
    attached = await _text(engine, "a")
    merged = LocalEngine(model_path=tiny_model_path, device="cpu", dtype="float32",
                         default_adapter=str(adapter_dirs["a"]))
    merged.load()
    try:
        assert await _text(merged, None) == attached
        assert merged.template.fim.family == "jupyter-ds-spm"
        listed = merged.adapters()
        assert listed[0]["merged"] and listed[0]["default"] and listed[0]["name"] == "a"
        assert merged.loaded.lineage.startswith("tiny-llama+a:")
        with pytest.raises(AdapterError) as err:
            merged.unload_adapter("a")
        assert err.value.status == 409
        # Requests naming the merged default get it (it is the model as served).
        assert await _text(merged, "a") == attached
        # An adapter trained on the raw model does not fit the merged one.
        with pytest.raises(AdapterError) as err:
            merged.load_adapter("b", str(adapter_dirs["b"]))
        assert err.value.status == 422
    finally:
        merged.close()


async def test_adapter_on_int8_base(tiny_model_path: Path, adapter_dirs) -> None:
    from ds_engine.quantize import _int8_kernel_available

    if not _int8_kernel_available():
        pytest.skip("no int8 kernel in this torch build")
    eng = LocalEngine(model_path=tiny_model_path, device="cpu", quantization="int8",
                      default_adapter="none")
    eng.load()
    try:
        eng.load_adapter("a", str(adapter_dirs["a"]))
        assert await _text(eng, "a") != await _text(eng, None)
    finally:
        eng.close()
