"""A real OpenAI-compatible HTTP server for RemoteEngine's tests, scripted per test.

Tornado on an ephemeral port of 127.0.0.1, on its own thread and event loop, so a test
may block (``wait_ready``) while the server answers. ``GET /v1/models``, ``/health`` and
``/metrics`` answer from attributes; ``POST /v1/completions`` records the request and
runs ``server.script(handler, body)``, a coroutine that writes the answer with the
helpers below (events at any byte boundary, a socket closed mid-answer, silence).
``server.wait_disconnects(n)`` waits until clients closed ``n`` completions' connections
before they ended.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.iostream import StreamClosedError

Script = Callable[["CompletionsHandler", dict], Awaitable[None]]


def chunk(text: str, finish: str | None = None, logprob: float | None = None) -> dict:
    """One streamed completion event, as vLLM sends it."""
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish}
    if logprob is not None:
        choice["logprobs"] = {"tokens": [text], "token_logprobs": [logprob],
                              "top_logprobs": [{text: logprob}], "text_offset": [0]}
    return {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [choice]}


def usage(prompt: int, completion: int) -> dict:
    """The usage event that ``stream_options.include_usage`` adds at the end."""
    return {"id": "cmpl-1", "object": "text_completion", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


def event(payload: Any) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


async def start_events(handler: CompletionsHandler) -> None:
    handler.set_header("Content-Type", "text/event-stream")
    handler.set_header("Cache-Control", "no-cache")
    await handler.flush()


async def send_events(handler: CompletionsHandler, events: Sequence[Any], *,
                      delay: float = 0.0, done: bool = True) -> None:
    """Each event flushed on its own (``delay`` seconds apart), then ``[DONE]``."""
    await start_events(handler)
    for payload in events:
        handler.write(event(payload))
        await handler.flush()
        if delay:
            await asyncio.sleep(delay)
    if done:
        handler.write(b"data: [DONE]\n\n")
        await handler.flush()


async def send_pieces(handler: CompletionsHandler, data: bytes, sizes: Sequence[int]) -> None:
    """``data`` written in pieces of ``sizes`` bytes (cycled), each flushed separately
    and a moment apart, so the client reads them at those boundaries."""
    await start_events(handler)
    position, index = 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        handler.write(data[position : position + size])
        await handler.flush()
        await asyncio.sleep(0.002)
        position += size
        index += 1


def words(texts: Sequence[str], finish: str = "stop", prompt_tokens: int | None = None,
          logprob: float | None = None) -> Script:
    """A script streaming ``texts`` as events, then the usage when ``prompt_tokens``."""

    async def script(handler: CompletionsHandler, body: dict) -> None:
        events: list[Any] = [chunk(t, None, logprob) for t in texts]
        events.append(chunk("", finish))
        if prompt_tokens is not None:
            events.append(usage(prompt_tokens, len(texts)))
        await send_events(handler, events)

    return script


async def drip(handler: CompletionsHandler, body: Any = None, *, text: str = "x",
               every: float = 0.05, count: int = 400) -> None:
    """Stream ``text`` every ``every`` seconds until the client goes away (or ``count``)."""
    await start_events(handler)
    try:
        for _ in range(count):
            if handler.closed:
                return
            handler.write(event(chunk(text)))
            await handler.flush()
            await asyncio.sleep(every)
    except StreamClosedError:
        return  # on_connection_close counts it


async def silence(handler: CompletionsHandler, body: Any = None, *,
                  seconds: float = 10.0) -> None:
    """Headers, then nothing (a server that queues the request), until the client leaves."""
    await start_events(handler)
    end = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < end and not handler.closed:
        await asyncio.sleep(0.02)


def hang_up(handler: CompletionsHandler) -> None:
    """Close the connection at once, whatever was sent (a server that died)."""
    handler.request.connection.stream.close()
    handler._finished = True  # nothing more can be written; tornado must not try


class _Handler(tornado.web.RequestHandler):
    def initialize(self, server: OpenAITestServer) -> None:
        self.server = server

    def record(self, body: Any = None) -> None:
        self.server.requests.append(
            {"path": self.request.path, "headers": dict(self.request.headers), "body": body}
        )

    def authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        given = self.request.headers.get("Authorization", "")
        if given == f"Bearer {key}":
            return True
        # As some servers do: the refusal echoes what was sent (the engine must scrub it).
        self.set_status(401)
        self.finish({"error": {"message": f"Incorrect API key provided: {given!r}",
                               "type": "invalid_request_error", "code": 401}})
        return False


class ModelsHandler(_Handler):
    def get(self) -> None:
        self.record()
        if not self.authorized():
            return
        if self.server.models_status != 200:
            self.set_status(self.server.models_status)
            self.finish({"error": {"message": "no models here"}})
            return
        self.finish({"object": "list", "data": self.server.models})


class HealthHandler(_Handler):
    def get(self) -> None:
        self.record()
        self.set_status(self.server.health_status)
        self.finish("")


class MetricsHandler(_Handler):
    def get(self) -> None:
        if self.server.metrics_text is None:
            self.set_status(404)
            self.finish("")
            return
        self.set_header("Content-Type", "text/plain; version=0.0.4")
        self.finish(self.server.metrics_text)


class CompletionsHandler(_Handler):
    closed = False  # the client closed this request's connection

    async def post(self) -> None:
        try:
            body = json.loads(self.request.body)
        except ValueError:
            body = None
        self.record(body)
        if not self.authorized():
            return
        await self.server.script(self, body)

    def on_connection_close(self) -> None:
        self.closed = True
        with self.server._disconnects:
            self.server.disconnects += 1
            self.server._disconnects.notify_all()


class OpenAITestServer:
    """The server; ``start()`` it, ``close()`` it; ``url`` ends with ``/v1``."""

    def __init__(self, *, models: list[dict] | None = None, api_key: str | None = None):
        self.models = models if models is not None else [
            {"id": "base", "object": "model", "owned_by": "test", "root": "/models/base",
             "parent": None, "max_model_len": 2048}
        ]
        self.api_key = api_key
        self.script: Script = words(["Hello", ",", " world"], prompt_tokens=5)
        self.requests: list[dict] = []
        self.disconnects = 0
        self._disconnects = threading.Condition()
        self.models_status = 200
        self.health_status = 200
        self.metrics_text: str | None = None
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: tornado.httpserver.HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_disconnects(self, count: int = 1, timeout: float = 5.0) -> bool:
        """True once ``count`` completion connections were closed by their client."""
        with self._disconnects:
            return self._disconnects.wait_for(lambda: self.disconnects >= count, timeout)

    def completions(self) -> list[dict]:
        """The bodies of the completion requests received, in order."""
        return [r["body"] for r in self.requests if r["path"] == "/v1/completions"]

    def start(self, port: int | None = None) -> OpenAITestServer:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            loop.call_soon(started.set)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self.port = port
        self._thread = threading.Thread(target=run, name="openai-test-server", daemon=True)
        self._thread.start()
        started.wait(5)
        self.listen()
        return self

    def _run(self, coro: Awaitable[Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    def listen(self) -> None:
        """Accept connections (again) on ``port`` (an ephemeral one the first time)."""

        async def bind() -> None:
            app = tornado.web.Application([
                (r"/v1/models", ModelsHandler, {"server": self}),
                (r"/v1/completions", CompletionsHandler, {"server": self}),
                (r"/health", HealthHandler, {"server": self}),
                (r"/metrics", MetricsHandler, {"server": self}),
            ])
            sockets = tornado.netutil.bind_sockets(self.port or 0, "127.0.0.1")
            self.port = sockets[0].getsockname()[1]
            self._http = tornado.httpserver.HTTPServer(app)
            self._http.add_sockets(sockets)

        self._run(bind())

    def stop_listening(self) -> None:
        """Refuse connections from now on: close the listening socket and every open
        connection (a client's pooled keep-alive connection included)."""

        async def stop() -> None:
            if self._http is not None:
                self._http.stop()
                await self._http.close_all_connections()
                self._http = None

        self._run(stop())

    def close(self) -> None:
        if self._loop is None:
            return
        self.stop_listening()
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        self._loop = None
