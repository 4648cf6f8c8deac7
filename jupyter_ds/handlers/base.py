"""The REST transport: tornado handlers over the request pipeline (``jupyter_ds/pipeline.py``).

Handlers stay thin: parse, call a service, wrap the answer. What every request goes
through (request id and log context, rate limit and generation slot, parsing with its
limits, error mapping, metrics, audit) is the pipeline's, shared with the WebSocket
transport (``jupyter_ds/handlers/stream.py``); this module keeps what is HTTP's own: the
body as it streams in (413 for an oversize one, before it sits in memory), JSON and
multipart bodies, NDJSON streaming, cancelling the work of a client that went away, and
answering every failure in the error envelope (``jupyter_ds/envelope.py``) with its
status code. Unexpected exceptions are logged with their traceback on the server and
answered as a bare 500.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ds_engine import EngineNotReady
from jupyter_server.auth.decorator import authorized as jupyter_authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import httputil, iostream
from tornado.web import HTTPError, stream_request_body

from jupyter_ds import json_logs
from jupyter_ds.envelope import failure, success
from jupyter_ds.errors import ApiError, bad_request, too_large
from jupyter_ds.identity import settle_identity
from jupyter_ds.pipeline import Call, Pipeline
from jupyter_ds.roles import RoleAuthorizer
from jupyter_ds.services import Services

T = TypeVar("T")

# The request field that a multipart upload's file part (named "file") fills.
PRIMARY_FIELD = {"complete": "prefix", "explain": "code"}
# How much of an oversize chunked body is read (and dropped) so that its client still
# sees the 413, before the connection is cut instead.
DRAIN_BYTES = 8 * 1024 * 1024


def http_error_message(exc: BaseException | None) -> str | None:
    """The message of a tornado ``HTTPError`` (Jupyter's refusals), None for others."""
    if not isinstance(exc, HTTPError):
        return None
    if not exc.log_message:
        return httputil.responses.get(exc.status_code, "error")
    if exc.args and "%" in exc.log_message:
        return exc.log_message % exc.args
    return exc.log_message


def authorized(action: str | None = None) -> Callable[[Callable[..., Any]], Any]:
    """Jupyter's ``@authorized(action)`` on the handler's ``auth_resource``, then admission.

    The order is authentication (``@web.authenticated``, after ``prepare`` settled the
    caller's identity), then the role check, then the rate limit and generation slot
    (:meth:`jupyter_ds.pipeline.Pipeline.admit`): a caller without the role gets 403,
    never a 429 that would tell it to come back, and its refused requests spend nobody's
    budget.
    """

    def decorate(method: Callable[..., Any]) -> Any:
        @functools.wraps(method)
        async def admitted(self: Any, *args: Any, **kwargs: Any) -> Any:
            self.pipeline.admit(self.call)
            out = method(self, *args, **kwargs)
            return await out if asyncio.iscoroutine(out) else out

        return jupyter_authorized(action)(admitted)

    return decorate


class DsHandlerMixin:
    """What the REST and WebSocket handlers share: the services, the pipeline over them,
    and refusals answered in the error envelope.

    ``endpoint`` is the route's name (``complete``, ``git/status``...), the label used by
    rate limits, metrics and the audit log.
    """

    endpoint = ""
    settings: dict[str, Any]

    @property
    def ds(self) -> Services:
        """The server's services (built by ``JupyterDsApp.initialize_settings``)."""
        return self.settings["jupyter_ds"]

    @functools.cached_property
    def pipeline(self) -> Pipeline:
        return Pipeline(self.ds)

    def _known_user(self) -> Any:
        """The authenticated user, or None for a request refused before authentication.

        jupyter_server raises RuntimeError when ``current_user`` is read before its
        ``prepare`` ran (a malformed body, an unknown method).
        """
        try:
            return self.current_user  # type: ignore[attr-defined]
        except RuntimeError:
            return None

    def envelope_error(self, status_code: int, exc: BaseException | None) -> ApiError:
        """The envelope error of a tornado error answer (see ``Pipeline.error``)."""
        return self.pipeline.error(
            status_code,
            exc,
            authenticated=bool(self._known_user()),
            message=http_error_message(exc),
            role_message=getattr(self, RoleAuthorizer.MESSAGE_ATTR, None),
        )

    def _errored(self, error: ApiError) -> None:
        """Called with the error about to be answered (the REST call records its code)."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Answer every error in the envelope, never with a traceback."""
        error = self.envelope_error(status_code, kwargs.get("exc_info", (None, None, None))[1])
        self._errored(error)
        if error.retry_after is not None:
            self.set_header("Retry-After", str(error.retry_after))  # type: ignore[attr-defined]
        self.set_status(error.status)  # type: ignore[attr-defined]
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        self.finish(json.dumps(failure(error)))  # type: ignore[attr-defined]


@stream_request_body
class DsApiHandler(DsHandlerMixin, ExtensionHandlerMixin, APIHandler):
    """Base of every jupyter-ds REST handler: one pipeline call per HTTP request.

    It defines no HTTP verb itself: each subclass decorates every verb it defines with
    ``@web.authenticated`` and this module's ``@authorized`` on its ``auth_resource`` (a
    test checks it).

    Around every request: ``prepare`` authenticates, gives a token client its stable
    identity (:mod:`jupyter_ds.identity`), begins the request's :class:`Call` (the
    client's ``X-Request-Id`` or a new one, echoed in the answer's header, bound for the
    JSON logs) and refuses a declared ``Content-Length`` over ``max_body_bytes`` before a
    byte of the body is read; the body then arrives through :meth:`data_received`, which
    stops keeping it once over the limit (a chunked upload is counted as it comes), so an
    oversize upload never sits in memory. ``@authorized`` then checks the role and admits
    the call (rate limits, a generation slot for model endpoints); ``on_finish`` finishes
    it (slot, metrics, audit record).
    """

    _ds_call: Call | None = None
    _ds_chunks: list[bytes] | None = None
    _ds_received = 0

    @property
    def call(self) -> Call:
        """This request's call; one begun (unbound) now if the request failed before
        ``prepare`` began it (an unknown method, a refused XSRF check)."""
        if self._ds_call is None:
            self._ds_call = self.pipeline.begin(
                self.endpoint or "unknown",
                self.request.method or "",
                self._known_user(),
                self.request.headers.get(json_logs.REQUEST_ID_HEADER),
                bind=False,
            )
        return self._ds_call

    async def prepare(self) -> None:  # type: ignore[override]
        self._ds_chunks, self._ds_received = [], 0
        await super().prepare()  # authenticates: the user is known from here on
        settle_identity(self)
        self._ds_call = self.pipeline.begin(
            self.endpoint,
            self.request.method or "",
            self.current_user,
            self.request.headers.get(json_logs.REQUEST_ID_HEADER),
        )
        self.set_header(json_logs.REQUEST_ID_HEADER, self._ds_call.request_id)
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

    def on_finish(self) -> None:
        self.pipeline.finish(
            self.call, self.get_status(), seconds=self.request.request_time()
        )
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
        """The request body as a ``cls`` request (see ``Pipeline.parse``)."""
        return self.pipeline.parse(self.call, cls, self.body())

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
                    self.call.answer = out.get("data")
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
        self.call.answer = data
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(success(data)))

    def _errored(self, error: ApiError) -> None:
        self.call.error_code = error.code
        # send_error cleared the headers set in prepare: the request id is answered again
        self.set_header(json_logs.REQUEST_ID_HEADER, self.call.request_id)

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
