"""Telemetry events counted against the server's memory of answered completions.

An event counts when its request id is one of the caller's remembered completions and
its kind has not been counted for that completion before (a client that repeats itself,
by mistake or to inflate the rate, counts once); anything else is ignored, not refused, so
a client whose completions expired or were answered by a restarted server goes on
working. Model and adapter labels come from the memory, never from the client.

Counted events go to the Prometheus counters at once and, grouped by model and adapter,
into the call's audit record, from which the usage report computes acceptance rates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jupyter_ds import metrics
from jupyter_ds.telemetry.events import EVENT_KINDS, TelemetryEvent
from jupyter_ds.telemetry.memory import AnsweredCompletions


@dataclass
class Tally:
    """What one telemetry request counted: per (model, adapter), per event kind."""

    counted: int = 0
    ignored: int = 0
    groups: dict[tuple[str, str | None], dict[str, int]] = field(default_factory=dict)
    clients: set[str] = field(default_factory=set)

    def add(self, model: str, adapter: str | None, kind: str, chars: int = 0) -> None:
        group = self.groups.setdefault(
            (model, adapter), {**dict.fromkeys(EVENT_KINDS, 0), "accepted_chars": 0}
        )
        group[kind] += 1
        group["accepted_chars"] += chars
        self.counted += 1

    def data(self) -> dict[str, int]:
        """The answer's ``data``."""
        return {"counted": self.counted, "ignored": self.ignored}

    def audit_fields(self) -> dict[str, Any]:
        """The audit record's extra fields: counts only, never text."""
        return {
            "telemetry": [
                {"model": model, "adapter": adapter, **counts}
                for (model, adapter), counts in sorted(
                    self.groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
                )
            ],
            "telemetry_ignored": self.ignored,
            "clients": sorted(self.clients),
        }


def count_events(
    memory: AnsweredCompletions | None, user: str | None, events: Iterable[TelemetryEvent]
) -> Tally:
    """Count ``user``'s ``events`` (see the module docstring); never raises."""
    tally = Tally()
    for ev in events:
        if ev.client:
            tally.clients.add(ev.client)
        entry = memory.claim(user, ev.request_id, ev.event) if memory and user else None
        if entry is None:
            tally.ignored += 1
            continue
        chars = 0
        if ev.event == "partially_accepted" and ev.accepted_chars is not None:
            chars = min(ev.accepted_chars, entry.shown_chars)
        tally.add(entry.model, entry.adapter, ev.event, chars)
        metrics.observe_completion_event(ev.event, entry.model, entry.adapter)
    return tally
