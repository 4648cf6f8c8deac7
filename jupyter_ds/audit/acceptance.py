"""Acceptance of completions in the usage report, from the audit records of telemetry.

A ``POST jupyter-ds/v1/telemetry`` call's audit record carries what it counted, per model
and adapter (``telemetry``: ``[{model, adapter, shown, accepted, partially_accepted,
dismissed, accepted_chars}]``; see :mod:`jupyter_ds.telemetry.count`). Summed over the
report's window they give each model and adapter its acceptance rate, ``accepted /
shown`` (None before anything was shown): the production signal that tells whether a new
model or adapter serves users better. Records are read leniently here (a malformed group
counts as nothing): the report's strictness is about lines it cannot read, which
:mod:`jupyter_ds.audit.report` already refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = ("shown", "accepted", "partially_accepted", "dismissed")
COUNTS = (*KINDS, "accepted_chars")


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass
class _Counts:
    shown: int = 0
    accepted: int = 0
    partially_accepted: int = 0
    dismissed: int = 0
    accepted_chars: int = 0

    def add(self, group: dict[str, Any]) -> None:
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + _count(group.get(name)))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in COUNTS}
        out["acceptance_rate"] = round(self.accepted / self.shown, 4) if self.shown else None
        return out


class Acceptance:
    """Telemetry counts of audit records, in total and per (model, adapter)."""

    def __init__(self) -> None:
        self.total = _Counts()
        self.groups: dict[tuple[str, str | None], _Counts] = {}

    def add(self, rec: dict[str, Any]) -> None:
        groups = rec.get("telemetry")
        if not isinstance(groups, list):
            return
        for group in groups:
            if not isinstance(group, dict):
                continue
            model, adapter = group.get("model"), group.get("adapter")
            key = (model if isinstance(model, str) and model else "-",
                   adapter if isinstance(adapter, str) and adapter else None)
            self.groups.setdefault(key, _Counts()).add(group)
            self.total.add(group)

    def summary(self) -> dict[str, Any]:
        """``{total, by_model_adapter: [{model, adapter, shown, ..., acceptance_rate}]}``."""
        rows = [
            {"model": model, "adapter": adapter, **counts.summary()}
            for (model, adapter), counts in sorted(
                self.groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
            )
        ]
        return {"total": self.total.summary(), "by_model_adapter": rows}


_COLUMNS = (("shown", "shown"), ("accepted", "accepted"), ("partially_accepted", "partial"),
            ("dismissed", "dismissed"), ("acceptance_rate", "rate"))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}"
    return str(value)


def format_acceptance(summary: dict[str, Any]) -> list[str]:
    """The acceptance part of the text report: one row per model and adapter, and the total
    (nothing when no telemetry came in the window)."""
    rows = summary.get("by_model_adapter") or []
    if not rows:
        return []
    table = [("model", "adapter", [h for _, h in _COLUMNS])]
    for row in rows:
        table.append((row["model"], row["adapter"] or "-", [_cell(row[c]) for c, _ in _COLUMNS]))
    table.append(("TOTAL", "", [_cell(summary["total"][c]) for c, _ in _COLUMNS]))
    w0 = max(len(m) for m, _, _ in table)
    w1 = max(len(a) for _, a, _ in table)
    widths = [max(len(cells[i]) for _, _, cells in table) for i in range(len(_COLUMNS))]

    def fmt(model: str, adapter: str, cells: list[str]) -> str:
        padded = (c.rjust(w) for c, w in zip(cells, widths, strict=True))
        return "  ".join([model.ljust(w0), adapter.ljust(w1), *padded]).rstrip()

    lines = ["", "Completion acceptance (telemetry; rate = accepted / shown):",
             fmt(*table[0]), fmt("-" * w0, "-" * w1, ["-" * w for w in widths])]
    return lines + [fmt(*row) for row in table[1:]]
