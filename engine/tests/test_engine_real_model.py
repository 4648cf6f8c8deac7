"""The embedded SmolLM2-135M GGUF: converted once into the cache, then loaded from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from ds_engine.generation import eos_token_ids, run_generation
from ds_engine.interface import FinishReason, GenerationRequest
from ds_engine.loader import CACHE_MARKER, LoadedModel, load_model

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def two_loads(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, LoadedModel, Path]:
    cache = tmp_path_factory.mktemp("ds-cache")
    first = load_model(cache_dir=cache, device="cpu")
    first_facts = {"from_cache": first.from_cache, "load_time_s": first.load_time_s}
    del first
    second = load_model(cache_dir=cache, device="cpu")
    return first_facts, second, cache


def test_first_load_converts_second_uses_cache(two_loads) -> None:
    first, second, cache = two_loads
    assert first["from_cache"] is False
    assert second.from_cache is True
    assert second.load_time_s < first["load_time_s"]
    entries = [p for p in cache.iterdir()]
    assert len(entries) == 1 and (entries[0] / CACHE_MARKER).is_file()
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]
    assert second.kind == "gguf" and second.name == "SmolLM2-135M-Instruct.Q4_1"
    assert second.template.name == "prefix-only"
    assert second.template.filename_token == "<filename>"
    assert second.context_window == 8192


def test_greedy_completion_of_real_code(two_loads) -> None:
    _, loaded, _ = two_loads
    request = GenerationRequest("def add(a, b):\n    return", max_tokens=16, stop=["\n\n"])
    result = run_generation(
        loaded.model,
        loaded.tokenizer,
        request,
        context_window=loaded.context_window,
        stop_token_ids=eos_token_ids(loaded.model, loaded.tokenizer),
        model_name=loaded.name,
    )
    assert result.text.strip()
    assert "a" in result.text and "b" in result.text  # SmolLM2 answers " a + b"
    assert result.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert 0.0 < result.confidence <= 1.0
