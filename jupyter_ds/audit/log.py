"""The audit log writer: one JSON line per request, appended, never breaking the request.

A record holds who did what and how it went (time, request id, user, role, endpoint, model,
adapter, tokens in/out, latency, status and error code) and, only when sample capture is
on, the input and output redacted by :mod:`jupyter_ds.audit.redact` and cut to a size.

Writing is best effort by design: the audit log must never turn a good answer into an
error, so :meth:`AuditLog.write` catches everything, logs it (without the record's content),
counts it in :attr:`AuditLog.failures` and calls ``on_failure`` (for a metric or an alert).

The file is created 0600 (samples are users' code) in a 0700 folder when it makes one.
With a keyring every line is an AES-256-GCM envelope (:mod:`jupyter_ds.audit.crypto`);
without one, plain JSON. :func:`open_audit_log` (what the server uses) never leaves it
without one unless told to: with no key configured it generates one next to the log.

Each server has its own default log, ``audit-<server id>.log``, the id a short hash of the
server's real root directory and port (or socket), because one file shared by every server
a user runs mixes their reports, and several writers break rotation. Each record also
carries that ``server`` id, so a report over a log that several servers were pointed at
(``$JUPYTER_DS_AUDIT_LOG``) can still keep to one server.

When the file passes ``max_bytes`` it is renamed to ``<name>.<UTC timestamp>`` and a new
one started; rotated files are never deleted here (retention is the operator's policy), and
the report reads them all in order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_ds.audit.crypto import (
    KEY_ENV,
    OLD_KEYS_ENV,
    Keyring,
    ensure_key_file,
    generated_key_path,
    load_keyring,
)
from jupyter_ds.audit.redact import redact_sample

log = logging.getLogger("jupyter_ds.audit")

LOG_ENV = "JUPYTER_DS_AUDIT_LOG"
DEFAULT_SAMPLE_CHARS = 2000
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
_ROTATED_STAMP = "%Y%m%dT%H%M%S.%fZ"


LEGACY_LOG_NAME = "audit.log"


def default_log_dir() -> Path:
    """``<jupyter data dir>/jupyter_ds``: where default logs (and their key) live."""
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "jupyter_ds"


def server_id(root_dir: str | os.PathLike[str], port: int | str) -> str:
    """A short id for one server: its real root directory and its port (or socket path).

    A hash, so that neither the log's name nor its records spell out the user's folders.
    """
    root = os.path.realpath(os.path.expanduser(os.fspath(root_dir)))
    return hashlib.sha256(f"jupyter-ds server\0{root}\0{port}".encode()).hexdigest()[:12]


def default_log_path(server: str | None = None) -> Path:
    """``$JUPYTER_DS_AUDIT_LOG``, else ``<jupyter data dir>/jupyter_ds/audit-<server>.log``.

    Without a ``server`` (a reader that does not know which one): ``.../audit.log``, the
    shared name of versions before per-server logs.
    """
    env = os.environ.get(LOG_ENV)
    if env:
        return Path(env).expanduser()
    name = f"audit-{server}.log" if server else LEGACY_LOG_NAME
    return default_log_dir() / name


def default_logs(folder: Path | None = None) -> list[Path]:
    """The logs in the default folder (per-server ones and a legacy ``audit.log``), for a
    reader that was not told which one; rotated files are not listed (they follow their log).
    """
    folder = default_log_dir() if folder is None else folder
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("audit-*.log") if p.is_file()]
    legacy = folder / LEGACY_LOG_NAME
    return sorted(found) + ([legacy] if legacy.is_file() else [])


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def format_time(t: dt.datetime) -> str:
    """UTC, ISO 8601, milliseconds, ``Z``: sorts as text and parses everywhere."""
    t = t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


@dataclass
class AuditEvent:
    """What the handler layer knows about one finished request."""

    endpoint: str
    user: str | None = None
    role: str | None = None
    request_id: str | None = None
    model: str | None = None
    adapter: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_ms: float | None = None
    status: int = 200
    error_code: str | None = None
    input_sample: str | None = None  # raw; redacted and cut by the writer, if captured
    output_sample: str | None = None
    time: dt.datetime = field(default_factory=utc_now)
    # more fields for the record (method, client, ...); written as given, not redacted,
    # and never overriding the fields above
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AuditLog:
    """Appends :class:`AuditEvent` records to ``path``; thread-safe; never raises.

    ``capture_samples`` off (the default) writes no input or output text at all.
    ``max_bytes`` 0 turns size rotation off. One writer per file: rotation is locked within
    this process only, so several servers must not share one log path. ``server``: the
    writing server's id (:func:`server_id`), written in every record when set.
    """

    path: Path
    keyring: Keyring | None = None
    server: str | None = None
    capture_samples: bool = False
    sample_chars: int = DEFAULT_SAMPLE_CHARS
    max_bytes: int = DEFAULT_MAX_BYTES
    fsync: bool = False
    on_failure: Callable[[BaseException], None] | None = None
    written: int = field(default=0, init=False)
    failures: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser()
        self._lock = threading.Lock()

    @property
    def encrypted(self) -> bool:
        return self.keyring is not None

    # --- building a record ----------------------------------------------------------
    def record(self, event: AuditEvent) -> dict[str, Any]:
        """The JSON object written for ``event`` (samples redacted, never raw)."""
        rec: dict[str, Any] = {
            "time": format_time(event.time),
            "request_id": event.request_id,
            "user": event.user,
            "role": event.role,
            "endpoint": event.endpoint,
            "model": event.model,
            "adapter": event.adapter,
            "tokens_in": event.tokens_in,
            "tokens_out": event.tokens_out,
            "latency_ms": None if event.latency_ms is None else round(event.latency_ms, 3),
            "status": event.status,
            "error_code": event.error_code,
        }
        if self.server:
            rec["server"] = self.server
        if self.capture_samples:
            redactions: dict[str, int] = {}
            for name in ("input_sample", "output_sample"):
                text = getattr(event, name)
                if text is None:
                    rec[name] = None
                    continue
                red = redact_sample(str(text), self.sample_chars)
                rec[name] = red.text
                for rule, n in red.counts.items():
                    redactions[rule] = redactions.get(rule, 0) + n
            rec["redactions"] = redactions
        for key, value in event.extra.items():
            rec.setdefault(key, value)
        return rec

    def line(self, event: AuditEvent) -> str:
        """The exact line written for ``event``: plain JSON, or its encrypted envelope."""
        plain = json.dumps(self.record(event), separators=(",", ":"), ensure_ascii=False,
                           default=str)
        return self.keyring.encrypt_line(plain) if self.keyring else plain

    # --- writing --------------------------------------------------------------------
    def write(self, event: AuditEvent) -> bool:
        """Append one record; True when written. Never raises into the request path."""
        try:
            data = (self.line(event) + "\n").encode("utf-8")
            with self._lock:
                self._rotate_if_needed(len(data))
                self._append(data)
                self.written += 1
            return True
        except Exception as exc:  # the request must not fail because auditing did
            with self._lock:
                self.failures += 1
            log.error("audit log write to %s failed (%d so far): %s: %s",
                      self.path, self.failures, type(exc).__name__, exc)
            if self.on_failure is not None:
                try:
                    self.on_failure(exc)
                except Exception:
                    log.exception("audit on_failure callback failed")
            return False

    def move(self, path: str | os.PathLike[str], server: str | None) -> None:
        """Write to ``path`` as ``server`` from now on (the server's port was settled late)."""
        with self._lock:
            self.path = Path(path).expanduser()
            self.server = server

    def log_request(self, **fields: Any) -> bool:
        """``write(AuditEvent(**fields))``; a bad field is a counted failure, not a raise."""
        try:
            event = AuditEvent(**fields)
        except TypeError as exc:
            with self._lock:
                self.failures += 1
            log.error("audit event rejected: %s", exc)
            return False
        return self.write(event)

    def _append(self, data: bytes) -> None:
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)  # a file someone created looser than that
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _rotate_if_needed(self, incoming: int) -> None:
        if self.max_bytes <= 0:
            return
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0 or size + incoming <= self.max_bytes:
            return
        target = self.path.with_name(f"{self.path.name}.{utc_now().strftime(_ROTATED_STAMP)}")
        n = 1
        while target.exists():  # two rotations in one microsecond: keep both
            target = target.with_name(f"{target.name.split('~')[0]}~{n}")
            n += 1
        os.replace(self.path, target)


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def open_audit_log(
    path: str | os.PathLike[str] | None = None,
    *,
    key_file: str | os.PathLike[str] | None = None,
    key_env: str = KEY_ENV,
    old_keys_env: str = OLD_KEYS_ENV,
    environ: Mapping[str, str] | None = None,
    encrypt: bool = True,
    server: str | None = None,
    **options: Any,
) -> AuditLog:
    """An :class:`AuditLog` from configuration; a bad key raises here, at start-up.

    The key is ``key_file``, else ``$key_env``; with neither, and ``encrypt`` (the default),
    the key generated next to the log (created on first use, 0600, refused if looser):
    samples are users' code, so a log in plaintext must be asked for (``encrypt=False``).
    ``path`` defaults to :func:`default_log_path` for ``server``. ``options`` are
    :class:`AuditLog` fields (``capture_samples``, ``sample_chars``, ``max_bytes``,
    ``fsync``, ``on_failure``).
    """
    target = Path(path).expanduser() if path else default_log_path(server)
    keyring = load_keyring(key_file, key_env, old_keys_env, environ)
    if keyring is None and encrypt:
        keyring, _ = ensure_key_file(generated_key_path(target))
    return AuditLog(target, keyring=keyring, server=server, **options)

