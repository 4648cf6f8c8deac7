"""The batching scheduler: batched = sequential output, slots, priorities, memory bound."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
import torch
from ds_engine.batch import TRIM_COLUMNS, DecodeBatch
from ds_engine.generation import SequenceState, forward, prefill_step, start_prefill
from ds_engine.interface import FinishReason, GenerationRequest, Priority
from ds_engine.local import LocalEngine
from ds_engine.scheduler import WaitingQueue, batch_size_limit

PROMPTS = [
    "import numpy as np\n",
    "def add(a, b):\n    return",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
    "# compute the mean of a list of values\ndef mean(values):\n",
    "x = ",
]
LONG = 1500  # ~1.5 s of tiny-model tokens


def _seq(loaded, prompt: str, max_tokens: int = 8) -> SequenceState:
    return SequenceState(
        GenerationRequest(prompt, max_tokens=max_tokens),
        loaded.tokenizer,
        context_window=loaded.context_window,
    )


def _prefilled(loaded, prompt: str) -> tuple[SequenceState, object]:
    seq = _seq(loaded, prompt)
    cache = start_prefill(seq, loaded.model)
    logits = prefill_step(seq, loaded.model, cache)
    assert logits is not None
    seq.accept(logits)
    return seq, cache


def _check_step(batch: DecodeBatch, twins: dict) -> None:
    """One batch step; every live row's logits equal its twin's solo forward."""
    logits = batch.step()
    pairs = batch.live_logits(logits)
    assert {id(s) for s, _ in pairs} == set(twins)
    for seq, row in pairs:
        twin, cache = twins[id(seq)]
        expected = forward(batch.model, torch.tensor([[twin.next_token]]), cache)[0]
        torch.testing.assert_close(row, expected, atol=1e-4, rtol=1e-4)
        seq.accept(row)
        twin.accept(expected)
        assert seq.output_ids == twin.output_ids


def test_batched_step_matches_single_sequence_logits(tiny_loaded) -> None:
    """Padding, masks, dead rows, in-place joins and rebuilds change nothing."""
    batch = DecodeBatch(tiny_loaded.model)
    twins: dict = {}

    def join(prompt: str) -> SequenceState:
        seq, cache = _prefilled(tiny_loaded, prompt)
        twins[id(seq)] = _prefilled(tiny_loaded, prompt)
        batch.add(seq, cache)
        return seq

    with torch.inference_mode():
        first = join(PROMPTS[2])  # alone: the batch adopts its cache, no copy
        others = [join(p) for p in (PROMPTS[0], PROMPTS[1], PROMPTS[3])]  # left padding
        longest = max(s.prompt_tokens for s in [first, *others])
        assert (len(batch), batch.rows, batch.length) == (4, 4, longest)
        for _ in range(3):
            _check_step(batch, twins)
        batch.remove([first])  # leaves: its row goes dead, nothing is copied
        del twins[id(first)]
        assert (len(batch), batch.rows) == (3, 4)
        _check_step(batch, twins)
        short = join(PROMPTS[4])  # fits: takes the dead row over in place
        assert (len(batch), batch.rows) == (4, 4)
        _check_step(batch, twins)
        batch.remove([short])
        del twins[id(short)]
        longest = join(PROMPTS[2] * 3)  # longer than the batch: one rebuild, dead row gone
        assert (len(batch), batch.rows, batch.length) == (4, 4, longest.prompt_tokens)
        for _ in range(3):
            _check_step(batch, twins)


def test_rebuild_trims_padding_nobody_needs(tiny_loaded) -> None:
    batch = DecodeBatch(tiny_loaded.model)
    with torch.inference_mode():
        long_seq, cache = _prefilled(tiny_loaded, PROMPTS[2] * 2)
        batch.add(long_seq, cache)
        short_seq, cache = _prefilled(tiny_loaded, PROMPTS[4])
        batch.add(short_seq, cache)
        batch.step()
        batch.remove([long_seq])
        assert batch.length == long_seq.prompt_tokens + 1  # dead row: no copy yet
        other, cache = _prefilled(tiny_loaded, PROMPTS[1] * 6)  # too long for the dead row
        assert other.prompt_tokens > batch.length
        batch.add(other, cache)
        assert batch.rows == 2 and batch.length == other.prompt_tokens
        batch.remove([short_seq, other])
        assert (len(batch), batch.rows, batch.length) == (0, 0, 0)


def test_a_batch_that_never_empties_stays_short(tiny_loaded) -> None:
    """Rows come and go for 90 steps: padding nobody needs is cut, outputs stay exact."""
    batch = DecodeBatch(tiny_loaded.model)
    twins: dict = {}
    live: list[SequenceState] = []

    def join(prompt: str) -> None:
        seq, cache = _prefilled(tiny_loaded, prompt)
        twins[id(seq)] = _prefilled(tiny_loaded, prompt)
        batch.add(seq, cache)
        live.append(seq)

    with torch.inference_mode():
        join(PROMPTS[1])
        join(PROMPTS[4])
        for step in range(90):
            _check_step(batch, twins)
            # Cached per row: its prompt and every output token but the last (fed next).
            needed = max(s.prompt_tokens + len(s.output_ids) - 1 for s in live)
            assert batch.length <= needed + TRIM_COLUMNS
            if step % 6 == 5:  # the oldest leaves, a newcomer takes its row over
                gone = live.pop(0)
                batch.remove([gone])
                del twins[id(gone)]
                join(PROMPTS[step % 5])
        assert batch.rows == 2


async def test_concurrent_requests_batch_and_match_sequential(
    tiny_engine: LocalEngine, serial_engine: LocalEngine, wait_idle
) -> None:
    await wait_idle(tiny_engine)
    before = tiny_engine.info().counters.batch_steps_total

    def requests() -> list[GenerationRequest]:
        return [GenerationRequest(p, max_tokens=24 + 4 * i) for i, p in enumerate(PROMPTS)]

    batched = await asyncio.gather(*(tiny_engine.generate(r) for r in requests()))
    sequential = [await serial_engine.generate(r) for r in requests()]
    assert [(r.text, r.token_count) for r in batched] == [
        (r.text, r.token_count) for r in sequential
    ]
    info = tiny_engine.info()
    assert info.counters.max_batch_size_seen >= 3
    assert info.counters.batch_steps_total - before < sum(r.token_count for r in batched)
    assert serial_engine.info().counters.max_batch_size_seen == 1


async def test_streams_in_a_batch_each_get_their_own_text(tiny_engine, wait_idle) -> None:
    await wait_idle(tiny_engine)

    async def collect(prompt: str) -> tuple[str, str]:
        chunks = [c async for c in tiny_engine.stream(GenerationRequest(prompt, max_tokens=20))]
        assert chunks[-1].done and chunks[-1].result is not None
        assert "".join(c.delta for c in chunks) == chunks[-1].text
        return chunks[-1].text, chunks[-1].result.text

    for streamed, final in await asyncio.gather(*(collect(p) for p in PROMPTS)):
        assert streamed == final


@pytest.fixture
def two_slot_engine(tiny_model_path: Path):
    engine = LocalEngine(
        model_path=tiny_model_path, device="cpu", dtype="float32", max_batch_size=2,
        result_cache_entries=0, warmup=False,
    )
    engine.load()
    yield engine
    engine.close()


async def _until(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def test_cancelled_request_frees_its_slot_at_the_next_token(two_slot_engine) -> None:
    engine = two_slot_engine
    a, b, c = (GenerationRequest(p, max_tokens=LONG) for p in PROMPTS[:3])
    tasks = [asyncio.create_task(engine.generate(r)) for r in (a, b, c)]
    await _until(lambda: engine.info().counters.tokens_generated_total >= 40)
    assert engine.info().counters.active_requests == 2
    assert engine.info().counters.queued_requests == 1  # c waits for a slot
    assert engine.cancel(a.request_id)
    await _until(lambda: engine.info().counters.queued_requests == 0, timeout=1.0)
    assert engine.info().counters.active_requests == 2  # c took a's slot; b still runs
    result_a = await tasks[0]
    assert result_a.finish_reason is FinishReason.CANCELLED
    await asyncio.sleep(0.1)
    assert not tasks[1].done()
    for r in (b, c):
        assert engine.cancel(r.request_id)
    rb, rc = await asyncio.gather(*tasks[1:])
    assert rb.token_count > result_a.token_count + 10  # b kept running through the swap
    assert rc.finish_reason is FinishReason.CANCELLED and rc.token_count > 10
    assert engine.info().counters.active_requests == 0


async def test_background_work_never_takes_the_interactive_slot(two_slot_engine) -> None:
    engine = two_slot_engine
    background = [
        GenerationRequest(p, max_tokens=LONG, priority=Priority.BATCH) for p in PROMPTS[:2]
    ]
    tasks = [asyncio.create_task(engine.generate(r)) for r in background]
    await _until(lambda: engine.info().counters.active_requests == 1)
    await asyncio.sleep(0.1)
    info = engine.info()
    assert (info.counters.active_requests, info.counters.queued_requests) == (1, 1)
    started = time.monotonic()
    keystroke = await engine.generate(GenerationRequest(PROMPTS[4], max_tokens=5))
    waited = time.monotonic() - started
    assert keystroke.token_count == 5 and waited < 1.0
    assert not any(t.done() for t in tasks)  # answered while the background ran
    for r in background:
        assert engine.cancel(r.request_id)
    await asyncio.gather(*tasks)


async def test_waiting_requests_run_by_priority(tiny_model_path: Path) -> None:
    engine = LocalEngine(
        model_path=tiny_model_path, device="cpu", max_batch_size=1, result_cache_entries=0,
        warmup=False,
    )
    engine.load()
    order: list[str] = []

    async def run(name: str, request: GenerationRequest) -> None:
        await engine.generate(request)
        order.append(name)

    blocker = GenerationRequest(PROMPTS[0], max_tokens=LONG, priority=Priority.BATCH)
    first = asyncio.create_task(run("blocker", blocker))
    await _until(lambda: engine.info().counters.active_requests == 1)
    waiting = [
        ("tests", GenerationRequest(PROMPTS[1], max_tokens=3, priority=Priority.BATCH)),
        ("explain", GenerationRequest(PROMPTS[2], max_tokens=3, priority=Priority.CHAT)),
        ("complete", GenerationRequest(PROMPTS[3], max_tokens=3)),
    ]
    tasks = [asyncio.create_task(run(n, r)) for n, r in waiting]
    await _until(lambda: engine.info().counters.queued_requests == 3)
    assert engine.cancel(blocker.request_id)
    await asyncio.gather(first, *tasks)
    engine.close()
    assert order == ["blocker", "complete", "explain", "tests"]


async def test_unbatchable_cache_runs_requests_one_at_a_time(
    tiny_model_path: Path, serial_engine: LocalEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache that cannot be padded (sliding window, recurrent) falls back to 1 slot."""
    monkeypatch.setattr(DecodeBatch, "can_join", lambda self, cache, n: not self.seqs)
    engine = LocalEngine(model_path=tiny_model_path, device="cpu", result_cache_entries=0)
    engine.load()
    assert engine.info().counters.max_batch_size == 1  # found out by the warm-up
    requests = [GenerationRequest(p, max_tokens=12) for p in PROMPTS]
    results = await asyncio.gather(*(engine.generate(r) for r in requests))
    expected = [await serial_engine.generate(GenerationRequest(p, max_tokens=12)) for p in PROMPTS]
    assert [r.text for r in results] == [r.text for r in expected]
    assert engine.info().counters.max_batch_size_seen == 1
    engine.close()


def test_warm_up_runs_while_loading(tiny_engine: LocalEngine, two_slot_engine) -> None:
    assert tiny_engine.info().warmup_s is not None
    assert two_slot_engine.info().warmup_s is None  # warmup=False


def test_batch_size_is_bounded_by_memory() -> None:
    model = 500 * 2**20
    assert batch_size_limit(8, 24 * 2**30, model) == 8
    assert batch_size_limit(8, 3 * model + 1, model) == 3
    assert batch_size_limit(8, model // 2, model) == 1  # never 0
    assert batch_size_limit(8, None, model) == 8
    assert batch_size_limit(0, None, None) == 1


def test_waiting_queue_order_and_reserved_slot() -> None:
    queue = WaitingQueue()
    reqs = {
        "t1": GenerationRequest("a", priority=Priority.BATCH),
        "e1": GenerationRequest("b", priority=Priority.CHAT),
        "c1": GenerationRequest("c"),
        "t2": GenerationRequest("d", priority=Priority.BATCH),
        "c2": GenerationRequest("e"),
    }
    for name, r in reqs.items():
        queue.push(r, name)
    assert list(queue) == ["c1", "c2", "e1", "t1", "t2"]
    running: list[GenerationRequest] = []
    assert queue.pop_admissible(running, 3) == "c1"
    running.append(reqs["c1"])
    assert queue.pop_admissible(running, 3) == "c2"
    running.append(reqs["c2"])
    assert queue.pop_admissible(running, 3) == "e1"  # 1 background < 3 - 1
    running = [reqs["e1"], reqs["t1"]]
    assert queue.pop_admissible(running, 3) is None  # the last slot is for completion
    assert queue.pop_admissible([reqs["e1"]], 1) is None  # full
    assert queue.pop_admissible([], 1) == "t1"  # a single slot is not reserved
    assert queue.remove_where(lambda name: name == "t2") == ["t2"] and len(queue) == 0


async def test_a_long_prefill_delays_a_running_decode_by_one_chunk_at_most(
        tiny_model_path: Path, monkeypatch) -> None:
    """A fresh cursor's long prompt is forwarded one chunk per engine step, each followed
    by a decode step of the running batch: the user already being answered waits at most
    one chunk per token, never the whole prompt."""
    import ds_engine.runner as runner_module

    events: list[str] = []
    real_prefill, real_step = runner_module.prefill_step, DecodeBatch.step

    def prefill(seq, *args, **kwargs):
        events.append(f"P{seq.request.request_id}")
        return real_prefill(seq, *args, **kwargs)

    def step(self):
        events.append("D" + ",".join(s.request.request_id for s in self.seqs))
        return real_step(self)

    monkeypatch.setattr(runner_module, "prefill_step", prefill)
    monkeypatch.setattr(DecodeBatch, "step", step)
    engine = LocalEngine(model_path=tiny_model_path, device="cpu", dtype="float32",
                         prefill_chunk=8, result_cache_entries=0, prefix_cache_entries=0,
                         warmup=False)
    engine.load()
    try:
        running = GenerationRequest(PROMPTS[1], max_tokens=LONG)
        running.request_id = "run"
        task = asyncio.create_task(engine.generate(running))
        await _until(lambda: engine.info().counters.tokens_generated_total >= 5)
        fresh = GenerationRequest("value = compute(x)\n" * 60, max_tokens=4)
        fresh.request_id = "new"
        answer = await engine.generate(fresh)
        assert answer.token_count == 4
        assert engine.cancel("run")
        await task
    finally:
        engine.close()
    chunks = [i for i, e in enumerate(events) if e == "Pnew"]
    assert len(chunks) >= 40  # about 480 prompt tokens, 8 at a time
    # Between two chunks of the new prompt, the running request decoded a token.
    for a, b in itertools.pairwise(chunks):
        assert any(e.startswith("D") and "run" in e for e in events[a + 1:b]), events[a:b + 1]
