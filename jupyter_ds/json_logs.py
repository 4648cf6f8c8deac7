"""Structured logs: one JSON object per line, with the request id of the request at hand.

For an ELK or Loki stack: every line is a JSON object with ``time`` (UTC, ISO 8601, ms),
``level``, ``logger``, ``message``, ``request_id``, ``user`` and ``endpoint`` (null
outside a request), any ``extra=`` fields of the call, and ``exception`` (the traceback as
one string field: newlines are escaped, so a traceback never breaks the one-line rule).

The request context lives in a :mod:`contextvars` variable: a handler binds it when a
request starts (:func:`bind_request`, with the client's ``X-Request-Id`` when it is sane,
else a new id), and every log line written while that request is handled carries it,
through ``await`` chains, tasks created from it and ``asyncio.to_thread`` (which copy the
context), without passing it around.

Enabled by ``JupyterDsApp.json_logs = True`` (``--JupyterDsApp.json_logs=True``), which
calls :func:`install` on the server's log.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

REQUEST_ID_HEADER = "X-Request-Id"
# What a client may choose as a request id: short, printable, no spaces or quotes, so it
# is safe in a header, a log line and a query of the log store.
REQUEST_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}"
_SANE_ID = re.compile(REQUEST_ID_PATTERN)


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    user: str | None = None
    endpoint: str | None = None


_CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "jupyter_ds_request", default=None
)


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-Id`` when it is sane, else a new id."""
    if isinstance(header, str):
        header = header.strip()
        if _SANE_ID.fullmatch(header):
            return header
    return new_request_id()


def bind_request(
    request_id: str | None = None, *, user: str | None = None, endpoint: str | None = None
) -> contextvars.Token[RequestContext | None]:
    """Make this the current request (of this task and what it starts); returns a token.

    ``request_id`` is checked like a header (:func:`request_id_from`): pass the
    ``X-Request-Id`` header value as is.
    """
    ctx = RequestContext(request_id_from(request_id), user, endpoint)
    return _CURRENT.set(ctx)


def reset_request(token: contextvars.Token[RequestContext | None]) -> None:
    _CURRENT.reset(token)


@contextlib.contextmanager
def request_context(
    request_id: str | None = None, *, user: str | None = None, endpoint: str | None = None
) -> Iterator[RequestContext]:
    """``with request_context(...) as ctx:``: bound inside, restored after."""
    token = bind_request(request_id, user=user, endpoint=endpoint)
    try:
        ctx = _CURRENT.get()
        assert ctx is not None
        yield ctx
    finally:
        _CURRENT.reset(token)


def current_request() -> RequestContext | None:
    return _CURRENT.get()


def current_user() -> str | None:
    """The user of the current request: engines share their queues fairly between users."""
    ctx = _CURRENT.get()
    return ctx.user if ctx is not None else None


def current_request_id() -> str | None:
    ctx = _CURRENT.get()
    return ctx.request_id if ctx is not None else None


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring for the fields).

    ``request_id``, ``user`` and ``endpoint`` come from the record when set there
    (``extra={"request_id": ...}``), else from the current request context.
    """

    def __init__(self, *args: Any, static_fields: dict[str, Any] | None = None, **_: Any):
        # Positional and unknown keyword arguments (fmt, datefmt, and "class" from a
        # traitlets logging_config merged over its console formatter) are accepted and
        # ignored: the output format is fixed.
        super().__init__()
        self.static_fields = dict(static_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        ctx = _CURRENT.get()
        stamp = dt.datetime.fromtimestamp(record.created, tz=dt.timezone.utc)
        out: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
            "request_id": getattr(record, "request_id", None) or (ctx.request_id if ctx else None),
            "user": getattr(record, "user", None) or (ctx.user if ctx else None),
            "endpoint": getattr(record, "endpoint", None) or (ctx.endpoint if ctx else None),
        }
        for key, value in self.static_fields.items():
            out.setdefault(key, value)
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key in out or key.startswith("_"):
                continue
            out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a lone surrogate (undecodable input echoed in a message) can never
        # make the line unwritable, and the line stays one line of plain ASCII.
        return json.dumps(out, ensure_ascii=True, default=_fallback)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # bad %-args: keep the line, say what was there
        return f"{record.msg!r} % {record.args!r}"


def _fallback(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


def install(logger: logging.Logger, *, fallback_root: bool = True) -> Callable[[], None]:
    """Write ``logger``'s lines (and those that reach it) as JSON; returns an undo.

    Every handler of ``logger`` gets a :class:`JsonFormatter`; a logger whose records reach
    no handler at all gets a JSON stderr handler. With ``fallback_root``, when the root
    logger has no handler (so that loggers outside ``logger``'s tree, e.g. ``ds_engine``'s,
    would end up in logging's bare last-resort output), a JSON stderr handler is added to
    the root. The returned function puts everything back.
    """
    formatter = JsonFormatter()
    previous = [(h, h.formatter) for h in logger.handlers]
    for handler in logger.handlers:
        handler.setFormatter(formatter)
    added: logging.Handler | None = None
    if not logger.hasHandlers():
        added = logging.StreamHandler(sys.stderr)
        added.setFormatter(formatter)
        logger.addHandler(added)
    root = logging.getLogger()
    root_added: logging.Handler | None = None
    if fallback_root and logger is not root and not root.handlers:
        root_added = logging.StreamHandler(sys.stderr)
        root_added.setFormatter(formatter)
        root.addHandler(root_added)

    def undo() -> None:
        for handler, old in previous:
            if handler.formatter is formatter:
                handler.setFormatter(old)
        if added is not None:
            logger.removeHandler(added)
        if root_added is not None:
            root.removeHandler(root_added)

    return undo


# Libraries that configure a stderr handler of their own.
LIBRARY_LOGGERS = ("transformers", "ds_engine", "jupyter_ds")


def install_for_server(serverapp: Any) -> Callable[[], None]:
    """JSON for everything a Jupyter server writes from now on; returns an undo.

    The server's log (tornado's access and error logs go through it), the log of every
    server extension app (LabApp, ...), libraries with their own handler
    (:data:`LIBRARY_LOGGERS`), the root logger when it has no handler, and Python
    warnings (captured into logging). Model-loading progress bars (plain text on stderr)
    are switched off. Lines written before this call (the server's first start-up
    lines) keep their format; for JSON from the very first line, configure it through
    traitlets instead::

        c.Application.logging_config = {
            "formatters": {"console": {"()": "jupyter_ds.json_logs.JsonFormatter"}}
        }
    """
    loggers: list[logging.Logger] = [serverapp.log]
    manager = getattr(serverapp, "extension_manager", None)
    for apps in (manager.extension_apps if manager is not None else {}).values():
        for app in apps:
            log = getattr(app, "log", None)
            if isinstance(log, logging.Logger) and log not in loggers:
                loggers.append(log)
    for name in LIBRARY_LOGGERS:
        log = logging.getLogger(name)
        if log.handlers and log not in loggers:
            loggers.append(log)
    undos = [install(log, fallback_root=i == 0) for i, log in enumerate(loggers)]
    captured = not getattr(logging, "_warnings_showwarning", None)
    if captured:
        logging.captureWarnings(True)
    progress = sys.modules.get("transformers.utils.logging")
    bars_were_on = None
    if progress is not None and hasattr(progress, "is_progress_bar_enabled"):
        bars_were_on = progress.is_progress_bar_enabled()
        progress.disable_progress_bar()
    else:  # not imported yet: it reads this when it is
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    def undo() -> None:
        for step in reversed(undos):
            step()
        if captured:
            logging.captureWarnings(False)
        if bars_were_on and progress is not None:
            progress.enable_progress_bar()

    return undo


__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestContext",
    "bind_request",
    "current_request",
    "current_request_id",
    "install",
    "install_for_server",
    "new_request_id",
    "request_context",
    "request_id_from",
    "reset_request",
]
