"""Admission policy of the batching engine: who runs next, how many at once, who waits.

Kept apart from the model runner so the policy can be read and tested on its own: the
waiting requests are ordered by (priority, arrival); the batch is bounded by memory; and
one slot is held back for interactive requests, so that a batch full of explanations or
test-generation rounds never makes a keystroke wait for one of them to finish.

Load shedding (:class:`Admission`): under overload a request that would only time out is
refused at once instead, before any model work, so that its user hears "busy, retry in
N s" in milliseconds rather than a timeout after 30 s, and the requests that are let in
finish within their deadlines. Each priority's queue is bounded; a request whose
estimated start (the work queued ahead of it, over the batch slots, times the recent
service time) is past its start deadline is shed; and when a queue is under pressure, a
user who holds more than a fair share of it is told so (``over_share``: 429 for that
user) while others still get in.

:class:`Scheduler` puts these together into the engine's decisions (vLLM v1's shape):
``schedule()`` says what the model runner does next, ``update_from_output()`` records
what it did. It holds every request the engine knows, with its phase and its stop flag
(the only cancel state there is: ``Engine.cancel`` sets it by request id), and no model:
it is tested with plain requests and a fake clock (``engine/tests/test_scheduler.py``).
It is not thread-safe; :class:`ds_engine.local.LocalEngine` calls it under one lock.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ds_engine.interface import (
    EngineOverloaded,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    Priority,
    StreamChunk,
)


def available_memory_bytes(device: Any) -> int | None:
    """Free memory on ``device`` (GPU: free device memory; CPU: MemAvailable), or None."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def batch_size_limit(max_batch_size: int, free_bytes: int | None, model_bytes: int | None) -> int:
    """``min(max_batch_size, floor(free memory / model size))``, at least 1.

    The seed design's rule: each running sequence's KV cache and activations are bounded
    by about one model's worth of memory at the context lengths used for completion.
    """
    limit = max(1, max_batch_size)
    if free_bytes is not None and model_bytes:
        limit = min(limit, max(1, free_bytes // model_bytes))
    return limit


@dataclass(order=True)
class _Entry:
    priority: int
    order: int
    item: Any = field(compare=False)
    user: str | None = field(default=None, compare=False)
    since: float = field(default=0.0, compare=False)  # the request's creation (monotonic)


class WaitingQueue:
    """Requests not yet admitted, highest priority first, then first come first served.

    Aging: a request that has waited ``aging_s`` goes before every newer one, whatever
    their priority. Without it a steady stream of keystrokes (each one shed after a few
    seconds, so never aged itself) could keep an explanation waiting until it timed out.

    It counts what it holds per priority and per (priority, user), for :class:`Admission`.
    """

    aging_s = 10.0

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._counter = itertools.count()
        self._per_priority: Counter[int] = Counter()
        self._per_user: Counter[tuple[int, str | None]] = Counter()

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Any]:
        return (entry.item for entry in sorted(self._heap))

    def queued(self, priority: int) -> int:
        """Requests waiting at ``priority``."""
        return self._per_priority[int(priority)]

    def ahead_of(self, priority: int) -> int:
        """Requests that would start before a new one of ``priority`` (same or higher)."""
        return sum(n for p, n in self._per_priority.items() if p <= int(priority))

    def users(self, priority: int) -> int:
        """Distinct users waiting at ``priority``."""
        return sum(1 for (p, _u), n in self._per_user.items() if p == int(priority) and n > 0)

    def held_by(self, priority: int, user: str | None) -> int:
        """Requests of ``user`` waiting at ``priority``."""
        return self._per_user[(int(priority), user)]

    def _count(self, entry: _Entry, delta: int) -> None:
        self._per_priority[entry.priority] += delta
        self._per_user[(entry.priority, entry.user)] += delta
        if self._per_user[(entry.priority, entry.user)] <= 0:
            del self._per_user[(entry.priority, entry.user)]

    def push(self, request: GenerationRequest, item: Any) -> None:
        entry = _Entry(int(request.priority), next(self._counter), item, request.user,
                       request.created_at)
        heapq.heappush(self._heap, entry)
        self._count(entry, +1)

    def pop_admissible(
        self, running: list[GenerationRequest], limit: int, now: float | None = None
    ) -> Any | None:
        """The next item that may start beside ``running`` under ``limit`` slots, or None.

        The oldest request that has waited ``aging_s`` (``now``: ``time.monotonic()``)
        comes first, else the head by priority. With more than one slot, non-interactive
        requests may hold at most ``limit - 1`` of them: the last slot is kept for
        inline completion.
        """
        if not self._heap or len(running) >= limit:
            return None
        now = time.monotonic() if now is None else now
        aged = min((e for e in self._heap if now - e.since >= self.aging_s),
                   key=lambda e: e.order, default=None)
        background = sum(1 for r in running if r.priority != Priority.INTERACTIVE)
        candidates = [self._heap[0]]
        if aged is not None and aged.order < self._heap[0].order:
            candidates.insert(0, aged)
        head = next((e for e in candidates if e.priority == Priority.INTERACTIVE
                     or limit <= 1 or background < limit - 1), None)
        if head is None:
            return None
        if head is self._heap[0]:
            heapq.heappop(self._heap)
        else:
            self._heap.remove(head)
            heapq.heapify(self._heap)
        self._count(head, -1)
        return head.item

    def remove_where(self, predicate: Any) -> list[Any]:
        """Take out every item for which ``predicate(item)`` holds (cancelled, expired)."""
        gone = [e for e in self._heap if predicate(e.item)]
        if gone:
            self._heap = [e for e in self._heap if not predicate(e.item)]
            heapq.heapify(self._heap)
            for entry in gone:
                self._count(entry, -1)
        return [e.item for e in gone]


class ServiceTime:
    """A moving average of how long an admitted request holds its batch slot (seconds).

    Exponentially weighted (``weight`` for each new sample), so that it follows the load
    of the last few dozen requests: prompts grow, the machine gets busier.
    """

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.seconds: float | None = None

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        if self.seconds is None:
            self.seconds = seconds
        else:
            self.seconds += self.weight * (seconds - self.seconds)


@dataclass
class Admission:
    """Who may join the waiting queue (see the module's docstring); ``max_queued`` per
    priority (0: no bound)."""

    max_queued: int = 64
    enabled: bool = True  # False: every request waits (until its deadline) as before
    #: A user may hold this share of a queue that is at least half full... and no more.
    PRESSURE = 0.5

    def estimated_wait(
        self, waiting: WaitingQueue, priority: int, running: int, limit: int,
        service_s: float | None,
    ) -> float:
        """Seconds until a new request of ``priority`` would start, from what is queued
        ahead of it (same or higher priority) and running, over ``limit`` batch slots."""
        ahead = waiting.ahead_of(priority)
        if service_s is None or (ahead == 0 and running < limit):
            return 0.0
        # Each slot frees after about one service time; the new request is the
        # (ahead + 1)-th to need one once the running ones hold all of them.
        rounds = math.ceil((ahead + 1 + max(0, running - limit + 1)) / max(1, limit))
        return rounds * service_s

    def check(
        self,
        request: GenerationRequest,
        waiting: WaitingQueue,
        *,
        running: int,
        limit: int,
        service_s: float | None,
        now: float,
    ) -> None:
        """Raise :class:`EngineOverloaded` unless ``request`` may wait in the queue."""
        if not self.enabled:
            return
        priority = int(request.priority)
        queued = waiting.queued(priority)
        wait = self.estimated_wait(waiting, priority, running, limit, service_s)
        retry = max(1, min(60, math.ceil(wait or service_s or 1.0)))
        full = self.max_queued > 0 and queued >= self.max_queued
        start_by = request.start_deadline
        late = wait > 0 and start_by is not None and now + wait > start_by
        pressed = self.max_queued > 0 and queued >= self.max_queued * self.PRESSURE
        held = waiting.held_by(priority, request.user)
        others = waiting.users(priority) - (1 if held else 0)
        # A fair share: the queue split between the users in it and this one.
        share = math.ceil(max(self.max_queued, 1) / (others + 1))
        over_share = request.user is not None and others > 0 and held >= share
        if over_share and (full or late or pressed):
            raise EngineOverloaded(
                f"you have {held} requests waiting for the model, more than a fair share "
                f"({share}) while {others} other user(s) wait; retry in {retry} s",
                retry, over_share=True,
            )
        if full:
            raise EngineOverloaded(
                f"the model is busy: {queued} requests of this kind are waiting (the most "
                f"that may); retry in {retry} s", retry,
            )
        if late:
            raise EngineOverloaded(
                f"the model is busy: this request would start in about {wait:.1f} s, after "
                f"its start deadline; retry in {retry} s", retry,
            )


# ------------------------------------------------------------------------------ the scheduler

#: The reasons a caller may stop a request with (see ``Engine.cancel``).
STOP_REASONS = frozenset({FinishReason.CANCELLED, FinishReason.STOP})


class StopFlag:
    """Why a request must end before it is done, or None while it may run.

    Set through :meth:`Scheduler.cancel` (by request id, from any thread, under the
    engine's lock) and read by the token loop between two tokens without a lock
    (:meth:`ds_engine.generation.SequenceState.interrupted`): one attribute, written
    once. The first reason wins, so a stream its caller leaves after saying STOP still
    finishes as STOP.
    """

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: FinishReason | None = None

    def set(self, reason: FinishReason = FinishReason.CANCELLED) -> None:
        if self.reason is None:
            self.reason = reason


class Phase(enum.Enum):
    """Where a known request is."""

    WAITING = "waiting"  # in the queue
    PREFILLING = "prefilling"  # holds a batch slot; its prompt is being forwarded
    HELD = "held"  # prefilled, waits outside the decode batch (another adapter runs,
    # or the model's KV cache cannot be batched)
    DECODING = "decoding"  # in the decode batch
    ENDING = "ending"  # left the queue to finish without a forward (cancelled, expired)
    FINISHED = "finished"


@dataclass(eq=False)
class RequestState:
    """The engine's side of one request: its phase and stop flag.

    ``on_chunk`` (where its stream chunks go) and ``future`` (the caller's handle on the
    result) belong to the engine's front; the scheduler passes them along untouched.
    """

    request: GenerationRequest
    on_chunk: Callable[[StreamChunk], None] | None = None
    future: Any = None
    flag: StopFlag = field(default_factory=StopFlag)
    phase: Phase = Phase.WAITING
    started_at: float | None = None  # when it took a batch slot (its prefill began)

    @property
    def request_id(self) -> str:
        return self.request.request_id


@dataclass
class SchedulerOutput:
    """What the model runner does in the next step, in this order."""

    # Left the engine unstarted, shed: they waited past their queue timeout.
    shed: list[tuple[RequestState, EngineOverloaded]] = field(default_factory=list)
    # Finish without a forward (cancelled, past their deadline, engine closing); the
    # reason applies unless the request turns out to be finished anyway.
    dropped: list[tuple[RequestState, FinishReason]] = field(default_factory=list)
    # Take a batch slot now: start their prefill (from the prefix cache).
    admitted: list[RequestState] = field(default_factory=list)
    # The prefilling requests by priority: one prompt chunk for the first still running.
    prefill: list[RequestState] = field(default_factory=list)
    # Held requests of one adapter, oldest first, that start the decode batch if it is
    # still empty once the prefill chunk ran (a request it finished may have started it).
    resume: list[RequestState] = field(default_factory=list)
    # Step the decode batch (it has requests, or may have after the prefill chunk).
    decode: bool = False
    # Adapters whose last request just left (an unloading one can be detached now).
    freed_adapters: list[str] = field(default_factory=list)


@dataclass
class RunnerOutput:
    """What the model runner did in one stage of a step (see :mod:`ds_engine.runner`)."""

    started: list[RequestState] = field(default_factory=list)  # their prefill began
    joined: list[RequestState] = field(default_factory=list)  # entered the decode batch
    held: list[RequestState] = field(default_factory=list)  # prefilled, kept out of it
    finished: list[tuple[RequestState, GenerationResult]] = field(default_factory=list)
    failed: list[tuple[RequestState, BaseException]] = field(default_factory=list)
    unbatchable: bool = False  # the model's KV cache cannot be batched: one at a time
    batch_size: int = 0  # requests in a decode forward (0: no decode forward ran)
    tokens: int = 0  # tokens generated


class Scheduler:
    """The engine's decisions, without a model (see the module's docstring).

    It knows every queued and running request (:class:`RequestState`, by id), the
    waiting queue (priorities, aging, the slot kept for completion), admission and
    shedding, the batch-size limit, and what the runner has in flight: which requests
    are prefilling, held back or decoding. Times are passed in (``now``, monotonic
    seconds) so that tests drive it with a fake clock.
    """

    def __init__(
        self, max_queued: int = 64, *, load_shedding: bool = True, batch_limit: int = 1
    ) -> None:
        self.waiting = WaitingQueue()
        self.admission = Admission(max(0, int(max_queued)), enabled=load_shedding)
        self.service = ServiceTime()  # batch-slot seconds per request, for admission
        self.batch_limit = max(1, batch_limit)  # the engine sets it once the model is loaded
        self.closed = False
        self.requests: dict[str, RequestState] = {}  # queued or running, by id
        self.running: list[RequestState] = []  # out of the queue, in admission order
        self.held: list[RequestState] = []  # in the order they were held back
        self.adapter_users: Counter[str] = Counter()  # known requests per adapter
        self.requests_total = 0
        self.tokens_total = 0
        self.cancelled_total = 0
        self.shed_total = 0
        self.batch_steps = 0
        self.batched_tokens = 0  # sum over decode steps of the batch size
        self.max_batch_seen = 0

    # ---------------------------------------------------------------- requests in

    @property
    def queued(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        """Known requests that left the queue and are not finished yet."""
        return len(self.requests) - len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def check(self, request: GenerationRequest, now: float) -> None:
        """Raise :class:`EngineOverloaded` (and count it shed) unless ``request`` may
        join the queue as it is now."""
        try:
            self.admission.check(
                request,
                self.waiting,
                running=self.active,
                limit=self.batch_limit,
                service_s=self.service.seconds,
                now=now,
            )
        except EngineOverloaded:
            self.shed_total += 1
            raise

    def add(self, state: RequestState, now: float) -> None:
        """Queue ``state`` or shed it (:meth:`check`); a shed request is not counted."""
        if state.request_id in self.requests:
            raise ValueError(f"request {state.request_id!r} is already queued or running")
        self.check(state.request, now)
        adapter = state.request.adapter
        if adapter is not None:
            self.adapter_users[adapter] += 1
        self.requests[state.request_id] = state
        self.requests_total += 1
        self.waiting.push(state.request, state)

    def cancel(self, request_id: str, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        """Flag a known request to stop (see :class:`StopFlag`); False if unknown."""
        if reason not in STOP_REASONS:
            raise ValueError(f"a request is stopped with CANCELLED or STOP, not {reason}")
        state = self.requests.get(request_id)
        if state is None:
            return False
        state.flag.set(reason)
        return True

    def cancel_all(self, reason: FinishReason = FinishReason.CANCELLED) -> int:
        for state in self.requests.values():
            state.flag.set(reason)
        return len(self.requests)

    def close(self) -> int:
        """Take no more requests; cancel every known one (the queue drains unstarted)."""
        self.closed = True
        return self.cancel_all()

    # ---------------------------------------------------------------- decisions

    def schedule(self, now: float) -> SchedulerOutput:
        """The next step: shed or drop what must not start, admit up to the batch
        limit by priority, pick the prefill chunk, the held requests to resume, and
        whether the decode batch steps."""
        out = SchedulerOutput()
        for state in self.waiting.remove_where(lambda s: self._must_leave(s, now)):
            error = self._shed_error(state, now)
            if error is not None:
                self._forget(state, out.freed_adapters)
                self.shed_total += 1
                out.shed.append((state, error))
            else:
                state.phase = Phase.ENDING
                out.dropped.append((state, self._drop_reason(state, now)))
        busy = [s.request for s in self.running]
        while (state := self.waiting.pop_admissible(busy, self.batch_limit, now)) is not None:
            state.phase = Phase.PREFILLING
            self.running.append(state)
            busy.append(state.request)
            out.admitted.append(state)
        # Stable: among equal priorities the one admitted first goes first.
        out.prefill = sorted(
            (s for s in self.running if s.phase is Phase.PREFILLING),
            key=lambda s: s.request.priority,
        )
        decoding = any(s.phase is Phase.DECODING for s in self.running)
        if self.held and not decoding:
            # One adapter per decode batch: the oldest held request picks it.
            adapter = self.held[0].request.adapter
            out.resume = [s for s in self.held if s.request.adapter == adapter]
        out.decode = decoding or bool(out.prefill or out.resume)
        return out

    def _must_leave(self, state: RequestState, now: float) -> bool:
        """Cancelled, past its start deadline, or the engine closes: it never starts."""
        start_by = state.request.start_deadline
        return (
            state.flag.reason is not None
            or self.closed
            or (start_by is not None and now >= start_by)
        )

    def _shed_error(self, state: RequestState, now: float) -> EngineOverloaded | None:
        """The error for a request that waited past its queue timeout but not its
        deadline: it was never tried (shed, retry), and a completion that starts that
        late is stale anyway. Past its deadline it times out as ever (None)."""
        request = state.request
        start_by, deadline = request.start_deadline, request.deadline
        if (
            state.flag.reason is not None
            or self.closed
            or start_by is None
            or now < start_by
            or (deadline is not None and now >= deadline)
        ):
            return None
        waited = now - request.created_at
        return EngineOverloaded(
            f"the model is busy: this request waited {waited:.1f} s and could not "
            "start in time; retry shortly",
            max(1, min(60, round(self.service.seconds or 1.0))),
        )

    @staticmethod
    def _drop_reason(state: RequestState, now: float) -> FinishReason:
        if state.flag.reason is not None:
            return state.flag.reason
        deadline = state.request.deadline
        if deadline is not None and now >= deadline:
            return FinishReason.TIMEOUT
        return FinishReason.CANCELLED  # the engine closes

    # ---------------------------------------------------------------- outcomes

    def update_from_output(self, output: RunnerOutput, now: float) -> list[str]:
        """Record one runner stage: slots taken, batch moves, tokens, finished and
        failed requests (they are forgotten). Returns the adapters whose last request
        left."""
        freed: list[str] = []
        for state in output.started:
            state.started_at = now
        for state in output.held:
            state.phase = Phase.HELD
            self.held.append(state)
        for state in output.joined:
            state.phase = Phase.DECODING
            if state in self.held:
                self.held.remove(state)
        if output.unbatchable:
            self.batch_limit = 1
        if output.batch_size:
            self.batch_steps += 1
            self.batched_tokens += output.batch_size
            self.max_batch_seen = max(self.max_batch_seen, output.batch_size)
        self.tokens_total += output.tokens
        for state, result in output.finished:
            if state.started_at is not None:
                self.service.observe(now - state.started_at)
            if result.finish_reason is FinishReason.CANCELLED:
                self.cancelled_total += 1
            self._forget(state, freed)
        for state, _error in output.failed:
            self._forget(state, freed)
        return freed

    def _forget(self, state: RequestState, freed: list[str]) -> None:
        if self.requests.get(state.request_id) is not state:
            return
        del self.requests[state.request_id]
        state.phase = Phase.FINISHED
        if state in self.running:
            self.running.remove(state)
        if state in self.held:
            self.held.remove(state)
        adapter = state.request.adapter
        if adapter is not None and adapter in self.adapter_users:
            self.adapter_users[adapter] -= 1
            if self.adapter_users[adapter] <= 0:
                del self.adapter_users[adapter]
                freed.append(adapter)

    @property
    def mean_batch_size(self) -> float | None:
        return round(self.batched_tokens / self.batch_steps, 2) if self.batch_steps else None
