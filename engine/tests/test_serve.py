"""``ds-engine serve`` over real HTTP: the official ``openai`` client, raw SSE framing,
models and adapters, the API key, every bad input, disconnects, health and metrics.

Servers run in this process on an ephemeral port, each on its own event-loop thread so
the tests can use blocking clients, and once as the real ``ds-engine serve`` subprocess.
The model is the tiny random Llama of ``conftest.py`` (its text is gibberish; greedy
decoding makes it deterministic) or a scripted engine for the error paths.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from ds_engine.cli import main
from ds_engine.interface import (
    BackendError,
    EngineInfo,
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    Priority,
    StreamChunk,
)
from ds_engine.local import LocalEngine
from ds_engine.serve import OpenAIServer
from ds_engine.testing import ScriptedEngine, make_tiny_adapter
from prometheus_client.parser import text_string_to_metric_families

KEY = "sekret-key-123"


class ServerThread:
    """An :class:`OpenAIServer` on its own loop thread, torn down with its engine."""

    def __init__(self, engine, **kwargs) -> None:
        self.engine = engine
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: OpenAIServer = self.call(self._start(engine, kwargs))
        self.url = self.server.url

    async def _start(self, engine, kwargs) -> OpenAIServer:
        server = OpenAIServer(engine, **kwargs)
        await server.start("127.0.0.1", 0)
        return server

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(lambda: httpx.get(f"{self.url}/health").status_code == 200, timeout)

    def close(self) -> None:
        self.call(self.server.close(drain_s=1.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def events(raw: str) -> list[str]:
    """The data of each SSE event; every event must be exactly one ``data:`` line."""
    assert raw.endswith("\n\n"), raw[-80:]
    out = []
    for event in raw[:-2].split("\n\n"):
        assert event.startswith("data: ") and "\n" not in event, event
        out.append(event[len("data: "):])
    return out


def assert_error(response: httpx.Response, status: int, param: str | None = None,
                 code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    assert "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


# ------------------------------------------------------------------- engines


class FaultyEngine(ScriptedEngine):
    """Answers from a script, or raises what the engine would, by a word in the prompt."""

    def _raise_for(self, prompt: str) -> None:
        if "overloaded" in prompt:
            raise EngineOverloaded("interactive queue is full", retry_after=2)
        if "greedy-user" in prompt:
            raise EngineOverloaded("user holds more than its share", retry_after=3,
                                   over_share=True)
        if "not-ready" in prompt:
            raise EngineNotReady(EngineState.LOADING, "model is loading", retry_after=5)
        if "backend" in prompt:
            raise BackendError("http://gpu-7:8000", "connection refused", retryable=True)
        if "boom" in prompt:
            raise RuntimeError("secret internal detail")

    async def generate(self, request):
        self._raise_for(request.prompt)
        return await super().generate(request)

    async def stream(self, request):
        self._raise_for(request.prompt)
        if "midstream" in request.prompt:
            yield StreamChunk("partial", "partial", 1)
            raise RuntimeError("secret internal detail")
        async for chunk in super().stream(request):
            yield chunk


class SlowLoadingEngine(ScriptedEngine):
    """Loads until the test says so, reporting a loading stage meanwhile."""

    def __init__(self) -> None:
        super().__init__(["done"])
        self._state = EngineState.UNLOADED
        self.release = threading.Event()

    @property
    def state(self):
        if self._state is EngineState.LOADING and self.release.is_set():
            self._state = EngineState.READY
        return self._state

    def start_loading(self) -> None:
        self._state = EngineState.LOADING

    def info(self):
        return EngineInfo(name=self.name, state=self.state, loading_stage="loading weights",
                          loading_progress=0.5)


# ------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def tiny(tiny_model_path: Path, tmp_path_factory) -> Iterator[ServerThread]:
    """The tiny model through LocalEngine, with one attached adapter, served as "tiny"."""
    adapter = make_tiny_adapter(tiny_model_path, tmp_path_factory.mktemp("serve") / "ad")
    engine = LocalEngine(model_path=tiny_model_path, device="cpu", dtype="float32",
                         max_batch_size=4)
    server = ServerThread(engine, served_model_name="tiny",
                          model_root=str(tiny_model_path), adapters=[("tiny-ad", str(adapter))])
    server.wait_ready()
    yield server
    server.close()


@pytest.fixture(scope="module")
def scripted() -> Iterator[ServerThread]:
    """A scripted engine behind an API key, for the checks and error paths."""
    server = ServerThread(FaultyEngine(["print('hello')"], name="scripted"),
                          served_model_name="scripted", api_key=KEY)
    server.wait_ready()
    yield server
    server.close()


@pytest.fixture(scope="module")
def http(scripted: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=scripted.url, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def client_for(server: ServerThread, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def counters(server: ServerThread):
    return server.engine.info().counters


# ------------------------------------------------------------------- the openai client


def test_openai_client_completions_streamed_and_not(tiny: ServerThread) -> None:
    client = client_for(tiny)
    prompt = "def fibonacci(n):\n"
    pieces, finishes = [], []
    for chunk in client.completions.create(model="tiny", prompt=prompt, max_tokens=10,
                                           temperature=0, stream=True):
        assert chunk.object == "text_completion" and chunk.model == "tiny"
        pieces.append(chunk.choices[0].text)
        finishes.append(chunk.choices[0].finish_reason)
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert len(pieces) > 2  # real deltas, not one block

    done = client.completions.create(model="tiny", prompt=prompt, max_tokens=10, temperature=0)
    assert done.id.startswith("cmpl-") and done.object == "text_completion"
    choice = done.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length" and choice.logprobs is None
    assert choice.text == "".join(pieces)  # the deltas add up to the whole text
    assert done.usage.completion_tokens == 10 and done.usage.prompt_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + 10
    assert 0 < choice.model_extra["confidence"] <= 1

    # A list of one prompt string is a prompt; usage comes as its own chunk on request.
    last = list(client.completions.create(model="tiny", prompt=["x = [1, 2"], max_tokens=3,
                                          temperature=0, stream=True,
                                          stream_options={"include_usage": True}))[-1]
    assert last.choices == [] and last.usage.completion_tokens == 3


def test_openai_client_chat_streamed_and_not(tiny: ServerThread) -> None:
    client = client_for(tiny)
    messages = [{"role": "system", "content": "You explain code."},
                {"role": "user", "content": "What does df.head() do?"}]
    chunks = list(client.chat.completions.create(model="tiny", messages=messages,
                                                 max_tokens=8, temperature=0, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)

    done = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8,
                                          temperature=0)
    assert done.id.startswith("chatcmpl-") and done.object == "chat.completion"
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == streamed
    assert done.usage.completion_tokens == 8
    # max_completion_tokens, OpenAI's newer name, is honoured too.
    short = client.chat.completions.create(model="tiny", messages=messages,
                                           max_completion_tokens=2, temperature=0)
    assert short.usage.completion_tokens == 2


def test_models_list_the_adapter_and_model_selects_it(tiny: ServerThread) -> None:
    client = client_for(tiny)
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny", "tiny-ad"}
    base, adapter = models["tiny"].model_dump(), models["tiny-ad"].model_dump()
    assert base["owned_by"] == "ds-engine" and base["parent"] is None
    assert base["max_model_len"] == 2048 and base["root"].endswith("tiny-llama")
    assert adapter["parent"] == "tiny" and adapter["root"].endswith("ad")
    assert client.models.retrieve("tiny-ad").id == "tiny-ad"

    prompt = "import numpy as np\n"
    with_base = client.completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                          temperature=0)
    with_adapter = client.completions.create(model="tiny-ad", prompt=prompt, max_tokens=12,
                                             temperature=0)
    assert with_adapter.model == "tiny-ad"
    assert with_adapter.choices[0].text != with_base.choices[0].text  # the LoRA acts
    # No model: the base model, as vLLM answers.
    default = httpx.post(f"{tiny.url}/v1/completions",
                         json={"prompt": prompt, "max_tokens": 12, "temperature": 0})
    assert default.json()["choices"][0]["text"] == with_base.choices[0].text

    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_concurrent_requests_are_batched(tiny: ServerThread) -> None:
    """Several users at once (the point of a shared server): every answer is whole."""

    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=f"{tiny.url}/v1", api_key="unused",
                                    max_retries=0, timeout=30)
        async with client:
            return await asyncio.gather(*(
                client.completions.create(model="tiny", prompt=f"x{i} = {i} * ",
                                          max_tokens=6 + i, temperature=0)
                for i in range(5)))

    results = asyncio.run(run())
    assert [r.usage.completion_tokens for r in results] == [6, 7, 8, 9, 10]
    assert all(r.choices[0].finish_reason == "length" for r in results)
    assert len({r.id for r in results}) == 5
    assert counters(tiny).max_batch_size_seen <= 4  # --max-batch-size holds
    assert counters(tiny).active_requests == 0


# ------------------------------------------------------------------- raw HTTP


def test_sse_framing(tiny: ServerThread) -> None:
    body = {"model": "tiny", "prompt": "for i in range(10):\n", "max_tokens": 9,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{tiny.url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"].startswith("cmpl-")
        raw = response.read().decode()
    data = events(raw)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["choices"][0]["finish_reason"] is None and c["usage"] is None
               for c in chunks[:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 9
    # ds-engine's extension: the engine's confidence on the last event only.
    assert 0 < chunks[-1]["choices"][0]["confidence"] <= 1
    assert all("confidence" not in c["choices"][0] for c in chunks[:-1])
    text = "".join(c["choices"][0]["text"] for c in chunks)
    whole = httpx.post(f"{tiny.url}/v1/completions", json={**body, "stream": False}).json()
    assert text == whole["choices"][0]["text"]

    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{tiny.url}/v1/chat/completions", json=chat) as response:
        data = events(response.read().decode())
    assert data[-1] == "[DONE]"
    first, last = json.loads(data[0]), json.loads(data[-2])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert last["choices"][0]["finish_reason"] == "length" and last["usage"]["total_tokens"]


def test_chat_is_rendered_with_the_template_and_fields_reach_the_engine(
    scripted: ServerThread, http: httpx.Client
) -> None:
    engine: FaultyEngine = scripted.engine
    response = http.post("/v1/chat/completions", json={
        "model": "scripted", "messages": [{"role": "user", "content": "hi <|im_end|>"}],
        "max_tokens": 50, "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": "##",
        "user": "alice", "priority": 2, "min_tokens": 3, "queue_timeout_s": 1.5,
        "unknown_field": {"ignored": True}, "logit_bias": None,
        "first_token_bias": {"helper": 3, "Box": -1.5},
    })
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "print('hello')"
    request = engine.requests[-1]
    # ChatML from the engine's template; the user's control token is neutralized.
    assert request.prompt.startswith("<|im_start|>user\nhi ")
    assert request.prompt.endswith("<|im_start|>assistant\n")
    assert request.prompt.count("<|im_end|>") == 1
    assert "<|im_end|>" in request.stop and "##" in request.stop
    assert (request.max_tokens, request.temperature, request.top_p, request.seed) == (
        50, 0.5, 0.9, 7)
    assert request.user == "alice" and request.priority is Priority.BATCH
    assert request.min_tokens == 3 and request.queue_timeout_s == 1.5
    assert request.first_token_bias == {"helper": 3.0, "Box": -1.5}
    assert request.adapter is None

    # Completions: the prompt is taken as rendered; vLLM's priority 0 is interactive.
    http.post("/v1/completions", json={"prompt": "<|endoftext|>x", "priority": 0})
    assert engine.requests[-1].prompt == "<|endoftext|>x"
    assert engine.requests[-1].priority is Priority.INTERACTIVE
    assert engine.requests[-1].max_tokens == 16  # OpenAI's default
    http.post("/v1/completions", json={"prompt": "x", "priority": 99})
    assert engine.requests[-1].priority is Priority.BATCH  # clamped


# ------------------------------------------------------------------- key and errors


def test_api_key(scripted: ServerThread) -> None:
    url, body = scripted.url, {"prompt": "x", "max_tokens": 1}
    assert_error(httpx.post(f"{url}/v1/completions", json=body), 401, code="invalid_api_key")
    wrong = {"Authorization": "Bearer sekret-key-124"}
    assert_error(httpx.post(f"{url}/v1/completions", json=body, headers=wrong), 401)
    assert_error(httpx.get(f"{url}/v1/models"), 401)
    assert_error(httpx.get(f"{url}/v1/nothing-here"), 401)
    good = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{url}/v1/completions", json=body, headers=good).status_code == 200
    assert_error(httpx.get(f"{url}/v1/nothing-here", headers=good), 404, code="unknown_url")
    # Probes and scrapers carry no key.
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{url}/metrics").status_code == 200

    with pytest.raises(openai.AuthenticationError):
        client_for(scripted, "wrong").completions.create(model="scripted", prompt="x")
    ok = client_for(scripted, KEY).completions.create(model="scripted", prompt="x")
    assert ok.choices[0].text == "print('hello')"


BIG = 5 * 2**20

BAD_REQUESTS = [
    # (path, body: raw bytes or JSON-able, status, param)
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"\xff\xfe", 400, None),
    ("/v1/completions", [1, 2], 400, None),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": 42}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": True}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 9000}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "stop": 5}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", 1]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "seed": "seven"}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "priority": "high"}, 400, "priority"),
    ("/v1/completions", {"prompt": "x", "user": 5}, 400, "user"),
    ("/v1/completions", {"prompt": "x", "model": 5}, 400, "model"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 4, "min_tokens": 5}, 400, "min_tokens"),
    ("/v1/completions", {"prompt": "x", "stream_options": []}, 400, "stream_options"),
    ("/v1/completions", {"prompt": "x", "first_token_bias": ["a"]}, 400, "first_token_bias"),
    ("/v1/completions", {"prompt": "x", "first_token_bias": {"a": "high"}}, 400,
     "first_token_bias"),
    ("/v1/completions", {"prompt": "x", "first_token_bias": {"a": 101}}, 400,
     "first_token_bias"),
    ("/v1/completions", {"prompt": "x", "first_token_bias": {"a": None}}, 400,
     "first_token_bias"),
    ("/v1/completions", {"prompt": "x", "first_token_bias": {"": 1}}, 400,
     "first_token_bias"),
    ("/v1/completions", {"prompt": "x", "first_token_bias": {"a" * 201: 1}}, 400,
     "first_token_bias"),
    ("/v1/completions", {"prompt": "x", "first_token_bias": {
        f"n{i}": 1 for i in range(257)}}, 400, "first_token_bias"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": ["hi"]}, 400, "messages[0]"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400,
     "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400,
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400,
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                              "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ("/v1/completions", b"{" + b" " * BIG + b"}", 413, None),
    ("/v1/embeddings", {"input": "x"}, 404, None),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_REQUESTS,
                         ids=[f"{i}-{b[1] if isinstance(b[1], bytes) and len(b[1]) < 20 else ''}"
                              f"{b[3] or b[2]}" for i, b in enumerate(BAD_REQUESTS)])
def test_bad_requests_get_error_objects(http: httpx.Client, path, body, status, param) -> None:
    if isinstance(body, bytes):
        response = http.post(path, content=body)
    else:
        response = http.post(path, json=body)
    assert_error(response, status, param)
    # ... and the server goes on answering.
    assert http.get("/health").status_code == 200
    ok = http.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200, ok.text


def test_oversized_chunked_body_and_wrong_method(http: httpx.Client) -> None:
    def chunks():
        for _ in range(6):
            yield b" " * 2**20

    assert_error(http.post("/v1/completions", content=chunks()), 413)
    assert_error(http.get("/v1/completions"), 405, code="method_not_allowed")
    assert http.post("/v1/completions", json={"prompt": "x"}).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_engine_failures_map_to_status_codes(http: httpx.Client, stream: bool) -> None:
    def post(prompt: str) -> httpx.Response:
        return http.post("/v1/completions", json={"prompt": prompt, "stream": stream})

    shed = post("overloaded")
    assert_error(shed, 503, code="overloaded")
    assert shed.headers["retry-after"] == "2"
    unfair = post("greedy-user")
    assert_error(unfair, 429, code="rate_limit_exceeded")
    assert unfair.headers["retry-after"] == "3"
    loading = post("not-ready")
    assert_error(loading, 503, code="model_not_ready")
    assert loading.headers["retry-after"] == "5"
    assert "gpu-7" in assert_error(post("backend"), 502, code="bad_gateway")["message"]
    crash = post("boom")
    assert assert_error(crash, 500)["type"] == "server_error"
    assert "secret" not in crash.text
    assert http.post("/v1/completions", json={"prompt": "x"}).status_code == 200


def test_error_after_the_stream_started_is_an_event(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/completions",
                     json={"prompt": "midstream", "stream": True}) as response:
        assert response.status_code == 200
        data = events(response.read().decode())
    assert json.loads(data[0])["choices"][0]["text"] == "partial"
    error = json.loads(data[1])["error"]
    assert error["type"] == "server_error" and "secret" not in error["message"]
    assert data[2:] == ["[DONE]"]


# ------------------------------------------------------------------- disconnects


def test_disconnect_mid_stream_cancels_the_generation(tiny: ServerThread) -> None:
    before = counters(tiny)
    body = {"prompt": "class Point:\n", "max_tokens": 1800, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{tiny.url}/v1/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        got = [next(lines) for _ in range(4)]  # two events: the generation is running
        assert got[0].startswith("data: ")
        # Leaving the block closes the connection mid-stream.
    after = wait_for(lambda: (c := counters(tiny)).cancelled_total > before.cancelled_total
                     and c.active_requests == 0 and c, what="the cancel")
    assert after.tokens_generated_total - before.tokens_generated_total < 1800


def test_disconnect_while_waiting_cancels_the_generation(tiny: ServerThread) -> None:
    before = counters(tiny)
    payload = json.dumps({"prompt": "with open(path) as f:\n", "max_tokens": 1800,
                          "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", tiny.server.port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        wait_for(lambda: counters(tiny).active_requests == 1, what="the request to start")
    after = wait_for(lambda: (c := counters(tiny)).cancelled_total > before.cancelled_total
                     and c.active_requests == 0 and c, what="the cancel")
    assert after.tokens_generated_total - before.tokens_generated_total < 1800


def test_stopping_ends_streams_with_abort_and_done(tiny_model_path: Path) -> None:
    engine = LocalEngine(model_path=tiny_model_path, device="cpu", dtype="float32")
    server = ServerThread(engine)
    server.wait_ready()
    body = {"prompt": "def test_add():\n", "max_tokens": 1800, "temperature": 0,
            "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        stopping = asyncio.run_coroutine_threadsafe(server.server.close(drain_s=0.2),
                                                    server.loop)
        rest = [line for line in lines if line]
    stopping.result(30)
    server.loop.call_soon_threadsafe(server.loop.stop)
    server.thread.join(10)
    server.loop.close()
    assert rest[-1] == "data: [DONE]"
    last = json.loads(rest[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] == "abort"
    assert last["usage"]["completion_tokens"] < 1800
    assert engine.info().counters.active_requests == 0


# ------------------------------------------------------------------- health and metrics


def test_health_while_loading_then_ready() -> None:
    engine = SlowLoadingEngine()
    server = ServerThread(engine, served_model_name="slow")
    try:
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 503 and health.headers["retry-after"] == "5"
        assert health.json()["status"] == "loading"
        assert "loading weights (50%)" in health.json()["message"]
        early = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"})
        assert_error(early, 503, code="model_not_ready")
        assert early.headers["retry-after"] == "5"
        engine.release.set()
        server.wait_ready(5)
        assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
        assert httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"}).json()[
            "choices"][0]["text"] == "done"
    finally:
        server.close()


def test_health_says_why_loading_failed(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    server = ServerThread(LocalEngine(model_path=missing, device="cpu"))
    try:
        body = wait_for(lambda: (r := httpx.get(f"{server.url}/health")).json()["status"]
                        == "failed" and r, what="the failure")
        assert body.status_code == 503 and "no-such-model" in body.json()["message"]
        assert_error(httpx.get(f"{server.url}/v1/models"), 503, code="model_not_ready")
    finally:
        server.close()


def sample_values(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_use_vllm_names(tiny: ServerThread) -> None:
    head = "import pandas as pd\ndf = pd.read_csv('data.csv')\nprint(df.shape)\n" * 3
    for tail in ("df.head()", "df.describe()"):  # a shared prefix: the cache is reused
        response = httpx.post(f"{tiny.url}/v1/completions",
                              json={"prompt": head + tail, "max_tokens": 4, "temperature": 0})
        assert response.status_code == 200
    response = httpx.get(f"{tiny.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "text/plain")
    values = sample_values(response.text)
    model = (("model_name", "tiny"),)

    def value(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted({"model_name": "tiny", **labels}.items())))]

    assert value("vllm:num_requests_running") == 0
    assert value("vllm:num_requests_waiting") == 0
    assert 0.0 <= value("vllm:kv_cache_usage_perc") <= 1.0
    assert value("vllm:request_success_total", finished_reason="length") >= 2
    assert value("vllm:prompt_tokens_total") > 0
    assert value("vllm:generation_tokens_total") >= 8
    queries, hits = value("vllm:prefix_cache_queries_total"), value("vllm:prefix_cache_hits_total")
    assert 0 < hits <= queries
    # Drafting is off by default: the counters are there, at zero.
    assert value("vllm:spec_decode_num_drafts_total") == 0
    assert value("vllm:spec_decode_num_accepted_tokens_total") == 0
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"):
        count = value(f"{histogram}_count")
        assert count >= 2 and 0 < value(f"{histogram}_sum") < 60 * count
        assert values[(f"{histogram}_bucket", tuple(sorted((*model, ("le", "+Inf")))))] == count


# ------------------------------------------------------------------- the command


def test_serve_command_rejects_bad_arguments(capsys) -> None:
    assert main(["serve", "--adapter", "no-equals-sign"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main(["serve", "--engine-class", "nowhere.Engine"]) == 2
    assert "cannot be imported" in capsys.readouterr().err


def test_cli_serve_subprocess(tiny_model_path: Path) -> None:
    """The real command: loads in the background, prints its URL, serves the openai
    client with the key from the environment, and stops cleanly on SIGTERM."""
    env = {**os.environ, "DS_ENGINE_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ds_engine.cli", "serve", "--model-path", str(tiny_model_path),
         "--port", "0", "--device", "cpu", "--dtype", "float32", "--quantization", "none",
         "--served-model-name",
         "tiny-cli"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()
    try:
        first = lines.get(timeout=60)
        assert "listening on http://127.0.0.1:" in first
        url = first.split("listening on ")[1].split()[0]
        wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 60, "the model")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        done = client.completions.create(model="tiny-cli", prompt="def add(a, b):",
                                         max_tokens=5, temperature=0)
        assert done.usage.completion_tokens == 5
        assert_error(httpx.get(f"{url}/v1/models"), 401)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "loading weights" in err and "ready" in err and "stopped" in err
    assert KEY not in err and KEY not in first
