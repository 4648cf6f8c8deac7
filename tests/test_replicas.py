"""Two real ``ds-engine serve`` processes behind the router; one is SIGKILLed under load.

``tests/test_routing.py`` checks the pool against scripted replicas and in-process
servers, where a "failure" is whatever the test injects. This module checks what a
deployment of ``docs/architecture.md`` ("Routes and replicas") meets when a model server
really dies: two ``ds-engine serve`` subprocesses on the tiny random-weight model
(``tests/conftest.py``'s ``tiny_model_dir``), a Jupyter server whose ``completion`` and
``chat`` routes name both (one ``ds_engine.remote.RemoteEngine`` per endpoint), four
clients looping over the WebSocket stream, ``POST complete``, ``POST explain`` and
``POST explain`` streamed as NDJSON, and a SIGKILL of the busier replica while requests
are in flight on it. Then:

* no request hangs (each is bounded by :data:`REQUEST_LIMIT_S`);
* a request fails only if the dead replica had already sent it text (the pool never
  retries after the first token, nothing else is retried-and-failed): every failure is
  the API's ``bad_gateway`` naming the dead endpoint, a streamed one after at least one
  chunk, and there are no more failures than requests the pool had on that replica when
  it died;
* every request started after the kill succeeds, and a request the rendezvous hash
  sends to the dead replica right after the kill is moved to the survivor unseen;
* ``GET models`` shows the dead endpoint down, and once a new server listens on its port
  the endpoint is ready again and takes requests.

Each replica runs with ``--max-batch-size 1`` and one thread: on a two-core machine two
decoding servers and the Jupyter server share the cores, and a one-request batch means a
busy replica holds queued requests that have produced nothing yet, the case failover is
for. The route's ``failure_threshold`` is high so that the breaker does not open before
the probe request is placed: "down" is then the remote engine's own verdict (FAILED
``startup_timeout_s`` after its server stopped answering).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from jupyter_ds.routing.pool import EnginePool, rendezvous_score

SERVED_NAME = "tiny"
LISTENING = re.compile(r"ds-engine serve: listening on (http://[^\s]+)")
START_TIMEOUT_S = 90.0  # import torch + load the tiny model, two at once on two busy cores
REQUEST_LIMIT_S = 30.0  # no request may take longer: a hang is a failure, not a wait
AFTER_KILL = 2  # requests each client sends once the replica is dead
CLIENTS = 4  # ws, complete, explain, explain_stream
COMPLETION_TOKENS = 160
EXPLAIN_TOKENS = 96
# "text" has no indentation rules, so completions of the random model run to max_tokens.
COMPLETION = {"suffix": "", "language": "text", "mime": "text/plain",
              "max_tokens": COMPLETION_TOKENS}
CODE = "def add(a, b):\n    return a + b\n"
# Every request's prompt differs (its number is in it): the replicas' result cache
# answers an identical greedy request at once, which would leave nothing in flight.
NUMBERS = itertools.count(1)


class ServeProcess:
    """``ds-engine serve`` on the tiny model as a subprocess: started on ``port`` (0: a
    free one), its stdout read by a thread (the listening line gives the URL), its
    stderr in ``log``. :meth:`stop` is safe to call at any time, more than once."""

    def __init__(self, model_dir: Path, log: Path, port: int = 0) -> None:
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONUNBUFFERED": "1"}
        env.pop("DS_ENGINE_API_KEY", None)  # the route sends no key
        self._stderr = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ds_engine.cli", "serve", "--model-path", str(model_dir),
             "--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED_NAME,
             "--max-batch-size", "1", "--threads", "1", "--default-adapter", "none",
             "--quantization", "none"],
            stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL,
            text=True, env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.url: str | None = None  # http://127.0.0.1:PORT, once listening

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # drained to the end: a full pipe would block it
            self._lines.put(line)
        self._lines.put(None)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_listening(self, timeout: float = START_TIMEOUT_S) -> str:
        """The server's URL from its ``listening on`` line (blocks; fails with its log)."""
        deadline = time.monotonic() + timeout
        while self.url is None:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"ds-engine serve did not listen within {timeout:g} s:"
                                     f"\n{self.tail()}") from None
            if line is None:
                raise AssertionError(f"ds-engine serve exited ({self.proc.wait()}) before "
                                     f"listening:\n{self.tail()}")
            match = LISTENING.search(line)
            if match:
                self.url = match.group(1).rstrip("/")
        return self.url

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        """Poll ``GET /health`` until 200 (the model is loaded; 503 until then)."""
        url = self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"ds-engine serve exited ({self.proc.returncode}) while "
                                     f"loading:\n{self.tail()}")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}/health not 200 within {timeout:g} s:\n"
                                     f"{self.tail()}")
            time.sleep(0.1)

    @property
    def endpoint(self) -> str:
        assert self.url is not None
        return f"{self.url}/v1"

    @property
    def port(self) -> int:
        assert self.url is not None
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye; the kernel closes its connections."""
        self.proc.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def servers(tiny_model_dir: Path, tmp_path: Path):
    """Every ``ds-engine serve`` of the test (the two replicas, then any restarted one),
    stopped in the finalizer whatever the test did."""
    started: list[ServeProcess] = []

    def start(port: int = 0) -> ServeProcess:
        proc = ServeProcess(tiny_model_dir, tmp_path / f"replica-{len(started)}.log", port)
        started.append(proc)
        return proc

    try:
        first, second = start(), start()  # both load at once
        first.wait_healthy()
        second.wait_healthy()
        yield start, [first, second]
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture
def ds_config(servers, tmp_path) -> dict[str, Any]:
    _, (first, second) = servers
    route = {
        "engine_class": "ds_engine.remote.RemoteEngine",
        "endpoints": [first.endpoint, second.endpoint],
        "options": {
            "model": SERVED_NAME,
            "retries": 0,  # fail over to the other replica at once
            "timeout_s": 20.0,  # a queued request waits for its headers this long
            "read_timeout_s": 15.0,
            "startup_timeout_s": 2.0,  # down this long: FAILED, as GET models shows
            "probe_interval_s": 0.2,
            "health_interval_s": 1.0,
            "server_metrics": False,
        },
        "failure_threshold": 50,  # see the module docstring
        "cooldown_s": 1.0,
        "health_interval_s": 0.5,
    }
    return {
        "routes": {"completion": route, "chat": route},
        "audit_log_path": str(tmp_path / "audit.log"),
        "completion_queue_timeout": 0,  # no start deadline: busy cores are not overload
    }


@dataclass
class Outcome:
    """One request as its client saw it."""

    kind: str
    after_kill: bool
    status: int = 0
    code: str | None = None  # the error's code, None when it succeeded
    message: str = ""
    chunks: int = 0  # text chunks received before the end (streamed kinds)
    seconds: float = 0.0
    hung: bool = False
    started: float = 0.0  # time.monotonic() at its start (for the report)

    @property
    def ok(self) -> bool:
        return not self.hung and self.status == 200 and self.code is None


@dataclass
class Run:
    """What the kill left: when, on which endpoint, how much was running there."""

    killed: asyncio.Event = field(default_factory=asyncio.Event)
    killed_at: float = 0.0
    victim: ServeProcess | None = None
    outstanding: int = 0  # requests the pools had on the victim at the kill
    failovers_before: int = 0
    probe: Outcome | None = None


def ds_app(serverapp: Any) -> Any:
    return serverapp.extension_manager.extension_points["jupyter_ds"].app


def pools_of(serverapp: Any) -> list[EnginePool]:
    """The route pools of the server (completion's and chat's), unwrapped from metrics."""
    engines = ds_app(serverapp).engines
    pools = {id(e.wrapped): e.wrapped for e in engines.values()}
    assert all(isinstance(p, EnginePool) for p in pools.values()), pools
    return list(pools.values())


def sticky_path(pool: EnginePool, endpoint: str, prefix: str) -> str:
    """A file path whose completions rendezvous hashing sends to ``endpoint`` first."""
    for i in range(1000):
        path = f"{prefix}-{i}.txt"
        if max(pool.replicas, key=lambda r: rendezvous_score(path, r)).url == endpoint:
            return path
    raise AssertionError(f"no path hashes to {endpoint}")


async def endpoint_row(ds_client: Any, endpoint: str, route: str = "completion") -> dict:
    code, env, _ = await ds_client.get("models")
    assert code == 200, env
    model = next(m for m in env["data"]["models"] if m.get("route") == route)
    return next(e for e in model["endpoints"] if e["url"] == endpoint)


async def poll(check: Any, timeout: float, what: str) -> Any:
    """Await ``check()`` until it returns something truthy (every 50 ms), else fail."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not seen within {timeout:g} s (last: {last!r})")


# -- the clients: one request each, as its API shows it --------------------------------


async def ws_completion(conn: Any, number: int, out: Outcome) -> None:
    conn.write_message(json.dumps({**COMPLETION, "prefix": f"notes {number}:\n",
                                   "number": number, "stream": True,
                                   "path": f"ws-{number}.txt", "cell_id": None}))
    while True:
        raw = await conn.read_message()
        if raw is None:
            out.code, out.message = "socket_closed", "the WebSocket closed"
            return
        msg = json.loads(raw)
        if msg.get("reply_to") != number:
            continue
        if msg["type"] == "error":
            out.status, out.code = msg["error"].get("status", 0), msg["error"]["code"]
            out.message = msg["error"]["message"]
            return
        if msg["type"] == "stream":
            if msg["done"]:
                out.status = 200
                return
            if msg["response"]["insertText"]:
                out.chunks += 1


async def rest_completion(ds_client: Any, number: int, out: Outcome,
                          path: str | None = None) -> None:
    code, env, _ = await ds_client.post(
        "complete", {**COMPLETION, "prefix": f"notes {number}:\n",
                     "path": path or f"rest-{number}.txt"})
    out.status = code
    if code != 200:
        out.code, out.message = env["error"]["code"], env["error"]["message"]


async def explain(ds_client: Any, number: int, out: Outcome) -> None:
    code, env, _ = await ds_client.post(
        "explain", {"code": f"{CODE}# {number}\n", "max_tokens": EXPLAIN_TOKENS})
    out.status = code
    if code != 200:
        out.code, out.message = env["error"]["code"], env["error"]["message"]


async def explain_stream(jp_fetch: Any, number: int, out: Outcome) -> None:
    """NDJSON: text lines, then a success envelope, or an error envelope mid-stream (the
    status is 200 by then) or an HTTP error before the first line."""
    response = await jp_fetch(
        "jupyter-ds", "v1", "explain", method="POST", raise_error=False,
        request_timeout=REQUEST_LIMIT_S + 10,
        body=json.dumps({"code": f"{CODE}# {number}\n", "max_tokens": EXPLAIN_TOKENS,
                         "stream": True}))
    out.status = response.code
    lines = [json.loads(line) for line in response.body.decode().splitlines() if line]
    if response.code != 200:
        out.code, out.message = lines[0]["error"]["code"], lines[0]["error"]["message"]
        return
    for line in lines:
        if line.get("type") == "stream" and line.get("text"):
            out.chunks += 1
        elif line.get("status") == "error":
            out.code, out.message = line["error"]["code"], line["error"]["message"]
    if not lines or (out.code is None and lines[-1].get("status") != "success"):
        out.code, out.message = "truncated", f"the stream ended without an answer: {lines[-1:]}"


async def bounded(kind: str, run: Run, request: Any) -> Outcome:
    """One request under :data:`REQUEST_LIMIT_S`; ``after_kill`` as it stood at its start."""
    out = Outcome(kind, after_kill=run.killed.is_set())
    started = out.started = time.monotonic()
    try:
        await asyncio.wait_for(request(out), REQUEST_LIMIT_S)
    except asyncio.TimeoutError:
        out.hung = True
    out.seconds = time.monotonic() - started
    return out


async def client_loop(kind: str, run: Run, request: Any, outcomes: list[Outcome]) -> None:
    """Requests back to back until :data:`AFTER_KILL` were started after the kill."""
    deadline = time.monotonic() + 60.0
    while sum(o.after_kill for o in outcomes if o.kind == kind) < AFTER_KILL:
        assert time.monotonic() < deadline, f"{kind}: the kill never came"
        number = next(NUMBERS)
        outcome = await bounded(kind, run, lambda out, n=number: request(n, out))
        outcomes.append(outcome)
        if outcome.hung:
            return  # reported by the test; the socket or connection is in no shape


async def kill_when_busy(run: Run, servers: list[ServeProcess], pools: list[EnginePool],
                         ds_client: Any, outcomes: list[Outcome]) -> None:
    """Mid-run (each client has finished a request), SIGKILL the replica with the most
    requests in flight once it has two (with one request per batch, one of them has
    produced nothing yet), then at once send a completion that rendezvous hashing places
    on it."""
    by_endpoint = {s.endpoint: s for s in servers}

    def in_flight() -> dict[str, int]:
        counts = dict.fromkeys(by_endpoint, 0)
        for pool in pools:
            for replica in pool.replicas:
                counts[replica.url] += replica.outstanding
        return counts

    deadline = time.monotonic() + 45.0
    while True:
        endpoint, busy = max(in_flight().items(), key=lambda item: item[1])
        if busy >= 2 and len({o.kind for o in outcomes}) == CLIENTS:
            break
        assert time.monotonic() < deadline, f"no replica ever had two requests: {in_flight()}"
        await asyncio.sleep(0.01)
    # From here to set() nothing awaits: the pools cannot move a request meanwhile.
    run.victim = by_endpoint[endpoint]
    run.outstanding = busy
    run.failovers_before = sum(p.failovers_total for p in pools)
    run.victim.kill()
    run.killed_at = time.monotonic()
    run.killed.set()
    completion = pools_of_task(pools, "completion")
    path = sticky_path(completion, endpoint, "probe")
    run.probe = await bounded("probe", run, lambda out: rest_completion(ds_client, 0, out, path))


async def all_or_none(*coros: Any) -> None:
    """Run them together; when one fails, cancel the others before raising (no client
    goes on sending requests into a test that is being torn down)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def pools_of_task(pools: list[EnginePool], name: str) -> EnginePool:
    return next(p for p in pools if p.name == name)


@pytest.mark.timeout(240)
async def test_a_killed_replica_fails_only_its_started_streams(
    servers, ds_ready, jp_serverapp, jp_fetch, jp_ws_fetch
):
    start_server, replicas = servers
    pools = pools_of(jp_serverapp)
    assert sorted(p.name for p in pools) == ["chat", "completion"]
    for replica in replicas:  # both endpoints answer before the load starts
        row = await poll(lambda r=replica: _ready_row(ds_ready, r.endpoint), 30,
                         f"{replica.endpoint} ready")
        assert row["breaker"] == "closed", row

    run = Run()
    outcomes: list[Outcome] = []
    conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream")
    load_started = time.monotonic()
    try:
        await all_or_none(
            client_loop("ws", run, lambda n, out: ws_completion(conn, n, out), outcomes),
            client_loop("complete", run, lambda n, out: rest_completion(ds_ready, n, out),
                        outcomes),
            client_loop("explain", run, lambda n, out: explain(ds_ready, n, out), outcomes),
            client_loop("explain_stream", run,
                        lambda n, out: explain_stream(jp_fetch, n, out), outcomes),
            kill_when_busy(run, replicas, pools, ds_ready, outcomes),
        )
    finally:
        conn.close()
    load_s = time.monotonic() - load_started
    victim = run.victim
    assert victim is not None and run.probe is not None
    survivor = next(r for r in replicas if r is not victim)
    host = victim.url.removeprefix("http://")  # how RemoteEngine and the pool name it
    summary = (f"victim {victim.endpoint} ({run.outstanding} in flight at the kill), "
               f"load {load_s:.1f} s, failovers "
               f"{sum(p.failovers_total for p in pools) - run.failovers_before}:\n"
               + "\n".join(_line(o, run.killed_at) for o in [*outcomes, run.probe]))
    print(summary)

    # No request hangs.
    assert not [o for o in [*outcomes, run.probe] if o.hung], summary
    assert max(o.seconds for o in outcomes) < REQUEST_LIMIT_S, summary
    # Failures: only requests that were running on the dead replica with text already
    # sent (never retried: the text cannot be taken back), each a named 502.
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        assert not o.after_kill, f"a request started after the kill failed: {o}\n{summary}"
        assert o.code == "bad_gateway" and host in o.message, f"{o}\n{summary}"
        assert "mid-" in o.message, f"{o}\n{summary}"  # mid-stream / mid-answer
        if o.kind in ("ws", "explain_stream"):
            assert o.chunks >= 1, f"failed before any text, yet not failed over: {o}"
    assert len(failed) <= run.outstanding, summary
    # Everything started after the kill succeeded, the probe included: it was placed on
    # the dead replica (rendezvous) and moved to the survivor before its first token.
    assert all(o.ok for o in outcomes if o.after_kill), summary
    assert run.probe.ok, f"{run.probe}\n{summary}"
    assert sum(p.failovers_total for p in pools) > run.failovers_before, summary
    assert victim.proc.wait(5) == -signal.SIGKILL

    # GET models: the dead endpoint is down (its engine FAILED, not usable), the
    # survivor ready; the routes still answer.
    row = await poll(lambda: _down_row(ds_ready, victim.endpoint), 15,
                     f"{victim.endpoint} down in GET models")
    assert row["usable"] is False and row["error"], row
    assert (await endpoint_row(ds_ready, survivor.endpoint))["state"] == "ready"
    code, env, _ = await ds_ready.get("health")
    assert code == 200 and env["data"]["ready"] is True, env

    # A new server on the dead one's port: the endpoint comes back and takes requests.
    restarted = start_server(victim.port)
    await asyncio.to_thread(restarted.wait_healthy)
    assert restarted.endpoint == victim.endpoint
    await poll(lambda: _ready_row(ds_ready, victim.endpoint), 30,
               f"{victim.endpoint} ready again")
    completion = pools_of_task(pools, "completion")
    replica = next(r for r in completion.replicas if r.url == victim.endpoint)
    before = replica.requests_total
    out = await bounded("back", run, lambda out: rest_completion(
        ds_ready, 0, out, sticky_path(completion, victim.endpoint, "back")))
    assert out.ok, out
    assert replica.requests_total == before + 1 and replica.failures == 0, replica
    row = await endpoint_row(ds_ready, victim.endpoint)
    assert row["state"] == "ready" and row["breaker"] == "closed" and row["usable"], row


async def _ready_row(ds_client: Any, endpoint: str) -> dict | None:
    row = await endpoint_row(ds_client, endpoint)
    return row if row["state"] == "ready" and row["usable"] else None


async def _down_row(ds_client: Any, endpoint: str) -> dict | None:
    row = await endpoint_row(ds_client, endpoint)
    return row if row["state"] != "ready" or row["breaker"] == "open" else None


def _line(o: Outcome, killed_at: float) -> str:
    """One outcome for the report: times relative to the kill."""
    begin = o.started - killed_at
    return (f"{o.kind:>14} {begin:+6.2f}..{begin + o.seconds:+6.2f} s  "
            f"{'ok' if o.ok else 'HUNG' if o.hung else o.status or 'error'} chunks={o.chunks}"
            + (f" {o.code}: {o.message}" if o.code else ""))
