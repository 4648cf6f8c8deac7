"""KV-prefix reuse and the result cache: same greedy output, measurable reuse, bounds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from ds_engine.generation import run_generation
from ds_engine.interface import FinishReason, GenerationRequest
from ds_engine.local import LocalEngine
from ds_engine.prefix_cache import PrefixCache, common_prefix_length, extract_layers

BASE = (
    "import numpy as np\nimport pandas as pd\n\n"
    "def fibonacci(n):\n    if n < 2:\n        return n\n"
    "    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "counts = {}\nfor word in words:\n"
)
# A person typing: characters appended, a few deleted, appended again; then elsewhere.
KEYSTROKES = [
    BASE,
    BASE + "    c",
    BASE + "    counts[",
    BASE + "    counts[word] = co",
    BASE + "    counts[wo",  # deleted a few
    BASE + "    counts[wo] = 1\n",
    "with open(path, 'r', encoding='utf-8') as f:\n    text = f.read()\n" * 3,  # unrelated
    BASE + "    counts[word",
]


def _generate(loaded, prompt: str, cache: PrefixCache | None, max_tokens: int = 12):
    ids: list[int] = []
    prompt_info: list[tuple[int, int]] = []
    result = run_generation(
        loaded.model,
        loaded.tokenizer,
        GenerationRequest(prompt, max_tokens=max_tokens),
        context_window=loaded.context_window,
        on_token=ids.append,
        prefix_cache=cache,
        on_prompt=lambda total, reused: prompt_info.append((total, reused)),
    )
    assert len(prompt_info) == 1
    return result, ids, prompt_info[0]


def test_keystrokes_give_identical_greedy_output_and_reuse_the_prefix(tiny_loaded) -> None:
    cache = PrefixCache(max_entries=4)
    reused_by_step = []
    for prompt in KEYSTROKES:
        plain, plain_ids, (total, reused) = _generate(tiny_loaded, prompt, None)
        assert reused == 0
        cached, cached_ids, (total_c, reused_c) = _generate(tiny_loaded, prompt, cache)
        assert cached_ids == plain_ids and cached.text == plain.text
        assert cached.token_count == plain.token_count == len(plain_ids)
        assert cached.prompt_tokens == plain.prompt_tokens == total == total_c
        assert cached.confidence == pytest.approx(plain.confidence, rel=1e-4)
        assert reused_c < total_c  # at least one token is always fed
        reused_by_step.append((reused_c, total_c))
    assert reused_by_step[0][0] == 0  # nothing stored yet
    for step in (1, 2, 3, 4, 5, 7):  # every keystroke on BASE reuses nearly all of it
        reused, total = reused_by_step[step]
        assert reused >= 0.9 * total, (step, reused, total)
    assert reused_by_step[6][0] == 0  # an unrelated prompt shares nothing
    assert len(cache) <= 4


def test_same_prompt_twice_reuses_all_but_the_last_token(tiny_loaded) -> None:
    cache = PrefixCache()
    _, first_ids, (total, reused) = _generate(tiny_loaded, BASE, cache)
    _, again_ids, (total2, reused2) = _generate(tiny_loaded, BASE, cache)
    assert reused == 0 and reused2 == total2 - 1 and total == total2
    assert again_ids == first_ids


def test_short_shared_prefix_is_not_reused(tiny_loaded) -> None:
    cache = PrefixCache(min_prefix=16)
    _generate(tiny_loaded, "def add(a, b):\n    return a + b\n" * 4, cache)
    _, _, (_, reused) = _generate(tiny_loaded, "def add(a, b):\n    return a * b\n" * 4, cache)
    tok = tiny_loaded.tokenizer
    shared = common_prefix_length(
        tok("def add(a, b):\n    return a + b\n" * 4)["input_ids"],
        tok("def add(a, b):\n    return a * b\n" * 4)["input_ids"],
    )
    assert shared < 16 and reused == 0


def _layers(n: int, value: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    k = torch.full((1, 2, n, 4), value)
    return [(k, k.clone()) for _ in range(3)]


def test_lru_eviction_respects_entry_and_byte_bounds() -> None:
    cache = PrefixCache(max_entries=2, min_prefix=2)
    a, b, c = tuple(range(10)), tuple(range(100, 110)), tuple(range(200, 210))
    cache.store(a, _layers(10))
    cache.store(b, _layers(10))
    assert cache.lookup([*a, 7]) is not None  # touches a: b is now the oldest
    cache.store(c, _layers(10))
    assert cache.keys() == [a, c] and len(cache) == 2
    assert cache.lookup([*b, 1]) is None
    hit = cache.lookup([*c[:5], 999])
    assert hit is not None and hit.length == 5
    assert all(k.shape[-2] == 5 and v.shape[-2] == 5 for k, v in hit.layers)

    one = sum(k.numel() * k.element_size() * 2 for k, _ in _layers(10))
    sized = PrefixCache(max_entries=10, max_bytes=2 * one, min_prefix=2)
    for start in range(0, 50, 10):
        sized.store(tuple(range(start, start + 10)), _layers(10))
        assert sized.nbytes <= 2 * one
    assert len(sized) == 2 and sized.keys()[-1] == tuple(range(40, 50))
    sized.store(tuple(range(1000, 1030)), _layers(30))  # larger than the budget: skipped
    assert len(sized) == 2

    off = PrefixCache(max_entries=0)
    off.store(a, _layers(10))
    assert len(off) == 0


def test_extending_prompt_replaces_its_prefix_entry() -> None:
    cache = PrefixCache(max_entries=4, min_prefix=2)
    cache.store(tuple(range(10)), _layers(10))
    cache.store(tuple(range(12)), _layers(12))
    assert cache.keys() == [tuple(range(12))]
    assert cache.nbytes == sum(k.numel() * 4 * 2 for k, _ in _layers(12))


def test_extract_layers_refuses_a_short_cache() -> None:
    from transformers import DynamicCache

    cache = DynamicCache()
    k = torch.zeros(1, 2, 5, 4)
    cache.update(k, k, 0)
    assert extract_layers(cache, 6) is None
    layers = extract_layers(cache, 3)
    assert layers is not None and layers[0][0].shape[-2] == 3


@pytest.fixture
def fresh_engine(tiny_model_path: Path):
    engine = LocalEngine(model_path=tiny_model_path, device="cpu", dtype="float32")
    engine.load()
    yield engine
    engine.close()


async def test_engine_counts_prefix_reuse_and_matches_an_engine_without_it(
    fresh_engine: LocalEngine, tiny_model_path: Path
) -> None:
    plain = LocalEngine(
        model_path=tiny_model_path,
        device="cpu",
        dtype="float32",
        prefix_cache_entries=0,
        result_cache_entries=0,
    )
    plain.load()
    try:
        for prompt in KEYSTROKES[:4]:
            want = await plain.generate(GenerationRequest(prompt, max_tokens=10))
            got = await fresh_engine.generate(GenerationRequest(prompt, max_tokens=10))
            assert (got.text, got.token_count) == (want.text, want.token_count)
        info, off = fresh_engine.info(), plain.info()
    finally:
        plain.close()
    assert (info.counters.prefix_cache_hits, info.counters.prefix_cache_misses) == (3, 1)
    assert info.counters.prompt_tokens_total == off.counters.prompt_tokens_total > 0
    assert info.counters.prompt_tokens_reused_total >= 0.9 * (
        info.counters.prompt_tokens_total - fresh_engine.count_tokens(KEYSTROKES[0])
    )
    assert (off.counters.prefix_cache_hits, off.counters.prompt_tokens_reused_total) == (0, 0)
    assert 1 <= info.counters.prefix_cache_entries <= 4


async def test_result_cache_returns_the_same_result_and_counts(fresh_engine: LocalEngine) -> None:
    request = GenerationRequest(BASE, max_tokens=8, stop=["\n\n"])
    first = await fresh_engine.generate(request)
    before = fresh_engine.info()
    again = await fresh_engine.generate(GenerationRequest(BASE, max_tokens=8, stop=["\n\n"]))
    after = fresh_engine.info()
    assert (again.text, again.token_count, again.finish_reason, again.confidence) == (
        first.text,
        first.token_count,
        first.finish_reason,
        first.confidence,
    )
    assert again.request_id != first.request_id
    assert after.counters.result_cache_hits == before.counters.result_cache_hits + 1
    assert after.counters.requests_total == before.counters.requests_total + 1
    # No model work:
    assert after.counters.tokens_generated_total == before.counters.tokens_generated_total

    chunks = [c async for c in fresh_engine.stream(GenerationRequest(BASE, 8, stop=["\n\n"]))]
    assert len(chunks) == 1 and chunks[0].done and chunks[0].text == first.text
    assert chunks[0].result is not None and chunks[0].result.text == first.text
    assert fresh_engine.info().counters.result_cache_hits == before.counters.result_cache_hits + 2

    # Any difference in the request is a miss; sampling is never cached.
    await fresh_engine.generate(GenerationRequest(BASE, max_tokens=7, stop=["\n\n"]))
    await fresh_engine.generate(GenerationRequest(BASE, max_tokens=7, stop=["\n"]))
    # min_tokens and the first token's bias change the output: they are part of the key.
    await fresh_engine.generate(GenerationRequest(BASE, max_tokens=7, stop=["\n"],
                                                  min_tokens=1))
    await fresh_engine.generate(GenerationRequest(BASE, max_tokens=7, stop=["\n"],
                                                  first_token_bias={"zebra": 9.0}))
    for _ in range(2):
        await fresh_engine.generate(GenerationRequest(BASE, max_tokens=8, temperature=0.7))
    assert fresh_engine.info().counters.result_cache_hits == before.counters.result_cache_hits + 2


async def test_result_cache_is_bounded(tiny_model_path: Path) -> None:
    engine = LocalEngine(model_path=tiny_model_path, device="cpu", result_cache_entries=2)
    engine.load()
    try:
        for prompt in ("a = 1\n", "b = 2\n", "c = 3\n"):
            await engine.generate(GenerationRequest(prompt, max_tokens=2))
        assert engine.info().counters.result_cache_entries == 2
        await engine.generate(GenerationRequest("a = 1\n", max_tokens=2))  # evicted
        assert engine.info().counters.result_cache_hits == 0
        await engine.generate(GenerationRequest("c = 3\n", max_tokens=2))
        assert engine.info().counters.result_cache_hits == 1
    finally:
        engine.close()


async def test_cancelled_and_timed_out_requests_are_not_cached(fresh_engine: LocalEngine) -> None:
    long = 1500
    for attempt in range(2):
        request = GenerationRequest(BASE, max_tokens=long)
        chunks = []
        async for chunk in fresh_engine.stream(request):
            chunks.append(chunk)
            if chunk.token_count == 3 and not chunk.done:
                fresh_engine.cancel(request.request_id)
        result = chunks[-1].result
        assert result is not None and result.finish_reason is FinishReason.CANCELLED
        assert len(chunks) > 1, attempt  # really generated, not replayed from the cache
    timed_out = await fresh_engine.generate(GenerationRequest(BASE, max_tokens=long, timeout_s=0))
    assert timed_out.finish_reason is FinishReason.TIMEOUT
    await asyncio.sleep(0)
    info = fresh_engine.info()
    assert (info.counters.result_cache_hits, info.counters.result_cache_entries) == (0, 0)
    # The cancelled request's prompt KV was still kept for the next keystroke.
    assert info.counters.prefix_cache_hits >= 1


async def test_a_streamed_result_is_cached_but_not_one_its_caller_stopped(
    fresh_engine: LocalEngine,
) -> None:
    streamed = [c async for c in fresh_engine.stream(GenerationRequest("q = 1\n", 6))]
    hits = fresh_engine.info().counters.result_cache_hits
    again = await fresh_engine.generate(GenerationRequest("q = 1\n", 6))
    assert again.text == streamed[-1].text
    assert fresh_engine.info().counters.result_cache_hits == hits + 1
    for attempt in range(2):
        request = GenerationRequest(BASE, max_tokens=1500)
        chunks = []
        async for chunk in fresh_engine.stream(request):
            chunks.append(chunk)
            if chunk.token_count == 3 and not chunk.done:
                fresh_engine.cancel(request.request_id, reason=FinishReason.STOP)
        assert chunks[-1].result.finish_reason is FinishReason.STOP
        assert len(chunks) > 1, attempt  # really generated, not replayed from the cache
    assert fresh_engine.info().counters.result_cache_hits == hits + 1


def test_a_cancel_after_the_final_chunk_does_not_uncache_the_result(
    fresh_engine: LocalEngine,
) -> None:
    """A stream's consumer may leave (and cancel) once it has the done chunk, before the
    worker has settled the request: the result is complete and stays cacheable."""
    request = GenerationRequest("w = 2\n", max_tokens=5)

    def on_chunk(chunk) -> None:
        if chunk.done:  # on the worker, between the final chunk and the bookkeeping
            assert fresh_engine.cancel(request.request_id)

    first = fresh_engine._submit(request, on_chunk).result(timeout=30)
    assert first.finish_reason is FinishReason.LENGTH
    hits = fresh_engine.info().counters.result_cache_hits
    again = asyncio.run(fresh_engine.generate(GenerationRequest("w = 2\n", max_tokens=5)))
    assert again.text == first.text
    assert fresh_engine.info().counters.result_cache_hits == hits + 1
