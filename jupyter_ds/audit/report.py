"""Usage reports from the audit log: per user, per model, per endpoint.

Reads the log and its rotated files in order, decrypting with the keyring, and aggregates
request and error counts, tokens in/out, latency p50/p95 and total generation time (the
sum of latencies: the resource use a compliance report asks for).

A line that cannot be read (missing key, failed authentication, not JSON) stops the report
with an error naming the file, line and key id: a report that quietly leaves out lines would
understate usage, which is the one thing an audit report must not do. For the same reason,
lines left out on purpose (another server's, in a log several servers share) are counted in
``other_server_lines``.

The report names its log by file name only (``log``): it goes to auditors over the API, who
have no business knowing the server's folders; the CLI prints the full path itself.
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

from jupyter_ds.audit.acceptance import Acceptance, format_acceptance
from jupyter_ds.audit.crypto import Keyring, decrypt_record, is_encrypted
from jupyter_ds.audit.errors import AuditFormatError, AuditLogMissingError
from jupyter_ds.audit.log import utc_now

_RELATIVE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Ten years back is more than any retention policy keeps; the bound is what turns
# `since=99999999999d` (past datetime's range) into a clear 400 instead of an overflow.
MAX_LOOKBACK_DAYS = 3650
_MAX_WHEN_CHARS = 64
_ROTATED = re.compile(r"\.\d{8}T\d{6}\.\d{6}Z(?:~\d+)?")
GROUPS = ("user", "model", "endpoint")


def parse_when(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``7d``, ``24h``, ``30m``, ``2w``, ``90s`` ago, or an ISO date/time (naive = UTC).

    Only ever raises ValueError (a 400 for the API, a usage error for the CLI): relative
    times are at most :data:`MAX_LOOKBACK_DAYS` back, so no input overflows a datetime.
    """
    now = now or utc_now()
    s = text.strip()
    if len(s) > _MAX_WHEN_CHARS:
        raise ValueError(f"is longer than {_MAX_WHEN_CHARS} characters")
    m = _RELATIVE.fullmatch(s)
    if m:
        seconds = float(m.group(1)) * _UNITS[m.group(2)]  # inf for absurd digit runs
        if not seconds <= MAX_LOOKBACK_DAYS * 86400:
            raise ValueError(
                f"{s!r} is too far back: relative times reach at most "
                f"{MAX_LOOKBACK_DAYS}d (use an ISO date for an exact start)"
            )
        try:
            return now - dt.timedelta(seconds=seconds)
        except OverflowError:  # `now` itself near year 1: never in practice
            raise ValueError(f"{s!r} is before the earliest representable time") from None
    try:
        return parse_iso(s)
    except (ValueError, OverflowError):
        raise ValueError(
            f"{text!r} is neither a relative time (7d, 24h, 30m, 2w; at most "
            f"{MAX_LOOKBACK_DAYS}d) nor an ISO date/time"
        ) from None


def parse_iso(text: str) -> dt.datetime:
    """An ISO 8601 date or date/time, ``Z`` accepted (Python 3.10 too); naive means UTC.

    Returned in UTC, so that a time whose offset reaches past year 1 or 9999 fails here
    (OverflowError) instead of when the report compares it.
    """
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    t = dt.datetime.fromisoformat(iso)
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


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
    full_paths: bool = True,
) -> Iterator[dict[str, Any]]:
    """Every record of the log and its rotations, decrypted; raises on any unreadable line.

    ``full_paths`` False: errors name files by name only (messages that go to API clients).
    """
    files = log_files(path)
    if not files:
        p = Path(path).expanduser()
        raise AuditLogMissingError(f"no audit log at {p if full_paths else p.name}")
    counts = counts if counts is not None else LineCounts()
    for file in files:
        with open(file, "rb") as fh:
            for n, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                where = f"{file if full_paths else file.name} line {n}"
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
    """Usage in ``[since, until)`` overall and per user, model and endpoint, and the
    acceptance of completions (``acceptance``, from telemetry calls' records)."""
    total = _Usage()
    acceptance = Acceptance()
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
        acceptance.add(rec)
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
        "acceptance": acceptance.summary(),
    }


def build_report(
    path: str | os.PathLike[str],
    keyring: Keyring | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    server: str | None = None,
    full_paths: bool = True,
) -> dict[str, Any]:
    """The whole report for the log at ``path`` (what the CLI and the admin API return).

    ``server``: keep to that server's records; records of other servers are counted in
    ``other_server_lines``, and records with no ``server`` (written before records had one)
    are kept. ``log`` is the file's name, never its path (see the module docstring).
    """
    counts = LineCounts()
    skipped = 0

    def own(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        nonlocal skipped
        for rec in records:
            other = rec.get("server")
            if server is not None and other not in (None, "", server):
                skipped += 1
                continue
            yield rec

    report = aggregate(own(read_records(path, keyring, counts, full_paths)), since, until)
    report["log"] = Path(path).name
    report["server"] = server
    report["lines"] = {"plain": counts.plain, "encrypted": counts.encrypted}
    report["other_server_lines"] = skipped
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


def format_table(report: dict[str, Any], source: str | os.PathLike[str] | None = None) -> str:
    """The report as plain text: one table per grouping, each ending with the total.

    ``source``: how to name the log in the title (the CLI's full path); else its name.
    """
    window = f"{report.get('since') or 'start'} .. {report.get('until') or 'now'}"
    lines = [f"Audit report for {source or report.get('log', '?')} ({window})"]
    if "lines" in report:
        lines.append(f"lines read: {report['lines']['plain']} plain, "
                     f"{report['lines']['encrypted']} encrypted")
    if report.get("other_server_lines"):
        lines.append(f"left out: {report['other_server_lines']} lines of other servers")
    total = ("TOTAL", [_cell(report["total"][c]) for c, _ in _COLUMNS])
    for g in GROUPS:
        rows = [(name, [_cell(u[c]) for c, _ in _COLUMNS]) for name, u in report[f"by_{g}"].items()]
        lines += ["", f"By {g}:", *_table(g, [*rows, total])]
    lines += format_acceptance(report.get("acceptance") or {})
    return "\n".join(lines) + "\n"
