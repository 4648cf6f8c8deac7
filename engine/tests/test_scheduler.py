"""The scheduler on its own: no model, no forward, a fake clock (``now`` passed in).

The runner's side is played by hand: each test builds the
:class:`~ds_engine.scheduler.RunnerOutput` a runner would report (started, joined, held,
finished) and checks the next decisions.
"""

from __future__ import annotations

import pytest
from ds_engine.interface import (
    EngineOverloaded,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    Priority,
)
from ds_engine.scheduler import (
    Phase,
    RequestState,
    RunnerOutput,
    Scheduler,
    WaitingQueue,
)

T0 = 1000.0  # the fake clock's start (monotonic seconds)


def state(
    priority: Priority = Priority.INTERACTIVE, user: str | None = "ann", created: float = T0,
    **kw,
) -> RequestState:
    return RequestState(
        GenerationRequest("x = ", priority=priority, user=user, created_at=created, **kw)
    )


def result(s: RequestState, reason: FinishReason = FinishReason.LENGTH) -> GenerationResult:
    return GenerationResult("", 0, 1, 1.0, reason, "fake", 0.0, request_id=s.request_id)


def finish(sched: Scheduler, s: RequestState, reason=FinishReason.LENGTH, now=T0) -> list[str]:
    return sched.update_from_output(RunnerOutput(finished=[(s, result(s, reason))]), now)


def added(sched: Scheduler, *states: RequestState, now: float = T0) -> list[RequestState]:
    for s in states:
        sched.add(s, now)
    return list(states)


# -- priorities and slots --------------------------------------------------------------------


def test_interactive_runs_before_chat_before_batch() -> None:
    sched = Scheduler(batch_limit=1)
    batch, chat, keys = added(
        sched, state(Priority.BATCH), state(Priority.CHAT), state(Priority.INTERACTIVE)
    )
    order = []
    for _ in range(3):
        plan = sched.schedule(T0 + 1)
        assert len(plan.admitted) == 1 and plan.prefill == plan.admitted
        order.append(plan.admitted[0])
        assert sched.schedule(T0 + 1).admitted == []  # one slot, taken
        finish(sched, plan.admitted[0])
    assert order == [keys, chat, batch]
    assert not sched.has_work() and sched.requests == {}


def test_a_request_that_waited_aging_s_goes_before_newer_keystrokes() -> None:
    sched = Scheduler(batch_limit=1)
    (explain,) = added(sched, state(Priority.CHAT, created=T0))
    keys = added(sched, *(state(created=T0 + 5) for _ in range(2)))
    assert sched.schedule(T0 + 6).admitted == [keys[0]]  # fresh: completion first
    finish(sched, keys[0])
    aged = T0 + WaitingQueue.aging_s + 0.1
    assert sched.schedule(aged).admitted == [explain]  # waited long enough
    finish(sched, explain)
    assert sched.schedule(aged).admitted == [keys[1]]


def test_the_batch_limit_and_the_slot_kept_for_completion() -> None:
    sched = Scheduler(batch_limit=3)
    background = added(sched, *(state(Priority.BATCH) for _ in range(3)))
    plan = sched.schedule(T0)
    assert plan.admitted == background[:2]  # the third slot is kept for completion
    assert [s.phase for s in background] == [Phase.PREFILLING] * 2 + [Phase.WAITING]
    keys = added(sched, state(), state())
    plan = sched.schedule(T0)
    assert plan.admitted == [keys[0]]  # the kept slot; then the batch is full
    assert (sched.active, sched.queued) == (3, 2)
    # Prefill goes by priority: the keystroke's prompt first.
    assert plan.prefill[0] is keys[0] and plan.prefill[1:] == background[:2]


def test_held_requests_resume_once_the_decode_batch_is_empty() -> None:
    sched = Scheduler(batch_limit=4)
    a, b, c = added(sched, state(adapter="x"), state(adapter="y"), state(adapter="y"))
    sched.schedule(T0)
    sched.update_from_output(RunnerOutput(started=[a, b, c]), T0)
    sched.update_from_output(RunnerOutput(joined=[a], held=[b, c]), T0)
    plan = sched.schedule(T0)
    assert (plan.resume, plan.decode, plan.prefill) == ([], True, [])  # a decodes alone
    assert [s.phase for s in (a, b, c)] == [Phase.DECODING, Phase.HELD, Phase.HELD]
    finish(sched, a)
    plan = sched.schedule(T0)
    assert plan.resume == [b, c] and plan.decode  # the oldest held picks the adapter
    sched.update_from_output(RunnerOutput(joined=[b]), T0)  # c's cache could not join
    assert sched.held == [c] and sched.schedule(T0).resume == []


def test_an_unbatchable_cache_drops_the_limit_to_one() -> None:
    sched = Scheduler(batch_limit=4)
    sched.update_from_output(RunnerOutput(unbatchable=True), T0)
    assert sched.batch_limit == 1


# -- stopping by id ---------------------------------------------------------------------------


@pytest.mark.parametrize("reason", [FinishReason.CANCELLED, FinishReason.STOP])
def test_cancel_a_waiting_request_by_id(reason: FinishReason) -> None:
    sched = Scheduler(batch_limit=1)
    running, waiting = added(sched, state(), state())
    sched.schedule(T0)
    assert sched.cancel(waiting.request_id, reason) is True
    assert waiting.flag.reason is reason
    plan = sched.schedule(T0)
    assert plan.dropped == [(waiting, reason)] and plan.admitted == []
    assert waiting.phase is Phase.ENDING and sched.queued == 0
    finish(sched, waiting, reason)
    assert sched.cancel(waiting.request_id) is False  # finished: unknown now
    assert sched.cancelled_total == (1 if reason is FinishReason.CANCELLED else 0)
    assert list(sched.requests) == [running.request_id]


def test_cancel_a_running_request_sets_its_flag_and_counts_only_cancelled() -> None:
    sched = Scheduler(batch_limit=2)
    a, b = added(sched, state(), state())
    sched.schedule(T0)
    assert sched.cancel(a.request_id) and sched.cancel(b.request_id, FinishReason.STOP)
    # The first reason wins: a stream left after its caller said STOP stays STOP.
    assert sched.cancel(b.request_id, FinishReason.CANCELLED)
    assert (a.flag.reason, b.flag.reason) == (FinishReason.CANCELLED, FinishReason.STOP)
    finish(sched, a, FinishReason.CANCELLED)
    finish(sched, b, FinishReason.STOP)
    assert sched.cancelled_total == 1 and not sched.has_work()
    assert sched.cancel("no-such-id") is False
    with pytest.raises(ValueError):
        sched.cancel(a.request_id, FinishReason.LENGTH)


def test_close_cancels_everything_and_drains_the_queue_unstarted() -> None:
    sched = Scheduler(batch_limit=1)
    running, waiting = added(sched, state(), state())
    sched.schedule(T0)
    assert sched.close() == 2 and sched.closed
    plan = sched.schedule(T0)
    assert plan.dropped == [(waiting, FinishReason.CANCELLED)] and plan.admitted == []
    assert running.flag.reason is FinishReason.CANCELLED  # stops at its next token


# -- deadlines ---------------------------------------------------------------------------------


def test_past_its_queue_timeout_a_request_is_shed_and_past_its_deadline_it_times_out() -> None:
    sched = Scheduler(batch_limit=1)
    busy, stale, expired = added(
        sched, state(), state(queue_timeout_s=2, timeout_s=30), state(timeout_s=3)
    )
    sched.schedule(T0)
    assert sched.schedule(T0 + 1).dropped == []  # still in time
    plan = sched.schedule(T0 + 2.5)
    ((shed, error),) = plan.shed
    assert shed is stale and isinstance(error, EngineOverloaded)
    assert "waited 2.5 s and could not start in time" in str(error) and not error.over_share
    assert stale.request_id not in sched.requests and sched.shed_total == 1
    plan = sched.schedule(T0 + 3)
    assert plan.dropped == [(expired, FinishReason.TIMEOUT)] and plan.shed == []
    assert busy.phase is Phase.PREFILLING


# -- admission and shedding --------------------------------------------------------------------


def test_a_full_queue_sheds_at_once_without_counting_the_request() -> None:
    sched = Scheduler(max_queued=2, batch_limit=1)
    added(sched, state(user="ann"))
    sched.schedule(T0)  # one running
    added(sched, state(user="bob"), state(user="bob"))
    with pytest.raises(EngineOverloaded) as info:
        sched.add(state(user="cid"), T0)
    assert "2 requests of this kind are waiting" in str(info.value)
    assert (sched.shed_total, sched.requests_total, sched.queued) == (1, 3, 2)
    sched.check(GenerationRequest("", user="cid", priority=Priority.CHAT), T0)  # own queue
    sched.add(state(Priority.CHAT, user="cid"), T0)


def test_a_user_over_a_fair_share_hears_429_while_others_get_in() -> None:
    sched = Scheduler(max_queued=4, batch_limit=1)
    added(sched, state(user="zed"))
    sched.schedule(T0)
    added(sched, state(user="ann"), state(user="ann"), state(user="bob"))
    with pytest.raises(EngineOverloaded) as info:
        sched.add(state(user="ann"), T0)  # holds 2 = ceil(4 / 2) of a pressed queue
    assert info.value.over_share
    sched.add(state(user="cid"), T0)


def test_load_shedding_off_lets_every_request_wait() -> None:
    sched = Scheduler(max_queued=1, load_shedding=False, batch_limit=1)
    added(sched, *(state() for _ in range(5)))
    assert sched.queued == 5 and sched.shed_total == 0


def test_a_request_id_is_known_once() -> None:
    sched = Scheduler()
    (s,) = added(sched, state())
    with pytest.raises(ValueError):
        sched.add(RequestState(s.request), T0)


# -- what the runner reports -------------------------------------------------------------------


def test_outcomes_update_counters_service_time_and_adapter_users() -> None:
    sched = Scheduler(batch_limit=2)
    a, b = added(sched, state(adapter="x"), state(adapter="x"))
    assert sched.adapter_users == {"x": 2}
    sched.schedule(T0)
    sched.update_from_output(RunnerOutput(started=[a, b], tokens=2), T0 + 1)
    sched.update_from_output(RunnerOutput(joined=[a, b]), T0 + 1)
    sched.update_from_output(RunnerOutput(batch_size=2, tokens=2), T0 + 2)
    sched.update_from_output(RunnerOutput(batch_size=1, tokens=1), T0 + 2)
    assert (sched.tokens_total, sched.batch_steps, sched.max_batch_seen) == (5, 2, 2)
    assert sched.mean_batch_size == 1.5
    assert finish(sched, a, now=T0 + 3) == []  # b still uses adapter x
    assert sched.service.seconds == pytest.approx(2.0)  # from its start, not its arrival
    failed = sched.update_from_output(RunnerOutput(failed=[(b, RuntimeError("boom"))]), T0 + 4)
    assert failed == ["x"] and sched.adapter_users == {}  # an unloading x may go now
    assert not sched.has_work() and sched.cancelled_total == 0


def test_a_request_that_never_started_leaves_no_service_time() -> None:
    sched = Scheduler(batch_limit=1)
    (s,) = added(sched, state(max_tokens=0))
    sched.schedule(T0)
    finish(sched, s, now=T0 + 5)  # finished at its start (0 tokens): no slot was held
    assert sched.service.seconds is None


def test_shed_requests_free_their_adapter() -> None:
    sched = Scheduler(batch_limit=1)
    added(sched, state())
    sched.schedule(T0)
    (s,) = added(sched, state(adapter="x", queue_timeout_s=1))
    plan = sched.schedule(T0 + 2)
    assert [x for x, _ in plan.shed] == [s] and plan.freed_adapters == ["x"]
