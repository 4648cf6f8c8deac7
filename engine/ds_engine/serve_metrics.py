"""``GET /metrics`` of ``ds-engine serve``: Prometheus text with vLLM's metric names.

A team may run either vLLM or ds-engine on its GPU box, so the dashboards and the KEDA
autoscaling rules they already have for vLLM must read this server unchanged: the same
names (``vllm:...``), the same kinds, the same ``model_name`` label (the served base
model's name, as vLLM labels every request, LoRA or not).

Queue depth and cache figures are read from ``engine.info()`` at scrape time (a scrape
sees the engine as it is, not as it was at the last request); latencies and token counts
are observed by the server per request. Each server has its own
:class:`prometheus_client.CollectorRegistry`, never the process-global one, so several
servers (tests) in one process do not share or collide.

``vllm:kv_cache_usage_perc`` is an estimate, documented here because the engine has no
paged KV pool to measure: vLLM reports the share of KV blocks held by running requests
(blocks kept only for prefix reuse are evictable and count as free), and ds-engine holds
one KV cache per running request in a batch of at most ``max_batch_size`` slots, its
prefix cache being evictable too. So the gauge is ``active_requests / max_batch_size``:
0 when idle, 1 when every batch slot holds a request (more requests wait), which is the
saturation signal an autoscaler reads it for. It is 0 when the engine keeps no counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from ds_engine.interface import Engine

# vLLM's buckets, so that histogram_quantile over both kinds of server agrees.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


class _EngineCollector:
    """The gauges and counters that live in the engine, read at scrape time."""

    def __init__(self, engine: Engine, model_name: Callable[[], str],
                 in_flight: Callable[[], int]) -> None:
        self.engine = engine
        self.model_name = model_name
        self.in_flight = in_flight

    def describe(self) -> list[Metric]:
        return []  # collected fresh at every scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        labels = [self.model_name()]
        counters = self.engine.info().counters
        if counters is not None:
            running, waiting = counters.active_requests, counters.queued_requests
            slots = counters.max_batch_size or 0
            kv = min(1.0, running / slots) if slots > 0 else 0.0
            queries = counters.prompt_tokens_total
            hits = counters.prompt_tokens_reused_total
            drafts = (counters.draft_steps_total, counters.draft_tokens_total,
                      counters.draft_tokens_accepted_total)
        else:
            # An engine without counters: the requests this server has in flight are
            # all it knows (each is waiting or running in the engine).
            running, waiting, kv, queries, hits = self.in_flight(), 0, 0.0, 0, 0
            drafts = (0, 0, 0)
        for name, doc, value in (
            ("vllm:num_requests_running", "Requests running in the engine's batch.", running),
            ("vllm:num_requests_waiting", "Requests waiting for a batch slot.", waiting),
            ("vllm:kv_cache_usage_perc",
             "KV-cache usage, 0..1: running requests over batch slots (see "
             "ds_engine/serve_metrics.py).", kv),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric(labels, value)
            yield gauge
        for name, doc, value in (
            ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
             queries),
            ("vllm:prefix_cache_hits", "Prompt tokens reused from the prefix cache.", hits),
            ("vllm:spec_decode_num_drafts",
             "Decode steps that verified tokens drafted from the prompt.", drafts[0]),
            ("vllm:spec_decode_num_draft_tokens", "Tokens drafted from the prompt.",
             drafts[1]),
            ("vllm:spec_decode_num_accepted_tokens", "Drafted tokens the model kept.",
             drafts[2]),
        ):
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric(labels, value)
            yield counter


class ServeMetrics:
    """The server's registry and the per-request observations it makes."""

    def __init__(self, engine: Engine, model_name: Callable[[], str],
                 in_flight: Callable[[], int]) -> None:
        self.model_name = model_name
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine, model_name, in_flight))
        r = self.registry
        self.ttft = Histogram("vllm:time_to_first_token_seconds",
                              "Seconds from a request's arrival to its first token.",
                              ["model_name"], buckets=TTFT_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds",
                             "Seconds from a request's arrival to its last token.",
                             ["model_name"], buckets=E2E_BUCKETS, registry=r)
        self.success = Counter("vllm:request_success",
                               "Finished requests, by finish reason (abort: the client "
                               "left or the server stopped).",
                               ["model_name", "finished_reason"], registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens of requests.",
                                     ["model_name"], registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.",
                                         ["model_name"], registry=r)

    def first_token(self, seconds: float) -> None:
        self.ttft.labels(self.model_name()).observe(max(0.0, seconds))

    def finished(self, reason: str, prompt_tokens: int, generated: int,
                 e2e_seconds: float | None) -> None:
        """One request ended (``e2e_seconds`` None: it was aborted, its latency says
        nothing about the server)."""
        name = self.model_name()
        self.success.labels(name, reason).inc()
        self.prompt_tokens.labels(name).inc(max(0, prompt_tokens))
        self.generation_tokens.labels(name).inc(max(0, generated))
        if e2e_seconds is not None:
            self.e2e.labels(name).observe(max(0.0, e2e_seconds))

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
