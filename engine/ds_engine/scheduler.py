"""Admission policy of the batching engine: who runs next, and how many at once.

Kept apart from the model runner so the policy can be read and tested on its own: the
waiting requests are ordered by (priority, arrival); the batch is bounded by memory; and
one slot is held back for interactive requests, so that a batch full of explanations or
test-generation rounds never makes a keystroke wait for one of them to finish.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ds_engine.interface import GenerationRequest, Priority


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


class WaitingQueue:
    """Requests not yet admitted, highest priority first, then first come first served."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Any]:
        return (entry.item for entry in sorted(self._heap))

    def push(self, request: GenerationRequest, item: Any) -> None:
        heapq.heappush(self._heap, _Entry(int(request.priority), next(self._counter), item))

    def pop_admissible(self, running: list[GenerationRequest], limit: int) -> Any | None:
        """The next item that may start beside ``running`` under ``limit`` slots, or None.

        With more than one slot, non-interactive requests may hold at most ``limit - 1``
        of them: the last slot is kept for inline completion.
        """
        if not self._heap or len(running) >= limit:
            return None
        head = self._heap[0]
        if head.priority != Priority.INTERACTIVE and limit > 1:
            background = sum(1 for r in running if r.priority != Priority.INTERACTIVE)
            if background >= limit - 1:
                return None
        return heapq.heappop(self._heap).item

    def remove_where(self, predicate: Any) -> list[Any]:
        """Take out every item for which ``predicate(item)`` holds (cancelled, expired)."""
        gone = [e.item for e in self._heap if predicate(e.item)]
        if gone:
            self._heap = [e for e in self._heap if not predicate(e.item)]
            heapq.heapify(self._heap)
        return gone
