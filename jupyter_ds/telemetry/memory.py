"""The completions this server answered, remembered for the telemetry that follows them.

Why the server keeps them: a client reports what became of a suggestion by its
``request_id``. Were the model and adapter taken from the client, any client could invent
label values (unbounded Prometheus series) or report on completions it never got. So when
a completion answers (``POST complete`` or a WebSocket message: the request pipeline
records it as the call finishes, the one place both pass), the server remembers who asked
and what answered; telemetry then counts only events about the caller's own remembered
completions, and labels them from here.

Nothing of the code is kept: the number of items and the length of the shown text only.
Entries are keyed by (user, request id), so a client that picks another user's
``X-Request-Id`` neither reads nor overwrites that user's entry. The memory is bounded:
``max_entries`` (least recently used first out) and ``ttl_s`` from the answer (a
suggestion nobody reported on within the hour is not reported on). Thread-safe: one lock,
held for a dictionary operation.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: The routes whose answers are completions (REST and the WebSocket's messages).
COMPLETION_ENDPOINTS = frozenset({"complete", "complete/stream"})
DEFAULT_MAX_ENTRIES = 20_000
DEFAULT_TTL_S = 3600.0


@dataclass
class Answered:
    """One answered completion: who asked, what answered, how much was offered."""

    user: str
    model: str
    adapter: str | None
    items: int
    shown_chars: int
    at: float
    #: The event kinds already counted for it (each counts once).
    counted: set[str] = field(default_factory=set)


def _facts(answer: Mapping[str, Any]) -> tuple[str, str | None, int, int] | None:
    """(model, adapter, items, shown chars) of a completion's answer, or None when it
    offered nothing (no valid text): nothing could be shown. A stream cancelled after
    it showed some text counts (the user may have accepted it before typing on)."""
    items = answer.get("items")
    output = answer.get("output")
    text = output if isinstance(output, str) else ""
    count = len(items) if isinstance(items, list) else (1 if text else 0)
    if count == 0:
        return None
    model = answer.get("model")
    adapter = answer.get("adapter")
    return (
        model if isinstance(model, str) else "",
        adapter if isinstance(adapter, str) and adapter else None,
        count,
        len(text),
    )


class AnsweredCompletions:
    """(user, request id) -> :class:`Answered`, bounded by count and age."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_entries = max(1, int(max_entries))
        self.ttl_s = float(ttl_s)
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], Answered] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def remember(
        self,
        request_id: str,
        user: str,
        model: str,
        adapter: str | None,
        items: int,
        shown_chars: int,
    ) -> None:
        """Keep one answered completion (a request id answered again starts afresh)."""
        now = self.clock()
        entry = Answered(user, model, adapter, items, shown_chars, now)
        with self._lock:
            key = (user, request_id)
            self._entries.pop(key, None)
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            # The front is the least recently used, usually the oldest: drop what expired.
            while self._entries:
                first = next(iter(self._entries.values()))
                if now - first.at <= self.ttl_s:
                    break
                self._entries.popitem(last=False)

    def remember_answer(
        self, request_id: str, user: str | None, answer: Mapping[str, Any] | None
    ) -> bool:
        """Keep a finished completion call's answer (``data`` of ``POST complete``, or the
        WebSocket's final event); False when there is nothing to keep (no user, nothing
        offered)."""
        if not user or not isinstance(answer, Mapping):
            return False
        facts = _facts(answer)
        if facts is None:
            return False
        self.remember(request_id, user, *facts)
        return True

    def claim(self, user: str, request_id: str, kind: str) -> Answered | None:
        """The entry of ``user``'s completion ``request_id`` if ``kind`` has not been
        counted for it yet (it is marked counted now); None when the id is unknown,
        expired, another user's, or ``kind`` was counted before."""
        now = self.clock()
        with self._lock:
            key = (user, request_id)
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now - entry.at > self.ttl_s:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            if kind in entry.counted:
                return None
            entry.counted.add(kind)
            return entry
