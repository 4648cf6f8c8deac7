"""Load shedding: bounded queues per priority, start deadlines, fair shares (issue 15).

The policy (``Admission``) is tested on its own, without a model; then on a tiny model
that a request is shed at once when its queue is full, that one which waited past its
queue timeout is dropped before prefill, and that the requests let in still finish.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ds_engine.interface import (
    EngineNotReady,
    EngineOverloaded,
    FinishReason,
    GenerationRequest,
    Priority,
)
from ds_engine.local import LocalEngine
from ds_engine.scheduler import Admission, ServiceTime, WaitingQueue

LONG = 1500  # ~1.5 s of tiny-model tokens


def req(user: str | None = "ann", priority: Priority = Priority.INTERACTIVE, **kw):
    return GenerationRequest("x = ", user=user, priority=priority, **kw)


def queue_of(*requests: GenerationRequest) -> WaitingQueue:
    waiting = WaitingQueue()
    for r in requests:
        waiting.push(r, r)
    return waiting


# -- the policy, without a model -----------------------------------------------------------


def test_the_queue_counts_per_priority_and_user():
    a1, a2, b1 = req("ann"), req("ann"), req("bob")
    chat = req("ann", Priority.CHAT)
    waiting = queue_of(a1, a2, b1, chat)
    assert (waiting.queued(Priority.INTERACTIVE), waiting.queued(Priority.CHAT)) == (3, 1)
    assert waiting.ahead_of(Priority.INTERACTIVE) == 3 and waiting.ahead_of(Priority.CHAT) == 4
    assert waiting.users(Priority.INTERACTIVE) == 2
    assert waiting.held_by(Priority.INTERACTIVE, "ann") == 2
    assert waiting.pop_admissible([], 4) is a1
    assert waiting.held_by(Priority.INTERACTIVE, "ann") == 1
    assert waiting.remove_where(lambda item: item is b1) == [b1]
    assert waiting.users(Priority.INTERACTIVE) == 1 and waiting.queued(Priority.INTERACTIVE) == 1


def test_a_full_queue_sheds_and_other_priorities_keep_their_own_bound():
    policy = Admission(max_queued=2)
    waiting = queue_of(req("ann"), req("ann"))
    with pytest.raises(EngineOverloaded) as info:
        policy.check(req("ann"), waiting, running=1, limit=1, service_s=None, now=0.0)
    assert not info.value.over_share and info.value.retry_after >= 1
    assert isinstance(info.value, EngineNotReady)  # every "not now" handler answers it
    # Explanations have a queue of their own.
    policy.check(req("ann", Priority.CHAT), waiting, running=1, limit=1, service_s=None, now=0)
    # No bound at all with 0.
    Admission(max_queued=0).check(req(), waiting, running=1, limit=1, service_s=None, now=0)


def test_a_request_that_would_start_after_its_start_deadline_is_shed():
    policy = Admission(max_queued=64)
    waiting = queue_of(*[req("bob") for _ in range(6)])
    late = req("ann", queue_timeout_s=2.0)
    # 6 ahead, 2 slots, 1 s a request: the 7th starts in about 4 s, after 2 s.
    assert policy.estimated_wait(waiting, Priority.INTERACTIVE, 2, 2, 1.0) == pytest.approx(4.0)
    with pytest.raises(EngineOverloaded) as info:
        policy.check(late, waiting, running=2, limit=2, service_s=1.0, now=late.created_at)
    assert 1 <= info.value.retry_after <= 5
    # With room for 10 s it may wait; with a free slot and nothing ahead it starts now.
    policy.check(req("ann", queue_timeout_s=10.0), waiting, running=2, limit=2, service_s=1.0,
                 now=late.created_at)
    policy.check(req("ann", queue_timeout_s=0.001), WaitingQueue(), running=0, limit=2,
                 service_s=5.0, now=late.created_at)


def test_a_user_over_a_fair_share_of_a_busy_queue_is_told_apart():
    policy = Admission(max_queued=8)
    waiting = queue_of(*[req("ann") for _ in range(5)], req("bob"))  # 6 of 8: busy
    with pytest.raises(EngineOverloaded) as info:
        policy.check(req("ann"), waiting, running=1, limit=1, service_s=None, now=0.0)
    assert info.value.over_share and "fair share" in str(info.value)
    policy.check(req("bob"), waiting, running=1, limit=1, service_s=None, now=0.0)  # bob: in
    # Alone in the queue, nobody's share is exceeded (the per-user cap covers that).
    policy.check(req("ann"), queue_of(*[req("ann") for _ in range(6)]), running=1, limit=1,
                 service_s=None, now=0.0)


def test_service_time_follows_recent_requests():
    service = ServiceTime(weight=0.5)
    assert service.seconds is None
    service.observe(2.0)
    service.observe(4.0)
    assert service.seconds == pytest.approx(3.0)


# -- on a tiny model -------------------------------------------------------------------------


@pytest.fixture
def shedding_engine(tiny_model_path: Path) -> Iterator[LocalEngine]:
    engine = LocalEngine(model_path=tiny_model_path, device="cpu", dtype="float32",
                         max_batch_size=1, max_queued=2, warmup=False)
    engine.load()
    yield engine
    engine.close()


async def test_a_full_queue_answers_at_once_and_the_admitted_finish(shedding_engine):
    engine = shedding_engine
    running = req("ann", max_tokens=LONG)
    first = asyncio.ensure_future(engine.generate(running))
    while engine.info().counters.active_requests < 1:
        await asyncio.sleep(0.005)
    queued = [asyncio.ensure_future(engine.generate(req("bob", max_tokens=4)))
              for _ in range(2)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(EngineOverloaded):
        await engine.generate(req("cid", max_tokens=4))
    assert time.monotonic() - started < 0.05  # before any model work: in milliseconds
    # A caller may ask before it builds a prompt at all.
    with pytest.raises(EngineOverloaded):
        engine.check_admission(GenerationRequest("", user="cid"))
    engine.check_admission(GenerationRequest("", user="cid", priority=Priority.CHAT))
    assert engine.cancel(running.request_id)
    results = await asyncio.gather(first, *queued)
    assert [r.finish_reason for r in results[1:]] == [FinishReason.LENGTH] * 2
    info = engine.info()
    assert info.counters.shed_total == 2 and info.counters.service_time_s is not None
    engine.check_admission(GenerationRequest("", user="cid"))  # room again


async def test_a_stale_request_is_dropped_before_prefill(shedding_engine):
    engine = shedding_engine
    running = req("ann", max_tokens=LONG)
    first = asyncio.ensure_future(engine.generate(running))
    while engine.info().counters.active_requests < 1:
        await asyncio.sleep(0.005)
    prompts_before = engine.info().counters.prompt_tokens_total
    stale = req("bob", max_tokens=4, queue_timeout_s=0.2, timeout_s=30)
    started = time.monotonic()
    with pytest.raises(EngineOverloaded) as info:
        await engine.generate(stale)
    waited = time.monotonic() - started
    assert 0.15 < waited < 1.5 and "could not start in time" in str(info.value)
    assert engine.info().counters.prompt_tokens_total == prompts_before  # never prefilled
    assert engine.cancel(running.request_id)
    assert (await first).finish_reason is FinishReason.CANCELLED
    # Past its deadline (not just its queue timeout), a request still times out.
    result = await engine.generate(req("bob", max_tokens=LONG, timeout_s=0))
    assert result.finish_reason is FinishReason.TIMEOUT


def test_a_request_that_waited_long_goes_before_newer_keystrokes():
    explain = req("ann", Priority.CHAT)
    keys = [req("bob") for _ in range(3)]
    waiting = queue_of(explain, *keys)
    start = explain.created_at
    # Fresh: completions first, as ever.
    assert waiting.pop_admissible([], 4, now=start + 1.0) is keys[0]
    # Once the explanation has waited aging_s it goes before the newer keystrokes...
    aged = start + WaitingQueue.aging_s + 0.1
    assert waiting.pop_admissible([], 4, now=aged) is explain
    assert waiting.queued(Priority.CHAT) == 0 and waiting.queued(Priority.INTERACTIVE) == 2
    # ...but never into the slot kept for completion, which a keystroke still gets.
    waiting = queue_of(explain, *keys)
    busy = [req("cid", Priority.CHAT) for _ in range(3)]
    assert waiting.pop_admissible(busy, 4, now=aged) is keys[0]
    assert waiting.pop_admissible([*busy, keys[0]], 4, now=aged) is None  # full
