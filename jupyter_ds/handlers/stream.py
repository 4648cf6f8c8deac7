"""``WS jupyter-ds/v1/complete/stream``: JupyterLab's inline-completion protocol.

Client → server: ``{number, prefix, suffix, mime, language, path, cell_id, stream}``
and ``{type: "cancel", number}``. Server → client, keyed by ``reply_to``:
``{type: "inline_completion", list: {items: [...]}}`` (the whole answer, or the first
empty item of a stream) and ``{type: "stream", response: {insertText, token}, done}``
chunks carrying the cumulative text. A newer ``number`` cancels every older request on
the same socket; a closed socket cancels everything it started.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from jupyter_ds.errors import ApiError, bad_request
from jupyter_ds.requests import CompleteRequest, parse_request


class CompletionStreamHandler(
    WebSocketMixin, WebSocketHandler, ExtensionHandlerMixin, JupyterHandler
):
    auth_resource = "jupyter_ds:completion"

    def initialize(self, name: str = "jupyter_ds", *args: Any, **kwargs: Any) -> None:
        super().initialize(name, *args, **kwargs)
        self._tasks: dict[int, asyncio.Task] = {}
        self._request_ids: dict[int, str] = {}

    @property
    def ds(self) -> Any:
        return self.settings["jupyter_ds"]

    @ws_authenticated
    @authorized("execute")
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await super().get(*args, **kwargs)

    # -- messages ---------------------------------------------------------------------

    async def on_message(self, message: str | bytes) -> None:
        number: Any = None
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
            if not isinstance(number, int) or isinstance(number, bool):
                raise bad_request("field 'number' must be an integer", "number")
            if msg.get("type") == "cancel":
                self._cancel(number)
                return
            req = parse_request(CompleteRequest, msg, self.ds.limits)
            # A newer request supersedes every older one on this socket.
            for older in [n for n in self._tasks if n < number]:
                self._cancel(older)
            task = asyncio.ensure_future(self._serve(number, req, bool(msg.get("stream"))))
            self._tasks[number] = task
            task.add_done_callback(lambda _t, n=number: self._tasks.pop(n, None))
        except ApiError as exc:
            self._send({"type": "error", "reply_to": number, "error": exc.to_dict()})

    async def _serve(self, number: int, req: CompleteRequest, stream: bool) -> None:
        token = f"jds-{number}"
        try:
            if not stream:
                data = await self.ds.completion.complete(req)
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
                self._send(reply)
        except ApiError as exc:
            self._send({"type": "error", "reply_to": number, "error": exc.to_dict()})
        except asyncio.CancelledError:
            raise
        except Exception:
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

    def _cancel(self, number: int) -> None:
        """Stop a request: cancel the generation in the engine, then let it report done."""
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


def _lab_item(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "isIncomplete": False}
