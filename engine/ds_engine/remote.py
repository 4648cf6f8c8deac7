"""A client of an OpenAI-compatible model server, as an :class:`~ds_engine.interface.Engine`.

``RemoteEngine`` lets the routing tier serve from vLLM, llama.cpp's server or another
``ds-engine serve`` instead of a model in its own process: ``engine_class =
"ds_engine.remote.RemoteEngine"`` with ``engine_options = {"url": ...}``
(:meth:`RemoteEngine.from_config` lists every option). What the in-process engine does
with its model, this one does over HTTP, and whatever cannot be asked of the server on
every request is kept locally:

* **Prompts** are rendered by the callers through :attr:`RemoteEngine.template`, built
  from configuration (``fim``, ``tokens``, ``chat_template``; see
  :func:`ds_engine.templates.configured_template`): a server's own FIM support is not
  used (vLLM and llama.cpp's OpenAI route refuse ``suffix``), and chat prompts are
  rendered into plain prompts too, so every request is a ``POST /v1/completions`` with
  the prompt as it is. ``/v1/chat/completions`` is never used: the callers do not hand
  the engine messages, only rendered prompts.
* **Tokens are counted locally** (:class:`ds_engine.tokenizer.TokenCounter`: the served
  model's ``tokenizer.json`` when configured, else a documented estimate).
* **Every request streams** (``stream: true``, server-sent events parsed by
  :mod:`ds_engine.sse`), :meth:`RemoteEngine.generate` included: one code path gives
  cancellation, deadlines and the text so far on a cancel or timeout. A server that
  ignores ``stream`` and answers one JSON object is read as well.
* **Cancelling** a request (:meth:`RemoteEngine.cancel`, leaving a stream early,
  cancelling the task awaiting ``generate``) closes its HTTP connection: vLLM and
  llama.cpp abort a request whose client went away, so the server stops computing it.
* **Failures** come out typed for the routing tier and a router over several replicas:
  :class:`~ds_engine.interface.BackendError` (502) with ``retryable`` True exactly when
  nothing was generated yet (another replica may take the request), never after a token;
  :class:`~ds_engine.interface.EngineOverloaded` for a server that sheds (429, or 503
  with ``Retry-After``); :class:`~ds_engine.adapters.AdapterError` (404) for an adapter
  the server does not serve. The request is retried here only before the first byte of
  an answer (connection refused or reset, no headers in time, 502/503/504), with short
  backoff. No message or log line ever holds the API key.
* **Health**: :meth:`RemoteEngine.start_loading` starts a background probe (``GET
  /v1/models``, else ``GET /health``) and returns at once; the state is READY once the
  server answers, FAILED with the reason when it refuses the key or stays unreachable
  past ``startup_timeout_s``, and the probe goes on, so a server that comes up later
  (or back) makes the engine READY again. The same probe reads the served model's
  context window, the LoRA adapters the server serves as models, and (when the server
  exports it) the length of its waiting queue from ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ds_engine.interface import (
    BackendError,
    EngineConfig,
    EngineCounters,
    EngineInfo,
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from ds_engine.sse import SSEError, aiter_events
from ds_engine.templates import PromptTemplate, configured_template
from ds_engine.tokenizer import TokenCounter

log = logging.getLogger(__name__)

#: ``confidence`` of a result whose server sent no log-probabilities: neither a claim
#: that the text is good (1.0) nor that it is bad; the completion service's threshold
#: (0.7 by default) then flags such completions as low-confidence, which is honest.
NEUTRAL_CONFIDENCE = 0.5
#: The context window when neither the options nor the server say (a small, safe one).
DEFAULT_CONTEXT_WINDOW = 4096
#: ``Retry-After`` of the engine's own "not now" while it waits for its server.
RETRY_AFTER_NOT_READY_S = 5
#: Fields of a request that only some servers accept. A 400 naming one of them (vLLM
#: refuses ``priority`` unless started with ``--scheduling-policy priority``) makes the
#: engine resend the request without it, and stop sending it to that server.
OPTIONAL_FIELDS = ("priority", "min_tokens", "logprobs", "stream_options", "seed", "user")
_FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "eos": FinishReason.STOP,
    "content_filter": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "abort": FinishReason.CANCELLED,  # vLLM: the server aborted the request
    "cancelled": FinishReason.CANCELLED,
    "timeout": FinishReason.TIMEOUT,
}
_RETRIED_STATUSES = (502, 503, 504)
_MAX_ERROR_BODY = 64 * 1024
_MAX_JSON_BODY = 16 * 2**20


class _StreamFailure(Exception):
    """The answer broke off or was malformed; whether another replica may retry the
    request depends on what was already yielded, which only the consumer knows."""


class _AdapterMissing(Exception):
    """The server does not serve the adapter asked for: AdapterError 404 for the caller
    (raised by the consumer, so that importing this module never imports torch)."""


@dataclass
class _Delta:
    """One event of the answer: new text, a finish reason, log-probabilities, usage."""

    text: str = ""
    finish: str | None = None
    logprobs: list[float] = field(default_factory=list)
    tokens: int = 0
    usage: dict[str, Any] | None = None
    confidence: float | None = None  # ds-engine serve's choices[0].confidence


@dataclass
class _Failure:
    error: BaseException


_END = object()  # the answer is complete
_STOP = object()  # cancel() was called: finish now with the text so far


@dataclass(eq=False)
class _Running:
    """A request in flight: how cancel() reaches its reader from any thread."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]
    reader: asyncio.Task[None] | None = None
    reason: FinishReason | None = None
    reader_cancelled: bool = False  # cancelled once: a second cancel would cut its cleanup

    def stop_reader(self) -> None:
        if self.reader is not None and not self.reader_cancelled:
            self.reader_cancelled = True
            self.reader.cancel()


class _Announced:
    """A stream handed out but not iterated yet: a cancel that comes first waits here.
    Held by the stream's generator only, so an abandoned one leaves no entry behind."""

    __slots__ = ("__weakref__", "reason")

    def __init__(self) -> None:
        self.reason: FinishReason | None = None


@dataclass(frozen=True)
class _Endpoint:
    """The server's addresses: ``base`` (``.../v1``, with any userinfo, for requests),
    ``root`` (for ``/health`` and ``/metrics``), ``display`` (no credentials) and
    ``host`` (``host:port``, the default label)."""

    base: str
    root: str
    display: str
    host: str
    password: str | None


def parse_url(url: str) -> _Endpoint:
    """Normalise a server URL given with or without ``/v1`` (ValueError if unusable)."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("RemoteEngine option 'url' is required (e.g. http://host:8000/v1)")
    try:
        parsed = httpx.URL(url.strip())
    except Exception as exc:
        raise ValueError(f"RemoteEngine url is not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("RemoteEngine url must be an http:// or https:// URL with a host")
    path = parsed.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    base = parsed.copy_with(path=path, query=None, fragment=None)
    root = base.copy_with(path=path[: -len("/v1")] or "/")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return _Endpoint(
        base=str(base),
        root=str(root).rstrip("/"),
        display=str(base.copy_with(userinfo=b"")),
        host=f"{parsed.host}:{port}",
        password=parsed.password or None,
    )


def _retry_after(value: str | None, default: int = 1) -> int:
    """``Retry-After`` in whole seconds (delta or HTTP date), clamped to 1..300."""
    if not value:
        return default
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return default
    return max(1, min(300, math.ceil(seconds)))


def _logprobs(value: Any) -> list[float]:
    """The chosen tokens' log-probabilities, in the completions format
    (``token_logprobs``) or the chat format (``content[].logprob``, llama.cpp)."""
    raw: list[Any] = []
    if isinstance(value, dict):
        if isinstance(value.get("token_logprobs"), list):
            raw = value["token_logprobs"]
        elif isinstance(value.get("content"), list):
            raw = [item.get("logprob") for item in value["content"] if isinstance(item, dict)]
    return [float(v) for v in raw
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _metric_sum(text: str, name: str) -> float | None:
    """The sum of a Prometheus gauge over its label sets, or None if it is absent."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            try:
                total += float(line.rsplit(None, 1)[-1])
                found = True
            except ValueError:
                continue
    return total if found else None


def _describe(exc: BaseException) -> str:
    """A transport failure in a few words (its type tells refused from reset)."""
    if isinstance(exc, (asyncio.TimeoutError, httpx.TimeoutException)):
        return f"timed out ({type(exc).__name__})"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class RemoteEngine:
    """:class:`ds_engine.interface.Engine` served by an OpenAI-compatible HTTP server."""

    OPTIONS = (
        "url", "api_key", "api_key_env", "model", "fim", "tokens", "chat_template",
        "tokenizer", "context_window", "timeout_s", "read_timeout_s", "verify", "retries",
        "retry_backoff_s", "name", "startup_timeout_s", "probe_interval_s",
        "health_interval_s", "models_ttl_s", "logprobs", "send_priority", "server_metrics",
    )

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        model: str | None = None,
        fim: str | None = None,
        tokens: list[str] | tuple[str, ...] | None = (),
        chat_template: str | None = None,
        tokenizer: str | Path | None = None,
        context_window: int | None = None,
        timeout_s: float = 10.0,
        read_timeout_s: float = 300.0,
        verify: bool | str = True,
        retries: int = 2,
        retry_backoff_s: float = 0.25,
        name: str | None = None,
        startup_timeout_s: float = 30.0,
        probe_interval_s: float = 1.0,
        health_interval_s: float = 15.0,
        models_ttl_s: float = 10.0,
        logprobs: bool = True,
        send_priority: bool = True,
        server_metrics: bool = True,
    ) -> None:
        """The options of :meth:`from_config`, checked here (ValueError naming the one
        that is wrong). Nothing is contacted until :meth:`start_loading`."""
        self._endpoint = parse_url(url)
        if api_key is not None and api_key_env is not None:
            raise ValueError("give RemoteEngine api_key or api_key_env, not both")
        if api_key_env is not None:
            import os

            api_key = os.environ.get(str(api_key_env))
            if not api_key:
                raise ValueError(f"RemoteEngine api_key_env: environment variable "
                                 f"{api_key_env!r} is not set")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise ValueError("RemoteEngine api_key must be a non-empty string")
        self._api_key = api_key.strip() if api_key else None
        for option, value in (("timeout_s", timeout_s), ("read_timeout_s", read_timeout_s),
                              ("startup_timeout_s", startup_timeout_s),
                              ("probe_interval_s", probe_interval_s),
                              ("health_interval_s", health_interval_s)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"RemoteEngine {option} must be a positive number of seconds")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError("RemoteEngine retries must be an integer >= 0")
        if not isinstance(retry_backoff_s, (int, float)) or retry_backoff_s < 0:
            raise ValueError("RemoteEngine retry_backoff_s must be a number >= 0")
        if not isinstance(models_ttl_s, (int, float)) or models_ttl_s < 0:
            raise ValueError("RemoteEngine models_ttl_s must be a number >= 0")
        if context_window is not None and (
            not isinstance(context_window, int) or isinstance(context_window, bool)
            or context_window <= 0
        ):
            raise ValueError("RemoteEngine context_window must be a positive integer")
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError("RemoteEngine model must be a non-empty string")
        tokens = () if tokens is None else tokens
        if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("RemoteEngine tokens must be a list of strings")
        self._ssl = self._verify(verify)
        self.name = str(name) if name else self._endpoint.host
        self.timeout_s = float(timeout_s)
        self.read_timeout_s = float(read_timeout_s)
        self.retries = retries
        self.retry_backoff_s = float(retry_backoff_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self.probe_interval_s = float(probe_interval_s)
        self.health_interval_s = float(health_interval_s)
        self.models_ttl_s = float(models_ttl_s)
        self.logprobs = bool(logprobs)
        self.send_priority = bool(send_priority)
        self.server_metrics = bool(server_metrics)
        self._configured_model = model
        self._configured_window = context_window

        self._counter = TokenCounter(tokenizer)
        try:
            template = configured_template(fim, tokens, chat_template)
        except KeyError:
            from ds_engine.templates import FIM_FORMATS

            raise ValueError(f"RemoteEngine fim {fim!r} is not a known FIM family (known: "
                             f"{', '.join(FIM_FORMATS)})") from None
        extra = self._counter.control_tokens()
        if extra:
            # A tokenizer file names every control token: escape them all in user text.
            from dataclasses import replace

            template = replace(template, special_tokens=tuple(
                sorted(set(template.special_tokens) | set(extra))))
        self._template: PromptTemplate = template

        self._lock = threading.Lock()
        self._state = EngineState.UNLOADED
        self._error: str | None = None
        self._problem: str | None = None  # the last failed probe, while not READY
        self._down_since: float | None = None
        self._settled = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._probe_thread: threading.Thread | None = None
        # What the server said about itself (the probe keeps it current).
        self._model: str | None = model
        self._models: list[dict[str, Any]] | None = None  # None: no model list known
        self._models_at = 0.0
        self._server_window: int | None = None
        # The server is ds-engine serve (its model list says ``owned_by: ds-engine``):
        # it takes the request's deadlines and sheds a request that cannot start in
        # time itself, answering its headers only once the request has started.
        self._server_deadlines = False
        self._server_waiting: int | None = None
        self._metrics_supported = server_metrics
        self._dropped: set[str] = set()  # optional fields this server refused
        # One HTTP client per event loop (an AsyncClient's connections belong to one).
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                 httpx.AsyncClient] = weakref.WeakKeyDictionary()
        self._running: dict[str, _Running] = {}
        self._announced: weakref.WeakValueDictionary[str, _Announced] = (
            weakref.WeakValueDictionary())
        self._closing: set[asyncio.Task[None]] = set()
        self.requests_total = 0
        self.tokens_generated_total = 0
        self.prompt_tokens_total = 0
        self.cancelled_total = 0
        self.shed_total = 0
        self.retries_total = 0  # attempts repeated before a first byte
        self.failures_total = 0  # requests that ended in BackendError

    @classmethod
    def from_config(cls, config: EngineConfig) -> RemoteEngine:
        """The engine ``config.options`` describes (``ds_engine.factory``).

        Options: ``url`` (required: the server, ``http://host:8000/v1`` or without
        ``/v1``); ``api_key`` or ``api_key_env`` (the variable holding it); ``model``
        (the served model's name; default ``config.model_path``, else the first model
        the server lists); ``fim`` (FIM family of the model, None: prefix only),
        ``tokens`` (control tokens its vocabulary has), ``chat_template`` (Jinja; None:
        plain fallback); ``tokenizer`` (its ``tokenizer.json``, for exact counts; else an
        estimate, see :mod:`ds_engine.tokenizer`); ``context_window`` (default: the
        server's ``max_model_len``, else 4096); ``timeout_s`` (connecting and waiting for
        the answer's headers, 10), ``read_timeout_s`` (longest silence inside an answer,
        300); ``verify`` (TLS: True, False or a CA bundle path); ``retries`` (attempts
        repeated before a first byte, 2) and ``retry_backoff_s`` (0.25, doubling);
        ``name`` (label in info and errors; default ``host:port``);
        ``startup_timeout_s`` (unreachable this long: FAILED, 30), ``probe_interval_s``
        (probing while not READY, 1) and ``health_interval_s`` (while READY, 15),
        ``models_ttl_s`` (how old the adapter list may be, 10); ``logprobs`` (ask for
        log-probabilities, for ``confidence``), ``send_priority`` (vLLM's ``priority``
        field) and ``server_metrics`` (read ``/metrics``), all True. An unknown option
        is a ValueError naming it; the other EngineConfig fields are for the in-process
        engine and are ignored.
        """
        options = dict(config.options)
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise ValueError(f"unknown RemoteEngine option(s): {', '.join(unknown)} "
                             f"(known: {', '.join(cls.OPTIONS)})")
        if "url" not in options:
            raise ValueError("RemoteEngine option 'url' is required (e.g. http://host:8000/v1)")
        if options.get("model") is None and config.model_path:
            options["model"] = str(config.model_path)
        url = options.pop("url")
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"RemoteEngine({self._endpoint.display!r}, model={self._model!r})"

    @staticmethod
    def _verify(verify: bool | str) -> bool | ssl.SSLContext:
        if isinstance(verify, bool):
            return verify
        if isinstance(verify, str) and Path(verify).expanduser().is_file():
            return ssl.create_default_context(cafile=str(Path(verify).expanduser()))
        raise ValueError("RemoteEngine verify must be True, False or the path of a CA bundle")

    # ----------------------------------------------------------------- secrets

    def _scrub(self, text: str) -> str:
        """``text`` without the API key or the URL's password (servers echo them)."""
        for secret in (self._api_key, self._endpoint.password):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def _backend_error(self, message: str, *, retryable: bool) -> BackendError:
        self.failures_total += 1
        return BackendError(self.name, self._scrub(message), retryable=retryable)

    # ----------------------------------------------------------------- state

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def template(self) -> PromptTemplate:
        return self._template

    @property
    def model(self) -> str | None:
        """The served model's name (configured, or the server's first model)."""
        return self._model

    def start_loading(self) -> None:
        """Start the background health probe; returns at once and never raises for an
        unreachable server (the state says it)."""
        with self._lock:
            if self._closed:
                return
            if self._state is EngineState.UNLOADED:
                self._state = EngineState.LOADING
                self._down_since = time.monotonic()  # the startup window starts now
            if self._probe_thread is None:
                self._probe_thread = threading.Thread(
                    target=self._probe_loop, name=f"ds-engine-remote-probe-{self.name}",
                    daemon=True,
                )
                self._probe_thread.start()
        self._wake.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first probe verdict (or ``timeout``); True if READY. Without a
        timeout it still returns within about ``startup_timeout_s``."""
        if self._state is EngineState.UNLOADED:
            return False
        self._settled.wait(timeout)
        return self._state is EngineState.READY

    def _healthy(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._state is not EngineState.READY:
                log.info("model server %s is ready (model %s)", self.name, self._model)
            self._state = EngineState.READY
            self._error = None
            self._problem = None
            self._down_since = None
        self._settled.set()

    def _unhealthy(self, reason: str, *, fatal: bool = False) -> None:
        """A probe or request failed: FAILED at once if ``fatal`` (credentials refused,
        no such model), else once the server has been failing for the startup window.
        The probe goes on either way."""
        reason = self._scrub(reason)
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return
            self._problem = reason
            if self._down_since is None:
                self._down_since = now
            if fatal or now - self._down_since >= self.startup_timeout_s:
                if self._state is not EngineState.FAILED or self._error != reason:
                    log.warning("model server %s failed: %s", self.name, reason)
                self._state = EngineState.FAILED
                self._error = reason
                failed = True
            else:
                failed = False
        if failed:
            self._settled.set()
        self._wake.set()  # probe again soon

    def _check_ready(self) -> None:
        if self._closed:
            raise EngineNotReady(self._state, "engine is closed")
        state = self._state
        if state is EngineState.READY:
            return
        if state is EngineState.FAILED:
            raise EngineNotReady(state, f"model server {self.name} failed: {self._error}",
                                 retry_after=RETRY_AFTER_NOT_READY_S)
        if state is EngineState.LOADING:
            raise EngineNotReady(state, f"waiting for the model server {self.name}",
                                 retry_after=RETRY_AFTER_NOT_READY_S)
        raise EngineNotReady(state, "model server not contacted yet (start_loading)",
                             retry_after=RETRY_AFTER_NOT_READY_S)

    # ----------------------------------------------------------------- the probe

    def _probe_loop(self) -> None:
        """Probe until closed: quickly while not READY or failing, slowly once READY."""
        timeout = httpx.Timeout(min(self.timeout_s, 10.0))
        failures = 0  # probes failed in a row: the interval doubles up to the health one
        with httpx.Client(timeout=timeout, verify=self._ssl) as client:
            while not self._stop.is_set():
                try:
                    self._probe(client)
                except Exception as exc:  # a probe must never end the thread
                    log.exception("model server %s: the health probe failed", self.name)
                    self._unhealthy(f"health probe error: {type(exc).__name__}: {exc}")
                # After the probe: its own _unhealthy() must not skip the interval (and
                # close() sets _stop before _wake, so this clear cannot lose a close).
                self._wake.clear()
                if self._stop.is_set():
                    break
                if self._state is EngineState.READY and self._down_since is None:
                    failures, interval = 0, self.health_interval_s
                else:
                    interval = min(self.probe_interval_s * 2 ** min(failures, 16),
                                   max(self.probe_interval_s, self.health_interval_s))
                    failures += 1
                self._wake.wait(interval)  # a failed request wakes it early

    def _checked_get(self, client: httpx.Client, url: str) -> httpx.Response | None:
        """GET ``url``; None (the state says why) when unreachable or the key is refused."""
        try:
            answer = client.get(url, headers=self._headers)
        except httpx.HTTPError as exc:
            self._unhealthy(f"unreachable: {_describe(exc)}")
            return None
        if answer.status_code in (401, 403):
            self._unhealthy(self._refused_message(answer.status_code), fatal=True)
            return None
        return answer

    def _probe(self, client: httpx.Client) -> None:
        answer = self._checked_get(client, f"{self._endpoint.base}/models")
        if answer is None:
            return
        if answer.status_code == 404:
            # Not every server lists models (a bare llama.cpp build, a proxy): fall back.
            self._probe_health(client)
        elif answer.status_code != 200:
            self._unhealthy(f"GET /v1/models answered HTTP {answer.status_code}")
            return
        else:
            try:
                models = self._parse_models(answer.json())
            except ValueError as exc:
                self._unhealthy(f"GET /v1/models did not answer a model list: {exc}")
                return
            problem = self._set_models(models)
            if problem:
                self._unhealthy(problem, fatal=True)
                return
            self._healthy()
        if self._metrics_supported:
            self._probe_metrics(client)

    def _probe_health(self, client: httpx.Client) -> None:
        answer = self._checked_get(client, f"{self._endpoint.root}/health")
        if answer is None:
            return
        if answer.status_code != 200:
            self._unhealthy(f"GET /health answered HTTP {answer.status_code}")
        elif self._model is None:
            self._unhealthy("the server lists no models (GET /v1/models: 404); set the "
                            "RemoteEngine option 'model'", fatal=True)
        else:
            self._healthy()

    @staticmethod
    def _parse_models(payload: Any) -> list[dict[str, Any]]:
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in data
        ):
            raise ValueError("no 'data' list of models with ids")
        return data

    def _set_models(self, models: list[dict[str, Any]]) -> str | None:
        """Record the server's models; the reason the engine cannot serve, or None."""
        ids = [m["id"] for m in models]
        model = self._configured_model
        if model is None:
            bases = [m["id"] for m in models if m.get("parent") is None]
            model = (bases or ids or [None])[0]
            if model is None:
                return "the server serves no model"
        elif ids and model not in ids:
            return f"the server does not serve model {model!r} (it serves: {', '.join(ids)})"
        base = next((m for m in models if m["id"] == model), {})
        window = base.get("max_model_len")
        with self._lock:
            self._server_deadlines = base.get("owned_by") == "ds-engine"
            self._model = model
            self._models = models
            self._models_at = time.monotonic()
            if isinstance(window, int) and not isinstance(window, bool) and window > 0:
                self._server_window = window
        return None

    def _probe_metrics(self, client: httpx.Client) -> None:
        """vLLM's queue gauges from ``/metrics``; a server without them is not asked again."""
        try:
            answer = client.get(f"{self._endpoint.root}/metrics", headers=self._headers)
        except httpx.HTTPError:
            return
        if answer.status_code not in (200, 404):
            return  # a passing failure: ask again at the next probe
        waiting = None
        if answer.status_code == 200:
            waiting = _metric_sum(answer.text, "vllm:num_requests_waiting")
        if waiting is None:
            self._metrics_supported = False
            return
        self._server_waiting = int(waiting)

    def _refused_message(self, status: int) -> str:
        if self._api_key:
            return f"the server refused the API key (HTTP {status})"
        return f"the server requires an API key (HTTP {status}) and none is configured"

    # ----------------------------------------------------------------- model facts

    def count_tokens(self, text: str) -> int:
        """Local: the configured tokenizer file, else ``ceil(len / 3.2)`` (an estimate
        that over-counts typical code, see :mod:`ds_engine.tokenizer`)."""
        return self._counter.count(text)

    @property
    def exact_token_counts(self) -> bool:
        """True with a tokenizer file; False: counts are estimates, keep a margin."""
        return self._counter.exact

    def context_window(self) -> int:
        """The ``context_window`` option, else the server's ``max_model_len``, else 4096."""
        return self._configured_window or self._server_window or DEFAULT_CONTEXT_WINDOW

    def check_admission(self, request: GenerationRequest) -> None:
        """Only readiness: the server sheds its own load (429/503 come back as
        :class:`EngineOverloaded` from the request itself)."""
        self._check_ready()

    # ----------------------------------------------------------------- adapters

    def _known_models(self) -> list[dict[str, Any]] | None:
        """The cached model list (None: the server does not list models); asks the probe
        to refresh it once it is older than ``models_ttl_s``."""
        if self._models is not None and time.monotonic() - self._models_at > self.models_ttl_s:
            self._wake.set()
        return self._models

    def _adapter_models(self) -> list[dict[str, Any]]:
        models = self._known_models() or []
        # vLLM lists LoRA modules with their base as "parent"; other base models have
        # parent None and are not adapters. Servers without "parent" list only models.
        return [m for m in models
                if m["id"] != self._model and (m.get("parent") is not None or "parent" not in m)]

    def adapters(self) -> list[dict[str, Any]]:
        """The server's non-base models (vLLM serves LoRA adapters as models), from the
        probe's cached ``/v1/models`` (at most ``models_ttl_s`` old, plus one probe)."""
        return [{"name": m["id"], "merged": False, "default": False, "state": "ready",
                 "base_model": m.get("parent") or self._model, "source": m.get("root"),
                 "served_by": self.name} for m in self._adapter_models()]

    def _served(self, adapter: str | None) -> str | None:
        """The model name to ask for: the adapter's (404 when the server's list is known
        and lacks it), or the base model's for None."""
        if adapter is None or adapter == self._model:
            return self._model
        models = self._known_models()
        if models is not None and adapter not in {m["id"] for m in models}:
            from ds_engine.adapters import AdapterError

            raise AdapterError(404, f"unknown adapter {adapter!r} (not served by {self.name})")
        return adapter

    def template_for(self, adapter: str | None) -> PromptTemplate:
        """The configured template, for every adapter: an adapter's FIM format is in its
        metadata file, which stays on the server, so remote adapters must share the
        model's configured format. Unknown adapter: AdapterError 404."""
        self._served(adapter)
        return self._template

    def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        from ds_engine.adapters import AdapterError

        raise AdapterError(409, "adapters of a remote engine are loaded on its server")

    def unload_adapter(self, name: str) -> dict[str, Any]:
        from ds_engine.adapters import AdapterError

        raise AdapterError(409, "adapters of a remote engine are loaded on its server")

    # ----------------------------------------------------------------- requests

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                client = httpx.AsyncClient(
                    verify=self._ssl,
                    timeout=httpx.Timeout(self.timeout_s, read=self.read_timeout_s),
                    # Every running stream holds a connection; the server sheds load,
                    # not a client-side pool limit (its wait would read as a failure).
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
                )
                self._clients[loop] = client
        return client

    def _payload(self, request: GenerationRequest, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "prompt": request.prompt,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.user:
            body["user"] = request.user
        if self.send_priority and int(request.priority):
            body["priority"] = int(request.priority)  # vLLM: lower runs first, as here
        if request.min_tokens > 0:
            body["min_tokens"] = request.min_tokens
        if self.logprobs:
            body["logprobs"] = 1
        if self._server_deadlines:
            # ds-engine serve's extensions: it sheds what cannot start in time (429)
            # and ends generation at the deadline, so neither side works for nothing.
            now = time.monotonic()
            for field, at in (("queue_timeout_s", request.start_deadline),
                              ("timeout_s", request.deadline)):
                if at is not None:
                    body[field] = round(max(0.001, at - now), 3)
            if request.first_token_bias:  # no other server takes it (vLLM's logit_bias
                # holds for every token, not the first)
                body["first_token_bias"] = dict(request.first_token_bias)
        for name in self._dropped:
            body.pop(name, None)
        return body

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The whole answer (streamed underneath); cancelling the awaiting task closes
        the connection, which makes the server abort the request."""
        stream = self.stream(request)
        result: GenerationResult | None = None
        try:
            async for chunk in stream:
                if chunk.done:
                    result = chunk.result
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        assert result is not None
        return result

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Cumulative chunks, the last one ``done`` with the result.

        Raises :class:`EngineNotReady` (and AdapterError for an adapter the server does
        not serve) here, at call time. Past ``request.timeout_s`` the stream ends with
        a TIMEOUT result and the connection is closed; with no text by its start
        deadline (``queue_timeout_s``) it is shed (:class:`EngineOverloaded`), as the
        in-process engine sheds a request that could not start in time.
        """
        self._check_ready()
        if request.max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        model = self._served(request.adapter)
        assert model is not None
        announced = _Announced()
        with self._lock:
            self._announced[request.request_id] = announced
        return self._stream(request, model, announced)

    async def _stream(
        self, request: GenerationRequest, model: str, announced: _Announced
    ) -> AsyncIterator[StreamChunk]:
        loop = asyncio.get_running_loop()
        run = _Running(request, loop, asyncio.Queue())
        with self._lock:
            if self._announced.get(request.request_id) is announced:
                del self._announced[request.request_id]
            self._running[request.request_id] = run
            self.requests_total += 1
        text = ""
        counted = 0
        logprobs: list[float] = []
        usage: dict[str, Any] | None = None
        confidence: float | None = None  # as the server computed it, when it says
        finish: FinishReason | None = None
        first_at: float | None = None
        ended = False  # a final chunk was built, or an error raised
        accounted = False  # the result counted its tokens
        try:
            if announced.reason is not None:  # cancelled before it was iterated
                finish = announced.reason
            elif request.max_tokens == 0:
                finish = FinishReason.LENGTH
            else:
                run.reader = loop.create_task(
                    self._read(self._client(), run, model), name=f"remote-{request.request_id}"
                )
            while finish is None:
                item, timed_out = await self._next(run, started=bool(text))
                if run.reason is not None:
                    finish = run.reason
                    break
                if timed_out:
                    deadline, start_by = request.deadline, self._start_by(request)
                    if not text and start_by is not None and (
                        deadline is None or start_by < deadline
                    ):
                        # No text by its start deadline: shed, as the local scheduler
                        # sheds a request that could not start in time.
                        ended = True
                        with self._lock:
                            self.shed_total += 1
                        waited = time.monotonic() - request.created_at
                        raise EngineOverloaded(
                            f"the model server {self.name} did not start this request in "
                            f"{waited:.1f} s; retry shortly", 1)
                    finish = FinishReason.TIMEOUT
                    break
                if item is _END:
                    finish = FinishReason.STOP
                    break
                if isinstance(item, _Failure):
                    ended = True
                    error = item.error
                    if isinstance(error, _StreamFailure):
                        # Retryable elsewhere only while nothing reached the caller.
                        raise self._backend_error(str(error), retryable=not text) from None
                    if isinstance(error, _AdapterMissing):
                        from ds_engine.adapters import AdapterError

                        raise AdapterError(404, str(error)) from None
                    raise error
                assert isinstance(item, _Delta)
                if item.usage is not None:
                    usage = item.usage
                if item.confidence is not None:
                    confidence = item.confidence
                logprobs.extend(item.logprobs)
                if item.text:
                    text += item.text
                    counted += item.tokens or 1
                    if first_at is None:
                        first_at = time.monotonic()
                    yield StreamChunk(text, item.text, counted)
                if item.finish is not None:
                    # Keep reading to [DONE]: the usage event comes after the finish.
                    run_finish = _FINISH_REASONS.get(item.finish, FinishReason.STOP)
                    late = await self._drain(run)
                    usage = late.usage or usage
                    confidence = late.confidence if late.confidence is not None else confidence
                    finish = run_finish
            result = self._result(request, model, text, counted, logprobs, usage, confidence,
                                  finish, first_at)
            ended = accounted = True
            yield StreamChunk(text, "", result.token_count, done=True, result=result)
        finally:
            with self._lock:
                self._running.pop(request.request_id, None)
                if not accounted:
                    self.tokens_generated_total += counted
                if finish is FinishReason.CANCELLED or not ended:
                    self.cancelled_total += 1  # cancelled, or left early by the caller
            await self._stop_reader(run)

    async def _next(self, run: _Running, *, started: bool) -> tuple[Any, bool]:
        """The next item from the reader, or ``(None, True)`` when the wait ran into the
        request's deadline (its start deadline while no text has come yet)."""
        request = run.request
        limit = request.deadline if started else self._start_by(request)
        if limit is None:
            return await run.queue.get(), False
        try:
            remaining = max(0.0, limit - time.monotonic())
            return await asyncio.wait_for(run.queue.get(), remaining), False
        except asyncio.TimeoutError:
            return None, True

    def _start_by(self, request: GenerationRequest) -> float | None:
        """When a request that has no text yet is given up (shed, or timed out).

        Its start deadline; but ds-engine serve enforces that deadline itself (it sheds
        with a 429) and its first text comes after the prefill, so a request it started
        just in time is not shed here: the limit is then the start deadline plus
        ``timeout_s``, bounded by the request's deadline. A generic server (vLLM,
        llama.cpp) does not say when a request started, so there it is the start
        deadline itself.
        """
        start_by = request.start_deadline
        if start_by is None or not self._server_deadlines:
            return start_by
        grace = start_by + self.timeout_s
        return grace if request.deadline is None else min(grace, request.deadline)

    def _header_wait(self, request: GenerationRequest) -> float:
        """How long to wait for an answer's headers: ``timeout_s``. ds-engine serve
        answers its headers only once the request started (a 429 if it could not start
        in time), so there the wait also covers the time left to the start deadline: a
        long queue on a live replica is not mistaken for a dead one."""
        wait = self.timeout_s
        if self._server_deadlines:
            start_by = request.start_deadline or request.deadline
            if start_by is not None:
                wait += max(0.0, start_by - time.monotonic())
        return wait

    async def _drain(self, run: _Running) -> _Delta:
        """After the finish event: the usage (and confidence) of the events up to
        ``[DONE]``, if they come at once (briefly: the answer is complete whatever
        follows)."""
        late = _Delta()
        end = time.monotonic() + 1.0
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0 or run.reason is not None:
                return late
            try:
                item = await asyncio.wait_for(run.queue.get(), remaining)
            except asyncio.TimeoutError:
                return late
            if not isinstance(item, _Delta):
                return late  # [DONE], a failure after the finish (ignored), a cancel
            late.usage = item.usage or late.usage
            if item.confidence is not None:
                late.confidence = item.confidence

    def _result(
        self, request: GenerationRequest, model: str, text: str, counted: int,
        logprobs: list[float], usage: dict[str, Any] | None, server_confidence: float | None,
        finish: FinishReason, first_at: float | None,
    ) -> GenerationResult:
        """The result: token counts from the server's usage when it sent them (else the
        chunks with text, each one token as vLLM and llama.cpp stream them, and the local
        count of the prompt); ``confidence`` from the log-probabilities (exp of their
        mean, as the in-process engine computes it), else the one ``ds-engine serve``
        sends (``choices[0].confidence``), else :data:`NEUTRAL_CONFIDENCE`."""
        now = time.monotonic()
        completion = usage.get("completion_tokens") if usage else None
        prompt = usage.get("prompt_tokens") if usage else None
        tokens = completion if isinstance(completion, int) and completion >= 0 else counted
        if not (isinstance(prompt, int) and prompt >= 0):
            prompt = self.count_tokens(request.prompt)
        if logprobs:
            confidence = min(1.0, math.exp(sum(logprobs) / len(logprobs)))
        elif server_confidence is not None:
            confidence = server_confidence
        else:
            confidence = 1.0 if not text else NEUTRAL_CONFIDENCE
        with self._lock:
            self.tokens_generated_total += tokens
            self.prompt_tokens_total += prompt
        return GenerationResult(
            text=text,
            token_count=tokens,
            prompt_tokens=prompt,
            confidence=confidence,
            finish_reason=finish,
            model=model,
            latency_ms=(now - request.created_at) * 1000.0,
            time_to_first_token_ms=None if first_at is None
            else (first_at - request.created_at) * 1000.0,
            request_id=request.request_id,
        )

    async def _stop_reader(self, run: _Running) -> None:
        """Cancel the reader (its ``async with`` closes the connection) and let it end."""
        reader = run.reader
        if reader is None or reader.done():
            return
        run.stop_reader()
        try:
            await asyncio.wait({reader}, timeout=2.0)
        except BaseException:  # the caller's own cancellation wins
            return

    # ----------------------------------------------------------------- the reader

    async def _read(self, client: httpx.AsyncClient, run: _Running, model: str) -> None:
        """Send the request and put the answer's events on ``run.queue``; every failure
        is put there too (the consumer decides how it surfaces)."""
        put = run.queue.put_nowait
        try:
            await self._exchange(client, run, model, put)
        except asyncio.CancelledError:
            raise
        except (BackendError, EngineNotReady, _StreamFailure, _AdapterMissing) as exc:
            put(_Failure(exc))
        except Exception as exc:  # whatever it is, the caller must hear of it
            log.exception("model server %s: unexpected failure", self.name)
            put(_Failure(_StreamFailure(f"unexpected failure: {type(exc).__name__}: {exc}")))

    async def _exchange(self, client: httpx.AsyncClient, run: _Running, model: str,
                        put: Any) -> None:
        request = run.request
        url = f"{self._endpoint.base}/completions"
        attempt = 0
        while True:
            attempt += 1
            payload = self._payload(request, model)
            wait = self._header_wait(request)
            try:
                response = await asyncio.wait_for(
                    client.send(client.build_request("POST", url, json=payload,
                                                     headers=self._headers), stream=True),
                    wait,
                )
            except (httpx.TransportError, asyncio.TimeoutError) as exc:
                failure = _describe(exc)
                if isinstance(exc, asyncio.TimeoutError):
                    failure = f"no answer within {wait:.3g} s"
                if attempt <= self.retries:
                    await self._backoff(attempt, failure)
                    continue
                self._unhealthy(f"unreachable: {failure}")
                raise self._backend_error(
                    f"no answer after {attempt} attempt(s): {failure}", retryable=True
                ) from None
            try:
                status = response.status_code
                if status == 200:
                    self._healthy()
                    await self._read_answer(response, put)
                    return
                detail = await self._error_detail(response)
                refused = self._refused_field(status, detail, payload)
                if refused is not None:
                    log.warning("model server %s refused the field %r (%s); it is no longer "
                                "sent", self.name, refused, self._scrub(detail))
                    self._dropped.add(refused)
                    attempt -= 1  # not a failure of the server
                    continue
                retry_after = response.headers.get("retry-after")
                if status == 429 or (status == 503 and retry_after):
                    with self._lock:
                        self.shed_total += 1
                    raise EngineOverloaded(
                        self._scrub(f"the model server {self.name} is busy (HTTP {status}): "
                                    f"{detail}"), _retry_after(retry_after))
                if status in _RETRIED_STATUSES:
                    if attempt <= self.retries:
                        await response.aclose()  # not held through the backoff
                        await self._backoff(attempt, f"HTTP {status}: {detail}")
                        continue
                    raise self._backend_error(
                        f"answered HTTP {status} after {attempt} attempt(s): {detail}",
                        retryable=True)
                if status in (401, 403):
                    message = self._refused_message(status)
                    self._unhealthy(message, fatal=True)
                    raise self._backend_error(f"{message}: {detail}", retryable=False)
                if status == 404 and request.adapter is not None:
                    raise _AdapterMissing(f"unknown adapter {request.adapter!r} (not served "
                                          f"by {self.name})")
                raise self._backend_error(
                    f"{'refused' if status < 500 else 'failed'} the request (HTTP {status}): "
                    f"{detail}", retryable=status >= 500)
            finally:
                await response.aclose()

    async def _backoff(self, attempt: int, failure: str) -> None:
        delay = self.retry_backoff_s * 2 ** (attempt - 1)
        with self._lock:
            self.retries_total += 1
        log.warning("model server %s: attempt %d failed (%s); retrying in %.2f s",
                    self.name, attempt, self._scrub(failure), delay)
        await asyncio.sleep(delay)

    def _refused_field(self, status: int, detail: str, payload: dict[str, Any]) -> str | None:
        """The optional field a 400/422 names, when this request sent it (else None)."""
        if status not in (400, 422):
            return None
        for name in OPTIONAL_FIELDS:
            if name in payload and name not in self._dropped and re.search(
                rf"\b{name}\b", detail, re.IGNORECASE
            ):
                return name
        return None

    async def _error_detail(self, response: httpx.Response) -> str:
        """The server's error message (OpenAI's ``error.message``, FastAPI's
        ``detail``...), at most 300 characters, never the key."""
        body = b""
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= _MAX_ERROR_BODY:
                    break
        except httpx.HTTPError:
            pass
        text = body.decode("utf-8", errors="replace").strip()
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            error = payload.get("error")
            if isinstance(error, dict) and error.get("message"):
                text = str(error["message"])
            elif isinstance(error, str):
                text = error
            elif payload.get("message") or payload.get("detail"):
                text = str(payload.get("message") or payload.get("detail"))
        text = " ".join(text.split())
        return self._scrub(text[:300] if text else response.reason_phrase or "no details")

    async def _read_answer(self, response: httpx.Response, put: Any) -> None:
        ctype = response.headers.get("content-type", "")
        try:
            if "json" in ctype and "event-stream" not in ctype:
                await self._read_json(response, put)
                return
            finished = False
            # aclosing: returning from inside the loop must close the parser too.
            async with contextlib.aclosing(aiter_events(response.aiter_bytes())) as events:
                async for event in events:
                    if event.data.strip() == "[DONE]":
                        if not finished:  # cut short (llama.cpp's server does, by default,
                            # when another request comes in): never a finished answer
                            raise _StreamFailure("ended ([DONE]) before a finish_reason")
                        put(_END)
                        return
                    if event.event == "error":
                        raise _StreamFailure(f"sent an error event: {event.data[:300]}")
                    try:
                        payload = json.loads(event.data)
                    except ValueError:
                        raise _StreamFailure(
                            f"sent malformed JSON in its event stream: {event.data[:120]!r}"
                        ) from None
                    delta = self._parse_event(payload)
                    finished = finished or delta.finish is not None
                    put(delta)
        except httpx.TimeoutException:
            raise _StreamFailure(
                f"sent nothing for {self.read_timeout_s:g} s in the middle of an answer"
            ) from None
        except httpx.HTTPError as exc:
            raise _StreamFailure(f"the connection broke off mid-answer ({_describe(exc)})"
                                 ) from None
        except SSEError as exc:
            raise _StreamFailure(f"sent a malformed event stream: {exc}") from None
        if not finished:
            raise _StreamFailure("the event stream ended before the answer finished "
                                 "(no finish_reason, no [DONE])")
        put(_END)

    async def _read_json(self, response: httpx.Response, put: Any) -> None:
        """A server that ignored ``stream``: the whole completion as one JSON object."""
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > _MAX_JSON_BODY:
                raise _StreamFailure("answered more than 16 MiB of JSON")
        try:
            payload = json.loads(body)
        except ValueError:
            raise _StreamFailure(f"answered malformed JSON: {body[:120]!r}") from None
        delta = self._parse_event(payload)
        if delta.text and not delta.logprobs:
            delta.tokens = self.count_tokens(delta.text)
        if delta.finish is None:
            delta.finish = "stop"
        put(delta)
        put(_END)

    @staticmethod
    def _parse_event(payload: Any) -> _Delta:
        """One completion chunk (``choices[0].text``; a chat chunk's ``delta.content`` is
        read too); a usage-only chunk; or an error object, which fails the stream."""
        if not isinstance(payload, dict):
            raise _StreamFailure(f"sent an event that is not a JSON object: {payload!r:.120}")
        error = payload.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else error
            raise _StreamFailure(f"reported an error mid-answer: {str(message)[:300]}")
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else None
        choices = payload.get("choices")
        if not choices:
            if choices is None and usage is None:
                raise _StreamFailure(f"sent an event without choices: {payload!r:.120}")
            return _Delta(usage=usage)
        if not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise _StreamFailure("sent an event whose choices are not a list of objects")
        choice = choices[0]
        text = choice.get("text")
        if text is None and isinstance(choice.get("delta"), dict):
            text = choice["delta"].get("content")
        text = "" if text is None else text
        finish = choice.get("finish_reason")
        if not isinstance(text, str) or not (finish is None or isinstance(finish, str)):
            raise _StreamFailure("sent an event whose text or finish_reason is not a string")
        logprobs = _logprobs(choice.get("logprobs"))
        confidence = choice.get("confidence")
        if not (isinstance(confidence, (int, float)) and not isinstance(confidence, bool)
                and 0.0 <= confidence <= 1.0):
            confidence = None
        return _Delta(text, finish, logprobs, len(logprobs) or (1 if text else 0), usage,
                      confidence)

    # ----------------------------------------------------------------- stopping

    def cancel(self, request_id: str, *, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        """Stop a running request by id (from any thread); True if it was running or
        its stream was handed out and not iterated yet (that stream then ends at once,
        asking the server nothing).

        Its connection is closed (the server aborts the request) and its stream ends
        with a final chunk: ``CANCELLED``, or ``STOP`` (the caller has what it needs),
        with the text so far.
        """
        with self._lock:
            run = self._running.get(request_id)
            if run is None:
                announced = self._announced.get(request_id)
                if announced is None:
                    return False
                if announced.reason is None:
                    announced.reason = reason
                return True
        if run.reason is None:
            run.reason = reason

        def stop() -> None:
            run.queue.put_nowait(_STOP)
            run.stop_reader()

        try:
            same_loop = asyncio.get_running_loop() is run.loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            stop()
        else:
            try:
                run.loop.call_soon_threadsafe(stop)
            except RuntimeError:  # its loop is closed: nothing is running there any more
                return False
        return True

    def cancel_all(self) -> int:
        with self._lock:
            ids = list(self._running)
        return sum(self.cancel(i) for i in ids)

    def close(self) -> None:
        """Stop the probe, cancel what runs, close the HTTP clients; no more requests.

        Clients of a loop that is still running are closed on it (a task there); use
        :meth:`aclose` from a coroutine to wait for the current loop's client.
        """
        with self._lock:
            self._closed = True
            clients = list(self._clients.items())
            self._clients.clear()
        self._stop.set()
        self._wake.set()
        self.cancel_all()
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, client in clients:
            if loop.is_closed():
                continue  # its connections went with the loop
            if loop is current:
                task = loop.create_task(client.aclose())
                self._closing.add(task)  # a task nobody references may be collected
                task.add_done_callback(self._closing.discard)
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)
            # A loop that is not running cannot close them now; they close with it.
        thread = self._probe_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    shutdown = close

    async def aclose(self) -> None:
        """:meth:`close`, waiting for this loop's client to close its connections."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.pop(loop, None)
        self.cancel_all()
        await asyncio.sleep(0)  # let the cancelled readers close their responses
        if client is not None:
            await client.aclose()
        await asyncio.to_thread(self.close)

    # ----------------------------------------------------------------- reporting

    def info(self) -> EngineInfo:
        """What the engine knows: its own requests (``active_requests`` are the ones in
        flight from here), and the server's waiting queue from ``/metrics`` when it
        exports vLLM's gauge (as of the last health probe; 0 when it does not)."""
        with self._lock:
            counters = EngineCounters(
                requests_total=self.requests_total,
                tokens_generated_total=self.tokens_generated_total,
                active_requests=len(self._running),
                queued_requests=self._server_waiting or 0,
                cancelled_total=self.cancelled_total,
                shed_total=self.shed_total,
                prompt_tokens_total=self.prompt_tokens_total,
            )
            state, error, problem = self._state, self._error, self._problem
        return EngineInfo(
            name=self._model or self.name,
            state=state,
            error=error,
            source=self._endpoint.display,
            kind="remote",
            loading_stage=(f"waiting for the server: {problem}" if problem
                           else "waiting for the server")
            if state is EngineState.LOADING else None,
            template=self._template.name,
            supports_fim=self._template.supports_fim,
            context_window=self.context_window(),
            adapters_attached=len(self._adapter_models()),
            counters=counters,
        )
