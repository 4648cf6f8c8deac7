"""``WS jupyter-ds/v1/complete/stream``: JupyterLab's inline-completion protocol.

Client → server: ``{number, prefix, suffix, mime, language, path, cell_id, stream}``
and ``{type: "cancel", number}``. Server → client, keyed by ``reply_to``:
``{type: "inline_completion", list: {items: [...]}}`` (the whole answer, or the first
empty item of a stream) and ``{type: "stream", response: {insertText, token}, done}``
chunks carrying the cumulative text. A newer ``number`` cancels every older request on
the same socket; a closed socket cancels everything it started.

This module is the WebSocket transport only: message framing and the per-socket
bookkeeping of running requests (supersede, cancel, close). Each request message is one
call of the request pipeline (``jupyter_ds/pipeline.py``), as a REST request is: it
counts against the ``complete`` bucket of the rate limits and takes a generation slot
(released when it ends or is superseded, cancelled or its socket closes), has its own
request id in the logs, and is recorded in the metrics and the audit log (endpoint
``complete/stream``, method ``WS``). A refused message is answered with an error message
on the socket, which stays open.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.errors import ApiError, bad_request, too_large
from jupyter_ds.handlers.base import DsHandlerMixin
from jupyter_ds.identity import settle_identity
from jupyter_ds.pipeline import Call

ENDPOINT = "complete/stream"
METHOD = "WS"
#: Request numbers are JSON integers a JavaScript client can hold exactly: 0 <= n < 2^53.
MAX_NUMBER = 2**53


@dataclass(eq=False)
class Running:
    """A request of this socket that has not ended: its call, the task serving it, and
    (while it streams) the id of its generation in the engine, by which it is cancelled."""

    call: Call
    task: asyncio.Task | None = None
    generation_id: str | None = None


class CompletionStreamHandler(
    DsHandlerMixin, WebSocketMixin, WebSocketHandler, ExtensionHandlerMixin, JupyterHandler
):
    auth_resource = "jupyter_ds:completion"
    endpoint = ENDPOINT

    def initialize(self, name: str = "jupyter_ds", *args: Any, **kwargs: Any) -> None:
        super().initialize(name, *args, **kwargs)
        self._running: dict[int, Running] = {}

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        await super().prepare(*args, **kwargs)
        settle_identity(self)  # a token client is one user across its sockets

    @ws_authenticated
    @authorized("execute")
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await super().get(*args, **kwargs)

    # -- messages ---------------------------------------------------------------------

    def _frame(self, message: str | bytes) -> tuple[dict[str, Any], int]:
        """The message's JSON object and request number; ApiError for a bad frame."""
        if isinstance(message, bytes) or len(message) > self.ds.max_body_bytes:
            raise too_large("message too large or not text")
        try:
            msg = json.loads(message)
        except (ValueError, RecursionError):
            raise bad_request("message is not valid JSON") from None
        if not isinstance(msg, dict):
            raise bad_request("message must be a JSON object")
        number = msg.get("number")
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < MAX_NUMBER:
            raise bad_request(
                f"field 'number' must be an integer from 0 to {MAX_NUMBER - 1}", "number"
            )
        return msg, number

    async def on_message(self, message: str | bytes) -> None:
        try:
            msg, number = self._frame(message)
        except ApiError as exc:  # not echoed back: the client sent no usable number
            self._refuse(self.pipeline.begin(ENDPOINT, METHOD, self.current_user), None, exc)
            return
        if msg.get("type") == "cancel":
            self._cancel(number)
            return
        # Its own request id for this message's log lines; the task below inherits it.
        call = self.pipeline.begin(ENDPOINT, METHOD, self.current_user)
        try:
            self.pipeline.rate_limit(call)  # counted like a REST request: before parsing
            req = self.pipeline.parse(call, CompleteRequest, msg)
            # A newer request supersedes every older one on this socket (and frees their
            # generation slots at once: they stop at their next token).
            for older in [n for n in self._running if n < number]:
                self._cancel(older)
            self.pipeline.acquire(call)
            run = self._running[number] = Running(call)
            run.task = asyncio.ensure_future(
                self._serve(number, run, req, bool(msg.get("stream")))
            )
            run.task.add_done_callback(lambda _t, n=number, r=run: self._done(n, r))
        except ApiError as exc:
            self._refuse(call, number, exc)
        finally:
            self.pipeline.unbind(call)

    def _refuse(self, call: Call, number: int | None, error: ApiError) -> None:
        self._send({"type": "error", "reply_to": number, "error": error.to_dict()})
        self.pipeline.finish(call, error.status, error.code)

    def _done(self, number: int, run: Running) -> None:
        if self._running.get(number) is run:
            del self._running[number]
        self.pipeline.release(run.call)  # also when the task was cancelled before it ran

    async def _serve(
        self, number: int, run: Running, req: CompleteRequest, stream: bool
    ) -> None:
        call = run.call
        token = f"jds-{number}"
        status: int | None = 200
        try:
            if not stream:
                data = call.answer = await self.ds.completion.complete(req)
                self._send(
                    {
                        "type": "inline_completion",
                        "reply_to": number,
                        "list": {"items": [_lab_item(i) for i in data["items"]]},
                        "model": data["model"],
                        "latency_ms": data["latency_ms"],
                        "request_id": call.request_id,  # what telemetry names it by
                    }
                )
                return
            run.generation_id = f"{id(self):x}-{number}"
            self._send(
                {
                    "type": "inline_completion",
                    "reply_to": number,
                    "list": {"items": [{"insertText": "", "isIncomplete": True, "token": token}]},
                    "request_id": call.request_id,  # known now: telemetry may come mid-stream
                }
            )
            async for event in self.ds.completion.stream(req, request_id=run.generation_id):
                reply: dict[str, Any] = {
                    "type": "stream",
                    "reply_to": number,
                    "response": {"insertText": event["text"], "token": token},
                    "done": event["done"],
                }
                if event["done"]:
                    reply.update({k: v for k, v in event.items() if k not in ("text", "done")})
                    reply["request_id"] = call.request_id  # what telemetry names it by
                    call.answer = {**event, "output": event["text"]}
                self._send(reply)
        except asyncio.CancelledError:
            status = None  # the socket closed: nobody is told, nothing is recorded
            raise
        except Exception as exc:
            error = self.pipeline.error(500, exc)
            if error.code == "internal_error":
                self.log.exception("jupyter-ds completion stream %s failed", number)
            status, call.error_code = error.status, error.code
            self._send({"type": "error", "reply_to": number, "error": error.to_dict()})
        finally:
            run.generation_id = None
            if status is None:
                self.pipeline.release(call)
            else:
                self.pipeline.finish(call, status)

    def _cancel(self, number: int) -> None:
        """Stop a request: free its slot, cancel its generation (it then reports done),
        or its task when it has none yet."""
        run = self._running.get(number)
        if run is None:
            return
        self.pipeline.release(run.call)
        if run.generation_id is not None:
            self.ds.completion.cancel(run.generation_id)
        elif run.task is not None:
            run.task.cancel()

    def _send(self, payload: dict[str, Any]) -> None:
        try:
            self.write_message(json.dumps(payload))
        except WebSocketClosedError:
            pass

    def on_close(self) -> None:
        running = list(self._running.values())
        for number in list(self._running):
            self._cancel(number)
        for run in running:
            if run.task is not None:
                run.task.cancel()


def _lab_item(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "isIncomplete": False}
