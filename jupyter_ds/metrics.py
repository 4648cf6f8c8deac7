"""Prometheus metrics of jupyter-ds, served by Jupyter server's own ``/metrics``.

Jupyter server exposes ``prometheus_client``'s default registry at ``<base_url>/metrics``
(``PrometheusMetricsHandler``); it asks for the server's token or a login unless
``ServerApp.authenticate_prometheus`` is False, so a scraper either sends
``Authorization: token ...`` or the deployment turns that off behind its own network
policy. Everything here registers in that default registry; nothing opens another port.

Names follow vLLM's in spirit (``jupyter_ds_`` instead of ``vllm:``), so dashboards built
for one read the other: ``time_to_first_token_seconds``, ``time_per_output_token_seconds``,
``e2e_request_latency_seconds``, ``num_requests_running`` / ``num_requests_waiting``,
``prompt_tokens_total`` / ``generation_tokens_total``.

Three sources, chosen so that the hot path only ever increments a counter:

* **Requests** (routing tier): the handler layer calls :func:`observe_request` once per
  finished HTTP request or WebSocket message.
* **Generations**: :class:`InstrumentedEngine` wraps the engine and records every
  :class:`~ds_engine.interface.GenerationResult` (:func:`observe_generation`), the
  cancellations that clients asked for, and the run of consecutive timeouts.
* **State read at scrape time**: :class:`EngineCollector` reads ``engine.info()`` (queue
  depth, running requests, cache counters, model state, load time) when Prometheus
  scrapes, and :class:`GpuMemoryCollector` reads CUDA memory where CUDA is in use.
  Process CPU and memory come from ``prometheus_client``'s own process collector, which
  is registered in the default registry on Linux.

Sandbox runs are counted by :func:`observe_sandbox_run` (called by the test-generation
service for every sandboxed pytest run).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from ds_engine import FinishReason
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "jupyter_ds_"

# Request latency, 10 ms .. 3 min: roughly x1.33-x1.5 per step between 50 ms and 120 s,
# so histogram_quantile() interpolates P95/P99 within a bucket's width of the truth.
REQUEST_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
    4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0,
)  # fmt: skip
# vLLM's time-to-first-token buckets, extended for CPU-only deployments.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0,
)  # fmt: skip
# vLLM's inter-token buckets, with a slow tail for small CPUs.
TPOT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0,
)  # fmt: skip
SANDBOX_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0)

# Endpoints whose success says nothing about the model's health: cheap status polls.
PASSIVE_ENDPOINTS = frozenset({"health", "models"})
# Run-level sandbox verdicts (see ``testgen.sandbox.FAILURES``) plus passed / failed.
SANDBOX_VERDICTS = frozenset(
    {
        "passed",
        "failed",
        "timeout",
        "killed",
        "cpu_limit",
        "no_report",
        "invalid_report",
        "collection_error",
        "no_tests",
        "sandbox_error",
        "internal_error",
    }
)
FINISH_REASONS = frozenset({"length", "stop", "cancelled", "timeout"})
PRIORITIES = {0: "interactive", 1: "chat", 2: "batch"}


def _existing(name: str) -> Any:
    """The collector already registered under ``name`` (module re-import), or None."""
    return getattr(REGISTRY, "_names_to_collectors", {}).get(name)  # no public lookup


def _metric(cls: type, name: str, documentation: str, labels: Iterable[str] = (), **kw: Any):
    """Create a metric in the default registry, or reuse it if it is already there."""
    try:
        return cls(name, documentation, list(labels), **kw)
    except ValueError:  # "Duplicated timeseries": this module was imported twice
        found = _existing(name) or _existing(name + "_total")
        if found is None:
            raise
        return found


# --------------------------------------------------------------------------- requests

REQUEST_DURATION = _metric(
    Histogram,
    "jupyter_ds_request_duration_seconds",
    "Time to answer a jupyter-ds API request (HTTP) or WebSocket message, by endpoint.",
    ["endpoint", "method"],
    buckets=REQUEST_BUCKETS,
)
REQUESTS = _metric(
    Counter,
    "jupyter_ds_requests",
    "Finished jupyter-ds API requests by endpoint and HTTP status code.",
    ["endpoint", "status"],
)
REQUEST_ERRORS = _metric(
    Counter,
    "jupyter_ds_request_errors",
    "jupyter-ds API requests answered with an error, by endpoint and error code "
    "(the envelope's error.code: invalid_request, rate_limited, timeout, internal_error...).",
    ["endpoint", "code"],
)
REQUESTS_SHED = _metric(
    Counter,
    "jupyter_ds_requests_shed",
    "jupyter-ds API requests shed under load (code overloaded: 503, or 429 for a user over "
    "a fair share), answered at once with Retry-After. Not failures: alerts on 5xx leave "
    "them out.",
    ["endpoint", "status"],
)
REQUEST_TIMEOUTS = _metric(
    Counter,
    "jupyter_ds_request_timeouts",
    "jupyter-ds API requests answered 504 (generation or git command timed out).",
    ["endpoint"],
)
CONSECUTIVE_TIMEOUTS = _metric(
    Gauge,
    "jupyter_ds_consecutive_timeouts",
    "Generations in a row that hit their deadline; back to 0 at the next one that finishes.",
)

# ------------------------------------------------------------------------ generations

TIME_TO_FIRST_TOKEN = _metric(
    Histogram,
    "jupyter_ds_time_to_first_token_seconds",
    "Time from a generation's arrival at the engine to its first token.",
    ["priority"],
    buckets=TTFT_BUCKETS,
)
TIME_PER_OUTPUT_TOKEN = _metric(
    Histogram,
    "jupyter_ds_time_per_output_token_seconds",
    "Mean time per generated token after the first (1 / decode tokens per second).",
    ["priority"],
    buckets=TPOT_BUCKETS,
)
E2E_LATENCY = _metric(
    Histogram,
    "jupyter_ds_e2e_request_latency_seconds",
    "Time from a generation's arrival at the engine to its last token.",
    ["priority"],
    buckets=REQUEST_BUCKETS,
)
GENERATION_TOKENS = _metric(
    Counter,
    "jupyter_ds_generation_tokens",
    "Tokens generated by the model.",
    ["priority"],
)
PROMPT_TOKENS = _metric(
    Counter,
    "jupyter_ds_prompt_tokens",
    "Prompt tokens of finished generations.",
    ["priority"],
)
GENERATIONS = _metric(
    Counter,
    "jupyter_ds_generations",
    "Finished generations by finish reason (length, stop, cancelled, timeout).",
    ["priority", "finish_reason"],
)
CANCELLED_REQUESTS = _metric(
    Counter,
    "jupyter_ds_cancelled_requests",
    "Generations cancelled by their client (a cancel message, a newer request on the "
    "socket, a closed socket or stream); not the server's own early stops.",
    ["priority"],
)

# ---------------------------------------------------------------------------- sandbox

SANDBOX_RUNS = _metric(
    Counter,
    "jupyter_ds_sandbox_runs",
    "Sandboxed pytest runs of generated tests by verdict: passed, failed, or the run's "
    "failure (timeout, killed, cpu_limit, collection_error, no_tests, ...).",
    ["verdict"],
)
SANDBOX_DURATION = _metric(
    Histogram,
    "jupyter_ds_sandbox_run_duration_seconds",
    "Wall-clock time of one sandboxed pytest run.",
    buckets=SANDBOX_BUCKETS,
)


# ----------------------------------------------------------------- acceptance telemetry

# What clients report about the suggestions they got (``POST jupyter-ds/v1/telemetry``),
# labelled by the model and adapter that answered, as the server remembers them (never
# as a client says: the label values stay the server's few). ``adapter`` is "" when no
# adapter answered (no adapter name can be empty). Acceptance rate in PromQL:
# ``sum by (model, adapter) (rate(..._accepted_total[1h]))
#   / sum by (model, adapter) (rate(..._shown_total[1h]))``.
COMPLETION_EVENTS = {
    kind: _metric(
        Counter,
        f"jupyter_ds_completions_{kind}",
        f"Completions clients reported as {text}, by model and adapter (each completion "
        "counts once per kind).",
        ["model", "adapter"],
    )
    for kind, text in (
        ("shown", "shown to the user"),
        ("accepted", "accepted"),
        ("partially_accepted", "partially accepted (the user kept part of the text)"),
        ("dismissed", "dismissed"),
    )
}


# ------------------------------------------------------------------------------- API


def _label(value: Any, fallback: str = "unknown") -> str:
    text = str(value) if value not in (None, "") else fallback
    return text[:64]


def _error_code_for(status: int) -> str:
    return {
        400: "invalid_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        409: "conflict",
        413: "payload_too_large",
        429: "rate_limited",
        503: "model_not_ready",
        504: "timeout",
    }.get(status, "internal_error" if status >= 500 else "error")


def observe_request(
    endpoint: str,
    method: str,
    status: int,
    seconds: float,
    error_code: str | None = None,
) -> None:
    """Record one finished request: call it once, when the answer has been sent.

    ``endpoint``: the route's name (``complete``, ``explain``, ``git/status``...; never
    the raw URL path, which would make unbounded label values). ``method``: the HTTP verb,
    or ``WS`` for a WebSocket message. ``status``: the HTTP status code (for a WebSocket
    message, the one the same error would have had over HTTP, 200 for an answer).
    ``error_code``: the error envelope's ``code`` when the request failed.
    """
    endpoint = _label(endpoint)
    status = int(status)
    REQUEST_DURATION.labels(endpoint=endpoint, method=_label(method).upper()).observe(
        max(0.0, float(seconds))
    )
    REQUESTS.labels(endpoint=endpoint, status=str(status)).inc()
    if status >= 400:
        code = _label(error_code or _error_code_for(status))
        REQUEST_ERRORS.labels(endpoint=endpoint, code=code).inc()
        if code == "overloaded":
            REQUESTS_SHED.labels(endpoint=endpoint, status=str(status)).inc()
    if status == 504:
        REQUEST_TIMEOUTS.labels(endpoint=endpoint).inc()


def observe_completion_event(kind: str, model: str, adapter: str | None) -> None:
    """Count one telemetry event (``shown``, ``accepted``, ``partially_accepted``,
    ``dismissed``) of a completion answered by ``model`` with ``adapter`` (None: "")."""
    counter = COMPLETION_EVENTS.get(kind)
    if counter is not None:
        counter.labels(model=_label(model), adapter=_label(adapter, "")).inc()


def _priority(request: Any) -> str:
    value = getattr(request, "priority", None)
    try:
        return PRIORITIES.get(int(value), "interactive") if value is not None else "interactive"
    except (TypeError, ValueError):
        return "interactive"


def observe_generation(result: Any, priority: str = "interactive") -> None:
    """Record one finished generation (a ``GenerationResult``).

    :class:`InstrumentedEngine` calls this for every generation; call it directly only
    for results that do not come through the instrumented engine.
    """
    reason = getattr(result.finish_reason, "value", result.finish_reason)
    reason = reason if reason in FINISH_REASONS else "stop"
    tokens = max(0, int(result.token_count or 0))
    GENERATIONS.labels(priority=priority, finish_reason=reason).inc()
    GENERATION_TOKENS.labels(priority=priority).inc(tokens)
    PROMPT_TOKENS.labels(priority=priority).inc(max(0, int(result.prompt_tokens or 0)))
    latency = max(0.0, float(result.latency_ms or 0.0)) / 1000.0
    E2E_LATENCY.labels(priority=priority).observe(latency)
    ttft_ms = result.time_to_first_token_ms
    if tokens and ttft_ms is not None:
        ttft = max(0.0, float(ttft_ms)) / 1000.0
        TIME_TO_FIRST_TOKEN.labels(priority=priority).observe(ttft)
        # A stored (result-cache) answer arrives all at once: no decode time to report.
        if tokens > 1 and latency > ttft:
            TIME_PER_OUTPUT_TOKEN.labels(priority=priority).observe((latency - ttft) / (tokens - 1))
    if reason == "timeout":
        CONSECUTIVE_TIMEOUTS.inc()
    elif reason in ("length", "stop"):
        CONSECUTIVE_TIMEOUTS.set(0)


def observe_cancelled(priority: str = "interactive") -> None:
    """Record a generation that its client cancelled."""
    CANCELLED_REQUESTS.labels(priority=priority).inc()


def sandbox_verdict(report: Any) -> str:
    """The run-level verdict of a ``testgen.sandbox.RunReport``."""
    if not getattr(report, "ok", False):
        failure = getattr(report, "failure", None)
        return failure if failure in SANDBOX_VERDICTS else "internal_error"
    tests = getattr(report, "tests", {}) or {}
    if not tests:
        return "no_tests"
    return "passed" if all(t.outcome == "passed" for t in tests.values()) else "failed"


def observe_sandbox_run(report: Any) -> None:
    """Record one sandboxed pytest run (``RunReport``) by its verdict."""
    try:
        SANDBOX_RUNS.labels(verdict=sandbox_verdict(report)).inc()
        duration = getattr(report, "duration_s", None)
        if isinstance(duration, (int, float)) and math.isfinite(duration):
            SANDBOX_DURATION.observe(max(0.0, float(duration)))
    except Exception:  # metrics must never break a run
        log.debug("could not record a sandbox run", exc_info=True)


# ------------------------------------------------------------------ engine wrapper


class InstrumentedEngine:
    """The engine, with every generation, client cancellation and timeout recorded.

    A transparent proxy: everything but ``generate``, ``stream`` and ``cancel`` is the
    wrapped engine's own (``state``, ``info()``, ``count_tokens``, private attributes...),
    and those three keep their contracts: ``stream`` still raises ``EngineNotReady`` at
    call time, and leaving its iteration early still closes the engine's stream (which
    cancels the generation).

    A *client* cancellation is ``cancel(request_id)`` through this proxy, or a
    generation whose caller stopped listening before the end (a cancelled task, a closed
    stream); a request that the server stops on its own (``cancel(id, reason=STOP)``, as
    completion does once a block is complete) is a normal finish, not a cancellation.
    """

    def __init__(self, engine: Any):
        object.__setattr__(self, "_engine", engine)
        object.__setattr__(self, "_live", {})  # request_id -> [priority, cancel counted]
        object.__setattr__(self, "_live_lock", threading.Lock())

    @property
    def wrapped(self) -> Any:
        return self._engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def __repr__(self) -> str:
        return f"InstrumentedEngine({self._engine!r})"

    @property
    def state(self) -> Any:
        return self._engine.state

    @property
    def template(self) -> Any:
        return self._engine.template

    def _enter(self, request: Any) -> str:
        rid = request.request_id
        with self._live_lock:
            self._live[rid] = [_priority(request), False]
        return rid

    def _leave(self, rid: str) -> None:
        with self._live_lock:
            self._live.pop(rid, None)

    def _client_cancelled(self, rid: str) -> None:
        with self._live_lock:
            entry = self._live.get(rid)
            if entry is None or entry[1]:
                return
            entry[1] = True
        observe_cancelled(entry[0])

    async def generate(self, request: Any) -> Any:
        rid = self._enter(request)
        try:
            result = await self._engine.generate(request)
        except asyncio.CancelledError:
            self._client_cancelled(rid)
            raise
        finally:
            self._leave(rid)
        self._observe(result, request)
        return result

    def stream(self, request: Any) -> AsyncIterator[Any]:
        inner = self._engine.stream(request)  # EngineNotReady is raised here, at call time
        return self._stream(request, inner)

    async def _stream(self, request: Any, inner: AsyncIterator[Any]) -> AsyncIterator[Any]:
        rid = self._enter(request)
        finished = False
        try:
            async for chunk in inner:
                if chunk.done and chunk.result is not None and not finished:
                    finished = True
                    self._observe(chunk.result, request)
                yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            if not finished:
                self._client_cancelled(rid)
            raise
        finally:
            self._leave(rid)
            aclose = getattr(inner, "aclose", None)
            if aclose is not None:
                await aclose()

    def cancel(self, request_id: str, *, reason: Any = FinishReason.CANCELLED) -> bool:
        known = self._engine.cancel(request_id, reason=reason)
        if reason is FinishReason.CANCELLED:  # STOP: the server had what it needed
            self._client_cancelled(request_id)
        return known

    @staticmethod
    def _observe(result: Any, request: Any) -> None:
        try:
            observe_generation(result, _priority(request))
        except Exception:  # metrics must never break a generation
            log.debug("could not record a generation", exc_info=True)


def instrument(engine: Any) -> Any:
    """``engine`` wrapped in an :class:`InstrumentedEngine` (once)."""
    return engine if isinstance(engine, InstrumentedEngine) else InstrumentedEngine(engine)


# ------------------------------------------------------------- scrape-time collectors

# engine.info() key -> (metric name without the prefix, kind, help)
ENGINE_COUNTERS: dict[str, tuple[str, str]] = {
    "requests_total": ("engine_requests", "Generations the engine accepted (cache hits too)."),
    "prefix_cache_hits": (
        "prefix_cache_hits",
        "Generations whose prompt reused a cached KV prefix.",
    ),
    "prefix_cache_misses": (
        "prefix_cache_misses",
        "Generations whose prompt found no cached KV prefix.",
    ),
    "prompt_tokens_total": (
        "prefix_cache_queried_tokens",
        "Prompt tokens the engine prefilled or looked up in the prefix cache.",
    ),
    "prompt_tokens_reused_total": (
        "prefix_cache_reused_tokens",
        "Prompt tokens taken from the prefix cache instead of being prefilled.",
    ),
    "result_cache_hits": (
        "result_cache_hits",
        "Generations answered from the result cache (identical greedy requests).",
    ),
    "batch_steps_total": ("batch_steps", "Decode steps of the batching scheduler."),
    "draft_steps_total": ("spec_decode_num_drafts",
                          "Decode steps that verified tokens drafted from the prompt."),
    "draft_tokens_total": ("spec_decode_num_draft_tokens", "Tokens drafted from the prompt."),
    "draft_tokens_accepted_total": ("spec_decode_num_accepted_tokens",
                                    "Drafted tokens the model kept."),
    "compiled_steps_total": ("compiled_decode_steps",
                             "Decode steps run by the compiled step over a static KV cache."),
}
ENGINE_GAUGES: dict[str, tuple[str, str]] = {
    "active_requests": ("num_requests_running", "Generations running in the engine now."),
    "queued_requests": ("num_requests_waiting", "Generations waiting for a batch slot now."),
    "prefix_cache_entries": ("prefix_cache_entries", "Entries in the KV prefix cache."),
    "result_cache_entries": ("result_cache_entries", "Entries in the result cache."),
    "max_batch_size": ("max_batch_size", "Largest batch the scheduler may run."),
    "mean_batch_size": ("mean_batch_size", "Mean batch size over all decode steps."),
    "model_memory_bytes": ("model_memory_bytes", "Memory taken by the model's weights."),
    "load_time_s": ("model_load_seconds", "Seconds the model took to load."),
    "warmup_s": ("model_warmup_seconds", "Seconds the model's warm-up took."),
}
MODEL_STATES = ("unloaded", "loading", "ready", "failed")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class EngineCollector(Collector):
    """Reads the current engine's ``info()`` at scrape time.

    One instance lives in the default registry; :func:`register_engine_collector` points
    it at an engine (held weakly, so a stopped server's engine can go away). Counters and
    gauges appear only for the keys the engine reports: a remote or scripted engine that
    knows less simply shows less.
    """

    def __init__(self) -> None:
        self._ref: Callable[[], Any] | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Any:
        ref = self._ref
        return ref() if ref is not None else None

    def set_engine(self, engine: Any) -> None:
        try:
            ref: Callable[[], Any] = weakref.ref(engine)
        except TypeError:  # not weak-referenceable: hold it

            def ref() -> Any:
                return engine

        with self._lock:
            self._ref = ref

    def clear(self, engine: Any = None) -> None:
        with self._lock:
            if engine is None or self.engine is engine:
                self._ref = None

    def describe(self) -> Iterator[Metric]:
        """The names this collector owns (so the registry refuses duplicates)."""
        for name, doc in ENGINE_COUNTERS.values():
            yield CounterMetricFamily(PREFIX + name, doc)
        for name, doc in ENGINE_GAUGES.values():
            yield GaugeMetricFamily(PREFIX + name, doc)
        yield GaugeMetricFamily(PREFIX + "model_state", "")
        yield GaugeMetricFamily(PREFIX + "model_loading_progress", "")
        yield InfoMetricFamily(PREFIX + "model", "")

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        if engine is None:
            return
        try:
            info = engine.info().to_dict()
        except Exception:  # a scrape must never fail because the engine did
            log.debug("engine.info() failed during a scrape", exc_info=True)
            return
        for key, (name, doc) in ENGINE_COUNTERS.items():
            value = _number(info.get(key))
            if value is not None:
                yield CounterMetricFamily(PREFIX + name, doc, value=value)
        for key, (name, doc) in ENGINE_GAUGES.items():
            value = _number(info.get(key))
            if value is not None:
                yield GaugeMetricFamily(PREFIX + name, doc, value=value)
        state = getattr(info.get("state"), "value", info.get("state"))
        if state is not None:
            family = GaugeMetricFamily(
                PREFIX + "model_state",
                "Model load state: 1 for the current state (unloaded, loading, ready, failed).",
                labels=["state"],
            )
            for name in MODEL_STATES:
                family.add_metric([name], 1.0 if state == name else 0.0)
            yield family
        progress = _number(info.get("loading_progress"))
        if progress is not None:
            yield GaugeMetricFamily(
                PREFIX + "model_loading_progress",
                "Progress of the current model load stage, 0..1.",
                value=progress,
            )
        labels = {"model_name": _label(info.get("name"), "")}
        for key in ("device", "dtype", "quantization", "template", "kind"):
            labels[key] = _label(info.get(key), "")
        family = InfoMetricFamily(PREFIX + "model", "The model behind jupyter-ds.")
        family.add_metric([], labels)
        yield family


class GpuMemoryCollector(Collector):
    """CUDA memory of this process, per device; nothing where CUDA is not in use.

    Reads torch only if it is already imported and has initialized CUDA, so a scrape never
    imports torch or creates a CUDA context.
    """

    def describe(self) -> Iterator[Metric]:
        for name in (
            "gpu_memory_allocated_bytes",
            "gpu_memory_reserved_bytes",
            "gpu_memory_max_allocated_bytes",
            "gpu_memory_free_bytes",
            "gpu_memory_total_bytes",
        ):
            yield GaugeMetricFamily(PREFIX + name, "")

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        try:
            if cuda is None or not cuda.is_available() or not cuda.is_initialized():
                return
            families = {
                "allocated": GaugeMetricFamily(
                    PREFIX + "gpu_memory_allocated_bytes",
                    "GPU memory held by tensors of this process.",
                    labels=["device"],
                ),
                "reserved": GaugeMetricFamily(
                    PREFIX + "gpu_memory_reserved_bytes",
                    "GPU memory reserved by this process's caching allocator.",
                    labels=["device"],
                ),
                "max_allocated": GaugeMetricFamily(
                    PREFIX + "gpu_memory_max_allocated_bytes",
                    "Peak GPU memory held by tensors of this process.",
                    labels=["device"],
                ),
                "free": GaugeMetricFamily(
                    PREFIX + "gpu_memory_free_bytes",
                    "Free memory of the GPU (all processes).",
                    labels=["device"],
                ),
                "total": GaugeMetricFamily(
                    PREFIX + "gpu_memory_total_bytes",
                    "Total memory of the GPU.",
                    labels=["device"],
                ),
            }
            for index in range(cuda.device_count()):
                device = [f"cuda:{index}"]
                families["allocated"].add_metric(device, float(cuda.memory_allocated(index)))
                families["reserved"].add_metric(device, float(cuda.memory_reserved(index)))
                families["max_allocated"].add_metric(
                    device, float(cuda.max_memory_allocated(index))
                )
                free, total = cuda.mem_get_info(index)
                families["free"].add_metric(device, float(free))
                families["total"].add_metric(device, float(total))
        except Exception:
            log.debug("reading CUDA memory failed during a scrape", exc_info=True)
            return
        yield from families.values()


ROUTE_BREAKER_STATES = ("closed", "open", "half_open")


class RouteCollector(Collector):
    """Each routed endpoint's state at scrape time, from the pools' ``endpoints()``:
    ``endpoint_up`` (1 while the pool would send it a request), ``endpoint_breaker``
    (1 for its breaker's state), ``endpoint_outstanding``, and the requests and
    failures the pool counted, all labelled by route and endpoint URL (routes refuse
    URLs with credentials, so the label holds none). Pools are held weakly; a server
    without routes shows none of these."""

    def __init__(self) -> None:
        self._pools: list[weakref.ref[Any]] = []
        self._lock = threading.Lock()

    def set_pools(self, pools: Iterable[Any]) -> None:
        with self._lock:
            self._pools = [weakref.ref(p) for p in pools]

    def clear(self) -> None:
        with self._lock:
            self._pools = []

    def describe(self) -> Iterator[Metric]:
        for name in ("endpoint_up", "endpoint_breaker", "endpoint_outstanding"):
            yield GaugeMetricFamily(PREFIX + name, "")
        for name in ("endpoint_requests", "endpoint_failures"):
            yield CounterMetricFamily(PREFIX + name, "")

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            pools = [p for p in (ref() for ref in self._pools) if p is not None]
        if not pools:
            return
        labels = ["route", "endpoint"]
        up = GaugeMetricFamily(PREFIX + "endpoint_up", "1 while the route's pool sends "
                               "requests to the endpoint (ready, breaker not open).",
                               labels=labels)
        breaker = GaugeMetricFamily(PREFIX + "endpoint_breaker", "The endpoint's circuit "
                                    "breaker: 1 for its state (closed, open, half_open).",
                                    labels=[*labels, "state"])
        outstanding = GaugeMetricFamily(PREFIX + "endpoint_outstanding", "Requests the "
                                        "pool has running on the endpoint.", labels=labels)
        requests = CounterMetricFamily(PREFIX + "endpoint_requests", "Requests the pool "
                                       "sent the endpoint, failovers included.", labels=labels)
        failures = CounterMetricFamily(PREFIX + "endpoint_failures", "Requests that failed "
                                       "on the endpoint.", labels=labels)
        for pool in pools:
            try:
                endpoints = pool.endpoints()
            except Exception:  # a scrape must never fail because a pool did
                log.debug("pool.endpoints() failed during a scrape", exc_info=True)
                continue
            for endpoint in endpoints:
                key = [_label(pool.name), _label(endpoint.get("url"))]
                up.add_metric(key, 1.0 if endpoint.get("usable") else 0.0)
                for state in ROUTE_BREAKER_STATES:
                    breaker.add_metric([*key, state],
                                       1.0 if endpoint.get("breaker") == state else 0.0)
                outstanding.add_metric(key, float(endpoint.get("outstanding") or 0))
                requests.add_metric(key, float(endpoint.get("requests_total") or 0))
                failures.add_metric(key, float(endpoint.get("failures_total") or 0))
        yield from (up, breaker, outstanding, requests, failures)


def _register(collector: Collector, probe: str) -> Any:
    """Register ``collector`` once; after a module re-import, reuse the registered one."""
    found = _existing(probe)
    if found is not None:
        return found
    REGISTRY.register(collector)
    return collector


ENGINE_COLLECTOR: EngineCollector = _register(EngineCollector(), PREFIX + "num_requests_running")
GPU_COLLECTOR: GpuMemoryCollector = _register(
    GpuMemoryCollector(), PREFIX + "gpu_memory_allocated_bytes"
)


ROUTE_COLLECTOR: RouteCollector = _register(RouteCollector(), PREFIX + "endpoint_up")


class AcceptanceCollector(Collector):
    """``jupyter_ds_completions_acceptance_rate{model,adapter}``: accepted over shown
    since the server started, read from the two counters at scrape time, for a glance
    without PromQL (over a window, use the rate() ratio above). Only where something
    was shown."""

    NAME = PREFIX + "completions_acceptance_rate"

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, "")

    def collect(self) -> Iterator[Metric]:
        def totals(kind: str) -> dict[tuple[str, str], float]:
            out: dict[tuple[str, str], float] = {}
            for family in COMPLETION_EVENTS[kind].collect():
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = (sample.labels["model"], sample.labels["adapter"])
                        out[key] = sample.value
            return out

        shown, accepted = totals("shown"), totals("accepted")
        family = GaugeMetricFamily(
            self.NAME, "Completions accepted over completions shown, since the server "
            "started, by model and adapter.", labels=["model", "adapter"])
        for key, count in shown.items():
            if count > 0:
                family.add_metric(list(key), min(1.0, accepted.get(key, 0.0) / count))
        yield family


ACCEPTANCE_COLLECTOR: AcceptanceCollector = _register(
    AcceptanceCollector(), AcceptanceCollector.NAME)


def register_route_pools(pools: Iterable[Any]) -> None:
    """Report these pools' endpoints at every scrape (replacing any previous ones)."""
    ROUTE_COLLECTOR.set_pools(pools)


def register_engine_collector(engine: Any) -> EngineCollector:
    """Report ``engine``'s state at every scrape (replacing any previous engine).

    Idempotent and safe when several servers start in one process (tests): the collector
    is registered once; each call only points it at the newest engine.
    """
    ENGINE_COLLECTOR.set_engine(engine)
    return ENGINE_COLLECTOR


def unregister_engine_collector(engine: Any = None) -> None:
    """Stop reporting ``engine`` (any engine when None); call it when the server stops."""
    ENGINE_COLLECTOR.clear(engine)


def process_collector_registered() -> bool:
    """Whether prometheus_client's process collector (CPU, memory) is in the registry."""
    return _existing("process_cpu_seconds_total") is not None


_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
    "gauge": ("",),
}


def metric_families() -> dict[str, str]:
    """Every ``jupyter_ds_`` metric family this module can expose -> its type."""
    families: dict[str, str] = {}
    for metric in (
        REQUEST_DURATION, REQUESTS, REQUEST_ERRORS, REQUESTS_SHED, REQUEST_TIMEOUTS,
        CONSECUTIVE_TIMEOUTS, TIME_TO_FIRST_TOKEN, TIME_PER_OUTPUT_TOKEN, E2E_LATENCY,
        GENERATION_TOKENS, PROMPT_TOKENS, GENERATIONS, CANCELLED_REQUESTS, SANDBOX_RUNS,
        SANDBOX_DURATION, *COMPLETION_EVENTS.values(),
    ):  # fmt: skip
        for family in metric.describe():
            families[family.name] = family.type
    for collector in (ENGINE_COLLECTOR, GPU_COLLECTOR, ROUTE_COLLECTOR, ACCEPTANCE_COLLECTOR):
        for family in collector.describe():
            families[family.name] = family.type
    return families


def sample_names() -> set[str]:
    """The series names Prometheus sees (``_total``, ``_bucket``...): what PromQL uses."""
    return {
        name + suffix
        for name, kind in metric_families().items()
        for suffix in _SUFFIXES.get(kind, ("",))
    }
