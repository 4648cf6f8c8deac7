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
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ds_engine.interface import EngineOverloaded, GenerationRequest, Priority


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
