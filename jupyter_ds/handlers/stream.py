"""``WS jupyter-ds/v1/complete/stream``: JupyterLab's inline-completion protocol.

Client → server: ``{number, prefix, suffix, mime, language, path, cell_id, stream}``
and ``{type: "cancel", number}``. Server → client, keyed by ``reply_to``:
``{type: "inline_completion", list: {items: [...]}}`` (the whole answer, or the first
empty item of a stream) and ``{type: "stream", response: {insertText, token}, done}``
chunks carrying the cumulative text. A newer ``number`` cancels every older request on
the same socket; a closed socket cancels everything it started.

Each request message is a request of its own for rate limits (it counts against the
``complete`` bucket and takes a generation slot, released when it ends or is superseded,
cancelled or its socket closes), logs (its own request id) and metrics (endpoint
``complete/stream``, method ``WS``). A refused message is answered with an error message
on the socket, which stays open.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from jupyter_ds import json_logs, metrics
from jupyter_ds.envelope import failure
from jupyter_ds.errors import ApiError, bad_request
from jupyter_ds.handlers.base import audit_request, error_for, input_sample
from jupyter_ds.identity import settle_identity
from jupyter_ds.ratelimit import GenerationSlot
from jupyter_ds.requests import CompleteRequest, parse_request
from jupyter_ds.roles import RoleAuthorizer, user_name

ENDPOINT = "complete/stream"
#: Request numbers are JSON integers a JavaScript client can hold exactly: 0 <= n < 2^53.
MAX_NUMBER = 2**53


class CompletionStreamHandler(
    WebSocketMixin, WebSocketHandler, ExtensionHandlerMixin, JupyterHandler
):
    auth_resource = "jupyter_ds:completion"
    endpoint = ENDPOINT

    def initialize(self, name: str = "jupyter_ds", *args: Any, **kwargs: Any) -> None:
        super().initialize(name, *args, **kwargs)
        self._tasks: dict[int, asyncio.Task] = {}
        self._request_ids: dict[int, str] = {}
        self._slots: dict[int, GenerationSlot] = {}

    @property
    def ds(self) -> Any:
        return self.settings["jupyter_ds"]

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        await super().prepare(*args, **kwargs)
        settle_identity(self)  # a token client is one user across its sockets

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A refused upgrade (no credentials, no role) is answered in the envelope too."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        try:
            user = self.current_user
        except RuntimeError:  # refused before authentication ran
            user = None
        error = error_for(
            status_code,
            exc,
            known_user=user,
            role_message=getattr(self, RoleAuthorizer.MESSAGE_ATTR, None),
        )
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(failure(error)))

    @ws_authenticated
    @authorized("execute")
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await super().get(*args, **kwargs)

    # -- messages ---------------------------------------------------------------------

    @property
    def _user(self) -> str | None:
        return user_name(self.current_user)

    def _observe(
        self,
        started: float,
        status: int,
        code: str | None = None,
        *,
        request_id: str | None = None,
        answer: dict[str, Any] | None = None,
        req: CompleteRequest | None = None,
    ) -> None:
        """Metrics and audit record of one finished request message."""
        seconds = time.monotonic() - started
        try:
            metrics.observe_request(ENDPOINT, "WS", status, seconds, code)
        except Exception:  # metrics never fail a message
            self.log.debug("jupyter-ds: could not record message metrics", exc_info=True)
        audit = getattr(self.ds, "audit", None)
        audit_request(
            self.ds,
            endpoint=ENDPOINT,
            user=self.current_user,
            request_id=request_id or json_logs.current_request_id(),
            status=status,
            error_code=code,
            seconds=seconds,
            method="WS",
            answer=answer,
            sample=input_sample(req) if req is not None and audit is not None
            and audit.capture_samples else None,
        )

    async def on_message(self, message: str | bytes) -> None:
        number: Any = None
        started = time.monotonic()
        # Its own request id for this message's log lines; the task below inherits it.
        token = json_logs.bind_request(None, user=self._user, endpoint=ENDPOINT)
        request_id = json_logs.current_request_id()
        try:
            if isinstance(message, bytes) or len(message) > self.ds.max_body_bytes:
                raise ApiError(413, "payload_too_large", "message too large or not text")
            try:
                msg = json.loads(message)
            except (ValueError, RecursionError):
                raise bad_request("message is not valid JSON") from None
            if not isinstance(msg, dict):
                raise bad_request("message must be a JSON object")
            number = msg.get("number")
            if (
                not isinstance(number, int)
                or isinstance(number, bool)
                or not 0 <= number < MAX_NUMBER
            ):
                number = None  # not echoed back: the client did not send a usable one
                raise bad_request(
                    f"field 'number' must be an integer from 0 to {MAX_NUMBER - 1}", "number"
                )
            if msg.get("type") == "cancel":
                self._cancel(number)
                return
            limiter = getattr(self.ds, "limiter", None)
            user = self._user
            if limiter is not None and user is not None:
                limiter.check(user, ENDPOINT)  # counted like a REST request: before parsing
            req = parse_request(CompleteRequest, msg, self.ds.limits)
            # A newer request supersedes every older one on this socket (and frees their
            # generation slots at once: they stop at their next token).
            for older in [n for n in self._tasks if n < number]:
                self._cancel(older)
            slot = limiter.acquire(user) if limiter is not None and user is not None else None
            task = asyncio.ensure_future(
                self._serve(number, req, bool(msg.get("stream")), request_id, started)
            )
            self._tasks[number] = task
            if slot is not None:
                self._slots[number] = slot
            task.add_done_callback(lambda _t, n=number: self._done(n))
        except ApiError as exc:
            self._send({"type": "error", "reply_to": number, "error": exc.to_dict()})
            self._observe(started, exc.status, exc.code, request_id=request_id)
        finally:
            json_logs.reset_request(token)

    def _done(self, number: int) -> None:
        self._tasks.pop(number, None)
        slot = self._slots.pop(number, None)
        if slot is not None:
            slot.release()

    async def _serve(
        self,
        number: int,
        req: CompleteRequest,
        stream: bool,
        log_request_id: str | None = None,
        started: float | None = None,
    ) -> None:
        token = f"jds-{number}"
        started = time.monotonic() if started is None else started
        json_logs.bind_request(log_request_id, user=self._user, endpoint=ENDPOINT)
        status: int | None = 200
        code: str | None = None
        answer: dict[str, Any] | None = None
        try:
            if not stream:
                data = answer = await self.ds.completion.complete(req)
                self._send(
                    {
                        "type": "inline_completion",
                        "reply_to": number,
                        "list": {"items": [_lab_item(i) for i in data["items"]]},
                        "model": data["model"],
                        "latency_ms": data["latency_ms"],
                    }
                )
                return
            request_id = f"{id(self):x}-{number}"
            self._request_ids[number] = request_id
            self._send(
                {
                    "type": "inline_completion",
                    "reply_to": number,
                    "list": {"items": [{"insertText": "", "isIncomplete": True, "token": token}]},
                }
            )
            async for event in self.ds.completion.stream(req, request_id=request_id):
                reply: dict[str, Any] = {
                    "type": "stream",
                    "reply_to": number,
                    "response": {"insertText": event["text"], "token": token},
                    "done": event["done"],
                }
                if event["done"]:
                    reply.update({k: v for k, v in event.items() if k not in ("text", "done")})
                    answer = {**event, "output": event["text"]}
                self._send(reply)
        except ApiError as exc:
            status, code = exc.status, exc.code
            self._send({"type": "error", "reply_to": number, "error": exc.to_dict()})
        except asyncio.CancelledError:
            status = None
            raise
        except Exception:
            status, code = 500, "internal_error"
            self.log.exception("jupyter-ds completion stream %s failed", number)
            self._send(
                {
                    "type": "error",
                    "reply_to": number,
                    "error": {"code": "internal_error", "message": "internal server error"},
                }
            )
        finally:
            self._request_ids.pop(number, None)
            slot = self._slots.pop(number, None)
            if slot is not None:
                slot.release()
            if status is not None:
                self._observe(
                    started, status, code, request_id=log_request_id, answer=answer, req=req
                )

    def _cancel(self, number: int) -> None:
        """Stop a request: cancel the generation in the engine, then let it report done."""
        slot = self._slots.pop(number, None)
        if slot is not None:
            slot.release()
        request_id = self._request_ids.get(number)
        if request_id is not None:
            self.ds.engine.cancel(request_id)
        elif number in self._tasks:
            self._tasks[number].cancel()

    def _send(self, payload: dict[str, Any]) -> None:
        try:
            self.write_message(json.dumps(payload))
        except WebSocketClosedError:
            pass

    def on_close(self) -> None:
        for number in list(self._tasks):
            self._cancel(number)
        for task in list(self._tasks.values()):
            task.cancel()
        for slot in self._slots.values():
            slot.release()
        self._slots.clear()


def _lab_item(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "isIncomplete": False}
