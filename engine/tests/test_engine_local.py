"""LocalEngine: background loading, worker thread, streaming, cancellation, counters."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from pathlib import Path

import pytest
from ds_engine.interface import (
    Engine,
    EngineConfig,
    EngineInfo,
    EngineNotReady,
    EngineState,
    FinishReason,
    GenerationRequest,
)
from ds_engine.local import LocalEngine

PROMPT = "import numpy as np\n"
LONG = 1500  # ~1.5 s of tiny-model tokens: long enough to cancel in the middle


def test_is_an_engine(tiny_engine: LocalEngine) -> None:
    assert isinstance(tiny_engine, Engine)
    assert tiny_engine.state is EngineState.READY
    assert tiny_engine.context_window() == 2048
    assert tiny_engine.count_tokens("def add(a, b):") == len(
        tiny_engine.loaded.tokenizer.encode("def add(a, b):")
    )


def test_info_is_json_ready(tiny_engine: LocalEngine, tiny_model_path: Path) -> None:
    import json

    typed = tiny_engine.info()
    assert isinstance(typed, EngineInfo) and typed.state is EngineState.READY
    info = json.loads(json.dumps(typed.to_dict()))
    assert info["state"] == "ready" and info["error"] is None
    assert info["source"] == str(tiny_model_path.resolve())
    assert (info["kind"], info["device"], info["dtype"]) == ("hf", "cpu", "float32")
    assert (info["template"], info["supports_fim"]) == ("prefix-only", False)
    assert info["context_window"] == 2048 and info["from_cache"] is False
    for key in (
        "requests_total",
        "tokens_generated_total",
        "active_requests",
        "queued_requests",
        "cancelled_total",
    ):
        assert isinstance(info[key], int)
    # The flat object the API and metrics read, key for key as before it was typed.
    assert set(info) == INFO_KEYS
    assert typed.to_dict()["tokens_generated_total"] == typed.counters.tokens_generated_total


INFO_KEYS = {
    "name", "source", "kind", "device", "dtype", "state", "error", "loading_stage",
    "loading_progress", "template", "supports_fim", "context_window", "load_time_s",
    "warmup_s", "from_cache", "quantization", "model_memory_bytes", "adapter",
    "adapters_attached", "requests_total", "tokens_generated_total", "active_requests",
    "queued_requests", "cancelled_total", "shed_total", "max_queued", "service_time_s",
    "max_batch_size", "batch_steps_total", "mean_batch_size", "max_batch_size_seen",
    "prefix_cache_hits", "prefix_cache_misses", "prefix_cache_entries",
    "prompt_tokens_total", "prompt_tokens_reused_total", "result_cache_hits",
    "result_cache_entries", "draft_steps_total", "draft_tokens_total",
    "draft_tokens_accepted_total", "compiled_steps_total",
}


async def test_generate_counts_requests_and_tokens(tiny_engine: LocalEngine, wait_idle) -> None:
    await wait_idle(tiny_engine)
    before = tiny_engine.info()
    result = await tiny_engine.generate(GenerationRequest(PROMPT, max_tokens=12))
    assert result.token_count == 12 and result.finish_reason is FinishReason.LENGTH
    assert result.latency_ms > 0 and result.time_to_first_token_ms is not None
    after = tiny_engine.info()
    assert after.counters.requests_total == before.counters.requests_total + 1
    assert after.counters.tokens_generated_total == before.counters.tokens_generated_total + 12


async def test_stream_yields_cumulative_text_ending_in_result(tiny_engine: LocalEngine) -> None:
    chunks = [c async for c in tiny_engine.stream(GenerationRequest(PROMPT, max_tokens=30))]
    assert len(chunks) >= 2
    final = chunks[-1]
    assert final.done and final.result is not None
    assert final.text == final.result.text and final.result.token_count == 30
    for prev, cur in itertools.pairwise(chunks):
        assert cur.text.startswith(prev.text)
        assert cur.text == prev.text + cur.delta
    reference = await tiny_engine.generate(GenerationRequest(PROMPT, max_tokens=30))
    assert final.text == reference.text


async def test_cancel_running_request_stops_token_growth(
    tiny_engine: LocalEngine, wait_idle
) -> None:
    await wait_idle(tiny_engine)
    cancelled_before = tiny_engine.info().counters.cancelled_total
    request = GenerationRequest(PROMPT, max_tokens=LONG)
    result = None
    async for chunk in tiny_engine.stream(request):
        if chunk.token_count == 3 and not chunk.done:
            assert tiny_engine.cancel(request.request_id) is True
        if chunk.done:
            result = chunk.result
    assert result is not None
    assert result.finish_reason is FinishReason.CANCELLED
    assert 3 <= result.token_count < LONG
    tokens = tiny_engine.info().counters.tokens_generated_total
    await asyncio.sleep(0.3)
    info = tiny_engine.info()
    assert info.counters.tokens_generated_total == tokens
    assert info.counters.cancelled_total == cancelled_before + 1
    assert info.counters.active_requests == 0
    assert tiny_engine.cancel(request.request_id) is False  # finished: unknown now


async def test_cancel_queued_request_skips_it(serial_engine: LocalEngine, wait_idle) -> None:
    tiny_engine = serial_engine  # one slot: the second request waits
    await wait_idle(tiny_engine)
    first = GenerationRequest(PROMPT, max_tokens=LONG)
    queued = GenerationRequest(PROMPT, max_tokens=LONG)
    t1 = asyncio.create_task(tiny_engine.generate(first))
    t2 = asyncio.create_task(tiny_engine.generate(queued))
    await asyncio.sleep(0.05)
    info = tiny_engine.info()
    assert (info.counters.active_requests, info.counters.queued_requests) == (1, 1)
    assert tiny_engine.cancel(queued.request_id)
    assert tiny_engine.cancel(first.request_id)
    r1, r2 = await asyncio.gather(t1, t2)
    assert r1.finish_reason is FinishReason.CANCELLED and r1.token_count < LONG
    assert (r2.finish_reason, r2.token_count, r2.text) == (FinishReason.CANCELLED, 0, "")


async def test_cancel_with_stop_finishes_normally_with_the_text_so_far(
    tiny_engine: LocalEngine, wait_idle
) -> None:
    await wait_idle(tiny_engine)
    before = tiny_engine.info().counters
    request = GenerationRequest(PROMPT, max_tokens=LONG)
    streamed, result = "", None
    async for chunk in tiny_engine.stream(request):
        if chunk.token_count == 3 and not chunk.done:
            assert tiny_engine.cancel(request.request_id, reason=FinishReason.STOP)
        streamed += chunk.delta
        if chunk.done:
            result = chunk.result
    assert result is not None and result.finish_reason is FinishReason.STOP
    assert 3 <= result.token_count < LONG and result.text == streamed != ""
    await wait_idle(tiny_engine)
    after = tiny_engine.info().counters
    assert after.cancelled_total == before.cancelled_total  # a normal finish
    # Its text depends on when it was stopped: never answered from the result cache.
    assert after.result_cache_entries == before.result_cache_entries
    with pytest.raises(ValueError):
        tiny_engine.cancel(request.request_id, reason=FinishReason.LENGTH)


async def test_stop_a_queued_request_by_id(serial_engine: LocalEngine, wait_idle) -> None:
    await wait_idle(serial_engine)
    cancelled = serial_engine.info().counters.cancelled_total
    first = GenerationRequest(PROMPT, max_tokens=LONG)
    queued = GenerationRequest(PROMPT, max_tokens=LONG)
    t1 = asyncio.create_task(serial_engine.generate(first))
    t2 = asyncio.create_task(serial_engine.generate(queued))
    await asyncio.sleep(0.05)
    assert serial_engine.cancel(queued.request_id, reason=FinishReason.STOP)
    r2 = await t2
    assert (r2.finish_reason, r2.token_count, r2.text) == (FinishReason.STOP, 0, "")
    assert not t1.done()  # the running one goes on
    assert serial_engine.cancel(first.request_id)
    assert (await t1).finish_reason is FinishReason.CANCELLED
    assert serial_engine.info().counters.cancelled_total == cancelled + 1


async def test_event_loop_stays_responsive(tiny_engine: LocalEngine, wait_idle) -> None:
    await wait_idle(tiny_engine)
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    start = time.monotonic()
    result = await tiny_engine.generate(GenerationRequest(PROMPT, max_tokens=600))
    elapsed = time.monotonic() - start
    stop.set()
    await task
    assert result.token_count == 600
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert elapsed > 0.2  # long enough to observe
    assert len(ticks) >= elapsed / 0.01 * 0.3
    assert max(gaps) < 0.25


async def test_abandoned_stream_cancels_its_request(tiny_engine: LocalEngine, wait_idle) -> None:
    await wait_idle(tiny_engine)
    cancelled = tiny_engine.info().counters.cancelled_total
    request = GenerationRequest(PROMPT, max_tokens=LONG)
    stream = tiny_engine.stream(request)
    async for chunk in stream:
        if chunk.token_count >= 2:
            break
    await stream.aclose()  # what a disconnected client's handler does
    await wait_idle(tiny_engine, timeout=5)
    assert tiny_engine.info().counters.cancelled_total == cancelled + 1
    assert tiny_engine.cancel(request.request_id) is False  # over: unknown now
    tokens = tiny_engine.info().counters.tokens_generated_total
    await asyncio.sleep(0.2)
    assert tiny_engine.info().counters.tokens_generated_total == tokens


async def test_cancelled_consumer_task_cancels_request(tiny_engine: LocalEngine, wait_idle) -> None:
    await wait_idle(tiny_engine)
    streamed = GenerationRequest(PROMPT, max_tokens=LONG)
    awaited = GenerationRequest(PROMPT, max_tokens=LONG)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in tiny_engine.stream(streamed):
            started.set()

    for task_request, coro in ((streamed, consume()), (awaited, tiny_engine.generate(awaited))):
        cancelled = tiny_engine.info().counters.cancelled_total
        task = asyncio.create_task(coro)
        if task_request is streamed:
            await asyncio.wait_for(started.wait(), 5)
        else:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_idle(tiny_engine, timeout=5)
        assert tiny_engine.info().counters.cancelled_total == cancelled + 1
        assert tiny_engine.cancel(task_request.request_id) is False


async def test_not_ready_before_loading(tiny_model_path: Path) -> None:
    engine = LocalEngine(model_path=tiny_model_path)
    assert engine.state is EngineState.UNLOADED
    assert engine.wait_ready(0.01) is False
    with pytest.raises(EngineNotReady) as info:
        await engine.generate(GenerationRequest(PROMPT))
    assert info.value.state is EngineState.UNLOADED and info.value.retry_after == 5
    with pytest.raises(EngineNotReady):
        engine.stream(GenerationRequest(PROMPT))  # raised at call time, before streaming
    with pytest.raises(EngineNotReady):
        _ = engine.template
    assert engine.info().state is EngineState.UNLOADED
    engine.close()


async def test_loading_in_background_then_ready(tiny_model_path: Path) -> None:
    gate = threading.Event()
    stages: list[str] = []

    def progress(stage: str, fraction: float) -> None:
        stages.append(stage)
        gate.wait(10)  # hold the loader so the LOADING state is observable

    engine = LocalEngine(model_path=tiny_model_path, device="cpu", progress=progress)
    engine.start_loading()
    assert engine.state is EngineState.LOADING
    with pytest.raises(EngineNotReady) as info:
        await engine.generate(GenerationRequest(PROMPT))
    assert info.value.state is EngineState.LOADING and info.value.retry_after == 5
    assert engine.info().loading_stage == "resolving"
    engine.start_loading()  # idempotent while loading
    gate.set()
    assert await asyncio.to_thread(engine.wait_ready, 30)
    assert engine.state is EngineState.READY and stages[-1] == "ready"
    result = await engine.generate(GenerationRequest(PROMPT, max_tokens=3))
    assert result.token_count == 3
    assert engine.info().load_time_s > 0
    engine.close()


async def test_failed_load_carries_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    engine = LocalEngine(model_path=missing)
    engine.start_loading()
    assert await asyncio.to_thread(engine.wait_ready, 10) is False
    assert engine.state is EngineState.FAILED
    assert "FileNotFoundError" in engine.error and str(missing) in engine.error
    with pytest.raises(EngineNotReady) as info:
        await engine.generate(GenerationRequest(PROMPT))
    assert info.value.state is EngineState.FAILED
    assert str(missing) in str(info.value)
    assert engine.info().error == engine.error
    with pytest.raises(FileNotFoundError):
        engine.load()  # the synchronous variant re-raises (retries once)
    engine.close()


async def test_closed_engine_refuses_requests(tiny_model_path: Path) -> None:
    engine = LocalEngine(model_path=tiny_model_path, device="cpu")
    engine.load()
    engine.shutdown()
    with pytest.raises(EngineNotReady):
        await engine.generate(GenerationRequest(PROMPT, max_tokens=2))


async def test_from_config_builds_the_engine_the_server_describes(tiny_model_path: Path) -> None:
    config = EngineConfig(
        model_path=str(tiny_model_path), device="cpu", dtype="float32", max_batch_size=2,
        prefill_chunk=64, warmup=False, default_adapter="none", max_queued=5,
        load_shedding=False, options={"name": "tiny", "result_cache_entries": 0},
    )
    engine = LocalEngine.from_config(config)
    info = engine.info()
    assert (info.name, info.quantization, info.state) == ("tiny", "auto", EngineState.UNLOADED)
    assert (info.counters.max_queued, info.counters.max_batch_size) == (5, 2)
    assert (engine.prefill_chunk, engine.warmup, engine.default_adapter) == (64, False, "none")
    assert engine._scheduler.admission.enabled is False and engine._results.entries == 0
    engine.load()
    try:
        result = await engine.generate(GenerationRequest(PROMPT, max_tokens=3))
        assert result.token_count == 3 and result.model == "tiny"
    finally:
        engine.close()


def test_from_config_defaults_match_the_server() -> None:
    """``EngineConfig()`` gives what the server built before ``engine_class`` existed:
    the constructor's defaults, but quantization "auto"."""
    built = LocalEngine.from_config(EngineConfig())
    direct = LocalEngine(quantization="auto")
    for attr in ("model_path", "device", "dtype", "cache_dir", "quantization",
                 "max_batch_size", "prefill_chunk", "warmup", "default_adapter"):
        assert getattr(built, attr) == getattr(direct, attr), attr
    assert built.info().to_dict() == direct.info().to_dict()


def test_from_config_names_unknown_options() -> None:
    with pytest.raises(ValueError) as err:
        LocalEngine.from_config(EngineConfig(options={"nmae": "x", "device": "cpu"}))
    assert "nmae" in str(err.value) and "device" in str(err.value)
