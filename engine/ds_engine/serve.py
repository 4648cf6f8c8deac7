"""``ds-engine serve``: one engine as an OpenAI-compatible HTTP server, for a team.

One GPU box runs the model; many Jupyter servers reach it through an OpenAI client
(RemoteEngine), and the same client may talk to vLLM instead, so this server behaves
like vLLM's OpenAI server wherever a client or an operator would notice:

* ``POST /v1/completions`` (the prompt is already rendered, FIM or not) and
  ``POST /v1/chat/completions`` (rendered here with the engine's chat template), each
  streamed as ``data: <json>`` events ending in ``data: [DONE]`` or answered at once.
  Request and response shapes are in :mod:`ds_engine.openai_api`.
* ``model`` names the base model or an attached LoRA adapter (vLLM serves LoRA modules
  as models); ``GET /v1/models`` lists them.
* A client that disconnects cancels its generation in the engine (vLLM aborts on
  disconnect; RemoteEngine cancels a request by closing its connection).
* ``GET /health`` is 200 once the model is loaded (503 while loading or failed) and
  ``GET /metrics`` shows vLLM's metric names (:mod:`ds_engine.serve_metrics`), so probes,
  dashboards and autoscalers work the same on both servers.
* An optional API key guards ``/v1/*`` (never ``/health`` or ``/metrics``: probes and
  scrapers carry no secrets), as vLLM's ``--api-key`` does.

Built on tornado, which the engine already depends on (no ASGI stack): the engine's
forwards run on its own worker thread, so one event loop handles every connection.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import StreamClosedError
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler, stream_request_body

from ds_engine import openai_api as api
from ds_engine.adapters import AdapterError
from ds_engine.interface import (
    BackendError,
    Engine,
    EngineConfig,
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from ds_engine.openai_api import APIError
from ds_engine.serve_metrics import ServeMetrics

log = logging.getLogger(__name__)

# Largest request body read (prompts are rendered text: a few hundred KB at most for
# any context window served today); larger ones get 413. Bodies up to HARD_BODY_BYTES
# are read and dropped first so the client reads the 413 rather than a reset
# connection; past that tornado closes the connection with a bare 400.
MAX_BODY_BYTES = 4 * 2**20
HARD_BODY_BYTES = 64 * 2**20
RETRY_AFTER_LOADING_S = 5
LOADING_POLL_S = 0.1
# Seconds a stopping server lets requests in flight finish before it cancels them.
DRAIN_S = 10.0
# Seconds cancelled requests get to send their last event before connections close.
CANCEL_WAIT_S = 2.0
API_KEY_ENV = "DS_ENGINE_API_KEY"


class OpenAIServer:
    """The HTTP application around one engine: loading, routing, auth and metrics.

    ``served_model_name`` is the ``model`` clients send for the base model; by default
    the model path as given (vLLM's default), else the loaded model's own name.
    ``adapters`` (name, path) are attached once the model is loaded; ``/health`` says
    ready only after that, so a probe never routes a team to a server that would answer
    404 for the adapter it was started to serve. ``progress`` gets a line per step of
    the start (the CLI prints them on stderr); with ``report_stages`` it includes the
    engine's loading stages, polled from ``engine.info()`` (off when the engine reports
    them itself through its own progress callback).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        served_model_name: str | None = None,
        model_root: str | None = None,
        api_key: str | None = None,
        adapters: Iterable[tuple[str, str]] = (),
        max_body_bytes: int = MAX_BODY_BYTES,
        progress: Callable[[str], None] | None = None,
        report_stages: bool = True,
    ) -> None:
        self.engine = engine
        self._served_name = served_model_name or model_root
        self.model_root = model_root
        self._api_key = api_key.encode() if api_key else None
        self.adapters_to_attach = list(adapters)
        self.max_body_bytes = max_body_bytes
        self.progress = progress or (lambda message: None)
        self.report_stages = report_stages
        self.phase = "loading"  # loading -> ready | failed; stopping at the end
        self.reason: str | None = None  # why it failed
        self.created = api.now()
        self.in_flight: set[_GenerateHandler] = set()
        self.metrics = ServeMetrics(engine, lambda: self.served_name,
                                    lambda: len(self.in_flight))
        self.app = Application(
            [
                (r"/health", HealthHandler, {"server": self}),
                (r"/metrics", MetricsHandler, {"server": self}),
                (r"/v1/models", ModelsHandler, {"server": self}),
                (r"/v1/models/(.+)", ModelsHandler, {"server": self}),
                (r"/v1/completions", CompletionsHandler, {"server": self}),
                (r"/v1/chat/completions", ChatHandler, {"server": self}),
            ],
            default_handler_class=NotFoundHandler,
            default_handler_args={"server": self},
        )
        self.host: str | None = None
        self.port: int | None = None
        self._http: HTTPServer | None = None
        self._loading: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def served_name(self) -> str:
        return self._served_name or "ds-engine"

    @property
    def has_api_key(self) -> bool:
        return self._api_key is not None

    @property
    def url(self) -> str:
        host = self.host or "127.0.0.1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 8000) -> int:
        """Listen on ``host:port`` (0: any free port) and start loading the model in the
        background; returns the port. Requests are answered at once: 503 until ready."""
        sockets = bind_sockets(port, address=host)
        self._http = HTTPServer(self.app, max_body_size=max(HARD_BODY_BYTES,
                                                            self.max_body_bytes))
        self._http.add_sockets(sockets)
        self.host = host
        self.port = sockets[0].getsockname()[1]
        self._loading = asyncio.ensure_future(self._load())
        return self.port

    async def _load(self) -> None:
        """Load the model, attach the adapters, then say ready (or failed, and why)."""
        engine = self.engine
        try:
            engine.start_loading()
            shown: tuple[str, float | None] | None = None
            while engine.state is not EngineState.READY:
                info = engine.info()
                if info.state is EngineState.FAILED:
                    raise RuntimeError(info.error or "the model failed to load")
                if (self.report_stages and info.loading_stage
                        and (info.loading_stage, info.loading_progress) != shown):
                    shown = (info.loading_stage, info.loading_progress)
                    self.progress(_stage_text(*shown))
                await asyncio.sleep(LOADING_POLL_S)
            for name, path in self.adapters_to_attach:
                self.progress(f"attaching adapter {name} from {path}")
                await asyncio.to_thread(engine.load_adapter, name, path)
            if self._served_name is None:
                self._served_name = engine.info().name
            self.phase = "ready"
            self.progress(f"ready: model {self.served_name!r} at {self.url}/v1")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.reason = _message(exc)
            self.phase = "failed"
            log.error("the model could not be served: %s", self.reason)
            self.progress(f"failed: {self.reason}")

    async def close(self, drain_s: float = DRAIN_S) -> None:
        """Stop listening, let requests in flight finish (up to ``drain_s``), cancel the
        rest, close every connection, and close the engine."""
        if self._http is not None:
            self._http.stop()
        self.phase = "stopping"
        await self._drain(drain_s)
        for handler in list(self.in_flight):
            # Each ends with finish_reason "abort" (streams with their [DONE]); a
            # connection still open after that is closed below, which stops the rest.
            if handler.request_id is not None:
                self.engine.cancel(handler.request_id)
        await self._drain(CANCEL_WAIT_S)
        if self._http is not None:
            await self._http.close_all_connections()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        close = getattr(self.engine, "aclose", None) or getattr(self.engine, "close", None)
        if close is not None:
            if inspect.iscoroutinefunction(close):
                await close()
            else:
                # LocalEngine.close waits for a load still running: off the loop.
                await asyncio.to_thread(close)

    async def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # ----------------------------------------------------------------- checks

    def auth_error(self, request: Any) -> APIError | None:
        """401 unless the request carries ``Authorization: Bearer <key>`` (compared in
        constant time); None when no key is set."""
        if self._api_key is None:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              self._api_key):
            return None
        return APIError(401, "missing or incorrect API key (Authorization: Bearer <key>)",
                        code="invalid_api_key")

    def health(self) -> tuple[int, dict[str, Any]]:
        if self.phase == "ready" and self.engine.state is EngineState.READY:
            return 200, {"status": "ok"}
        if self.phase == "failed":
            return 503, {"status": "failed", "message": f"model failed to load: {self.reason}"}
        if self.phase == "stopping":
            return 503, {"status": "stopping", "message": "the server is stopping"}
        info = self.engine.info()
        stage = (f": {_stage_text(info.loading_stage, info.loading_progress)}"
                 if info.loading_stage else "")
        return 503, {"status": "loading", "message": f"model is loading{stage}"}

    def check_ready(self) -> None:
        """503 (with Retry-After while loading) unless requests can be served."""
        status, body = self.health()
        if status != 200:
            retry = RETRY_AFTER_LOADING_S if body["status"] == "loading" else None
            raise APIError(503, body["message"], type="service_unavailable",
                           code="model_not_ready", retry_after=retry)

    def attached_adapters(self) -> list[dict[str, Any]]:
        """The adapters a request may name: attached, not merged, not being unloaded."""
        return [a for a in self.engine.adapters()
                if not a.get("merged") and a.get("state", "ready") == "ready"]

    def resolve_model(self, name: str | None) -> str | None:
        """The adapter a request's ``model`` selects: None for the base model."""
        if name is None or name == self.served_name:
            return None
        if any(a.get("name") == name for a in self.attached_adapters()):
            return name
        raise APIError(404, f"The model `{name}` does not exist.", param="model",
                       code="model_not_found")

    def models(self) -> list[dict[str, Any]]:
        ctx = self.engine.info().context_window
        base = api.model_card(self.served_name, self.created, self.model_root or
                              self.served_name, None, ctx)
        return [base] + [
            api.model_card(a["name"], self.created, str(a.get("path") or a["name"]),
                           self.served_name, ctx)
            for a in self.attached_adapters()
        ]


# --------------------------------------------------------------------- handlers


class _Base(RequestHandler):
    """Every answer, errors included, is JSON in OpenAI's shapes, never a traceback."""

    server: OpenAIServer

    def initialize(self, server: OpenAIServer) -> None:
        self.server = server

    def send_json(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(api.dumps(body))

    def send_api_error(self, err: APIError) -> None:
        if self._finished:
            return
        if err.retry_after is not None:
            self.set_header("Retry-After", str(err.retry_after))
        self.send_json(err.status, err.body())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own errors (405, a bad request line, an uncaught exception)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, APIError):
            err = exc
        elif status_code >= 500:
            err = APIError(status_code, "internal server error (see the server's log)",
                           type="server_error")
        else:
            err = APIError(status_code, self._reason,
                           code="method_not_allowed" if status_code == 405 else None)
        self.set_header("Content-Type", "application/json")
        self.finish(api.dumps(err.body()))


class HealthHandler(_Base):
    """Readiness for probes and load balancers; never needs the API key."""

    def get(self) -> None:
        status, body = self.server.health()
        if status == 503 and body["status"] == "loading":
            self.set_header("Retry-After", str(RETRY_AFTER_LOADING_S))
        self.send_json(status, body)

    def head(self) -> None:
        status, _ = self.server.health()
        self.set_status(status)
        self.finish()


class MetricsHandler(_Base):
    def get(self) -> None:
        text, content_type = self.server.metrics.render()
        self.set_header("Content-Type", content_type)
        self.finish(text)


class ModelsHandler(_Base):
    def get(self, model: str | None = None) -> None:
        try:
            err = self.server.auth_error(self.request)
            if err is not None:
                raise err
            self.server.check_ready()
            cards = self.server.models()
            if model is None:
                self.send_json(200, {"object": "list", "data": cards})
                return
            for card in cards:
                if card["id"] == model:
                    self.send_json(200, card)
                    return
            raise APIError(404, f"The model `{model}` does not exist.", param="model",
                           code="model_not_found")
        except APIError as err:
            self.send_api_error(err)


class NotFoundHandler(_Base):
    def prepare(self) -> None:
        err = None
        if self.request.path.startswith("/v1"):
            err = self.server.auth_error(self.request)
        self.send_api_error(err or APIError(
            404, f"Unknown request URL: {self.request.method} {self.request.path}",
            code="unknown_url"))


@stream_request_body
class _GenerateHandler(_Base):
    """One generation: check the body, build the engine request, answer or stream it.

    The body is streamed in so that an oversized one is answered 413 without being
    held in memory. Errors found before the body ends (key, size) are answered once it
    has been read: closing a connection with unread input resets it, and the client
    would see a broken connection instead of the error.
    """

    chat = False
    id_prefix = "cmpl-"
    # Until prepare() runs: a connection may close before.
    request_id: str | None = None
    _work: asyncio.Future[None] | None = None

    def prepare(self) -> None:
        self.arrival = time.monotonic()
        self._gone = False
        self._recorded = False
        self._body: list[bytes] | None = []
        self._size = 0
        self._prompt_tokens = 0
        self._generated = 0
        self._early = self.server.auth_error(self.request)
        length = self.request.headers.get("Content-Length", "")
        if self._early is None and length.isdigit() and int(length) > self.server.max_body_bytes:
            self._early = _too_large(self.server.max_body_bytes)

    def data_received(self, chunk: bytes) -> None:
        if self._early is not None or self._body is None:
            return
        self._size += len(chunk)
        if self._size > self.server.max_body_bytes:
            self._early, self._body = _too_large(self.server.max_body_bytes), None
        else:
            self._body.append(chunk)

    async def post(self) -> None:
        try:
            if self._early is not None:
                raise self._early
            body = api.parse_json(b"".join(self._body or ()))
            self._body = None
            req = api.parse_chat(body) if self.chat else api.parse_completion(body)
            server = self.server
            server.check_ready()
            adapter = server.resolve_model(req.model)
            request = self._engine_request(req, adapter)
            self.request_id = request.request_id
            self.public_id = self.id_prefix + request.request_id
            self.set_header("X-Request-Id", self.public_id)
            self.model = req.model or server.served_name
            self.created = api.now()
            server.in_flight.add(self)
            self._work = asyncio.ensure_future(
                self._stream(request, req) if req.stream else self._complete(request))
            await self._work
        except asyncio.CancelledError:
            if not self._gone:
                raise
        except Exception as exc:
            if not self._gone:
                self.send_api_error(_api_error(exc))
        finally:
            self.server.in_flight.discard(self)
            if self._gone and self.request_id is not None:
                self._record_abort()

    def _engine_request(self, req: api.SamplingRequest, adapter: str | None
                        ) -> GenerationRequest:
        """The prompt rendered, the request admitted, and its size checked against the
        context window (400, as vLLM answers, rather than the engine's silent
        left-truncation: the client must know its prompt was not read whole)."""
        engine = self.server.engine
        stop = list(req.stop)
        if self.chat:
            template = engine.template_for(adapter)
            prompt = template.chat_prompt(req.messages or [])
            stop = list(dict.fromkeys([*template.chat_stop, *stop]))
        else:
            prompt = req.prompt or ""
        request = GenerationRequest(
            prompt=prompt, max_tokens=req.max_tokens or 1, temperature=req.temperature,
            top_p=req.top_p, stop=stop, timeout_s=req.timeout_s, seed=req.seed,
            priority=req.priority, adapter=adapter, min_tokens=req.min_tokens,
            queue_timeout_s=req.queue_timeout_s, user=req.user,
            first_token_bias=req.first_token_bias,
        )
        engine.check_admission(request)  # sheds before the prompt is tokenized
        window = engine.context_window()
        self._prompt_tokens = engine.count_tokens(prompt)
        room = window - self._prompt_tokens
        request.max_tokens = req.max_tokens if req.max_tokens is not None else room
        if request.max_tokens > room or request.max_tokens < 1:
            asked = self._prompt_tokens + max(request.max_tokens, 1)
            where = "messages" if self.chat else "prompt"
            raise api.invalid(
                "max_tokens" if req.max_tokens is not None and room > 0 else where,
                f"This model's maximum context length is {window} tokens. However, you "
                f"requested {asked} tokens ({self._prompt_tokens} in the {where}, "
                f"{max(request.max_tokens, 1)} in the completion). Please reduce the "
                f"length of the {where} or completion.")
        return request

    # ----------------------------------------------------------------- answers

    def _response(self, result: GenerationResult, finish: str) -> dict[str, Any]:
        build = api.chat_completion if self.chat else api.completion
        body = build(self.public_id, self.created, self.model, result.text, finish,
                     _usage(result))
        return api.with_confidence(body, result.confidence)

    def _chunk(self, text: str | None, finish: str | None = None,
               result: GenerationResult | None = None, role: bool = False) -> bytes:
        use = _usage(result) if result is not None else None
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else (
                {"content": text} if text else {})
            body = api.chat_chunk(self.public_id, self.created, self.model, delta, finish, use)
        else:
            body = api.completion_chunk(self.public_id, self.created, self.model, text or "",
                                        finish, use)
        if result is not None:
            body = api.with_confidence(body, result.confidence)
        return api.sse(body)

    async def _complete(self, request: GenerationRequest) -> None:
        result = await self.server.engine.generate(request)
        if result.time_to_first_token_ms is not None:
            self.server.metrics.first_token(
                request.created_at - self.arrival + result.time_to_first_token_ms / 1000)
        self.send_json(200, self._response(result, self._finished_with(result)))

    async def _stream(self, request: GenerationRequest, req: api.SamplingRequest) -> None:
        """Server-sent events: a delta per engine chunk, the finish with usage, [DONE].

        The first chunk is awaited before the 200 goes out, so that a request the
        engine refuses (shed, not ready) still gets its HTTP status; an error after
        that is one ``data: {"error": ...}`` event, then ``data: [DONE]``.
        """
        chunks = aiter(self.server.engine.stream(request))
        finished = False
        try:
            chunk = await _next(chunks)
            self.set_status(200)
            self.set_header("Content-Type", "text/event-stream; charset=utf-8")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")  # no proxy buffering of events
            if self.chat:
                self.write(self._chunk(None, role=True))
            await self.flush()  # the status line and headers go out now
            sent, timed = "", False
            try:
                while True:
                    if not timed and chunk.token_count > 0:
                        timed = True
                        self.server.metrics.first_token(time.monotonic() - self.arrival)
                    self._generated = chunk.token_count
                    if chunk.done:
                        result = chunk.result
                        if result is None:
                            raise RuntimeError("the engine's last chunk carries no result")
                        delta, sent = _delta(result.text, sent)
                        if not timed and result.token_count > 0:
                            self.server.metrics.first_token(time.monotonic() - self.arrival)
                        finished = True
                        self.write(self._chunk(delta, self._finished_with(result), result))
                        if req.include_usage:
                            self.write(api.sse(api.usage_chunk(
                                self.public_id, "chat.completion.chunk" if self.chat
                                else "text_completion", self.created, self.model,
                                _usage(result))))
                        break
                    delta, sent = _delta(chunk.text, sent)
                    if delta:
                        self.write(self._chunk(delta))
                        await self.flush()
                    chunk = await _next(chunks)
            except (StreamClosedError, asyncio.CancelledError):
                raise
            except Exception as exc:
                err = _api_error(exc)
                self.write(api.sse(err.body()))
            self.write(api.SSE_DONE)
            await self.flush()
            self.finish()
        except StreamClosedError:
            self._gone = True
        finally:
            if not finished:
                self.server.engine.cancel(request.request_id)
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _finished_with(self, result: GenerationResult) -> str:
        finish = api.FINISH_REASONS.get(result.finish_reason, str(result.finish_reason))
        self._recorded = True  # not again as an abort
        self.server.metrics.finished(finish, result.prompt_tokens, result.token_count,
                                     time.monotonic() - self.arrival)
        return finish

    # ----------------------------------------------------------------- disconnects

    def on_connection_close(self) -> None:
        """The client left: stop its generation now, not at its last token."""
        self._gone = True
        self.abort()

    def abort(self) -> None:
        """Cancel the generation in the engine and stop waiting for it."""
        if self.request_id is not None:
            self.server.engine.cancel(self.request_id)
        if self._work is not None and not self._work.done():
            self._work.cancel()

    def _record_abort(self) -> None:
        if not self._recorded:
            self._recorded = True
            self.server.metrics.finished("abort", self._prompt_tokens, self._generated, None)


class CompletionsHandler(_GenerateHandler):
    pass


class ChatHandler(_GenerateHandler):
    chat = True
    id_prefix = "chatcmpl-"


# --------------------------------------------------------------------- helpers


async def _next(chunks: Any) -> StreamChunk:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise RuntimeError("the engine's stream ended without a result") from None


def _delta(text: str, sent: str) -> tuple[str, str]:
    """The new text of a cumulative ``text`` after ``sent``. Text the engine rewrote
    (never past what it emitted; see ds_engine.generation) cannot be taken back over
    SSE, so nothing is sent for it."""
    if text.startswith(sent):
        return text[len(sent):], text
    return "", sent


def _usage(result: GenerationResult) -> dict[str, int]:
    return api.usage(result.prompt_tokens, result.token_count)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes",
                    code="request_too_large")


def _message(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def _api_error(exc: BaseException) -> APIError:
    """The OpenAI error for what the engine (or a check) raised."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineOverloaded):
        # The requester holds more than its share: 429 for it; the engine is full: 503.
        if exc.over_share:
            return APIError(429, str(exc), type="rate_limit_error",
                            code="rate_limit_exceeded", retry_after=exc.retry_after)
        return APIError(503, str(exc), type="service_unavailable", code="overloaded",
                        retry_after=exc.retry_after)
    if isinstance(exc, EngineNotReady):
        return APIError(503, str(exc), type="service_unavailable", code="model_not_ready",
                        retry_after=exc.retry_after)
    if isinstance(exc, AdapterError):
        if exc.status == 404:
            return APIError(404, exc.message, param="model", code="model_not_found")
        return APIError(exc.status, exc.message)
    if isinstance(exc, BackendError):
        return APIError(502, str(exc), type="backend_error", code="bad_gateway")
    if isinstance(exc, ValueError):
        return APIError(400, str(exc))
    log.error("request failed", exc_info=exc)
    return APIError(500, "internal server error (see the server's log)", type="server_error")


def _stage_text(stage: str | None, fraction: float | None) -> str:
    return f"{stage} ({fraction:.0%})" if fraction is not None else f"{stage}"


# --------------------------------------------------------------------- the command


def _pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"{what} {value!r} is not NAME=VALUE")
        out.append((name, rest))
    return out


def _option_value(text: str) -> Any:
    """``--engine-option`` values are JSON where they parse (numbers, lists, true),
    plain strings otherwise."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _print_progress(message: str) -> None:
    print(f"[ds-engine] {message}", file=sys.stderr, flush=True)


def serve_command(args: Any) -> int:
    """``ds-engine serve``: build the engine from the arguments and serve it until
    SIGTERM or SIGINT; 0 on a clean stop, 1 if it cannot listen, 2 on bad arguments."""
    from ds_engine.factory import DEFAULT_ENGINE_CLASS, engine_class
    from ds_engine.local import LocalEngine

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        adapters = _pairs(args.adapter, "--adapter")
        options = {k: _option_value(v) for k, v in _pairs(args.engine_option,
                                                           "--engine-option")}
        if args.threads:
            options["num_threads"] = args.threads
        config = EngineConfig(
            model_path=args.model_path, device=args.device, dtype=args.dtype,
            cache_dir=args.cache_dir, quantization=args.quantization,
            max_batch_size=args.max_batch_size, max_queued=args.max_queued,
            default_adapter=None if args.default_adapter == "none" else args.default_adapter,
            options=options,
        )
        cls = engine_class(args.engine_class or DEFAULT_ENGINE_CLASS)
        # The in-process engine reports every loading stage as it happens; polling
        # info() would miss the short ones.
        own_progress = issubclass(cls, LocalEngine) and "progress" not in options
        if own_progress:
            options["progress"] = lambda stage, fraction: _print_progress(
                _stage_text(stage, fraction))
        engine = cls.from_config(config)
    except ValueError as exc:
        print(f"ds-engine serve: {exc}", file=sys.stderr)
        return 2
    server = OpenAIServer(engine, served_model_name=args.served_model_name,
                          model_root=args.model_path, api_key=api_key, adapters=adapters,
                          progress=_print_progress, report_stages=not own_progress)
    return asyncio.run(_serve(server, args.host, args.port))


async def _serve(server: OpenAIServer, host: str, port: int) -> int:
    try:
        await server.start(host, port)
    except OSError as exc:
        print(f"ds-engine serve: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        await server.close(drain_s=0)
        return 1
    if not server.has_api_key and host not in ("127.0.0.1", "localhost", "::1"):
        _print_progress(f"warning: no API key; anyone who reaches {host} may use the model "
                        f"(set {API_KEY_ENV} or --api-key)")
    print(f"ds-engine serve: listening on {server.url} (OpenAI API at {server.url}/v1)",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    _print_progress("stopping")
    await server.close()
    _print_progress("stopped")
    return 0

