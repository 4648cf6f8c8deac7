"""Throughput through the HTTP API: 1, 4, 8, 16 concurrent clients, batched vs one at a time.

Starts a real Jupyter server (a subprocess, on a free port of 127.0.0.1, with a random
token and a temporary root) with the jupyter-ds extension on the embedded model, waits
until ``GET jupyter-ds/v1/health`` says the model is ready, then runs N closed-loop
clients at once: each replays a person typing through its own real source file that this
project did not write (a standard-library module), one ``POST jupyter-ds/v1/complete``
at each word end (prefix, suffix, path; 16 tokens, greedy), the next request as soon as
the previous answer arrives. Per N: requests/s, p50/p95 latency, tokens/s and errors by
status. Two servers in one run: ``batched`` (the default ``max_batch_size``) and
``sequential`` (``--JupyterDsApp.max_batch_size=1``), and the batched speed-up over the
sequential server at one client and at the same number of clients.

    .venv/bin/python benchmarks/throughput.py [--clients 1,4,8,16] [--seconds 30]
        [--configs batched,sequential] [--out-dir benchmarks/results]

JSON goes to stdout and ``<out-dir>/throughput.json``, a markdown table to
``<out-dir>/throughput.md``; progress goes to stderr. The machinery (``running_server``,
``wait_until_ready``, ``api_call``, ``run_clients``, ``summarize``, ``TypingCursor``) is
meant to be reused by other load tests (e.g. a mix of completion, explain and tests).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import importlib.util
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from results_io import publish
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from jupyter_ds.audit.report import percentile

ROOT = Path(__file__).resolve().parent.parent
API = "jupyter-ds/v1/"

# Real code this project did not write: one standard-library module per client.
SOURCE_MODULES = (
    "textwrap", "json.decoder", "shutil", "argparse", "csv", "difflib", "heapq",
    "fractions", "tempfile", "string", "calendar", "configparser", "ipaddress",
    "statistics", "pprint", "dataclasses", "functools", "gettext", "smtplib", "ftplib",
)

WARMUP_MODULE = "ast"  # not among SOURCE_MODULES

# The server configurations compared; values are extra command-line arguments.
CONFIGS: dict[str, list[str]] = {
    "batched": [],
    "sequential": ["--JupyterDsApp.max_batch_size=1"],
}


def log(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    """A Jupyter server subprocess with jupyter-ds, and how to reach it."""

    process: subprocess.Popen
    base_url: str  # ends with "/"
    token: str
    root_dir: Path
    log_path: Path

    def url(self, route: str) -> str:
        """``route`` under jupyter-ds's API, e.g. ``url("complete")``."""
        return self.base_url + API + route.lstrip("/")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "".join(text.splitlines(keepends=True)[-lines:])


class ServerError(RuntimeError):
    """The server did not start, died, or its model did not get ready."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(port: int, token: str, root_dir: Path, extra_args: list[str]) -> list[str]:
    """The command line of a Jupyter server with jupyter-ds on 127.0.0.1:``port``."""
    cmd = [
        sys.executable, "-m", "jupyter_server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.open_browser=False",
        f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.jpserver_extensions={'jupyter_ds': True}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd + list(extra_args)


def start_server(
    extra_args: list[str] | None = None,
    work_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """Start the server (not waiting for it); its output goes to ``work_dir/server.log``.
    ``env`` is added to this process's environment."""
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="jupyter-ds-bench-"))
    root_dir = work_dir / "root"
    root_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "server.log"
    port, token = free_port(), secrets.token_hex(24)
    env = {**os.environ, **(env or {})}
    # Our own runtime and user config dirs: no leftovers, no user settings mixed in.
    env["JUPYTER_RUNTIME_DIR"] = str(work_dir / "runtime")
    env["JUPYTER_CONFIG_DIR"] = str(work_dir / "config")
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            server_command(port, token, root_dir, extra_args or []),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=root_dir, env=env,  # our process group: a Ctrl-C stops it too
        )
    atexit.register(_kill_if_running, process)
    return Server(process, f"http://127.0.0.1:{port}/", token, root_dir, log_path)


def _kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()


def stop_server(server: Server, timeout: float = 20.0) -> None:
    """SIGTERM (Jupyter shuts down cleanly), then SIGKILL if it lingers."""
    process = server.process
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def new_http_client(max_clients: int = 64) -> AsyncHTTPClient:
    """A private tornado client that runs ``max_clients`` requests at once."""
    return AsyncHTTPClient(force_instance=True, max_clients=max_clients)


async def wait_until_ready(
    server: Server, timeout: float = 900.0, http: AsyncHTTPClient | None = None
) -> dict[str, Any]:
    """Poll ``health`` until the model is ready; its ``data``. Raises ServerError."""
    own = http is None
    http = http or new_http_client(4)
    deadline = time.monotonic() + timeout
    last = None
    try:
        while True:
            if server.process.poll() is not None:
                raise ServerError(
                    f"the server exited with {server.process.returncode}; "
                    f"log: {server.log_path}\n{server.log_tail()}"
                )
            result = await api_call(http, server, "GET", "health", timeout=10)
            if result.status == 200 and result.envelope:
                data = result.envelope.get("data", {})
                state = (data.get("model_state"), data.get("error"))
                if state != last:
                    log(f"health: model {state[0]}" + (f" ({state[1]})" if state[1] else ""))
                    last = state
                if data.get("ready"):
                    return data
                if data.get("model_state") == "failed":
                    raise ServerError(
                        f"the model failed to load: {data.get('error')}; log: {server.log_path}"
                    )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"not ready after {timeout:.0f} s; log: {server.log_path}\n"
                    f"{server.log_tail()}"
                )
            await asyncio.sleep(0.5)
    finally:
        if own:
            http.close()


@contextlib.asynccontextmanager
async def running_server(
    extra_args: list[str] | None = None,
    ready_timeout: float = 900.0,
    keep_dir: bool = False,
    env: dict[str, str] | None = None,
):
    """``async with running_server([...]) as (server, health):`` a ready server, stopped after.

    The temporary directory (root dir and server log) is removed afterwards unless
    ``keep_dir`` or the server failed (then its log path is printed).
    """
    work_dir = Path(tempfile.mkdtemp(prefix="jupyter-ds-bench-"))
    server = start_server(extra_args, work_dir, env)
    log(f"server pid {server.process.pid} at {server.base_url} (log {server.log_path})")
    failed = True
    try:
        health = await wait_until_ready(server, ready_timeout)
        yield server, health
        if server.process.poll() is not None:
            raise ServerError(f"the server died during the run; log: {server.log_path}")
        failed = False
    finally:
        stop_server(server)
        if failed or keep_dir:
            log(f"server log kept: {server.log_path}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


# --------------------------------------------------------------------------- requests


@dataclass
class Call:
    """One API request: ``kind`` labels it in the summaries (complete, explain, tests...)."""

    kind: str
    method: str
    route: str
    body: dict[str, Any] | None = None
    timeout: float = 120.0
    # Who sends it, for a server started with bench_identity.NamedTokenUsers; None: the
    # token alone.
    user: str | None = None


@dataclass
class Result:
    """What came back: HTTP status (599: no answer), the envelope, the client's latency."""

    kind: str
    status: int
    latency_s: float
    envelope: dict[str, Any] | None = None
    error_code: str | None = None
    finished: float = 0.0  # time.monotonic() at the answer

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.envelope) and self.envelope.get(
            "status") == "success"

    @property
    def tokens(self) -> int:
        data = (self.envelope or {}).get("data") or {}
        return int(data.get("token_count") or 0) if self.ok else 0


async def api_call(
    http: AsyncHTTPClient,
    server: Server,
    method: str,
    route: str,
    body: dict[str, Any] | None = None,
    timeout: float = 120.0,
    kind: str = "",
    user: str | None = None,
) -> Result:
    """One request to jupyter-ds's API; never raises for HTTP or connection errors."""
    headers = dict(server.headers)
    if user is not None:  # see bench_identity.NamedTokenUsers
        headers["Authorization"] = f"token {server.token}:{user}"
    payload = None
    if body is not None:
        payload = json.dumps(body)
        headers["Content-Type"] = "application/json"
    request = HTTPRequest(
        server.url(route), method=method, headers=headers, body=payload,
        connect_timeout=timeout, request_timeout=timeout,
    )
    started = time.monotonic()
    try:
        response = await http.fetch(request, raise_error=False)
        status, raw = response.code, response.body
    except Exception as exc:  # connection refused, reset...: no HTTP answer
        status, raw = 599, str(exc).encode()
    finished = time.monotonic()
    envelope = None
    if raw:
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
            envelope = parsed if isinstance(parsed, dict) else None
    code = None
    if status != 200:
        code = ((envelope or {}).get("error") or {}).get("code") or f"http_{status}"
    return Result(kind or route, status, finished - started, envelope, code, finished)


async def client_loop(
    http: AsyncHTTPClient,
    server: Server,
    next_call: Callable[[], Call],
    deadline: float,
    max_requests: int | None = None,
    timeout: float | None = None,
) -> list[Result]:
    """Closed loop: send ``next_call()``, wait for the answer, send the next, until the
    deadline (``time.monotonic()``) or ``max_requests``."""
    results: list[Result] = []
    while time.monotonic() < deadline and (max_requests is None or len(results) < max_requests):
        call = next_call()
        results.append(
            await api_call(http, server, call.method, call.route, call.body,
                           timeout or call.timeout, call.kind, call.user)
        )
    return results


@dataclass
class Run:
    """All answers of one load run and its wall-clock time (first request to last answer)."""

    results: list[Result]
    wall_s: float
    clients: int


async def run_clients(
    server: Server,
    clients: list[Callable[[], Call]],
    seconds: float,
    max_requests: int | None = None,
    timeout: float | None = None,
) -> Run:
    """Run one closed-loop client per entry of ``clients`` (its request source) at once;
    ``timeout`` overrides each call's own client-side timeout."""
    http = new_http_client(max(16, 2 * len(clients)))
    try:
        started = time.monotonic()
        deadline = started + seconds
        per_client = await asyncio.gather(
            *(client_loop(http, server, c, deadline, max_requests, timeout) for c in clients)
        )
    finally:
        http.close()
    results = [r for rs in per_client for r in rs]
    end = max((r.finished for r in results), default=time.monotonic())
    return Run(results, max(end - started, 1e-9), len(clients))


def summarize(run: Run, kind: str | None = None) -> dict[str, Any]:
    """Requests/s, latency p50/p95/mean (ms, successful answers), tokens/s, errors."""
    results = [r for r in run.results if kind is None or r.kind == kind]
    ok = [r for r in results if r.ok]
    latencies = [r.latency_s * 1000 for r in ok]
    server_ms = [
        float(r.envelope["data"]["latency_ms"]) for r in ok
        if isinstance((r.envelope or {}).get("data"), dict)
        and r.envelope["data"].get("latency_ms") is not None
    ]
    errors = Counter(str(r.status) for r in results if not r.ok)
    codes = Counter(r.error_code or "unknown" for r in results if not r.ok)
    tokens = sum(r.tokens for r in ok)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "clients": run.clients,
        "requests": len(results),
        "ok": len(ok),
        "wall_s": round(run.wall_s, 3),
        "requests_per_s": round(len(ok) / run.wall_s, 3),
        "latency_p50_ms": ms(percentile(latencies, 50)),
        "latency_p95_ms": ms(percentile(latencies, 95)),
        "latency_mean_ms": ms(statistics.fmean(latencies) if latencies else None),
        "server_latency_p50_ms": ms(percentile(server_ms, 50)),
        "tokens": tokens,
        "tokens_per_s": round(tokens / run.wall_s, 2),
        "errors": sum(errors.values()),
        "errors_by_status": dict(sorted(errors.items())),
        "errors_by_code": dict(sorted(codes.items())),
        "server_errors_5xx": sum(n for s, n in errors.items() if s.startswith("5") and s != "599"),
        "no_answer": errors.get("599", 0),
    }


async def engine_info(server: Server, http: AsyncHTTPClient | None = None) -> dict[str, Any]:
    """The engine's ``info()`` from ``GET models`` (counters, batch limits); {} on failure."""
    own = http is None
    http = http or new_http_client(2)
    try:
        result = await api_call(http, server, "GET", "models", timeout=30)
    finally:
        if own:
            http.close()
    if not result.ok:
        return {}
    models = result.envelope["data"].get("models") or [{}]
    return models[0]


def engine_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the engine did during a run: batches, cache hits (from its counters)."""

    def diff(key: str) -> int | None:
        if key not in before or key not in after:
            return None
        return (after[key] or 0) - (before[key] or 0)

    steps = diff("batch_steps_total")
    batched = None
    if steps and after.get("mean_batch_size") is not None:
        batched = (after["mean_batch_size"] * after["batch_steps_total"]) - (
            (before.get("mean_batch_size") or 0) * (before.get("batch_steps_total") or 0)
        )
    out = {
        "max_batch_size": after.get("max_batch_size"),
        "max_batch_size_seen": after.get("max_batch_size_seen"),
        "batch_steps": steps,
        "mean_batch_size": round(batched / steps, 2) if batched and steps else None,
        "requests": diff("requests_total"),
        "tokens_generated": diff("tokens_generated_total"),
        "prefix_cache_hits": diff("prefix_cache_hits"),
        "prefix_cache_misses": diff("prefix_cache_misses"),
        "prompt_tokens": diff("prompt_tokens_total"),
        "prompt_tokens_reused": diff("prompt_tokens_reused_total"),
        "result_cache_hits": diff("result_cache_hits"),
    }
    return {k: v for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------- typing


def module_source(name: str) -> tuple[str, str]:
    """(file name, text) of a standard-library module, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise LookupError(f"no Python source for {name}")
    return Path(spec.origin).name, Path(spec.origin).read_text(encoding="utf-8")


class TypingCursor:
    """A person typing through one file: a completion request at each word end.

    Word ends are positions just after an identifier character that is followed by a
    space, ``(`` or a newline, from the first ``def``/``class`` line after the module's
    head on. The cursor keeps its place across runs, so that later runs against the same
    server ask new prompts (no result-cache hits); at the end of the file it starts over.
    ``context_lines`` > 0 sends a bounded window (from that many lines above the first
    cursor position, so the prompt's start stays put, to that many lines below the
    cursor) instead of the whole file.
    """

    def __init__(
        self, path: str, source: str, max_tokens: int = 16, context_lines: int = 0
    ) -> None:
        self.path, self.source = path, source
        self.max_tokens, self.context_lines = max_tokens, context_lines
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))
        first = next(
            (i for i, line in enumerate(self.lines)
             if i >= 30 and line.lstrip().startswith(("def ", "class "))),
            0,
        )
        self.points = list(self._word_ends(first))
        if not self.points:
            raise ValueError(f"{path}: nothing to type")
        self.first_line = first
        self.index = 0
        self.wrapped = 0

    def _word_ends(self, first_line: int) -> Iterator[int]:
        for row in range(first_line, len(self.lines)):
            line, offset = self.lines[row], self.starts[row]
            for i, ch in enumerate(line):
                if ch in " (\n" and i > 0 and (line[i - 1].isalnum() or line[i - 1] == "_"):
                    yield offset + i

    def _line_of(self, offset: int) -> int:
        low, high = 0, len(self.lines)
        while low < high:
            mid = (low + high + 1) // 2
            if self.starts[mid] <= offset:
                low = mid
            else:
                high = mid - 1
        return low

    def next_body(self) -> dict[str, Any]:
        """The next ``complete`` request body."""
        if self.index >= len(self.points):
            self.index, self.wrapped = 0, self.wrapped + 1
        offset = self.points[self.index]
        self.index += 1
        prefix, suffix = self.source[:offset], self.source[offset:]
        if self.context_lines > 0:
            begin = self.starts[max(0, self.first_line - self.context_lines)]
            end_line = min(len(self.lines), self._line_of(offset) + 1 + self.context_lines)
            prefix = self.source[begin:offset]
            suffix = self.source[offset : self.starts[end_line]]
        return {
            "prefix": prefix,
            "suffix": suffix,
            "path": self.path,
            "language": "python",
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }

    def next_call(self) -> Call:
        return Call("complete", "POST", "complete", self.next_body())


async def warm_up(server: Server, max_tokens: int = 16, context_lines: int = 0) -> None:
    """Two completions on a file no client types through: first-call costs of the
    request path (post-processing, parsing) are not billed to the first row."""
    path, text = module_source(WARMUP_MODULE)
    cursor = TypingCursor(path, text, max_tokens, context_lines)
    http = new_http_client(2)
    try:
        for _ in range(2):
            call = cursor.next_call()
            result = await api_call(http, server, call.method, call.route, call.body, 300)
            if not result.ok:
                log(f"warm-up request: {result.status} {result.error_code}")
    finally:
        http.close()


def typing_cursors(
    count: int, max_tokens: int = 16, context_lines: int = 0
) -> list[TypingCursor]:
    """One cursor per client, each through a different standard-library module."""
    cursors = []
    for name in SOURCE_MODULES:
        if len(cursors) == count:
            break
        try:
            path, text = module_source(name)
        except (LookupError, OSError, ValueError):
            continue
        cursors.append(TypingCursor(path, text, max_tokens, context_lines))
    if len(cursors) < count:
        raise SystemExit(f"only {len(cursors)} source files for {count} clients")
    return cursors


# --------------------------------------------------------------------------- benchmark


async def bench_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One server configuration through every client count."""
    extra = [*CONFIGS[name], f"--JupyterDsApp.completion_timeout={args.completion_timeout}"]
    if args.model_path:
        extra.append(f"--JupyterDsApp.model_path={args.model_path}")
    extra += args.server_arg
    env_text = " ".join(f"{k}={v}" for k, v in args.server_env.items())
    log(f"[{name}] starting the server: {env_text} {' '.join(extra)}".replace("  ", " "))
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    async with running_server(
        extra, args.ready_timeout, args.keep_server_dir, args.server_env
    ) as (server, health):
        ready_s = time.monotonic() - started
        info = await engine_info(server)
        log(f"[{name}] ready in {ready_s:.1f} s: model {health.get('model')} on "
            f"{info.get('device')}, max_batch_size {info.get('max_batch_size')}")
        cursors = typing_cursors(max(args.clients), args.max_tokens, args.context_lines)
        await warm_up(server, args.max_tokens, args.context_lines)
        for n in args.clients:
            before = await engine_info(server)
            run = await run_clients(
                server, [c.next_call for c in cursors[:n]], args.seconds, args.max_requests,
                timeout=args.completion_timeout + 60,
            )
            row = {"config": name, **summarize(run), "engine": engine_delta(
                before, await engine_info(server))}
            rows.append(row)
            log(f"[{name}] {n:>2} clients: {row['requests_per_s']:.2f} req/s, "
                f"p50 {row['latency_p50_ms']} ms, p95 {row['latency_p95_ms']} ms, "
                f"{row['tokens_per_s']} tok/s, errors {row['errors_by_status'] or 0}, "
                f"mean batch {row['engine'].get('mean_batch_size')}")
    return {
        "config": name,
        "server_args": extra,
        "server_env": args.server_env,
        "ready_s": round(ready_s, 1),
        "model": {k: info.get(k) for k in (
            "name", "kind", "device", "dtype", "quantization", "max_batch_size",
            "template", "from_cache", "load_time_s", "warmup_s")},
        "runs": rows,
    }


def add_speedups(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each batched run's requests/s over the sequential server's, at 1 and at the same N."""
    seq = {r["clients"]: r for r in configs.get("sequential", {}).get("runs", [])}
    batched = configs.get("batched", {}).get("runs", [])
    if not seq or not batched:
        return {}
    base = seq.get(1)
    for row in batched:
        same = seq.get(row["clients"])
        row["speedup_vs_sequential_1"] = (
            round(row["requests_per_s"] / base["requests_per_s"], 2)
            if base and base["requests_per_s"] else None
        )
        row["speedup_vs_sequential_same_n"] = (
            round(row["requests_per_s"] / same["requests_per_s"], 2)
            if same and same["requests_per_s"] else None
        )
    at8 = next((r for r in batched if r["clients"] == 8), None)
    if at8 is None:
        return {}
    # Target: >= 3x the requests/s of one-at-a-time with 8 concurrent clients.
    measured = at8.get("speedup_vs_sequential_same_n")
    return {
        "target": ">= 3x requests/s at 8 clients vs one-at-a-time",
        "speedup_at_8_vs_sequential_8": measured,
        "speedup_at_8_vs_sequential_1": at8.get("speedup_vs_sequential_1"),
        "met": None if measured is None else measured >= 3.0,
    }


def markdown(report: dict[str, Any]) -> str:
    p = report["params"]
    lines_around = p["context_lines"]
    context = f"{lines_around} lines of context" if lines_around else "the whole file"
    bound = f" (at most {p['max_requests']} requests a client)" if p["max_requests"] else ""
    env = " ".join(f"{k}={v}" for k, v in (p.get("server_env") or {}).items())
    lines = [
        "# Throughput through the HTTP API",
        "",
        f"{p['model'] or 'Embedded model'}, {p['cpus']} CPUs (1-minute load average before "
        f"and after: {p['load_average_1m']}), {p['seconds']} s per row{bound}. Closed-loop "
        f"clients, each typing through its own standard-library module "
        f"({context}), "
        f"`complete` with max_tokens {p['max_tokens']} at each word end."
        + (f" Server environment: `{env}`." if env else ""),
        "",
        "| server | clients | requests | req/s | p50 ms | p95 ms | tokens/s | mean batch "
        "| prompt reused | errors | × seq@1 | × seq@N |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]

    def cell(value: Any) -> str:
        return "–" if value is None else str(value)

    for config in report["configs"].values():
        for r in config["runs"]:
            errors = ", ".join(f"{s}: {n}" for s, n in r["errors_by_status"].items()) or "0"
            engine = r["engine"]
            reused = (
                f"{100 * engine['prompt_tokens_reused'] / engine['prompt_tokens']:.0f}%"
                if engine.get("prompt_tokens") and "prompt_tokens_reused" in engine else None
            )
            lines.append(
                f"| {config['config']} (max batch {config['model'].get('max_batch_size')}) "
                f"| {r['clients']} | {r['requests']} | {r['requests_per_s']:.2f} "
                f"| {cell(r['latency_p50_ms'])} | {cell(r['latency_p95_ms'])} "
                f"| {r['tokens_per_s']} | {cell(engine.get('mean_batch_size'))} "
                f"| {cell(reused)} | {errors} | {cell(r.get('speedup_vs_sequential_1'))} "
                f"| {cell(r.get('speedup_vs_sequential_same_n'))} |"
            )
    target = report.get("target")
    if target:
        verdict = {True: "met", False: "not met", None: "not measured"}[target["met"]]
        lines += [
            "",
            f"Target {target['target']}: {cell(target['speedup_at_8_vs_sequential_8'])}× "
            f"(vs one client on the sequential server: "
            f"{cell(target['speedup_at_8_vs_sequential_1'])}×), {verdict}.",
        ]
    return "\n".join(lines) + "\n"


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def parse_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    configs: dict[str, dict[str, Any]] = {}
    for name in args.configs:
        configs[name] = await bench_config(name, args)
    target = add_speedups(configs)
    return {
        "benchmark": "throughput",
        "params": {
            "clients": args.clients,
            "seconds": args.seconds,
            "max_requests": args.max_requests,
            "max_tokens": args.max_tokens,
            "context_lines": args.context_lines,
            "server_env": args.server_env,
            "completion_timeout_s": args.completion_timeout,
            "model": args.model_path or None,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "files": [c.path for c in typing_cursors(max(args.clients))],
            # Other work on the machine slows every row; the 1-minute load, before and after.
            "load_average_1m": [load_before, load_average()],
        },
        "configs": configs,
        "target": target,
        "timestamp": int(time.time()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,8,16",
                        help="comma-separated client counts (default 1,4,8,16)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="run time per client count (default 30)")
    parser.add_argument("--max-requests", type=int, default=None,
                        help="also stop each client after this many requests")
    parser.add_argument("--configs", default="batched,sequential",
                        help=f"server configurations, of {','.join(CONFIGS)}")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--context-lines", type=int, default=40,
                        help="lines of context sent above the first cursor position and "
                        "below the cursor, like a notebook cell (default 40; 0: the whole file)")
    parser.add_argument("--completion-timeout", type=float, default=120.0,
                        help="the servers' JupyterDsApp.completion_timeout: queueing behind 16 "
                        "clients on a one-at-a-time server must not turn into 504s (default 120)")
    parser.add_argument("--model-path", default="",
                        help="JupyterDsApp.model_path (default: the embedded model)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra server argument (repeatable), e.g. "
                        "--server-arg=--JupyterDsApp.dtype=bfloat16")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the servers (repeatable), e.g. "
                        "OMP_WAIT_POLICY=PASSIVE or OMP_NUM_THREADS=1")
    parser.add_argument("--ready-timeout", type=float, default=900.0,
                        help="seconds to wait for the model to be ready")
    parser.add_argument("--keep-server-dir", action="store_true",
                        help="keep the temporary root and server log")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    args.clients = [int(x) for x in parse_list(args.clients)]
    args.configs = parse_list(args.configs)
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env: NAME=VALUE")
    args.server_env = dict(item.split("=", 1) for item in args.server_env)
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        parser.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    if not args.clients or min(args.clients) < 1:
        parser.error("--clients: positive integers")
    if len(args.clients) != len(set(args.clients)):
        parser.error("--clients: each count once")

    # A SIGTERM (timeout, make) unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        report = asyncio.run(main_async(args))
    except ServerError as exc:
        log(f"failed: {exc}")
        return 2
    paths = publish(report, markdown(report), args.out_dir, "throughput")
    log(f"wrote {paths[0]} and {paths[1]}")
    fives = sum(r["server_errors_5xx"] for c in report["configs"].values() for r in c["runs"])
    if fives:
        log(f"{fives} server errors (5xx)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
