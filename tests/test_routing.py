"""Routes and replicas: the EnginePool over replica engines that the tests control, then a
real Jupyter server whose tasks are routed to pools of in-process replicas.

Each replica is a :class:`ds_engine.testing.ScriptedEngine` with a ``mode`` the test
sets: it answers, fails before its first token, fails or hangs mid-stream, holds its
requests until released or cancelled, sheds them, or is loading. Nothing here needs HTTP:
the endpoints' engine class is :class:`Replica`, named in ``routes`` like any other.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ds_engine import (
    BackendError,
    Engine,
    EngineConfig,
    EngineCounters,
    EngineInfo,
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    FinishReason,
    GenerationRequest,
    StreamChunk,
)
from ds_engine.adapters import AdapterError
from ds_engine.factory import REQUIRED
from ds_engine.testing import ScriptedEngine
from prometheus_client.parser import text_string_to_metric_families

from jupyter_ds.metrics import instrument
from jupyter_ds.routing import EnginePool
from jupyter_ds.routing.pool import rendezvous_score

MODES = ("ok", "fail_first", "refuse", "not_ready", "fail_mid", "hang_mid", "hold",
         "overloaded", "fatal")


class Replica(ScriptedEngine):
    """A replica engine whose behaviour the test sets with ``mode`` (see ``MODES``).

    ``hold``: the request takes its place and waits (generate: until :meth:`release`;
    stream: after one chunk, until released or cancelled), so tests can see where
    requests are outstanding. Built by the server from ``routes`` like any engine class:
    ``options`` give ``url``, and ``answer``, ``mode``, ``name`` if wanted.
    """

    by_url: dict[str, Replica] = {}  # noqa: RUF012 - the server test finds its replicas

    def __init__(self, url: str, answer: str = "x + 1", mode: str = "ok",
                 name: str = "tiny-coder", window: int = 8192) -> None:
        super().__init__([answer], name=name)
        self.url = url
        self.mode = mode
        self.window = window
        self.cancels: dict[str, FinishReason] = {}
        self.loads = 0
        self.closed = False
        self._gate: asyncio.Event | None = None
        Replica.by_url[url] = self

    @classmethod
    def from_config(cls, config: EngineConfig) -> Replica:
        options = dict(config.options)
        return cls(options.pop("url"), **options)

    # what the test controls

    def set_state(self, state: EngineState) -> None:
        self._state = state

    @property
    def gate(self) -> asyncio.Event:
        if self._gate is None:
            self._gate = asyncio.Event()
        return self._gate

    def release(self) -> None:
        self.gate.set()

    # the engine

    def start_loading(self) -> None:
        self.loads += 1

    def close(self) -> None:
        self.closed = True

    def context_window(self) -> int:
        return self.window

    def _refuse(self, request: GenerationRequest) -> None:
        """The failures that happen before the first token."""
        if self.mode == "fail_first":
            raise BackendError(self.url, "connection refused", retryable=True)
        if self.mode == "refuse":
            raise ConnectionRefusedError(111, "Connection refused")
        if self.mode == "not_ready":
            raise EngineNotReady(EngineState.LOADING, "the server went down")
        if self.mode == "overloaded":
            raise EngineOverloaded("queue full", retry_after=2)
        if self.mode == "fatal":
            raise BackendError(self.url, "401 Unauthorized", retryable=False)

    async def generate(self, request: GenerationRequest):
        self.requests.append(request)
        self._refuse(request)
        if self.mode == "hold":
            await self.gate.wait()
        self.requests.pop()  # _answer records it again
        return self._answer(request)

    async def stream(self, request: GenerationRequest):
        self.requests.append(request)
        self._refuse(request)
        words = self.answers[0].split(" ")
        rid = request.request_id
        for i in range(1, len(words) + 1):
            text = " ".join(words[:i])
            yield StreamChunk(text, words[i - 1], i)
            if self.mode == "fail_mid":
                raise BackendError(self.url, "connection reset by peer", retryable=False)
            if self.mode == "hang_mid":
                await asyncio.Event().wait()  # a server that stopped answering
            if self.mode == "hold":
                while rid not in self.cancels and not self.gate.is_set():
                    await asyncio.sleep(0.01)
            if rid in self.cancels:
                yield StreamChunk(text, "", i, True, self._result(request, text,
                                                                   self.cancels[rid]))
                return
        text = " ".join(words)
        yield StreamChunk(text, "", len(words), True,
                          self._result(request, text, FinishReason.STOP))

    def _result(self, request: GenerationRequest, text: str, reason: FinishReason):
        result = self._answer(request)
        self.requests.pop()
        self.prompts.pop()
        result.text, result.finish_reason = text, reason
        return result

    def cancel(self, request_id: str, *, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        self.cancels.setdefault(request_id, reason)
        return True

    def adapters(self) -> list:
        return [{"name": f"adapter-of-{self.url}"}, {"name": "shared"}]

    def info(self) -> EngineInfo:
        return EngineInfo(name=self.name, state=self._state, kind="replica",
                          template=self.template.name, source=self.url,
                          error="unreachable" if self._state is EngineState.FAILED else None,
                          counters=EngineCounters(requests_total=len(self.requests),
                                                  active_requests=1, max_batch_size_seen=3))


class Clock:
    """Monotonic seconds that only move when the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_pool(*modes: str, **kw: Any) -> tuple[EnginePool, list[Replica]]:
    replicas = [Replica(f"http://r{i}:8000/v1", answer=f"answer from r{i}", mode=mode)
                for i, mode in enumerate(modes)]
    kw.setdefault("health_interval_s", 0)  # no thread: check_health() is called by hand
    return EnginePool([(r.url, r) for r in replicas], name="completion", **kw), replicas


def request(key: str | None = None, **kw: Any) -> GenerationRequest:
    return GenerationRequest(prompt="def f(x):\n    return ", affinity_key=key, **kw)


async def collect(stream: Any) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


async def settle() -> None:
    """Let started tasks reach their replicas."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- the interface --------------------------------------------------------------------


def test_the_pool_is_an_engine():
    pool, _ = make_pool("ok", "ok")
    assert isinstance(pool, Engine)
    assert all(hasattr(pool, member) for member in REQUIRED)
    assert isinstance(instrument(pool), Engine)


async def test_an_answer_comes_from_one_replica_by_generate_and_by_stream():
    pool, (r0, r1) = make_pool("ok", "ok")
    result = await pool.generate(request())
    assert result.text in ("answer from r0", "answer from r1")
    chunks = await collect(pool.stream(request()))
    assert chunks[-1].done and chunks[-1].result.finish_reason is FinishReason.STOP
    assert [c.text for c in chunks[:-1]] == ["answer", "answer from", chunks[-1].text]
    assert len(r0.requests) + len(r1.requests) == 2
    assert all(e["outstanding"] == 0 for e in pool.endpoints())


# -- balancing and affinity -------------------------------------------------------------


async def test_requests_spread_by_least_outstanding():
    pool, replicas = make_pool("hold", "hold", "hold")
    tasks = [asyncio.ensure_future(pool.generate(request())) for _ in range(6)]
    await settle()
    assert [e["outstanding"] for e in pool.endpoints()] == [2, 2, 2]
    replicas[0].release()
    await settle()
    assert [e["outstanding"] for e in pool.endpoints()] == [0, 2, 2]
    # the idle replica takes the next ones until it is as busy as the others
    more = [asyncio.ensure_future(pool.generate(request())) for _ in range(2)]
    await settle()
    assert len(replicas[0].requests) == 4 and len(replicas[1].requests) == 2
    for r in replicas:
        r.release()
    results = await asyncio.wait_for(asyncio.gather(*tasks, *more), 5)
    assert len(results) == 8
    assert [e["outstanding"] for e in pool.endpoints()] == [0, 0, 0]


async def test_a_file_sticks_to_its_replica_and_other_files_spread():
    pool, replicas = make_pool("ok", "ok", "ok")
    for _ in range(10):
        await pool.generate(request("src/model.py"))
    served = [len(r.requests) for r in replicas]
    assert sorted(served) == [0, 0, 10]
    for i in range(30):
        await pool.generate(request(f"src/file{i}.py"))
    assert all(len(r.requests) > 0 for r in replicas)  # 30 files over 3 replicas


async def test_affinity_falls_back_when_its_replica_is_down_and_comes_back():
    pool, replicas = make_pool("ok", "ok", "ok")
    keys = [f"nb/{i}.ipynb" for i in range(40)]
    before = {k: pool.pick(k).index for k in keys}
    sticky = replicas[before[keys[0]]]
    sticky.set_state(EngineState.LOADING)
    after = {k: pool.pick(k).index for k in keys}
    # only the keys of the replica that went down move; the others keep their cache
    gone = replicas.index(sticky)
    assert all(after[k] == before[k] for k in keys if before[k] != gone)
    assert all(after[k] != gone for k in keys)
    result = await pool.generate(request(keys[0]))
    assert not sticky.requests and result.text != f"answer from {sticky.url}"
    sticky.set_state(EngineState.READY)
    await pool.generate(request(keys[0]))
    assert len(sticky.requests) == 1


async def test_a_busy_sticky_replica_passes_the_file_on_beyond_the_slack():
    pool, replicas = make_pool("hold", "hold", affinity_slack=1)
    key = "busy.py"
    sticky = max(pool.replicas, key=lambda r: rendezvous_score(key, r))
    held = [asyncio.ensure_future(pool.generate(request(key))) for _ in range(2)]
    await settle()
    assert sticky.outstanding == 2  # the 2nd came at 1 <= least (0) + slack (1)
    third = asyncio.ensure_future(pool.generate(request(key)))
    await settle()
    other = replicas[1 - sticky.index]
    assert len(other.requests) == 1  # 2 > 0 + 1: the least busy one takes it
    for r in replicas:
        r.release()
    await asyncio.wait_for(asyncio.gather(*held, third), 5)


async def test_replicas_that_are_not_ready_take_nothing():
    pool, (loading, ready) = make_pool("ok", "ok")
    loading.set_state(EngineState.LOADING)
    for i in range(5):
        await pool.generate(request(f"f{i}.py"))
    assert not loading.requests and len(ready.requests) == 5


# -- failover ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fail_first", "refuse", "not_ready"])
async def test_a_failure_before_the_first_token_fails_over_unseen(mode):
    pool, (bad, good) = make_pool(mode, "ok")
    chunks = await asyncio.wait_for(collect(pool.stream(request())), 5)
    assert chunks[-1].result.text == "answer from r1"
    assert len(bad.requests) == 1 and len(good.requests) == 1
    result = await asyncio.wait_for(pool.generate(request()), 5)
    assert result.text == "answer from r1"
    ends = pool.endpoints()
    assert ends[0]["failures"] == 2 and ends[1]["failures"] == 0
    assert ends[0]["error"] and pool.failovers_total == 2


async def test_attempts_are_bounded_and_the_last_failure_names_its_backend():
    pool, replicas = make_pool("fail_first", "fail_first", "fail_first", max_attempts=2)
    with pytest.raises(BackendError) as caught:
        await asyncio.wait_for(pool.generate(request()), 5)
    assert sum(len(r.requests) for r in replicas) == 2
    assert caught.value.backend in (replicas[0].url, replicas[1].url)
    assert "2 endpoint(s) tried" in str(caught.value)
    with pytest.raises(BackendError):
        await asyncio.wait_for(collect(pool.stream(request())), 5)


async def test_a_failure_the_replica_calls_final_is_not_retried():
    pool, (_, good) = make_pool("fatal", "ok")
    with pytest.raises(BackendError, match="401"):
        await pool.generate(request())
    assert not good.requests


async def test_a_mid_stream_failure_ends_the_request_with_a_named_error_at_once():
    pool, (bad, good) = make_pool("fail_mid", "ok")
    seen: list[StreamChunk] = []

    async def consume() -> None:
        async for chunk in pool.stream(request()):
            seen.append(chunk)

    with pytest.raises(BackendError) as caught:
        await asyncio.wait_for(consume(), 2)
    assert caught.value.retryable is False and caught.value.backend == bad.url
    assert "mid-stream after 1 chunk" in str(caught.value)
    assert [c.text for c in seen] == ["answer"]  # what was shown stays; nothing is replayed
    assert not good.requests
    assert pool.endpoints()[0]["failures"] == 1 and pool.endpoints()[0]["outstanding"] == 0


async def test_a_replica_that_hangs_mid_stream_never_holds_the_caller():
    pool, (hung, _) = make_pool("hang_mid", "ok", stall_grace_s=0.1)
    started = asyncio.get_running_loop().time()
    with pytest.raises(BackendError) as caught:
        await asyncio.wait_for(collect(pool.stream(request(timeout_s=0.2))), 3)
    assert asyncio.get_running_loop().time() - started < 2
    assert caught.value.backend == hung.url and not caught.value.retryable
    assert "deadline" in str(caught.value)


async def test_overloaded_replicas_are_passed_over_and_all_of_them_is_a_503():
    pool, (_, free) = make_pool("overloaded", "ok")
    result = await pool.generate(request())
    assert result.text == "answer from r1"
    assert pool.endpoints()[0]["failures"] == 0  # shedding is not failing
    free.mode = "overloaded"
    with pytest.raises(EngineOverloaded):
        await pool.generate(request())
    with pytest.raises(EngineOverloaded):
        await collect(pool.stream(request()))


async def test_admission_sheds_only_when_every_replica_would():
    class Shedding(Replica):
        def check_admission(self, request):
            raise EngineOverloaded("full")

    a, b = Shedding("http://a/v1"), Replica("http://b/v1")
    pool = EnginePool([(a.url, a), (b.url, b)], health_interval_s=0)
    pool.check_admission(request())  # b admits it
    b.set_state(EngineState.LOADING)
    with pytest.raises(EngineOverloaded):
        pool.check_admission(request())


# -- circuit breaker ---------------------------------------------------------------------


async def test_the_breaker_opens_after_n_failures_and_probes_after_the_cooldown():
    clock = Clock()
    pool, (flaky, steady) = make_pool("fail_first", "ok", clock=clock, failure_threshold=3,
                                      cooldown_s=10, max_cooldown_s=15)
    steady.set_state(EngineState.LOADING)  # only the flaky one to try
    for _ in range(3):
        with pytest.raises(BackendError):
            await pool.generate(request())
    steady.set_state(EngineState.READY)
    state = pool.endpoints()[0]
    assert state["breaker"] == "open" and state["retry_in_s"] == 10 and not state["usable"]
    tried = len(flaky.requests)
    for i in range(5):
        await pool.generate(request(f"k{i}.py"))
    assert len(flaky.requests) == tried  # kept out
    # with every other replica down, the pool says when to come back
    steady.set_state(EngineState.LOADING)
    assert pool.state is EngineState.LOADING
    with pytest.raises(EngineNotReady, match="circuit open") as caught:
        pool.stream(request())
    assert caught.value.retry_after == 10
    clock.advance(10)
    assert pool.endpoints()[0]["breaker"] == "half_open" and pool.state is EngineState.READY
    # a failed probe opens it again, for twice as long (capped at max_cooldown_s)
    with pytest.raises(BackendError):
        await pool.generate(request())
    assert pool.endpoints()[0]["breaker"] == "open"
    assert pool.endpoints()[0]["retry_in_s"] == 15
    clock.advance(15)
    flaky.mode = "ok"
    result = await pool.generate(request())  # the probe succeeds: closed again
    assert result.text == "answer from r0"
    assert pool.endpoints()[0]["breaker"] == "closed" and pool.endpoints()[0]["failures"] == 0
    assert flaky.url in repr(pool)


async def test_a_half_open_replica_takes_one_probe_at_a_time():
    clock = Clock()
    pool, (probe, other) = make_pool("fail_first", "ok", clock=clock, failure_threshold=1)
    other.set_state(EngineState.LOADING)
    with pytest.raises(BackendError):
        await pool.generate(request())
    clock.advance(10)
    probe.mode = "hold"
    first = asyncio.ensure_future(pool.generate(request()))
    await settle()
    assert pool.endpoints()[0]["outstanding"] == 1
    with pytest.raises(EngineNotReady):  # the probe is running: nobody else gets in
        await pool.generate(request())
    probe.release()
    await asyncio.wait_for(first, 5)
    assert pool.endpoints()[0]["breaker"] == "closed"
    await asyncio.wait_for(pool.generate(request()), 5)


# -- cancel ----------------------------------------------------------------------------


async def test_cancel_reaches_the_replica_that_serves_the_request():
    pool, (r0, r1) = make_pool("hold", "hold")
    first = request()
    second = request()
    s1 = pool.stream(first)
    s2 = pool.stream(second)
    assert (await s1.__anext__()).text == "answer"  # placed on r0 (least used)
    assert (await s2.__anext__()).text == "answer"  # then r1
    assert pool.cancel(second.request_id) is True
    end = await asyncio.wait_for(s2.__anext__(), 5)
    assert end.done and end.result.finish_reason is FinishReason.CANCELLED
    assert second.request_id in r1.cancels and second.request_id not in r0.cancels
    assert pool.cancel(second.request_id, reason=FinishReason.STOP) is False  # ended
    assert pool.cancel(first.request_id, reason=FinishReason.STOP) is True
    end = await asyncio.wait_for(s1.__anext__(), 5)
    assert end.result.finish_reason is FinishReason.STOP
    assert r0.cancels[first.request_id] is FinishReason.STOP
    assert pool.cancel("unknown") is False
    await s1.aclose()
    await s2.aclose()


async def test_leaving_a_stream_early_releases_its_replica():
    pool, _ = make_pool("hold", "hold")
    stream = pool.stream(request())
    await stream.__anext__()
    assert pool.endpoints()[0]["outstanding"] == 1
    await stream.aclose()
    assert pool.endpoints()[0]["outstanding"] == 0
    assert pool.endpoints()[0]["failures"] == 0


# -- state, health, facts ------------------------------------------------------------------


def test_the_pool_state_aggregates_its_replicas():
    pool, (a, b) = make_pool("ok", "ok")
    assert pool.state is EngineState.READY
    a.set_state(EngineState.FAILED)
    assert pool.state is EngineState.READY  # one is enough
    b.set_state(EngineState.LOADING)
    assert pool.state is EngineState.LOADING
    assert pool.wait_ready(0.05) is False
    b.set_state(EngineState.FAILED)
    assert pool.state is EngineState.FAILED
    info = pool.info()
    assert info.state is EngineState.FAILED and info.kind == "pool"
    assert a.url in info.error and b.url in info.error and "unreachable" in info.error
    assert pool.wait_ready() is False
    a.set_state(EngineState.UNLOADED)
    b.set_state(EngineState.UNLOADED)
    assert pool.state is EngineState.UNLOADED
    with pytest.raises(EngineNotReady):
        pool.stream(request())
    a.set_state(EngineState.READY)
    assert pool.wait_ready(1) is True


def test_start_loading_warms_every_replica_and_health_checks_retry_failed_ones():
    clock = Clock()
    pool, (down, up) = make_pool("ok", "ok", clock=clock, max_cooldown_s=4)
    down.set_state(EngineState.FAILED)  # unreachable at start: the pool starts anyway
    pool.start_loading()
    assert (down.loads, up.loads) == (1, 1)
    assert pool.state is EngineState.READY
    pool.check_health()
    assert down.loads == 2 and up.loads == 1  # asked to start again
    pool.check_health()
    assert down.loads == 2  # backing off
    clock.advance(1)
    pool.check_health()
    assert down.loads == 3
    clock.advance(1)
    pool.check_health()
    assert down.loads == 3  # next at +2 s, then +4 s (the cap)
    down.set_state(EngineState.READY)
    pool.check_health()
    assert pool.endpoints()[0]["state"] == "ready"
    pool.close()
    assert down.closed and up.closed


def test_the_health_thread_runs_until_the_pool_closes():
    pool, (down, _) = make_pool("ok", "ok", health_interval_s=0.01)
    down.set_state(EngineState.FAILED)
    pool.start_loading()
    deadline = time.monotonic() + 5
    while down.loads < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert down.loads >= 2
    pool.close()
    pool._monitor.join(2)
    assert not pool._monitor.is_alive()


def test_model_facts_come_from_the_route_and_info_sums_the_counters():
    replicas = [Replica("http://a/v1", window=4096), Replica("http://b/v1", window=2048)]
    pool = EnginePool([(r.url, r) for r in replicas], name="chat", health_interval_s=0)
    assert pool.context_window() == 2048  # a failover must fit too
    assert pool.count_tokens("a b c") == 3
    assert pool.template is replicas[0].template
    assert pool.template_for(None) is replicas[0].template
    assert [a["name"] for a in pool.adapters()] == [
        "adapter-of-http://a/v1", "shared", "adapter-of-http://b/v1"]
    with pytest.raises(AdapterError) as caught:
        pool.load_adapter("x", "/tmp/x")
    assert caught.value.status == 409
    with pytest.raises(AdapterError):
        pool.unload_adapter("x")
    info = pool.info()
    assert info.kind == "pool" and info.name == "tiny-coder" and info.state is EngineState.READY
    assert info.context_window == 2048 and info.loading_stage == "2/2 endpoints ready"
    assert info.counters.active_requests == 2 and info.counters.max_batch_size_seen == 3
    flat = info.to_dict()
    assert flat["requests_total"] == 0 and flat["kind"] == "pool"
    ends = pool.endpoints()
    assert [e["name"] for e in ends] == ["chat-0", "chat-1"]
    assert set(ends[0]) >= {"name", "url", "state", "outstanding", "failures", "breaker"}


def test_a_pool_needs_a_replica():
    with pytest.raises(ValueError, match="at least one replica"):
        EnginePool([])


# -- a real server with routes -----------------------------------------------------------

SPEC = f"{__name__}.Replica"
FIM = ["http://fim-0:8000/v1", "http://fim-1:8000/v1"]
CHAT = ["http://chat-0:8000/v1"]
PREFIX = "def f(x):\n    return "


@pytest.fixture
def ds_config(tmp_path) -> dict[str, Any]:
    return {
        "routes": {
            "completion": {"engine_class": SPEC, "endpoints": FIM,
                           "options": {"answer": "x + 1", "name": "fim-model"},
                           "cooldown_s": 60},
            "chat": {"engine_class": SPEC, "endpoints": CHAT,
                     "options": {"answer": "It adds one to x.", "name": "chat-model"}},
        },
        "audit_log_path": str(tmp_path / "audit.log"),
    }


async def test_a_server_serves_each_task_from_its_route(ds_ready):
    code, env, _ = await ds_ready.get("models")
    assert code == 200, env
    data = env["data"]
    completion, chat = data["models"]
    assert completion["kind"] == "pool" and completion["route"] == "completion"
    assert completion["name"] == "fim-model" and completion["tasks"] == ["completion"]
    assert [e["url"] for e in completion["endpoints"]] == FIM
    assert all(e["state"] == "ready" and e["breaker"] == "closed"
               for e in completion["endpoints"])
    assert chat["route"] == "chat" and chat["tasks"] == ["explain", "tests", "commit_message"]
    assert data["routes"] == {"completion": "fim-model", "explain": "chat-model",
                              "tests": "chat-model", "commit_message": "chat-model"}
    code, env, _ = await ds_ready.get("health")
    assert env["data"]["ready"] and env["data"]["model"] == "fim-model"
    assert set(env["data"]["tasks"].values()) == {"ready"}

    code, env, _ = await ds_ready.post("complete", {"prefix": PREFIX, "path": "a.py"})
    assert code == 200 and env["data"]["output"] == "x + 1", env
    code, env, _ = await ds_ready.post("explain", {"code": "f = lambda x: x + 1"})
    assert code == 200 and env["data"]["output"] == "It adds one to x.", env
    assert len(Replica.by_url[CHAT[0]].requests) == 1

    # the file's replica fails: the next completions fail over, unseen by the user
    sticky = next(Replica.by_url[u] for u in FIM if Replica.by_url[u].requests)
    other = next(Replica.by_url[u] for u in FIM if Replica.by_url[u] is not sticky)
    sticky.mode = "fail_first"
    for _ in range(4):
        code, env, _ = await ds_ready.post("complete", {"prefix": PREFIX, "path": "a.py"})
        assert code == 200 and env["data"]["output"] == "x + 1", env
    assert len(other.requests) == 4
    _, env, _ = await ds_ready.get("models")
    down = next(e for e in env["data"]["models"][0]["endpoints"] if e["url"] == sticky.url)
    assert down["failures"] == 3 and down["breaker"] == "open"  # then kept out
    assert "connection refused" in down["error"]

    # /metrics shows each endpoint's state, labelled by route and URL
    response = await ds_ready.fetch("metrics")
    samples = {(s.name, s.labels.get("endpoint"), s.labels.get("state")): s.value
               for f in text_string_to_metric_families(response.body.decode())
               if f.name.startswith("jupyter_ds_endpoint_") for s in f.samples
               if s.labels.get("route") == "completion"}
    assert samples[("jupyter_ds_endpoint_up", sticky.url, None)] == 0
    assert samples[("jupyter_ds_endpoint_up", other.url, None)] == 1
    assert samples[("jupyter_ds_endpoint_breaker", sticky.url, "open")] == 1
    assert samples[("jupyter_ds_endpoint_breaker", other.url, "closed")] == 1
    assert samples[("jupyter_ds_endpoint_failures_total", sticky.url, None)] == 3
    assert samples[("jupyter_ds_endpoint_requests_total", other.url, None)] >= 4
    assert samples[("jupyter_ds_endpoint_outstanding", other.url, None)] == 0

    # a failure mid-answer is a 502 naming the backend, never a hang
    other.mode = "fail_mid"
    code, env, _ = await ds_ready.post("complete", {"prefix": PREFIX, "path": "a.py"})
    assert code == 502 and other.url in env["error"]["message"], env

    # no completion replica left: not ready, 503, while explain still answers
    other.set_state(EngineState.LOADING)
    code, env, _ = await ds_ready.get("health")
    assert env["data"]["ready"] is False and env["data"]["tasks"]["explain"] == "ready"
    code, env, headers = await ds_ready.post("complete", {"prefix": PREFIX})
    assert code == 503 and "Retry-After" in headers, env
    code, env, _ = await ds_ready.post("explain", {"code": "x = 1"})
    assert code == 200, env


# -- two replicas over real HTTP: `ds-engine serve` servers and RemoteEngine endpoints ----


class ServedReplica:
    """``ds-engine serve``'s server (:class:`ds_engine.serve.OpenAIServer`) around a
    scripted engine, on its own event-loop thread and an ephemeral port: one endpoint of
    a route, reached over real HTTP by a ``ds_engine.remote.RemoteEngine``."""

    def __init__(self, answer: str, engine: Any = None) -> None:
        from ds_engine.serve import OpenAIServer

        self.engine = engine if engine is not None else ScriptedEngine([answer], name="served")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = OpenAIServer(self.engine, served_model_name="served")
        self._call(self.server.start("127.0.0.1", 0))
        self.url = f"{self.server.url}/v1"
        self.running = True

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self._call(self.server.close(drain_s=0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class TestTwoReplicasOverHttp:
    @pytest.fixture
    def served(self):
        replicas = [ServedReplica("x + 1"), ServedReplica("x + 1")]
        yield replicas
        for replica in replicas:
            replica.stop()

    @pytest.fixture
    def dead_url(self) -> str:
        """An endpoint nothing listens on: the server starts anyway, the route shows it."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    @pytest.fixture
    def ds_config(self, served, dead_url, tmp_path) -> dict[str, Any]:
        remote = {"engine_class": "ds_engine.remote.RemoteEngine",
                  "endpoints": [s.url for s in served] + [dead_url],
                  # fail over at once rather than retry the same endpoint
                  "options": {"model": "served", "retries": 0, "probe_interval_s": 0.1,
                              "server_metrics": False}}
        return {"routes": {"completion": remote, "chat": remote},
                "audit_log_path": str(tmp_path / "audit.log")}

    async def test_a_stopped_replica_is_failed_over_unseen(self, served, dead_url, ds_ready):
        # The route is ready once one endpoint is; each endpoint's probe settles on its
        # own (on a busy machine, the second may take a moment): wait for both, so the
        # first completion goes to its file's replica, not to the only one ready yet.
        for _ in range(200):
            _, env, _ = await ds_ready.get("models")
            pool = env["data"]["models"][0]
            if [e["state"] == "ready" for e in pool["endpoints"]] == [True, True, False]:
                break
            await asyncio.sleep(0.05)
        code, env, _ = await ds_ready.post("complete", {"prefix": PREFIX, "path": "a.py"})
        assert code == 200 and env["data"]["output"] == "x + 1", env
        sticky = next(s for s in served if s.engine.requests)
        assert pool["kind"] == "pool" and [e["url"] for e in pool["endpoints"]] == [
            *(s.url for s in served), dead_url]
        assert [e["state"] == "ready" for e in pool["endpoints"]] == [True, True, False]
        assert pool["endpoints"][2]["usable"] is False and pool["state"] == "ready"

        sticky.stop()  # the file's server goes away
        for _ in range(3):
            code, env, _ = await ds_ready.post("complete", {"prefix": PREFIX, "path": "a.py"})
            assert code == 200 and env["data"]["output"] == "x + 1", env
        survivor = next(s for s in served if s is not sticky)
        assert len(survivor.engine.requests) >= 3
        _, env, _ = await ds_ready.get("models")
        down = next(e for e in env["data"]["models"][0]["endpoints"] if e["url"] == sticky.url)
        assert down["failures_total"] >= 1 or down["state"] != "ready", down
        # the chat route shares the endpoints: it answers from the survivor too
        code, env, _ = await ds_ready.post("explain", {"code": "f = lambda x: x + 1"})
        assert code == 200 and env["data"]["output"] == "x + 1", env
        # ... and test generation: its prompts go to the survivor over HTTP, and the
        # answer comes back through the sandbox's verdicts (this model's text is no test)
        before = len(survivor.engine.requests)
        code, env, _ = await ds_ready.post("tests", {
            "source": "def inc(x):\n    return x + 1\n", "rounds": 1, "max_tokens": 32})
        assert code == 200, env
        assert len(survivor.engine.requests) > before
        assert any("def inc(x)" in r.prompt for r in survivor.engine.requests[before:])


class TestASlowReplica:
    """A replica that is slower than the request's deadline: a 504 naming the timeout,
    at the deadline, never a hang (and the replica is told to stop)."""

    @pytest.fixture
    def served(self, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
        from lsp_engine import SlowEngine

        replica = ServedReplica("", engine=SlowEngine("one two three four five six", 1.0))
        yield replica
        replica.stop()

    @pytest.fixture
    def ds_config(self, served, tmp_path) -> dict[str, Any]:
        remote = {"engine_class": "ds_engine.remote.RemoteEngine", "endpoints": [served.url],
                  "options": {"model": "served", "retries": 0, "probe_interval_s": 0.1,
                              "server_metrics": False}}
        return {"routes": {"chat": remote}, "explain_timeout": 1.5,
                "audit_log_path": str(tmp_path / "audit.log")}

    async def test_past_the_deadline_is_a_504(self, served, ds_ready):
        for _ in range(200):  # the route's one endpoint, ready
            _, env, _ = await ds_ready.get("health")
            if env["data"]["tasks"].get("explain") == "ready":
                break
            await asyncio.sleep(0.05)
        started = time.monotonic()
        code, env, _ = await ds_ready.post("explain", {"code": "x = 1"})
        took = time.monotonic() - started
        assert code == 504 and env["error"]["code"] == "timeout", env
        assert "1.5 s" in env["error"]["message"]
        assert 1.4 < took < 5, took
        engine = served.engine
        for _ in range(100):  # the connection closed: the replica stopped generating
            if engine.cancelled:
                break
            await asyncio.sleep(0.05)
        assert engine.cancelled
