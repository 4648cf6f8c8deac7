"""Usage reports from the audit log: per user, per model, per endpoint.

Reads the log and its rotated files in order, decrypting with the keyring, and aggregates
request and error counts, tokens in/out, latency p50/p95 and total generation time (the
sum of latencies: the resource use a compliance report asks for).

A line that cannot be read (missing key, failed authentication, not JSON) stops the report
with an error naming the file, line and key id: a report that quietly leaves out lines would
understate usage, which is the one thing an audit report must not do.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_ds.audit.crypto import Keyring, decrypt_record, is_encrypted
from jupyter_ds.audit.errors import AuditFormatError, AuditLogMissingError
from jupyter_ds.audit.log import utc_now

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_ROTATED = re.compile(r"\.\d{8}T\d{6}\.\d{6}Z(?:~\d+)?")
GROUPS = ("user", "model", "endpoint")


def parse_when(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``7d``, ``24h``, ``30m``, ``2w``, ``90s`` ago, or an ISO date/time (naive = UTC)."""
    now = now or utc_now()
    s = text.strip()
    m = _RELATIVE.fullmatch(s)
    if m:
        return now - dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        return parse_iso(s)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a relative time (7d, 24h, 30m, 2w) nor an ISO date/time"
        ) from None


def parse_iso(text: str) -> dt.datetime:
    """An ISO 8601 date or date/time, ``Z`` accepted (Python 3.10 too); naive means UTC."""
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    t = dt.datetime.fromisoformat(iso)
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t


def log_files(path: str | os.PathLike[str]) -> list[Path]:
    """The rotated files of ``path`` oldest first, then ``path`` itself (if present)."""
    p = Path(path).expanduser()
    parent = p.parent if p.parent.exists() else None
    rotated = (
        sorted(
            q for q in parent.glob(p.name + ".*")
            if _ROTATED.fullmatch(q.name[len(p.name):])
        )
        if parent
        else []
    )
    return rotated + ([p] if p.exists() else [])


@dataclass
class LineCounts:
    plain: int = 0
    encrypted: int = 0


def read_records(
    path: str | os.PathLike[str],
    keyring: Keyring | None = None,
    counts: LineCounts | None = None,
) -> Iterator[dict[str, Any]]:
    """Every record of the log and its rotations, decrypted; raises on any unreadable line."""
    files = log_files(path)
    if not files:
        raise AuditLogMissingError(f"no audit log at {Path(path).expanduser()}")
    counts = counts if counts is not None else LineCounts()
    for file in files:
        with open(file, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                where = f"{file} line {n}"
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except ValueError:  # UnicodeDecodeError included
                    raise AuditFormatError(f"{where} is not JSON (corrupted or cut off)") from None
                if not isinstance(obj, dict):
                    raise AuditFormatError(f"{where} is not a JSON object")
                if is_encrypted(obj):
                    obj = _parse_inner(decrypt_record(obj, keyring, where), where)
                    counts.encrypted += 1
                else:
                    counts.plain += 1
                yield obj


def _parse_inner(text: str, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError:
        raise AuditFormatError(f"{where} decrypted to something that is not JSON") from None
    if not isinstance(obj, dict):
        raise AuditFormatError(f"{where} decrypted to something that is not a JSON object")
    return obj


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (an observed value, no interpolation); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class _Usage:
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, rec: dict[str, Any]) -> None:
        self.requests += 1
        status = rec.get("status")
        if rec.get("error_code") or (isinstance(status, int) and status >= 400):
            self.errors += 1
        self.tokens_in += _int(rec.get("tokens_in"))
        self.tokens_out += _int(rec.get("tokens_out"))
        lat = rec.get("latency_ms")
        if isinstance(lat, (int, float)) and not isinstance(lat, bool):
            self.latencies.append(float(lat))

    def summary(self) -> dict[str, Any]:
        p50, p95 = percentile(self.latencies, 50), percentile(self.latencies, 95)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "latency_p50_ms": None if p50 is None else round(p50, 3),
            "latency_p95_ms": None if p95 is None else round(p95, 3),
            "generation_seconds": round(sum(self.latencies) / 1000, 3),
        }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _record_time(rec: dict[str, Any], index: int) -> dt.datetime:
    try:
        return parse_iso(str(rec["time"]))
    except (KeyError, ValueError):
        raise AuditFormatError(f"record {index} has no valid time: {rec.get('time')!r}") from None


def aggregate(
    records: Iterable[dict[str, Any]],
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> dict[str, Any]:
    """Usage in ``[since, until)`` overall and per user, model and endpoint."""
    total = _Usage()
    groups: dict[str, dict[str, _Usage]] = {g: {} for g in GROUPS}
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    for i, rec in enumerate(records, 1):
        t = _record_time(rec, i)
        if (since and t < since) or (until and t >= until):
            continue
        first = t if first is None or t < first else first
        last = t if last is None or t > last else last
        total.add(rec)
        for g in GROUPS:
            name = rec.get(g)
            key = str(name) if name not in (None, "") else "-"
            groups[g].setdefault(key, _Usage()).add(rec)
    return {
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "first": first.isoformat() if first else None,
        "last": last.isoformat() if last else None,
        "total": total.summary(),
        **{
            f"by_{g}": {k: u.summary() for k, u in sorted(groups[g].items())}
            for g in GROUPS
        },
    }


def build_report(
    path: str | os.PathLike[str],
    keyring: Keyring | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> dict[str, Any]:
    """The whole report for the log at ``path`` (what the CLI and the admin API return)."""
    counts = LineCounts()
    report = aggregate(read_records(path, keyring, counts), since, until)
    report["log"] = str(Path(path).expanduser())
    report["lines"] = {"plain": counts.plain, "encrypted": counts.encrypted}
    return report


_COLUMNS = (
    ("requests", "requests"), ("errors", "errors"), ("tokens_in", "tok in"),
    ("tokens_out", "tok out"), ("latency_p50_ms", "p50 ms"), ("latency_p95_ms", "p95 ms"),
    ("generation_seconds", "gen s"),
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _table(title: str, rows: list[tuple[str, list[str]]]) -> list[str]:
    header = (title, [h for _, h in _COLUMNS])
    every = [header, *rows]
    w0 = max(len(name) for name, _ in every)
    widths = [max(len(cells[i]) for _, cells in every) for i in range(len(_COLUMNS))]

    def fmt(name: str, cells: list[str]) -> str:
        padded = (c.rjust(w) for c, w in zip(cells, widths, strict=True))
        return "  ".join([name.ljust(w0), *padded])

    return [fmt(*header), fmt("-" * w0, ["-" * w for w in widths])] + [fmt(*r) for r in rows]


def format_table(report: dict[str, Any]) -> str:
    """The report as plain text: one table per grouping, each ending with the total."""
    window = f"{report.get('since') or 'start'} .. {report.get('until') or 'now'}"
    lines = [f"Audit report for {report.get('log', '?')} ({window})"]
    if "lines" in report:
        lines.append(f"lines read: {report['lines']['plain']} plain, "
                     f"{report['lines']['encrypted']} encrypted")
    total = ("TOTAL", [_cell(report["total"][c]) for c, _ in _COLUMNS])
    for g in GROUPS:
        rows = [(name, [_cell(u[c]) for c, _ in _COLUMNS]) for name, u in report[f"by_{g}"].items()]
        lines += ["", f"By {g}:", *_table(g, [*rows, total])]
    return "\n".join(lines) + "\n"
