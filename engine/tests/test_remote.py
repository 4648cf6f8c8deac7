"""RemoteEngine against a real OpenAI-compatible HTTP server (no mock of the HTTP layer).

Every test scripts the server of ``openai_test_server`` (tornado, ephemeral port, own
thread): what it answers, where it splits its bytes, when it hangs up or falls silent;
and checks what the engine sent, yielded and raised. Nothing may hang: each wait is
bounded by an asyncio timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from ds_engine import factory
from ds_engine.adapters import AdapterError
from ds_engine.interface import (
    BackendError,
    Engine,
    EngineConfig,
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    FinishReason,
    GenerationRequest,
    Priority,
)
from ds_engine.remote import NEUTRAL_CONFIDENCE, RemoteEngine, parse_url
from ds_engine.sse import SSEDecoder, SSEError, SSEEvent
from ds_engine.tokenizer import CHARS_PER_TOKEN, estimate_tokens
from openai_test_server import (
    OpenAITestServer,
    chunk,
    drip,
    event,
    hang_up,
    send_events,
    send_pieces,
    silence,
    usage,
    words,
)

pytestmark = pytest.mark.timeout(60)

KEY = "sk-test-DO-NOT-LEAK-4711"


@pytest.fixture
def server():
    srv = OpenAITestServer().start()
    yield srv
    srv.close()


def make(server: OpenAITestServer | str, **options) -> RemoteEngine:
    """An engine for ``server`` that probes fast and backs off briefly (tests' pace)."""
    url = server if isinstance(server, str) else server.url
    opts = {"url": url, "probe_interval_s": 0.05, "retry_backoff_s": 0.05,
            "health_interval_s": 30, **options}
    return RemoteEngine.from_config(EngineConfig(options=opts))


@asynccontextmanager
async def ready(server: OpenAITestServer, **options) -> AsyncIterator[RemoteEngine]:
    engine = make(server, **options)
    engine.start_loading()
    assert await asyncio.to_thread(engine.wait_ready, 5), engine.info().error
    try:
        yield engine
    finally:
        await engine.aclose()


async def collect(engine: RemoteEngine, request: GenerationRequest, timeout: float = 10.0):
    """All chunks of a stream (bounded in time)."""

    async def run():
        return [c async for c in engine.stream(request)]

    return await asyncio.wait_for(run(), timeout)


async def wait_for(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------- the SSE decoder

STREAM = (
    "\ufeff: a comment, then an event in CRLF with two data lines\r\n"
    "event: message\r\ndata: {\"a\": 1,\r\ndata:  \"b\": \"é→🙂\"}\r\n\r\n"
    "data:no-space\rid: 7\r\r"  # CR line ends
    ": keep-alive\n\n"  # a comment alone dispatches nothing
    "event: error\ndata: oops\n\n"
    "data: [DONE]\n\n"
).encode()
EXPECTED = [
    SSEEvent('{"a": 1,\n "b": "é→🙂"}'),
    SSEEvent("no-space", id="7"),
    SSEEvent("oops", event="error", id="7"),
    SSEEvent("[DONE]", id="7"),
]


def test_sse_decoder_reads_events_split_at_every_byte_boundary() -> None:
    whole = SSEDecoder()
    assert whole.feed(STREAM) + whole.close() == EXPECTED
    for cut in range(1, len(STREAM)):  # CRLF pairs and UTF-8 characters cut in two too
        decoder = SSEDecoder()
        events = decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) + decoder.close()
        assert events == EXPECTED, cut
    decoder = SSEDecoder()
    one_by_one = [e for i in range(len(STREAM)) for e in decoder.feed(STREAM[i : i + 1])]
    assert one_by_one + decoder.close() == EXPECTED


def test_sse_decoder_ends_leniently_and_bounds_lines() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.close() == [SSEEvent("[DONE]")]  # no blank line, no line end
    with pytest.raises(SSEError, match="longer than 16 bytes"):
        SSEDecoder(max_line_bytes=16).feed(b"data: " + b"x" * 64)


# ----------------------------------------------------------------- configuration


def test_options_are_checked_and_the_url_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"unknown RemoteEngine option\(s\): colour, urll"):
        RemoteEngine.from_config(EngineConfig(options={"url": "http://h", "urll": 1,
                                                       "colour": 2}))
    with pytest.raises(ValueError, match="'url' is required"):
        RemoteEngine.from_config(EngineConfig(options={}))
    with pytest.raises(ValueError, match="not a known FIM family"):
        make("http://h:1", fim="nonsense")
    with pytest.raises(ValueError, match="verify"):
        make("http://h:1", verify="/no/such/ca.pem")
    with pytest.raises(ValueError, match="retries"):
        make("http://h:1", retries=-1)
    with pytest.raises(ValueError, match="MISSING_KEY_VAR"):
        make("http://h:1", api_key_env="MISSING_KEY_VAR")
    for url in ("http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"):
        assert parse_url(url).base == "http://h:8000/v1"
        assert parse_url(url).root == "http://h:8000"
    proxied = parse_url("https://u:pw@gw.example/openai/v1?x=1")
    assert proxied.base == "https://u:pw@gw.example/openai/v1"
    assert proxied.display == "https://gw.example/openai/v1" and proxied.host == "gw.example:443"
    assert proxied.root == "https://u:pw@gw.example/openai"

    monkeypatch.setenv("REMOTE_KEY", KEY)
    engine = factory.make_engine(
        "ds_engine.remote.RemoteEngine",
        EngineConfig(model_path="served-name", options={
            "url": "http://u:pw@10.0.0.9:8000", "api_key_env": "REMOTE_KEY",
            "fim": "starcoder", "tokens": ["<file_sep>", "<filename>"], "context_window": 8192,
        }),
    )
    assert isinstance(engine, RemoteEngine) and isinstance(engine, Engine)
    assert engine.model == "served-name" and engine.name == "10.0.0.9:8000"
    assert engine.state is EngineState.UNLOADED and engine.wait_ready(0.01) is False
    assert engine.template.supports_fim and engine.template.name == "starcoder"
    assert engine.template.file_separator == "<file_sep>"
    assert engine.context_window() == 8192
    info = engine.info()
    assert (info.kind, info.source, info.name) == ("remote", "http://10.0.0.9:8000/v1",
                                                   "served-name")
    assert KEY not in repr(engine) and "pw" not in json.dumps(info.to_dict())
    with pytest.raises(EngineNotReady):
        engine.stream(GenerationRequest("x"))
    engine.close()


def test_tokenizer_file_counts_exactly_and_the_estimate_is_documented(tmp_path: Path) -> None:
    from ds_engine.testing import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer("starcoder")
    tokenizer.save_pretrained(tmp_path)
    text = "def add(a, b):\n    return a + b\n<file_sep>import numpy as np\n"
    exact = make("http://h:1", tokenizer=str(tmp_path / "tokenizer.json"))
    by_dir = make("http://h:1", tokenizer=str(tmp_path))
    expected = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert exact.count_tokens(text) == by_dir.count_tokens(text) == expected
    assert exact.exact_token_counts
    # The tokenizer's control tokens are escaped in user text, even unconfigured ones.
    assert "<jupyter_code>" in exact.template.special_tokens
    assert "<jupyter_code>" not in exact.template.escape("<jupyter_code>")
    estimated = make("http://h:1")
    assert not estimated.exact_token_counts
    assert estimated.count_tokens(text) == math.ceil(len(text) / CHARS_PER_TOKEN)
    assert estimate_tokens("") == 0 and estimate_tokens("x") == 1
    with pytest.raises(ValueError, match="does not exist"):
        make("http://h:1", tokenizer=str(tmp_path / "missing.json"))


# ----------------------------------------------------------------- answers


async def test_stream_sends_the_request_as_given_and_accumulates_the_answer(server) -> None:
    server.script = words(["def", " f", "():"], finish="length", prompt_tokens=11,
                          logprob=-0.25)
    async with ready(server, api_key=KEY) as engine:
        request = GenerationRequest("<fim_prefix>x<fim_suffix><fim_middle>", max_tokens=3,
                                    temperature=0.2, top_p=0.9, stop=["\n\n", "<file_sep>"],
                                    seed=7, priority=Priority.CHAT, min_tokens=1,
                                    user="alice")
        chunks = await collect(engine, request)
    assert [c.text for c in chunks] == ["def", "def f", "def f():", "def f():"]
    assert [c.delta for c in chunks] == ["def", " f", "():", ""]
    assert [c.token_count for c in chunks] == [1, 2, 3, 3]
    final = chunks[-1]
    assert final.done and not any(c.done for c in chunks[:-1])
    result = final.result
    assert result.text == "def f():" and result.finish_reason is FinishReason.LENGTH
    assert (result.token_count, result.prompt_tokens) == (3, 11)  # the server's usage
    assert result.confidence == pytest.approx(math.exp(-0.25))
    assert result.model == "base" and result.request_id == request.request_id
    assert 0 < result.time_to_first_token_ms <= result.latency_ms
    [body] = server.completions()
    assert body == {
        "model": "base", "prompt": request.prompt, "max_tokens": 3, "temperature": 0.2,
        "top_p": 0.9, "stream": True, "stream_options": {"include_usage": True},
        "stop": ["\n\n", "<file_sep>"], "seed": 7, "user": "alice", "priority": 1,
        "min_tokens": 1, "logprobs": 1,
    }
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
    counters = engine.info().counters
    assert (counters.requests_total, counters.tokens_generated_total,
            counters.prompt_tokens_total, counters.active_requests) == (1, 3, 11, 0)


async def test_generate_with_an_adapter_and_a_server_that_does_not_stream(server) -> None:
    server.models.append({"id": "sql-lora", "object": "model", "parent": "base",
                          "root": "/adapters/sql"})

    async def whole(handler, body) -> None:
        handler.finish({"id": "cmpl-2", "object": "text_completion", "choices": [
            {"index": 0, "text": "SELECT 1", "finish_reason": "stop"}]})

    server.script = whole
    async with ready(server, logprobs=False, send_priority=False) as engine:
        result = await asyncio.wait_for(
            engine.generate(GenerationRequest("q", adapter="sql-lora",
                                              priority=Priority.BATCH)), 10)
    assert result.text == "SELECT 1" and result.finish_reason is FinishReason.STOP
    assert result.token_count == engine.count_tokens("SELECT 1")  # no usage: counted here
    assert result.prompt_tokens == engine.count_tokens("q")
    assert result.confidence == NEUTRAL_CONFIDENCE  # no log-probabilities: neutral
    [body] = server.completions()
    assert body["model"] == "sql-lora"  # vLLM serves a LoRA module as a model
    assert "priority" not in body and "logprobs" not in body and "stop" not in body


async def test_without_usage_each_chunk_is_a_token(server) -> None:
    server.script = words(["a", "b", "c", "d"])  # no usage event, no logprobs
    async with ready(server) as engine:
        result = await asyncio.wait_for(engine.generate(GenerationRequest("p q r")), 10)
    assert (result.text, result.token_count) == ("abcd", 4)
    assert result.prompt_tokens == math.ceil(len("p q r") / CHARS_PER_TOKEN)
    assert result.confidence == NEUTRAL_CONFIDENCE


async def test_the_confidence_ds_engine_serve_reports_is_used(server) -> None:
    async def with_confidence(handler, body) -> None:
        last = chunk("", "stop")
        last["choices"][0]["confidence"] = 0.91  # ds-engine serve's extension field
        await send_events(handler, [chunk("a"), last, usage(3, 1)])

    server.script = with_confidence
    async with ready(server) as engine:
        result = await asyncio.wait_for(engine.generate(GenerationRequest("p")), 10)
    assert (result.text, result.confidence, result.prompt_tokens) == ("a", 0.91, 3)


async def test_events_split_at_awkward_byte_boundaries_over_http(server) -> None:
    texts = ["é", "→x", "🙂", "\r\n", "done"]
    raw = b"".join(event(chunk(t)) for t in texts).replace(b"\n\n", b"\r\n\r\n")
    raw = b": hello\r\n" + raw + event(chunk("", "stop")) + b"data: [DONE]\r\n\r\n"

    async def split(handler, body) -> None:
        await send_pieces(handler, raw, [1, 2, 3, 5, 7])

    server.script = split
    async with ready(server) as engine:
        chunks = await collect(engine, GenerationRequest("p"))
    assert chunks[-1].result.text == "".join(texts)
    assert [c.delta for c in chunks[:-1]] == texts


# ----------------------------------------------------------------- failures


async def test_malformed_answers_are_backend_errors_naming_the_backend(server) -> None:
    async def garbage(handler, body) -> None:
        await send_events(handler, ["{not json"])

    async def garbage_later(handler, body) -> None:
        await send_events(handler, [chunk("ok"), '{"choices": "nope"}'])

    server.script = garbage
    async with ready(server, name="gpu-7") as engine:
        with pytest.raises(BackendError) as caught:
            await collect(engine, GenerationRequest("p"))
        assert caught.value.backend == "gpu-7" and str(caught.value).startswith("gpu-7: ")
        assert "malformed JSON" in str(caught.value)
        assert caught.value.retryable  # nothing was generated: another replica may try
        server.script = garbage_later
        seen: list[str] = []
        with pytest.raises(BackendError, match="choices are not a list") as caught:
            async for c in engine.stream(GenerationRequest("p")):
                seen.append(c.text)
        assert seen == ["ok"] and not caught.value.retryable


async def test_a_refused_key_never_appears_in_errors_or_logs(server, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    server.api_key = KEY
    async with ready(server, api_key=KEY) as engine:
        server.api_key = "rotated"  # the server echoes the key it got in its refusal
        with pytest.raises(BackendError, match="refused the API key") as caught:
            await asyncio.wait_for(engine.generate(GenerationRequest("p")), 10)
        assert not caught.value.retryable
        assert KEY not in str(caught.value) and "[redacted]" in str(caught.value)
        assert engine.state is EngineState.FAILED  # until the probe is let in again
        assert KEY not in (engine.info().error or "")
    wrong = make(server, api_key=KEY)
    wrong.start_loading()
    started = time.monotonic()
    assert wrong.wait_ready(5) is False and time.monotonic() - started < 2  # no waiting
    assert "refused the API key" in wrong.info().error
    with pytest.raises(EngineNotReady, match="refused the API key") as refused:
        wrong.stream(GenerationRequest("p"))
    assert KEY not in str(refused.value)
    wrong.close()
    assert KEY not in caplog.text
    assert all(KEY not in str(r.args) for r in caplog.records)


async def test_overload_answers_are_engine_overloaded_with_retry_after(server) -> None:
    answers = iter([(429, "7"), (503, "2")])

    async def busy(handler, body) -> None:
        status, retry_after = next(answers)
        handler.set_status(status)
        handler.set_header("Retry-After", retry_after)
        handler.finish({"error": {"message": "too many requests"}})

    server.script = busy
    async with ready(server) as engine:
        for expected in (7, 2):
            with pytest.raises(EngineOverloaded) as caught:
                await asyncio.wait_for(engine.generate(GenerationRequest("p")), 10)
            assert caught.value.retry_after == expected and not caught.value.over_share
        assert engine.info().counters.shed_total == 2
        assert len(server.completions()) == 2  # shed: not retried here


async def test_gateway_errors_are_retried_then_retryable(server) -> None:
    async def gateway(handler, body) -> None:
        handler.set_status(502)
        handler.finish("bad gateway")

    server.script = gateway
    async with ready(server, retries=2) as engine:
        with pytest.raises(BackendError, match="HTTP 502 after 3 attempt") as caught:
            await asyncio.wait_for(engine.generate(GenerationRequest("p")), 10)
        assert caught.value.retryable and engine.retries_total == 2
    assert len(server.completions()) == 3


async def test_a_refused_connection_is_retried_before_the_first_byte(server) -> None:
    async with ready(server, retries=2, retry_backoff_s=0.3) as engine:
        server.stop_listening()
        task = asyncio.create_task(engine.generate(GenerationRequest("p")))
        await wait_for(lambda: engine.retries_total >= 1)  # the first attempt was refused
        server.listen()
        result = await asyncio.wait_for(task, 10)
        assert result.text == "Hello, world"
        assert engine.retries_total == 1 and len(server.completions()) == 1

        server.stop_listening()
        with pytest.raises(BackendError, match="no answer after 3 attempt") as caught:
            await asyncio.wait_for(engine.generate(GenerationRequest("p")), 10)
        assert caught.value.retryable and "ConnectError" in str(caught.value)


async def test_a_connection_reset_before_the_answer_is_retried(server) -> None:
    calls = []

    async def flaky(handler, body) -> None:
        calls.append(1)
        if len(calls) == 1:
            hang_up(handler)  # no status line at all
            return
        await words(["ok"])(handler, body)

    server.script = flaky
    async with ready(server) as engine:
        result = await asyncio.wait_for(engine.generate(GenerationRequest("p")), 10)
    assert result.text == "ok" and engine.retries_total == 1 and len(calls) == 2


async def test_no_headers_in_time_is_retried_then_retryable(server) -> None:
    async def stuck(handler, body) -> None:
        await asyncio.sleep(2)  # headers never come in time

    server.script = stuck
    async with ready(server, timeout_s=0.2, retries=1) as engine:
        with pytest.raises(BackendError, match=r"no answer within 0\.2 s") as caught:
            await asyncio.wait_for(engine.generate(GenerationRequest("p")), 10)
    assert caught.value.retryable and len(server.completions()) == 2


async def test_a_server_dying_mid_stream_fails_after_the_chunks_it_sent(server) -> None:
    async def dies(handler, body) -> None:
        await send_events(handler, [chunk("one"), chunk(" two")], done=False)
        hang_up(handler)

    server.script = dies
    async with ready(server) as engine:
        seen: list[str] = []

        async def consume() -> None:
            async for c in engine.stream(GenerationRequest("p")):
                seen.append(c.text)

        with pytest.raises(BackendError, match="broke off mid-answer") as caught:
            await asyncio.wait_for(consume(), 10)
        assert seen == ["one", "one two"]
        assert not caught.value.retryable  # tokens were yielded: never retried
        assert engine.info().counters.tokens_generated_total == 2
        assert len(server.completions()) == 1


async def test_the_stream_must_finish(server) -> None:
    async def truncated(handler, body) -> None:
        await send_events(handler, [chunk("a")], done=False)  # ends cleanly, unfinished

    server.script = truncated
    async with ready(server) as engine:
        with pytest.raises(BackendError, match="ended before the answer finished"):
            await collect(engine, GenerationRequest("p"))


async def test_a_server_error_event_mid_stream_fails_the_request(server) -> None:
    async def error(handler, body) -> None:
        await send_events(handler, [chunk("a"), {"error": {"message": "CUDA out of memory"}}])

    server.script = error
    async with ready(server) as engine:
        with pytest.raises(BackendError, match="CUDA out of memory"):
            await collect(engine, GenerationRequest("p"))


async def test_an_unsupported_optional_field_is_dropped_once_refused(server) -> None:
    async def strict(handler, body) -> None:
        if "priority" in body:
            handler.set_status(400)
            handler.finish({"object": "error", "message": "Got priority 2 but Priority "
                            "scheduling is not enabled.", "code": 400})
            return
        await words(["ok"])(handler, body)

    server.script = strict
    async with ready(server) as engine:
        for _ in range(2):
            result = await asyncio.wait_for(
                engine.generate(GenerationRequest("p", priority=Priority.BATCH)), 10)
            assert result.text == "ok"
    assert ["priority" in b for b in server.completions()] == [True, False, False]


# ----------------------------------------------------------------- deadlines, cancel


async def test_past_its_timeout_a_request_ends_with_timeout_and_hangs_up(server) -> None:
    server.script = drip
    async with ready(server) as engine:
        started = time.monotonic()
        result = await asyncio.wait_for(
            engine.generate(GenerationRequest("p", timeout_s=0.4)), 10)
        assert result.finish_reason is FinishReason.TIMEOUT
        assert 0.35 < time.monotonic() - started < 3 and result.text.startswith("x")
        assert await asyncio.to_thread(server.wait_disconnects, 1)

        server.script = silence  # nothing at all before the deadline
        result = await asyncio.wait_for(
            engine.generate(GenerationRequest("p", timeout_s=0.3)), 10)
        assert (result.finish_reason, result.text) == (FinishReason.TIMEOUT, "")
        assert await asyncio.to_thread(server.wait_disconnects, 2)


async def test_no_text_by_the_queue_timeout_is_shed(server) -> None:
    server.script = silence
    async with ready(server) as engine:
        with pytest.raises(EngineOverloaded, match="did not start"):
            await asyncio.wait_for(engine.generate(
                GenerationRequest("p", timeout_s=5, queue_timeout_s=0.3)), 10)
        assert engine.info().counters.shed_total == 1
        assert await asyncio.to_thread(server.wait_disconnects)


DS_ENGINE_MODELS = [{"id": "base", "object": "model", "owned_by": "ds-engine",
                     "root": "/models/base", "parent": None, "max_model_len": 2048}]


def late_start(wait: float, texts: list[str]):
    """ds-engine serve's way: no headers until the request started (after ``wait``)."""

    async def script(handler, body: dict) -> None:
        await asyncio.sleep(wait)
        await send_events(handler, [chunk(t) for t in texts] + [chunk("", "stop")])

    return script


async def test_ds_engine_serve_gets_the_deadlines_and_a_long_queue_is_not_a_failure() -> None:
    """ds-engine serve enforces the start deadline itself and answers its headers only
    once the request started: headers later than ``timeout_s`` (but before the start
    deadline) are a queue, not a dead replica, and are neither retried nor shed."""
    srv = OpenAITestServer(models=DS_ENGINE_MODELS).start()
    try:
        srv.script = late_start(0.6, ["a", "b"])
        async with ready(srv, timeout_s=0.3) as engine:
            result = await asyncio.wait_for(engine.generate(
                GenerationRequest("p", timeout_s=5, queue_timeout_s=1.0)), 10)
            assert (result.text, result.finish_reason) == ("ab", FinishReason.STOP)
            sent = srv.completions()
            assert len(sent) == 1  # not retried
            assert 0.5 < sent[0]["queue_timeout_s"] <= 1.0
            assert 4.5 < sent[0]["timeout_s"] <= 5.0
            assert "first_token_bias" not in sent[0]  # none asked
            srv.script = late_start(0, ["c"])
            await asyncio.wait_for(engine.generate(
                GenerationRequest("p", timeout_s=5, first_token_bias={"helper": 3.0})), 10)
            assert srv.completions()[-1]["first_token_bias"] == {"helper": 3.0}
            counters = engine.info().counters
            assert counters.shed_total == 0 and engine.failures_total == 0
            assert engine.state is EngineState.READY

            # Started just before its start deadline, first text after it: not shed.
            srv.script = late_start(0.25, ["late"])
            result = await asyncio.wait_for(engine.generate(
                GenerationRequest("p", timeout_s=5, queue_timeout_s=0.2)), 10)
            assert result.text == "late"

            # The server's own 429 (it could not start the request) is a shed.
            async def refuse(handler, body):
                handler.set_status(429)
                handler.set_header("Retry-After", "2")
                handler.finish({"error": {"message": "queue full", "type": "overloaded"}})

            srv.script = refuse
            with pytest.raises(EngineOverloaded):
                await asyncio.wait_for(engine.generate(
                    GenerationRequest("p", timeout_s=5, queue_timeout_s=0.2)), 10)
    finally:
        srv.close()


async def test_a_generic_server_gets_no_deadline_fields_and_late_headers_are_retried(
        server) -> None:
    """vLLM and llama.cpp answer headers at once: there, none within ``timeout_s`` is a
    failed attempt, and ds-engine's fields are not sent."""
    server.script = late_start(0.6, ["a"])
    async with ready(server, timeout_s=0.3, retries=1) as engine:
        with pytest.raises(BackendError, match="no answer"):
            await asyncio.wait_for(engine.generate(
                GenerationRequest("p", timeout_s=5, queue_timeout_s=2.0,
                                  first_token_bias={"helper": 3.0})), 10)
        sent = server.completions()
        assert len(sent) == 2
        assert "queue_timeout_s" not in sent[0] and "timeout_s" not in sent[0]
        assert "first_token_bias" not in sent[0]


@pytest.mark.parametrize("reason", [FinishReason.CANCELLED, FinishReason.STOP])
async def test_cancel_by_id_closes_the_connection_and_ends_the_stream(server, reason) -> None:
    server.script = drip
    async with ready(server) as engine:
        request = GenerationRequest("p")
        chunks = []

        async def consume() -> None:
            async for c in engine.stream(request):
                chunks.append(c)
                if len(chunks) == 2:
                    assert engine.cancel(request.request_id, reason=reason)

        await asyncio.wait_for(consume(), 10)
        assert await asyncio.to_thread(server.wait_disconnects)  # the server saw it
        final = chunks[-1]
        assert final.done and final.result.finish_reason is reason
        assert final.result.text == "xx" == chunks[1].text
        assert engine.cancel(request.request_id) is False  # no longer running
        counters = engine.info().counters
        assert counters.cancelled_total == (1 if reason is FinishReason.CANCELLED else 0)
        assert counters.active_requests == 0


async def test_a_cancel_before_the_stream_is_iterated_is_kept(server) -> None:
    """The pool or a service may cancel between stream() and the first iteration: the
    stream then ends at once, CANCELLED, and the server is never asked."""
    async with ready(server) as engine:
        request = GenerationRequest("p")
        stream = engine.stream(request)
        assert engine.cancel(request.request_id) is True
        chunks = await asyncio.wait_for(_all(stream), 5)
        assert [c.done for c in chunks] == [True]
        assert (chunks[0].result.finish_reason, chunks[0].text) == (FinishReason.CANCELLED, "")
        assert server.completions() == []
        assert engine.info().counters.cancelled_total == 1

        abandoned = GenerationRequest("p")
        stream = engine.stream(abandoned)
        del stream  # never iterated: nothing is left to cancel
        import gc

        gc.collect()
        assert engine.cancel(abandoned.request_id) is False


async def _all(stream):
    return [c async for c in stream]


async def test_cancel_from_another_thread(server) -> None:
    server.script = drip
    async with ready(server) as engine:
        request = GenerationRequest("p")
        task = asyncio.create_task(engine.generate(request))
        await wait_for(lambda: len(server.completions()) == 1)
        await asyncio.sleep(0.1)  # some text came
        assert await asyncio.to_thread(engine.cancel, request.request_id)
        result = await asyncio.wait_for(task, 10)
        assert result.finish_reason is FinishReason.CANCELLED
        assert await asyncio.to_thread(server.wait_disconnects)


async def test_leaving_a_stream_or_cancelling_generate_hangs_up(server) -> None:
    server.script = drip
    async with ready(server) as engine:
        stream = engine.stream(GenerationRequest("p"))
        first = await asyncio.wait_for(stream.__anext__(), 10)
        assert first.text == "x"
        await stream.aclose()
        assert await asyncio.to_thread(server.wait_disconnects, 1)

        task = asyncio.create_task(engine.generate(GenerationRequest("p")))
        await wait_for(lambda: len(server.completions()) == 2)
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(server.wait_disconnects, 2)
        counters = engine.info().counters
        assert (counters.cancelled_total, counters.active_requests) == (2, 0)


# ----------------------------------------------------------------- health, models


def test_unreachable_at_start_then_coming_up_becomes_ready() -> None:
    port = free_port()
    engine = make(f"http://127.0.0.1:{port}", startup_timeout_s=0.3)
    started = time.monotonic()
    engine.start_loading()  # must not raise, must not block
    assert time.monotonic() - started < 0.2
    assert engine.state is EngineState.LOADING
    with pytest.raises(EngineNotReady, match="waiting for the model server"):
        engine.stream(GenerationRequest("p"))
    assert engine.wait_ready(5) is False  # the startup window passed
    info = engine.info()
    assert info.state is EngineState.FAILED and "unreachable" in info.error
    server = OpenAITestServer().start(port=port)
    try:
        deadline = time.monotonic() + 5
        while engine.state is not EngineState.READY and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.state is EngineState.READY and engine.info().error is None
        assert engine.model == "base"
    finally:
        engine.close()
        server.close()


def test_models_give_the_adapters_and_the_context_window(server) -> None:
    server.models = [
        {"id": "base", "object": "model", "parent": None, "max_model_len": 3072},
        {"id": "sql-lora", "object": "model", "parent": "base", "root": "/a/sql"},
        {"id": "other-base", "object": "model", "parent": None, "max_model_len": 9},
    ]
    server.metrics_text = (
        "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
        'vllm:num_requests_waiting{model_name="base",engine="0"} 3.0\n'
        'vllm:num_requests_waiting{model_name="base",engine="1"} 2.0\n'
        'vllm:num_requests_running{model_name="base"} 4.0\n'
    )
    engine = make(server)
    engine.start_loading()
    try:
        assert engine.wait_ready(5)
        assert engine.model == "base" and engine.context_window() == 3072
        assert [a["name"] for a in engine.adapters()] == ["sql-lora"]
        assert engine.adapters()[0]["base_model"] == "base"
        assert engine.template_for("sql-lora") is engine.template
        assert engine.template_for(None) is engine.template
        with pytest.raises(AdapterError) as caught:
            engine.template_for("nope")
        assert caught.value.status == 404
        with pytest.raises(AdapterError):
            engine.stream(GenerationRequest("p", adapter="nope"))
        for call in (lambda: engine.load_adapter("a", "/x"), lambda: engine.unload_adapter("a")):
            with pytest.raises(AdapterError, match="loaded on its server") as caught:
                call()
            assert caught.value.status == 409
        info = engine.info()
        assert (info.context_window, info.adapters_attached) == (3072, 1)
        # vLLM's gauge, summed over its engines (read right after the models).
        deadline = time.monotonic() + 5
        while engine.info().counters.queued_requests != 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.info().counters.queued_requests == 5
        engine.check_admission(GenerationRequest("p"))  # the server sheds, not this
    finally:
        engine.close()
    configured = make(server, model="sql-lora", context_window=1000)
    assert configured.context_window() == 1000
    missing = make(server, model="gone")
    missing.start_loading()
    try:
        assert missing.wait_ready(5) is False
        assert "does not serve model 'gone'" in missing.info().error
    finally:
        missing.close()
        configured.close()


def test_a_server_without_a_model_list_is_probed_on_health(server) -> None:
    server.models_status = 404
    named = make(server, model="llama")
    anonymous = make(server)
    try:
        named.start_loading()
        anonymous.start_loading()
        assert named.wait_ready(5) and named.adapters() == []
        assert named.template_for("anything") is named.template  # the list is unknown
        assert anonymous.wait_ready(5) is False
        assert "set the RemoteEngine option 'model'" in anonymous.info().error
        assert any(r["path"] == "/health" for r in server.requests)
    finally:
        named.close()
        anonymous.close()


async def test_an_adapter_the_server_refuses_is_unknown(server) -> None:
    server.models_status = 404  # no model list: the engine cannot check names itself

    async def not_found(handler, body) -> None:
        handler.set_status(404)
        handler.finish({"error": {"message": f"The model `{body['model']}` does not exist."}})

    server.script = not_found
    async with ready(server, model="base") as engine:
        with pytest.raises(AdapterError, match="unknown adapter 'sql'") as caught:
            await asyncio.wait_for(engine.generate(GenerationRequest("p", adapter="sql")), 10)
        assert caught.value.status == 404
        with pytest.raises(BackendError, match="refused the request") as caught:
            await asyncio.wait_for(engine.generate(GenerationRequest("p")), 10)
        assert not caught.value.retryable and "does not exist" in str(caught.value)


async def test_requests_after_close_are_refused(server) -> None:
    async with ready(server) as engine:
        pass
    with pytest.raises(EngineNotReady, match="closed"):
        engine.stream(GenerationRequest("p"))


async def test_zero_max_tokens_asks_nothing(server) -> None:
    async with ready(server) as engine:
        result = await asyncio.wait_for(engine.generate(GenerationRequest("p", max_tokens=0)), 5)
    assert (result.text, result.finish_reason, result.token_count) == ("", FinishReason.LENGTH, 0)
    assert server.completions() == []

