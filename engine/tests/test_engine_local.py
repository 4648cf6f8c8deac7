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

    info = json.loads(json.dumps(tiny_engine.info()))
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


async def test_generate_counts_requests_and_tokens(tiny_engine: LocalEngine, wait_idle) -> None:
    await wait_idle(tiny_engine)
    before = tiny_engine.info()
    result = await tiny_engine.generate(GenerationRequest(PROMPT, max_tokens=12))
    assert result.token_count == 12 and result.finish_reason is FinishReason.LENGTH
    assert result.latency_ms > 0 and result.time_to_first_token_ms is not None
    after = tiny_engine.info()
    assert after["requests_total"] == before["requests_total"] + 1
    assert after["tokens_generated_total"] == before["tokens_generated_total"] + 12


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
    cancelled_before = tiny_engine.info()["cancelled_total"]
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
    tokens = tiny_engine.info()["tokens_generated_total"]
    await asyncio.sleep(0.3)
    info = tiny_engine.info()
    assert info["tokens_generated_total"] == tokens
    assert info["cancelled_total"] == cancelled_before + 1
    assert info["active_requests"] == 0
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
    assert (info["active_requests"], info["queued_requests"]) == (1, 1)
    assert tiny_engine.cancel(queued.request_id)
    assert tiny_engine.cancel(first.request_id)
    r1, r2 = await asyncio.gather(t1, t2)
    assert r1.finish_reason is FinishReason.CANCELLED and r1.token_count < LONG
    assert (r2.finish_reason, r2.token_count, r2.text) == (FinishReason.CANCELLED, 0, "")


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
    request = GenerationRequest(PROMPT, max_tokens=LONG)
    stream = tiny_engine.stream(request)
    async for chunk in stream:
        if chunk.token_count >= 2:
            break
    await stream.aclose()  # what a disconnected client's handler does
    assert request.cancelled
    await wait_idle(tiny_engine, timeout=5)
    tokens = tiny_engine.info()["tokens_generated_total"]
    await asyncio.sleep(0.2)
    assert tiny_engine.info()["tokens_generated_total"] == tokens


async def test_cancelled_consumer_task_cancels_request(tiny_engine: LocalEngine, wait_idle) -> None:
    await wait_idle(tiny_engine)
    streamed = GenerationRequest(PROMPT, max_tokens=LONG)
    awaited = GenerationRequest(PROMPT, max_tokens=LONG)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in tiny_engine.stream(streamed):
            started.set()

    for task_request, coro in ((streamed, consume()), (awaited, tiny_engine.generate(awaited))):
        task = asyncio.create_task(coro)
        if task_request is streamed:
            await asyncio.wait_for(started.wait(), 5)
        else:
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task_request.cancelled
        await wait_idle(tiny_engine, timeout=5)


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
    assert engine.info()["state"] == "unloaded"
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
    assert engine.info()["loading_stage"] == "resolving"
    engine.start_loading()  # idempotent while loading
    gate.set()
    assert await asyncio.to_thread(engine.wait_ready, 30)
    assert engine.state is EngineState.READY and stages[-1] == "ready"
    result = await engine.generate(GenerationRequest(PROMPT, max_tokens=3))
    assert result.token_count == 3
    assert engine.info()["load_time_s"] > 0
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
    assert engine.info()["error"] == engine.error
    with pytest.raises(FileNotFoundError):
        engine.load()  # the synchronous variant re-raises (retries once)
    engine.close()


async def test_closed_engine_refuses_requests(tiny_model_path: Path) -> None:
    engine = LocalEngine(model_path=tiny_model_path, device="cpu")
    engine.load()
    engine.shutdown()
    with pytest.raises(EngineNotReady):
        await engine.generate(GenerationRequest(PROMPT, max_tokens=2))
