"""Shared handler plumbing: body parsing, the envelope, and error mapping.

Handlers stay thin: parse, authorize, call a service, wrap the answer. Every failure
leaves as the error envelope with the status code of DESIGN.md; unexpected exceptions
are logged with their traceback on the server and answered as a bare 500.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from ds_engine import EngineNotReady
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import httputil, iostream
from tornado.web import HTTPError

from jupyter_ds.envelope import failure, success
from jupyter_ds.errors import ApiError, bad_request, not_ready, too_large
from jupyter_ds.requests import parse_request

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


class DsApiHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every jupyter-ds REST handler.

    It defines no HTTP verb itself: each subclass decorates every verb it defines with
    ``@web.authenticated`` and ``@authorized`` on its ``auth_resource`` (a test checks it).
    """

    endpoint = ""

    @property
    def ds(self) -> Any:
        """The extension app's services (see ``JupyterDsApp``)."""
        return self.settings["jupyter_ds"]

    def body(self) -> dict[str, Any]:
        """The request body as a dict, from JSON or multipart/form-data."""
        raw = self.request.body or b""
        limit = self.ds.max_body_bytes
        if len(raw) > limit:
            raise too_large(f"request body is {len(raw)} bytes, over the limit of {limit}")
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
        httputil.parse_body_arguments(ctype, raw, args, files)
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
        return parse_request(cls, self.body(), self.ds.limits)

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
                self.write(json.dumps(line(event)) + "\n")
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
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(success(data)))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Answer every error in the envelope, never with a traceback."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, EngineNotReady):
            exc = not_ready(str(exc), exc.retry_after)
        if isinstance(exc, ApiError):
            error = exc
        elif status_code in (401, 403) and not self.current_user:
            # Jupyter answers 403 (often about _xsrf) when no credentials came at all.
            error = ApiError(
                401,
                "unauthorized",
                "authentication required: send 'Authorization: token <token>' or log in",
            )
        elif isinstance(exc, HTTPError) and status_code < 500:
            message = exc.log_message or httputil.responses.get(status_code, "error")
            if exc.args and exc.log_message and "%" in exc.log_message:
                message = exc.log_message % exc.args
            error = ApiError(status_code, _HTTP_CODES.get(status_code, "error"), message)
        else:
            error = ApiError(
                status_code,
                "internal_error" if status_code >= 500 else _HTTP_CODES.get(status_code, "error"),
                "internal server error; see the server log"
                if status_code >= 500
                else httputil.responses.get(status_code, "error"),
            )
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
