"""Speculative decoding from the prompt: the drafter, and greedy outputs equal to plain
decoding token for token (ds_engine/speculative.py, the runner's draft path)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from ds_engine.interface import GenerationRequest
from ds_engine.local import LocalEngine
from ds_engine.speculative import DraftStats, draft


def test_draft_follows_the_most_recent_longest_match() -> None:
    #      0  1  2  3  4  5  6  7  8  9
    ids = [5, 6, 7, 8, 9, 5, 6, 7, 1, 2, 6, 7]
    # The tail (6, 7) last occurred at 5..7 (then 1, 2), before that at 1..2 (then 8).
    assert draft(ids, 3) == [1, 2, 6]
    # A longer tail that matches wins over a more recent shorter one.
    ids = [1, 2, 3, 4, 9, 2, 3, 7, 1, 2, 3]
    assert draft(ids, 2) == [4, 9]  # (1, 2, 3) at 0..2, not (2, 3) at 5..6
    assert draft(ids, 1) == [4]
    # The draft stops where the sequence does; nothing when nothing repeats.
    assert draft([4, 5, 4, 5], 5) == [4, 5]
    assert draft([1, 2, 3, 4], 4) == []
    assert draft([1, 2], 4) == [] and draft([], 3) == [] and draft([1, 1, 1], 0) == []
    # One repeated token alone (an n-gram of 1) is no evidence.
    assert draft([3, 9, 8, 3], 2) == []
    # Matches further back than the window are not looked for.
    far = [1, 2, 3] + [0] * 50 + [7, 1, 2]
    assert draft(far, 1) == [3] and draft(far, 1, window=20) == []


def test_draft_stats() -> None:
    stats = DraftStats()
    assert stats.acceptance is None
    stats.drafted, stats.accepted = 8, 6
    assert stats.acceptance == 0.75


PROMPTS = [
    # Code that repeats, where drafts from the context are right...
    "values = [1, 2, 3]\ntotal = sum(values)\nvalues = [1, 2, 3]\ntotal = ",
    "def area(w, h):\n    return w * h\n\n\ndef area(w, h):\n    return",
    # ... and code where they seldom are.
    "import numpy as np\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
]


@pytest.fixture(scope="module")
def engines(tiny_model_path: Path) -> Iterator[tuple[LocalEngine, LocalEngine]]:
    """One engine per request at a time (the draft path is the lone request's), with
    and without drafts, no result cache (every request runs); the drafting one reuses
    prompt KV from its prefix cache, which drafts and rewinds must leave intact."""
    made = [LocalEngine(model_path=tiny_model_path, device="cpu", dtype="float32",
                        max_batch_size=1, result_cache_entries=0,
                        prefix_cache_entries=8 if k else 0, warmup=False,
                        speculative_tokens=k) for k in (0, 4)]
    for engine in made:
        engine.load()
    yield made[0], made[1]
    for engine in made:
        engine.close()


async def test_greedy_outputs_equal_plain_decoding_token_for_token(engines) -> None:
    plain, speculative = engines
    for prompt in PROMPTS:
        for max_tokens in (1, 5, 40):
            request = GenerationRequest(prompt, max_tokens=max_tokens)
            expected = await plain.generate(request)
            got = await speculative.generate(GenerationRequest(prompt, max_tokens=max_tokens))
            assert (got.text, got.token_count, got.finish_reason) == (
                expected.text, expected.token_count, expected.finish_reason), prompt
            assert got.confidence == pytest.approx(expected.confidence, rel=1e-3)
    stats = speculative._runner.drafts
    # Drafts were made and verified, and some were right: fewer forwards than tokens.
    assert stats.steps > 0 and 0 < stats.accepted <= stats.drafted
    assert plain._runner.drafts.steps == 0
    # What the API's engine info and the metrics read.
    counters = speculative.info().counters
    assert (counters.draft_steps_total, counters.draft_tokens_total,
            counters.draft_tokens_accepted_total) == (stats.steps, stats.drafted,
                                                      stats.accepted)
    assert plain.info().to_dict()["draft_tokens_total"] == 0


def test_the_server_turns_it_on_through_engine_options(tiny_model_path: Path) -> None:
    from ds_engine.interface import EngineConfig

    engine = LocalEngine.from_config(EngineConfig(
        model_path=str(tiny_model_path), options={"speculative_tokens": 6}))
    assert engine.speculative_tokens == 6
    assert LocalEngine(model_path=str(tiny_model_path)).speculative_tokens == 0


async def test_streams_and_stops_are_those_of_plain_decoding(engines) -> None:
    plain, speculative = engines

    async def chunks(engine: LocalEngine, request: GenerationRequest) -> list[str]:
        return [c.text async for c in engine.stream(request)]

    for prompt in PROMPTS[:2]:
        for stop in ([], ["\n"], [")"]):
            a = await chunks(plain, GenerationRequest(prompt, max_tokens=30, stop=stop))
            b = await chunks(speculative, GenerationRequest(prompt, max_tokens=30,
                                                            stop=stop))
            # Several tokens a step: fewer chunks perhaps, never a different text.
            assert b[-1] == a[-1]
            assert all(t.startswith(prev) for prev, t in itertools.pairwise(b))
            assert set(b) <= set(a)


async def test_sampling_and_batches_take_no_drafts(engines, tiny_model_path) -> None:
    _, speculative = engines
    before = speculative._runner.drafts.steps
    await speculative.generate(GenerationRequest(PROMPTS[0], max_tokens=20,
                                                 temperature=0.8, seed=3))
    assert speculative._runner.drafts.steps == before
    batched = LocalEngine(model_path=tiny_model_path, device="cpu", dtype="float32",
                          max_batch_size=4, result_cache_entries=0, warmup=False,
                          speculative_tokens=4)
    batched.load()
    try:
        results = await asyncio.gather(*(
            batched.generate(GenerationRequest(p, max_tokens=24)) for p in PROMPTS))
        plain, _ = engines
        for prompt, result in zip(PROMPTS, results, strict=True):
            expected = await plain.generate(GenerationRequest(prompt, max_tokens=24))
            assert (result.text, result.token_count) == (expected.text,
                                                         expected.token_count)
    finally:
        batched.close()
