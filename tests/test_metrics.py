"""Prometheus metrics: names, types and labels; the engine wrapper and scrape-time
collectors; /metrics of a real server; the alert rules (schema, names, promtool)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from ds_engine import (
    Engine,
    EngineCounters,
    EngineInfo,
    EngineNotReady,
    EngineState,
    FinishReason,
    GenerationRequest,
)
from ds_engine.interface import GenerationResult, StreamChunk
from ds_engine.testing import NoAdapters, ScriptedEngine
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from jupyter_ds import metrics
from jupyter_ds.testgen.requests import TestsRunRequest
from jupyter_ds.testgen.sandbox import RunReport, TestResult
from jupyter_ds.testgen.service import TestgenService, TestgenSettings

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"


def value(name: str, **labels: str) -> float:
    """Current value of a sample in the default registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(text: str | None = None) -> dict[str, Any]:
    """Metric families by name, parsed from the exposition format (the registry's own)."""
    text = text if text is not None else generate_latest(REGISTRY).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def result(
    reason: FinishReason = FinishReason.LENGTH,
    tokens: int = 5,
    prompt: int = 7,
    latency_ms: float = 500.0,
    ttft_ms: float | None = 100.0,
) -> GenerationResult:
    return GenerationResult(
        text="x" * tokens,
        token_count=tokens,
        prompt_tokens=prompt,
        confidence=0.5,
        finish_reason=reason,
        model="fake",
        latency_ms=latency_ms,
        time_to_first_token_ms=ttft_ms,
    )


class FakeEngine(NoAdapters):
    """An engine whose results are given; its stream steps until done or cancelled."""

    def __init__(self, results: list[GenerationResult] | None = None, steps: int = 3):
        self.results = list(results or [])
        self.steps = steps
        self.requests: dict[str, GenerationRequest] = {}
        self.block = False
        self.not_ready = False
        self.closed_streams = 0
        self.cancelled: dict[str, FinishReason] = {}  # request id -> the reason given
        self.info_value: dict[str, Any] = {"name": "fake", "state": "ready"}

    state = EngineState.READY

    def start_loading(self) -> None: ...

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True

    def count_tokens(self, text: str) -> int:
        return len(text)

    def context_window(self) -> int:
        return 2048

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests[request.request_id] = request
        if self.block:
            await asyncio.sleep(3600)
        return self.results.pop(0)

    def stream(self, request: GenerationRequest):
        if self.not_ready:
            raise EngineNotReady(EngineState.LOADING)
        self.requests[request.request_id] = request
        return self._stream(request)

    async def _stream(self, request: GenerationRequest):
        try:
            for i in range(self.steps):
                if request.request_id in self.cancelled:
                    res = result(self.cancelled[request.request_id], tokens=i)
                    yield StreamChunk("x" * i, "", i, True, res)
                    return
                yield StreamChunk("x" * (i + 1), "x", i + 1)
                await asyncio.sleep(0)
            res = self.results.pop(0)
            yield StreamChunk(res.text, "", res.token_count, True, res)
        finally:
            self.closed_streams += 1

    def cancel(self, request_id: str, *, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        if request_id not in self.requests:
            return False
        self.cancelled.setdefault(request_id, reason)
        return True

    def info(self) -> EngineInfo:
        return engine_info(self.info_value)


def engine_info(values: dict[str, Any]) -> EngineInfo:
    """The typed record of a flat info dict (the shape ``EngineInfo.to_dict`` gives)."""
    counter_names = {f.name for f in dataclasses.fields(EngineCounters)}
    known = {k: v for k, v in values.items() if k in counter_names}
    counters = EngineCounters(**known) if known else None
    rest = {k: v for k, v in values.items() if k not in counter_names}
    rest["state"] = EngineState(rest.get("state", "ready"))
    return EngineInfo(counters=counters, **rest)


# ------------------------------------------------------------------------ requests


def test_request_metrics_have_their_names_types_and_labels():
    before = value("jupyter_ds_requests_total", endpoint="complete", status="200")
    buckets = value(
        "jupyter_ds_request_duration_seconds_bucket", endpoint="complete", method="POST", le="0.1"
    )
    metrics.observe_request("complete", "POST", 200, 0.08)
    metrics.observe_request("complete", "post", 200, 30.0)
    assert value("jupyter_ds_requests_total", endpoint="complete", status="200") == before + 2
    assert (
        value(
            "jupyter_ds_request_duration_seconds_bucket",
            endpoint="complete",
            method="POST",
            le="0.1",
        )
        == buckets + 1
    )
    families = scrape()
    assert families["jupyter_ds_request_duration_seconds"].type == "histogram"
    assert families["jupyter_ds_requests"].type == "counter"
    bounds = {
        float(s.labels["le"])
        for s in families["jupyter_ds_request_duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    # P95/P99 are derivable from 50 ms to 120 s: a bound at both ends, no gap wider than x1.5.
    inner = sorted(b for b in bounds if 0.05 <= b <= 120)
    assert inner[0] == 0.05 and inner[-1] == 120
    assert all(b / a <= 1.5 + 1e-9 for a, b in itertools.pairwise(inner))
    sample = next(
        s for s in families["jupyter_ds_requests"].samples if s.name == "jupyter_ds_requests_total"
    )
    assert set(sample.labels) == {"endpoint", "status"}


def test_errors_are_counted_by_endpoint_and_code_and_504_is_a_timeout():
    def errors(code: str) -> float:
        return value("jupyter_ds_request_errors_total", endpoint="explain", code=code)

    limited, timeout, internal = errors("rate_limited"), errors("timeout"), errors("internal_error")
    timeouts = value("jupyter_ds_request_timeouts_total", endpoint="explain")
    metrics.observe_request("explain", "POST", 429, 0.001, error_code="rate_limited")
    metrics.observe_request("explain", "POST", 504, 120.0, error_code="timeout")
    metrics.observe_request("explain", "POST", 500, 0.2)  # no code: from the status
    metrics.observe_request("explain", "POST", 200, 1.0)
    assert errors("rate_limited") == limited + 1
    assert errors("timeout") == timeout + 1
    assert errors("internal_error") == internal + 1
    assert value("jupyter_ds_request_timeouts_total", endpoint="explain") == timeouts + 1
    assert value("jupyter_ds_requests_total", endpoint="explain", status="504") >= 1
    families = scrape()
    assert families["jupyter_ds_request_errors"].type == "counter"
    assert families["jupyter_ds_request_timeouts"].type == "counter"


# ------------------------------------------------------------------------ generations


async def test_generations_record_ttft_tokens_and_time_per_token():
    engine = metrics.instrument(FakeEngine([result(tokens=5, prompt=7, latency_ms=500)]))
    assert metrics.instrument(engine) is engine  # wrapped once
    ttft = value("jupyter_ds_time_to_first_token_seconds_count", priority="chat")
    ttft_sum = value("jupyter_ds_time_to_first_token_seconds_sum", priority="chat")
    tpot_sum = value("jupyter_ds_time_per_output_token_seconds_sum", priority="chat")
    gen = value("jupyter_ds_generation_tokens_total", priority="chat")
    prompt = value("jupyter_ds_prompt_tokens_total", priority="chat")
    done = value("jupyter_ds_generations_total", priority="chat", finish_reason="length")
    e2e = value("jupyter_ds_e2e_request_latency_seconds_count", priority="chat")

    request = GenerationRequest(prompt="p", priority=1)  # Priority.CHAT
    out = await engine.generate(request)
    assert out.token_count == 5
    assert value("jupyter_ds_time_to_first_token_seconds_count", priority="chat") == ttft + 1
    assert value("jupyter_ds_time_to_first_token_seconds_sum", priority="chat") == pytest.approx(
        ttft_sum + 0.1
    )
    # (500 ms - 100 ms) over the 4 tokens after the first
    assert value("jupyter_ds_time_per_output_token_seconds_sum", priority="chat") == pytest.approx(
        tpot_sum + 0.1
    )
    assert value("jupyter_ds_generation_tokens_total", priority="chat") == gen + 5
    assert value("jupyter_ds_prompt_tokens_total", priority="chat") == prompt + 7
    assert (
        value("jupyter_ds_generations_total", priority="chat", finish_reason="length") == done + 1
    )
    assert value("jupyter_ds_e2e_request_latency_seconds_count", priority="chat") == e2e + 1
    families = scrape()
    for name, kind in [
        ("jupyter_ds_time_to_first_token_seconds", "histogram"),
        ("jupyter_ds_time_per_output_token_seconds", "histogram"),
        ("jupyter_ds_e2e_request_latency_seconds", "histogram"),
        ("jupyter_ds_generation_tokens", "counter"),
        ("jupyter_ds_prompt_tokens", "counter"),
        ("jupyter_ds_generations", "counter"),
    ]:
        assert families[name].type == kind, name


async def test_the_wrapper_is_transparent():
    inner = FakeEngine([result()])
    engine = metrics.instrument(inner)
    assert isinstance(engine, Engine)
    assert engine.wrapped is inner
    assert engine.state is EngineState.READY
    assert engine.count_tokens("abc") == 3 and engine.context_window() == 2048
    assert engine.info() == inner.info()
    assert engine.steps == 3  # any attribute of the engine
    inner.not_ready = True
    with pytest.raises(EngineNotReady):
        engine.stream(GenerationRequest(prompt="p"))  # at call time, as the engine does


async def test_consecutive_timeouts_climb_and_reset_on_a_normal_finish():
    results = [result(FinishReason.TIMEOUT)] * 3 + [
        result(FinishReason.CANCELLED),
        result(FinishReason.TIMEOUT),
        result(FinishReason.STOP),
    ]
    engine = metrics.instrument(FakeEngine(results))
    metrics.CONSECUTIVE_TIMEOUTS.set(0)
    seen = []
    for _ in results:
        await engine.generate(GenerationRequest(prompt="p"))
        seen.append(value("jupyter_ds_consecutive_timeouts"))
    # a cancelled generation says nothing about the model's speed: the run goes on
    assert seen == [1, 2, 3, 3, 4, 0]
    assert scrape()["jupyter_ds_consecutive_timeouts"].type == "gauge"


async def test_client_cancellations_are_counted_once_and_early_stops_not_at_all():
    def cancelled() -> float:
        return value("jupyter_ds_cancelled_requests_total", priority="interactive")

    inner = FakeEngine([result(), result()], steps=5)
    engine = metrics.instrument(inner)
    start = cancelled()

    # 1. cancel(request_id) through the engine, as the WebSocket does: counted once, even
    # when the stream then ends with a cancelled result.
    request = GenerationRequest(prompt="p")
    chunks = []
    async for chunk in engine.stream(request):
        chunks.append(chunk)
        if len(chunks) == 1:
            assert engine.cancel(request.request_id) is True
            engine.cancel(request.request_id)  # again: still one
    assert chunks[-1].done and chunks[-1].result.finish_reason is FinishReason.CANCELLED
    assert cancelled() == start + 1

    # 2. the server stops a generation itself (reason STOP, completion's early stop)
    request = GenerationRequest(prompt="p")
    async for chunk in engine.stream(request):
        if not chunk.done:
            engine.cancel(request.request_id, reason=FinishReason.STOP)
    assert cancelled() == start + 1

    # 3. the consumer goes away mid-stream: counted, and the engine's stream is closed
    closed = inner.closed_streams
    stream = engine.stream(GenerationRequest(prompt="p"))
    await stream.__anext__()
    await stream.aclose()
    assert cancelled() == start + 2
    assert inner.closed_streams == closed + 1

    # 4. a complete stream read to the end, then closed: not a cancellation
    stream = engine.stream(GenerationRequest(prompt="p"))
    async for _chunk in stream:
        pass
    await stream.aclose()
    assert cancelled() == start + 2

    # 5. the task awaiting generate() is cancelled (a closed socket)
    inner.block = True
    task = asyncio.ensure_future(engine.generate(GenerationRequest(prompt="p")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled() == start + 3
    assert engine._live == {}  # nothing left behind
    assert scrape()["jupyter_ds_cancelled_requests"].type == "counter"


# ------------------------------------------------------------- scrape-time collectors

LOCAL_INFO = {
    "name": "tiny",
    "device": "cpu",
    "dtype": "float32",
    "quantization": "none",
    "template": "chatml",
    "state": "ready",
    "load_time_s": 1.25,
    "model_memory_bytes": 1000,
    "requests_total": 9,
    "active_requests": 2,
    "queued_requests": 3,
    "prefix_cache_hits": 4,
    "prefix_cache_misses": 5,
    "prefix_cache_entries": 6,
    "prompt_tokens_total": 100,
    "prompt_tokens_reused_total": 40,
    "result_cache_hits": 7,
    "result_cache_entries": 8,
    "mean_batch_size": None,
    "draft_steps_total": 11,
    "draft_tokens_total": 44,
    "draft_tokens_accepted_total": 13,
    "compiled_steps_total": 21,
}


def test_engine_collector_reads_info_at_scrape_time():
    engine = FakeEngine()
    engine.info_value = dict(LOCAL_INFO)
    metrics.register_engine_collector(engine)
    metrics.register_engine_collector(engine)  # idempotent: no duplicate registration
    try:
        assert value("jupyter_ds_num_requests_waiting") == 3
        assert value("jupyter_ds_num_requests_running") == 2
        assert value("jupyter_ds_prefix_cache_hits_total") == 4
        assert value("jupyter_ds_prefix_cache_misses_total") == 5
        assert value("jupyter_ds_result_cache_hits_total") == 7
        assert value("jupyter_ds_engine_requests_total") == 9
        assert value("jupyter_ds_prefix_cache_reused_tokens_total") == 40
        assert value("jupyter_ds_prefix_cache_queried_tokens_total") == 100
        assert value("jupyter_ds_spec_decode_num_drafts_total") == 11
        assert value("jupyter_ds_spec_decode_num_draft_tokens_total") == 44
        assert value("jupyter_ds_spec_decode_num_accepted_tokens_total") == 13
        assert value("jupyter_ds_compiled_decode_steps_total") == 21
        assert value("jupyter_ds_model_load_seconds") == 1.25
        assert value("jupyter_ds_model_state", state="ready") == 1
        assert value("jupyter_ds_model_state", state="loading") == 0
        assert REGISTRY.get_sample_value("jupyter_ds_mean_batch_size") is None  # None: absent
        assert (
            value(
                "jupyter_ds_model_info",
                model_name="tiny",
                device="cpu",
                dtype="float32",
                quantization="none",
                template="chatml",
                kind="",
            )
            == 1
        )
        # read at scrape time: a change in the engine shows at the next scrape
        engine.info_value.update(queued_requests=0, state="failed")
        assert value("jupyter_ds_num_requests_waiting") == 0
        assert value("jupyter_ds_model_state", state="failed") == 1
        families = scrape()
        assert families["jupyter_ds_num_requests_waiting"].type == "gauge"
        assert families["jupyter_ds_prefix_cache_hits"].type == "counter"
        assert families["jupyter_ds_model_state"].type == "gauge"
        # an engine that fails to answer never fails the scrape
        engine.info = lambda: 1 / 0
        assert "jupyter_ds_num_requests_waiting" not in scrape()
    finally:
        metrics.unregister_engine_collector(engine)
    assert "jupyter_ds_model_state" not in scrape()


def test_engine_collector_with_the_scripted_engine_and_engine_lifetime():
    engine = metrics.instrument(ScriptedEngine(["x"]))
    metrics.register_engine_collector(engine)
    families = scrape()
    # it reports what the engine knows: a state, no counters
    assert value("jupyter_ds_model_state", state="ready") == 1
    assert "jupyter_ds_num_requests_waiting" not in families
    # held weakly: a stopped server's engine goes away and stops being reported
    del engine
    gc.collect()
    assert "jupyter_ds_model_state" not in scrape()


def test_collectors_register_once_even_when_the_module_is_imported_again(monkeypatch):
    import importlib

    import jupyter_ds

    before = len(REGISTRY._collector_to_names)
    fresh = importlib.import_module("jupyter_ds.metrics")
    monkeypatch.setattr(jupyter_ds, "metrics", fresh)  # restored to this module after
    monkeypatch.delitem(sys.modules, "jupyter_ds.metrics")
    again = importlib.import_module("jupyter_ds.metrics")  # a second module object
    try:
        assert again is not fresh
        assert again.ENGINE_COLLECTOR is fresh.ENGINE_COLLECTOR
        assert again.REQUESTS is fresh.REQUESTS
        assert len(REGISTRY._collector_to_names) == before
    finally:
        monkeypatch.setitem(sys.modules, "jupyter_ds.metrics", fresh)


def test_process_cpu_and_memory_are_exported():
    assert metrics.process_collector_registered()
    families = scrape()
    if sys.platform.startswith("linux"):
        assert families["process_cpu_seconds"].type == "counter"
        assert families["process_resident_memory_bytes"].type == "gauge"


def test_gpu_memory_is_reported_only_where_cuda_is_in_use(monkeypatch):
    collector = metrics.GPU_COLLECTOR
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        assert list(collector.collect()) == []  # no CUDA here: nothing, no error

    gib = 1024**3
    fake_cuda = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        device_count=lambda: 2,
        memory_allocated=lambda i: (i + 1) * gib,
        memory_reserved=lambda i: (i + 2) * gib,
        max_memory_allocated=lambda i: (i + 3) * gib,
        mem_get_info=lambda i: (10 * gib, 80 * gib),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake_cuda))
    assert value("jupyter_ds_gpu_memory_allocated_bytes", device="cuda:1") == 2 * gib
    assert value("jupyter_ds_gpu_memory_reserved_bytes", device="cuda:0") == 2 * gib
    assert value("jupyter_ds_gpu_memory_total_bytes", device="cuda:0") == 80 * gib
    assert scrape()["jupyter_ds_gpu_memory_free_bytes"].type == "gauge"
    fake_cuda.is_initialized = lambda: False  # torch present, CUDA never used: nothing
    assert list(collector.collect()) == []


# ---------------------------------------------------------------------------- sandbox


def report(ok: bool = True, outcomes: tuple[str, ...] = ("passed",), failure=None) -> RunReport:
    tests = {f"test_{i}": TestResult(f"test_{i}", o) for i, o in enumerate(outcomes)}
    return RunReport(ok=ok, sandbox={}, duration_s=1.5, failure=failure, tests=tests)


def test_sandbox_runs_are_counted_by_verdict():
    cases = [
        (report(), "passed"),
        (report(outcomes=("passed", "failed")), "failed"),
        (report(ok=False, outcomes=(), failure="timeout"), "timeout"),
        (report(ok=False, outcomes=(), failure="something new"), "internal_error"),
        (report(outcomes=()), "no_tests"),
    ]
    for rep, verdict in cases:
        assert metrics.sandbox_verdict(rep) == verdict
        before = value("jupyter_ds_sandbox_runs_total", verdict=verdict)
        metrics.observe_sandbox_run(rep)
        assert value("jupyter_ds_sandbox_runs_total", verdict=verdict) == before + 1
    assert scrape()["jupyter_ds_sandbox_runs"].type == "counter"
    assert scrape()["jupyter_ds_sandbox_run_duration_seconds"].type == "histogram"


async def test_the_testgen_service_counts_every_sandbox_run():
    runs = []

    def runner(*args: Any, **kwargs: Any) -> RunReport:
        runs.append(args)
        return report(outcomes=("passed",))

    service = TestgenService(ScriptedEngine(["x"]), TestgenSettings(runs=1), runner=runner)
    before = value("jupyter_ds_sandbox_runs_total", verdict="passed")
    out = await service.run_tests(
        TestsRunRequest(tests="def test_0():\n    pass\n", source="x = 1\n", module="m", runs=3)
    )
    assert len(runs) == 3 and out["ok"]
    assert value("jupyter_ds_sandbox_runs_total", verdict="passed") == before + 3


# ------------------------------------------------------------------ a real server


async def test_the_server_serves_jupyter_ds_metrics_at_metrics(ds_ready, jp_serverapp):
    before = value("jupyter_ds_generations_total", priority="interactive", finish_reason="length")
    before += value("jupyter_ds_generations_total", priority="interactive", finish_reason="stop")
    before += value(
        "jupyter_ds_generations_total", priority="interactive", finish_reason="cancelled"
    )
    code, env, _ = await ds_ready.post("complete", {"prefix": "x = ", "max_tokens": 3})
    assert code == 200, env

    response = await ds_ready.fetch("metrics")
    assert response.code == 200
    text = response.body.decode()
    families = scrape(text)
    engine = jp_serverapp.web_app.settings["jupyter_ds"].engine
    info = engine.info().to_dict()
    # the engine's state, read at this scrape
    waiting = families["jupyter_ds_num_requests_waiting"].samples[0].value
    assert waiting == info["queued_requests"] == 0
    assert families["jupyter_ds_num_requests_running"].samples[0].value == 0
    hits = families["jupyter_ds_prefix_cache_hits"].samples
    assert next(s.value for s in hits if s.name.endswith("_total")) == info["prefix_cache_hits"]
    states = {s.labels["state"]: s.value for s in families["jupyter_ds_model_state"].samples}
    assert states == {"unloaded": 0, "loading": 0, "ready": 1, "failed": 0}
    assert families["jupyter_ds_model_load_seconds"].samples[0].value > 0
    # the completion's generation went through the instrumented engine
    after = sum(
        s.value
        for s in families["jupyter_ds_generations"].samples
        if s.name == "jupyter_ds_generations_total" and s.labels["priority"] == "interactive"
    )
    assert after >= before + 1
    assert "jupyter_ds_time_to_first_token_seconds" in families
    # and Jupyter's own metrics are still there
    assert "http_request_duration_seconds" in families
    assert "process_cpu_seconds" in families or not sys.platform.startswith("linux")

    # /metrics is authenticated (ServerApp.authenticate_prometheus defaults to True)
    denied = await ds_ready.fetch(
        "metrics", headers={"Authorization": "token wrong"}, raise_error=False
    )
    assert denied.code == 403


WS_REQ = {"prefix": "notes:\n", "suffix": "", "language": "text", "mime": "text/plain",
          "path": "notes.txt", "cell_id": None, "stream": True, "max_tokens": 1000}  # fmt: skip


async def test_websocket_cancellations_are_counted_once(ds_ready, jp_ws_fetch):
    """Through the real server: a cancel message, then a socket closed mid-stream."""

    def cancelled() -> float:
        return value("jupyter_ds_cancelled_requests_total", priority="interactive")

    async def recv(conn: Any) -> dict[str, Any]:
        message = await asyncio.wait_for(conn.read_message(), 30)
        assert message is not None
        return json.loads(message)

    async def settle(expected: float) -> None:
        for _ in range(200):
            if cancelled() >= expected:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # nothing more arrives later
        assert cancelled() == expected

    start = cancelled()
    conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream")
    conn.write_message(json.dumps({**WS_REQ, "number": 1}))
    assert (await recv(conn))["type"] == "inline_completion"
    assert (await recv(conn))["type"] == "stream"
    conn.write_message(json.dumps({"type": "cancel", "number": 1}))
    while not ((msg := await recv(conn))["type"] == "stream" and msg["done"]):
        pass
    assert msg["cancelled"] is True
    await settle(start + 1)

    conn.write_message(json.dumps({**WS_REQ, "number": 2}))
    await recv(conn)
    await recv(conn)  # generating
    conn.close()  # on_close cancels in the engine and cancels the task: still one
    await settle(start + 2)


async def test_the_server_counts_requests_by_endpoint_and_status(ds_ready):
    before = value("jupyter_ds_requests_total", endpoint="complete", status="400")
    code, _, _ = await ds_ready.post("complete", {"prefix": 3})
    assert code == 400
    assert value("jupyter_ds_requests_total", endpoint="complete", status="400") == before + 1
    assert value("jupyter_ds_request_errors_total", endpoint="complete", code="invalid_request")


# ------------------------------------------------------------------------ alert rules

METRIC_NAME = re.compile(r"\b(jupyter_ds_[a-zA-Z0-9_]+)")


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert isinstance(doc, dict) and set(doc) == {"groups"}
    rules = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert isinstance(group["name"], str) and group["rules"]
        rules += group["rules"]
    return rules


def test_alert_rules_schema_and_metric_names():
    rules = load_rules()
    by_name = {r["alert"]: r for r in rules}
    assert set(by_name) == {"JupyterDsConsecutiveTimeouts", "JupyterDsHighErrorRate",
                            "JupyterDsEndpointDown"}
    duration = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
    known = metrics.sample_names()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        if "for" in rule:
            assert duration.match(rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in ("level1", "level2")
        assert {"summary", "description"} <= set(rule["annotations"])
        used = set(METRIC_NAME.findall(rule["expr"]))
        assert used, rule["expr"]
        assert used <= known, used - known  # every metric in an expr is one we export
    timeouts = by_name["JupyterDsConsecutiveTimeouts"]
    assert timeouts["labels"]["severity"] == "level1"
    assert "jupyter_ds_consecutive_timeouts" in timeouts["expr"] and ">= 3" in timeouts["expr"]
    errors = by_name["JupyterDsHighErrorRate"]
    assert errors["labels"]["severity"] == "level2"
    assert errors["for"] == "5m" and "0.05" in errors["expr"] and '"5.."' in errors["expr"]
    down = by_name["JupyterDsEndpointDown"]
    assert "jupyter_ds_endpoint_up" in down["expr"] and down["for"] == "5m"


def promtool() -> str | None:
    """promtool on PATH, or where scripts/ensure-promtool.sh puts it (the venv's bin/)."""
    return shutil.which("promtool") or shutil.which(
        "promtool", path=str(Path(sys.executable).parent)
    )


@pytest.mark.skipif(
    promtool() is None,
    reason="promtool is not installed (scripts/ensure-promtool.sh installs it from Debian)",
)
def test_promtool_checks_and_unit_tests_the_alert_rules():
    tool = promtool()
    assert tool is not None
    check = subprocess.run(
        [tool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 3 rules found" in check.stdout + check.stderr
    # deploy/prometheus/alerts_test.yml: 3 timeouts in a row fire level 1 and a success
    # resolves it; 2, a success, 2 never fire; 6.7% 5xx fires level 2 only after 5
    # minutes; 2% 5xx among many 4xx does not; an endpoint down 5 minutes fires level 2,
    # one back after 2 does not.
    test = subprocess.run(
        [tool, "test", "rules", ALERTS_TEST.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ALERTS_TEST.parent,
    )
    assert test.returncode == 0, test.stdout + test.stderr
