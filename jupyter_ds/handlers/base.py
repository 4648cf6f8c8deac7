"""Shared handler plumbing: body parsing, the envelope, and error mapping.

Handlers stay thin: parse, authorize, call a service, wrap the answer. Every failure
leaves as the error envelope with the status code of DESIGN.md; unexpected exceptions
are logged with their traceback on the server and answered as a bare 500.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ds_engine import EngineNotReady
from jupyter_server.auth.decorator import authorized as jupyter_authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import httputil, iostream
from tornado.web import HTTPError, stream_request_body

from jupyter_ds import json_logs, metrics
from jupyter_ds.envelope import failure, success
from jupyter_ds.errors import ApiError, bad_request, engine_error, too_large
from jupyter_ds.identity import settle_identity
from jupyter_ds.ratelimit import GenerationSlot
from jupyter_ds.requests import parse_request
from jupyter_ds.roles import RoleAuthorizer, user_name

T = TypeVar("T")

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
}

# The request field that a multipart upload's file part (named "file") fills.
PRIMARY_FIELD = {"complete": "prefix", "explain": "code"}
# Request fields that make the audit log's input sample (when samples are captured).
SAMPLE_FIELDS = ("prefix", "code", "source", "tests", "question")
# How much of an oversize chunked body is read (and dropped) so that its client still
# sees the 413, before the connection is cut instead.
DRAIN_BYTES = 8 * 1024 * 1024
# Liveness polls (status bar, Kubernetes probes) are not audited: they would drown the log.
NOT_AUDITED = frozenset({"health"})

log = logging.getLogger("jupyter_ds.handlers")


def input_sample(req: Any) -> str | None:
    """The text of a parsed request that an audit sample shows (before redaction)."""
    parts = [getattr(req, name, None) for name in SAMPLE_FIELDS]
    texts = [p for p in parts if isinstance(p, str) and p]
    return "\n".join(texts) if texts else None


def audit_request(
    ds: Any,
    *,
    endpoint: str,
    user: Any,
    request_id: str | None,
    status: int,
    error_code: str | None,
    seconds: float,
    method: str,
    answer: dict[str, Any] | None = None,
    sample: str | None = None,
) -> None:
    """Write one audit record for a finished request, if the audit log is on.

    Never raises: the writer counts and logs its own failures, and anything before it
    (an odd answer) is logged here.
    """
    audit = getattr(ds, "audit", None)
    if audit is None or endpoint in NOT_AUDITED:
        return
    try:
        from jupyter_ds.audit import AuditEvent

        answer = answer if isinstance(answer, dict) else {}
        policy = getattr(ds, "roles", None)
        roles = policy.roles_of(user) if policy is not None and user else ()
        tokens_in = answer.get("prompt_tokens")
        tokens_out = answer.get("token_count")
        output = answer.get("output")
        audit.write(
            AuditEvent(
                endpoint=endpoint,
                user=user_name(user),
                role=",".join(roles) or None,
                request_id=request_id,
                model=answer.get("model") if isinstance(answer.get("model"), str) else None,
                adapter=answer.get("adapter") if isinstance(answer.get("adapter"), str) else None,
                tokens_in=tokens_in if isinstance(tokens_in, int) else None,
                tokens_out=tokens_out if isinstance(tokens_out, int) else None,
                latency_ms=seconds * 1000.0,
                status=int(status),
                error_code=error_code,
                input_sample=sample,
                output_sample=output if isinstance(output, str) else None,
                extra={"method": method},
            )
        )
    except Exception:
        log.exception("jupyter-ds: could not build the audit record of %s", endpoint)


def error_for(
    status_code: int, exc: BaseException | None, *, known_user: Any, role_message: str | None
) -> ApiError:
    """The envelope error for an answer with ``status_code`` caused by ``exc``.

    ``ApiError`` passes through; Jupyter's 401/403 for a caller that brought no
    credentials says how to authenticate; a role refusal says which role it needs; any
    other HTTP error keeps its message; anything else is a bare 500 (the traceback stays
    in the server log).
    """
    if isinstance(exc, EngineNotReady):
        exc = engine_error(exc)
    if isinstance(exc, ApiError):
        return exc
    if status_code in (401, 403) and not known_user:
        # Jupyter answers 403 (often about _xsrf) when no credentials came at all.
        return ApiError(
            401,
            "unauthorized",
            "authentication required: send 'Authorization: token <token>' or log in",
        )
    if isinstance(exc, HTTPError) and status_code < 500:
        message = exc.log_message or httputil.responses.get(status_code, "error")
        if exc.args and exc.log_message and "%" in exc.log_message:
            message = exc.log_message % exc.args
        if status_code == 403 and role_message:  # refused by roles: say which role
            message = role_message
        return ApiError(status_code, _HTTP_CODES.get(status_code, "error"), message)
    return ApiError(
        status_code,
        "internal_error" if status_code >= 500 else _HTTP_CODES.get(status_code, "error"),
        "internal server error; see the server log"
        if status_code >= 500
        else httputil.responses.get(status_code, "error"),
    )


def authorized(action: str | None = None) -> Callable[[Callable[..., Any]], Any]:
    """Jupyter's ``@authorized(action)`` on the handler's ``auth_resource``, then admission.

    The order is authentication (``@web.authenticated``, after ``prepare`` settled the
    caller's identity), then the role check, then the rate limit and generation slot
    (:meth:`DsApiHandler.admit`): a caller without the role gets 403, never a 429 that
    would tell it to come back, and its refused requests spend nobody's budget.
    """

    def decorate(method: Callable[..., Any]) -> Any:
        @functools.wraps(method)
        async def admitted(self: Any, *args: Any, **kwargs: Any) -> Any:
            self.admit()
            out = method(self, *args, **kwargs)
            return await out if asyncio.iscoroutine(out) else out

        return jupyter_authorized(action)(admitted)

    return decorate


@stream_request_body
class DsApiHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every jupyter-ds REST handler.

    It defines no HTTP verb itself: each subclass decorates every verb it defines with
    ``@web.authenticated`` and this module's ``@authorized`` on its ``auth_resource`` (a
    test checks it).

    Around every request: ``prepare`` authenticates, gives a token client its stable
    identity (:mod:`jupyter_ds.identity`), binds the request id (the client's
    ``X-Request-Id`` or a new one, echoed in the answer's header) for the JSON logs and
    refuses a declared ``Content-Length`` over ``max_body_bytes`` before a byte of the
    body is read; the body then arrives through :meth:`data_received`, which stops
    keeping it once over the limit (a chunked upload is counted as it comes), so an
    oversize upload never sits in memory. ``@authorized`` then checks the role and
    applies the rate limits, taking a generation slot for model endpoints; ``on_finish``
    releases the slot and records the request in the metrics (and the audit log when
    configured). ``endpoint`` is the route's name (``complete``, ``git/status``...), the
    label used by rate limits, metrics and the audit log.
    """

    endpoint = ""
    _ds_error_code: str | None = None
    _ds_token: Any = None
    _ds_request_id: str | None = None
    _ds_slot: GenerationSlot | None = None
    _ds_answer: dict[str, Any] | None = None
    _ds_sample: str | None = None
    _ds_chunks: list[bytes] | None = None
    _ds_received = 0

    async def prepare(self) -> None:  # type: ignore[override]
        self._ds_error_code = None
        self._ds_chunks, self._ds_received = [], 0
        await super().prepare()  # authenticates: the user is known from here on
        settle_identity(self)
        user = self.current_user
        self._ds_token = json_logs.bind_request(
            self.request.headers.get(json_logs.REQUEST_ID_HEADER),
            user=user_name(user),
            endpoint=self.endpoint,
        )
        self._ds_request_id = json_logs.current_request_id()
        self.set_header(json_logs.REQUEST_ID_HEADER, self._ds_request_id)
        declared = self.request.headers.get("Content-Length")
        limit = self.ds.max_body_bytes
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise too_large(f"request body is {int(declared)} bytes, over the limit of {limit}")

    def data_received(self, chunk: bytes) -> None:
        """Keep the body while it is within ``max_body_bytes``; count, and drop, the rest.

        A chunked upload declares no length, so it is judged as it comes. A little over
        the limit, the rest is read and dropped, and the method answers 413
        (:meth:`raw_body`): closing a socket with unread data resets it, and the client
        would not see the answer. Far over (``DRAIN_BYTES`` more), the upload is hostile
        or broken: 413 at once, and tornado closes the connection without reading more.
        """
        if self._finished:
            return
        self._ds_received += len(chunk)
        limit = self.ds.max_body_bytes
        if self._ds_received <= limit and self._ds_chunks is not None:
            self._ds_chunks.append(chunk)
            return
        self._ds_chunks = None  # over: what came is freed, and nothing more is kept
        if self._ds_received > limit + DRAIN_BYTES:
            error = too_large(f"request body is over the limit of {limit} bytes "
                              f"({self._ds_received} received so far)")
            self.send_error(413, exc_info=(type(error), error, None))

    def raw_body(self) -> bytes:
        """The request body as received; 413 when it grew over ``max_body_bytes``."""
        limit = self.ds.max_body_bytes
        if self._ds_chunks is None or self._ds_received > limit:
            raise too_large(f"request body is over the limit of {limit} bytes "
                            f"({self._ds_received} or more received)")
        return b"".join(self._ds_chunks)

    def admit(self) -> None:
        """Rate limits, then a generation slot for model endpoints (see ``authorized``)."""
        limiter = getattr(self.ds, "limiter", None)
        name = user_name(self.current_user)
        if limiter is not None and name is not None and self._ds_slot is None:
            self._ds_slot = limiter.admit(name, self.endpoint)

    def on_finish(self) -> None:
        slot, self._ds_slot = self._ds_slot, None
        if slot is not None:
            slot.release()
        try:
            metrics.observe_request(
                self.endpoint or "unknown",
                self.request.method or "",
                self.get_status(),
                self.request.request_time(),
                error_code=self._ds_error_code,
            )
        except Exception:  # metrics never fail a request
            self.log.debug("jupyter-ds: could not record request metrics", exc_info=True)
        audit_request(
            self.settings.get("jupyter_ds"),
            endpoint=self.endpoint or "unknown",
            user=self._known_user(),
            request_id=self._ds_request_id,
            status=self.get_status(),
            error_code=self._ds_error_code,
            seconds=self.request.request_time(),
            method=self.request.method or "",
            answer=self._ds_answer,
            sample=self._ds_sample,
        )
        token, self._ds_token = self._ds_token, None
        if token is not None:
            try:
                json_logs.reset_request(token)
            except ValueError:  # finished from another context: nothing to restore
                pass
        super().on_finish()

    _work: asyncio.Future | None = None
    _client_gone = False

    async def cancel_on_disconnect(self, work: Awaitable[T]) -> T | None:
        """Await ``work``, cancelled if the client goes away meanwhile (then None).

        A generation or a sandbox run can take many seconds without writing anything, and
        tornado reports a closed connection only through ``on_connection_close``: the work
        runs as its own task, which that cancels, and with it the model's generation.
        """
        self._work = asyncio.ensure_future(work)
        try:
            return await self._work
        except asyncio.CancelledError:
            if not self._client_gone:
                raise
            return None

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._client_gone = True
        if self._work is not None and not self._work.done():
            self._work.cancel()

    def _known_user(self) -> Any:
        """The authenticated user, or None for a request refused before authentication.

        jupyter_server raises RuntimeError when ``current_user`` is read before its
        ``prepare`` ran (a malformed body, an unknown method).
        """
        try:
            return self.current_user
        except RuntimeError:
            return None

    @property
    def ds(self) -> Any:
        """The extension app's services (see ``JupyterDsApp``)."""
        return self.settings["jupyter_ds"]

    def body(self) -> dict[str, Any]:
        """The request body as a dict, from JSON or multipart/form-data."""
        raw = self.raw_body()
        ctype = self.request.headers.get("Content-Type", "application/json")
        if ctype.startswith("multipart/form-data"):
            return self._multipart(ctype, raw)
        if not raw.strip():
            raise bad_request("request body is empty; send a JSON object")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad_request(f"request body is not valid UTF-8 (byte {exc.start})") from None
        try:
            return json.loads(text)
        except RecursionError:
            raise bad_request("request body is nested too deeply") from None
        except ValueError as exc:
            raise bad_request(f"request body is not valid JSON: {exc}") from None

    def _multipart(self, ctype: str, raw: bytes) -> dict[str, Any]:
        args: dict[str, list[bytes]] = {}
        files: dict[str, list[httputil.HTTPFile]] = {}
        try:
            httputil.parse_body_arguments(ctype, raw, args, files)
        except httputil.HTTPInputError as exc:
            raise bad_request(f"multipart body is malformed: {exc}") from None
        out: dict[str, Any] = {}
        for name, values in args.items():
            out[name] = self._decode(name, values[0])
        for name, parts in files.items():
            target = PRIMARY_FIELD.get(self.endpoint, name) if name == "file" else name
            out[target] = self._decode(target, parts[0].body)
            if parts[0].filename and "path" not in out:
                out["path"] = parts[0].filename
        # Form fields are strings; numbers given in a form are converted here.
        for key in ("max_tokens", "n"):
            if isinstance(out.get(key), str) and out[key].strip().lstrip("-").isdigit():
                out[key] = int(out[key])
        if isinstance(out.get("temperature"), str):
            try:
                out["temperature"] = float(out["temperature"])
            except ValueError:
                pass
        if isinstance(out.get("stream"), str):
            out["stream"] = out["stream"].lower() in ("1", "true", "yes")
        if not out:
            raise bad_request("multipart body has no fields")
        return out

    @staticmethod
    def _decode(name: str, value: bytes) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request(f"field '{name}' is not valid UTF-8", name) from None

    def parse(self, cls: type[T]) -> T:
        req = parse_request(cls, self.body(), self.ds.limits)
        if getattr(getattr(self.ds, "audit", None), "capture_samples", False):
            self._ds_sample = input_sample(req)
        return req

    async def stream_ndjson(
        self,
        events: AsyncIterator[dict[str, Any]],
        line: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        """Send ``events`` as NDJSON, one ``line(event)`` each, flushed as they come.

        An error before the first line is a normal HTTP error; a later one ends the stream
        with an error-envelope line. A client that goes away stops the generation.
        """
        started = False
        try:
            async for event in events:
                if not started:
                    self.set_header("Content-Type", "application/x-ndjson")
                    self.set_header("Cache-Control", "no-cache")
                    started = True
                out = line(event)
                if isinstance(out, dict) and out.get("status") == "success":
                    self._ds_answer = out.get("data")
                self.write(json.dumps(out) + "\n")
                await self.flush()
        except iostream.StreamClosedError:
            await events.aclose()  # type: ignore[attr-defined]
            return
        except ApiError as exc:
            if not started:
                raise
            self.write(json.dumps(failure(exc)) + "\n")
        self.finish()

    def ok(self, data: dict[str, Any]) -> None:
        self._ds_answer = data
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(success(data)))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Answer every error in the envelope, never with a traceback."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        error = error_for(
            status_code,
            exc,
            known_user=self._known_user(),
            role_message=getattr(self, RoleAuthorizer.MESSAGE_ATTR, None),
        )
        self._ds_error_code = error.code
        if self._ds_request_id:  # send_error cleared the headers set in prepare
            self.set_header(json_logs.REQUEST_ID_HEADER, self._ds_request_id)
        if error.retry_after is not None:
            self.set_header("Retry-After", str(error.retry_after))
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(failure(error)))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, ApiError):
            self.log.info("jupyter-ds %s -> %s %s", self.request.path, e.status, e.message)
            if not self._finished:
                self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        if isinstance(e, EngineNotReady) and not self._finished:
            self.send_error(503, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)  # logs the traceback server-side
