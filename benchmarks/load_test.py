"""Load test: N concurrent users mixing completion, explain and tests for a bounded time.

Starts a real Jupyter server with jupyter-ds on the embedded model (on 127.0.0.1, with
the machinery of ``throughput.py``), then runs ``--users`` closed-loop users at once for
``--seconds``. Each user picks every request by its own seeded RNG, by the weights
``--weights complete:explain:tests`` (default 8:2:1):

* ``POST jupyter-ds/v1/complete``: the user types through its own standard-library
  module, one request at each word end (as ``throughput.py`` does);
* ``POST jupyter-ds/v1/explain``: the source of a short standard-library function, with a
  small ``max_tokens`` (default 48);
* ``POST jupyter-ds/v1/tests``: a small pure function, with the smallest ``rounds`` (1) and
  ``max_tokens`` (16) the API allows;
* ``GET jupyter-ds/v1/git/{status,diff,log}`` (a fourth weight, default 0): on a real
  repository in the server's root, whose files the user edits now and then.

Each user is its own identity to the server (rate limits, per-user caps, fair shares,
audit: see ``bench_identity.py``); ``--shared-identity`` makes them all the token's one
user, who then meets the per-user caps.
``make bench-soak`` is this benchmark for an hour: 8 distinct users mixing all four
kinds, RSS sampled every 10 s, reported as ``soak``.

Reported, per kind and overall: requests, requests/s, p50/p95/p99 latency, counts by
status, the 429s (rate limits are off by default) and the 5xx (there must be none: exit
code 1 otherwise); the server process's resident memory (VmRSS from /proc, sampled every
``--sample-interval`` seconds: start, peak, end, growth over the second half of the run)
and what the engine's counters did.

    .venv/bin/python benchmarks/load_test.py [--users 6] [--seconds 90] [--weights 8:2:1]
        [--seed 0] [--out-dir benchmarks/results]

JSON goes to stdout and ``<out-dir>/load.json``, a markdown table to ``<out-dir>/load.md``;
progress goes to stderr. When the server answers 5xx, the relevant lines of its log go to
the report and the whole log to ``<out-dir>/load-server.log``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_io import publish
from throughput import (
    Call,
    Run,
    Server,
    ServerError,
    TypingCursor,
    engine_delta,
    engine_info,
    load_average,
    percentile,
    run_clients,
    running_server,
    summarize,
    typing_cursors,
    warm_up,
)

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("complete", "explain", "tests", "git")
GIT_REPO = "repo"  # under the server's root

# Short, real functions to explain: standard-library modules searched in this order.
EXPLAIN_MODULES = (
    "textwrap", "heapq", "statistics", "fractions", "shlex", "fnmatch", "posixpath",
    "colorsys", "bisect", "calendar", "string", "keyword",
)

# Small pure functions to write tests for (self-contained: the sandbox imports them alone).
TEST_FUNCTIONS = (
    '''
def clamp(value, low, high):
    """``value`` limited to the range [low, high]."""
    if low > high:
        raise ValueError("low > high")
    return max(low, min(value, high))
''',
    '''
def is_palindrome(text):
    """True when ``text`` reads the same both ways, ignoring case and non-letters."""
    letters = [c.lower() for c in text if c.isalnum()]
    return letters == letters[::-1]
''',
    '''
def run_lengths(items):
    """[(item, count), ...] for each run of equal items, in order."""
    out = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1] = (item, out[-1][1] + 1)
        else:
            out.append((item, 1))
    return out
''',
    '''
def word_count(text):
    """How many times each lower-cased word occurs in ``text``."""
    counts = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts
''',
)


def log(message: str) -> None:
    print(f"[load] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- requests


def short_functions(limit: int = 12, min_lines: int = 5, max_lines: int = 20) -> list[str]:
    """Sources of short standard-library functions (``min_lines``..``max_lines`` lines)."""
    found: list[str] = []
    for name in EXPLAIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for _, fn in sorted(inspect.getmembers(module, inspect.isfunction)):
            if fn.__module__ != module.__name__:
                continue
            try:
                source = textwrap.dedent(inspect.getsource(fn))
            except (OSError, TypeError):
                continue
            if min_lines <= source.count("\n") <= max_lines:
                found.append(source)
                break  # one a module: a variety of code
        if len(found) == limit:
            break
    if not found:
        raise SystemExit("no short standard-library function to explain")
    return found


class User:
    """One simulated person: picks each request's kind by a seeded RNG."""

    def __init__(
        self, number: int, cursor: TypingCursor, args: argparse.Namespace,
        explain_sources: list[str],
    ) -> None:
        self.rng = random.Random(args.seed * 1000 + number)
        self.cursor = cursor
        self.args = args
        self.explain_sources = explain_sources
        self.weights = [args.weights[k] for k in KINDS]
        self.name = f"user{number}" if args.distinct_users else None
        self.root: Path | None = None  # the server's root, for git edits

    def next_call(self) -> Call:
        call = self._next()
        call.user = self.name
        return call

    def _next(self) -> Call:
        kind = self.rng.choices(KINDS, self.weights)[0]
        if kind == "git":
            verb = self.rng.choice(("status", "status", "diff", "log"))
            if self.root is not None and self.rng.random() < 0.3:  # an edit to see
                edited = self.root / GIT_REPO / f"notes_{self.rng.randrange(8)}.py"
                edited.write_text(f"VALUE = {self.rng.randrange(10**6)}\n")
            return Call("git", "GET", f"git/{verb}?path={GIT_REPO}")
        if kind == "explain":
            return Call("explain", "POST", "explain", {
                "code": self.rng.choice(self.explain_sources),
                "language": "python",
                "max_tokens": self.args.explain_max_tokens,
            })
        if kind == "tests":
            return Call("tests", "POST", "tests", {
                "source": self.rng.choice(TEST_FUNCTIONS).lstrip(),
                "rounds": self.args.tests_rounds,
                "max_tokens": self.args.tests_max_tokens,
            })
        return self.cursor.next_call()


# --------------------------------------------------------------------------- memory


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MB (MiB); None when gone or unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


async def sample_rss(pid: int, interval: float, samples: list[tuple[float, float]],
                     started: float) -> None:
    """Append (seconds since ``started``, RSS MB) every ``interval`` s until cancelled."""
    while True:
        value = rss_mb(pid)
        if value is not None:
            samples.append((time.monotonic() - started, value))
        await asyncio.sleep(interval)


def memory_summary(samples: list[tuple[float, float]], seconds: float) -> dict[str, Any]:
    """Start/peak/end RSS and the growth over the second half of the run (MB)."""
    if not samples:
        return {"samples": 0}
    in_run = [s for s in samples if s[0] <= seconds] or samples
    half = seconds / 2
    second_half = [s for s in in_run if s[0] >= half] or in_run[-1:]
    # Growth over the second half: the last sample of the run minus the first one at or
    # after its middle; and the least-squares slope there (MB/min), less noisy.
    growth = second_half[-1][1] - second_half[0][1]
    slope = None
    if len(second_half) >= 3:
        ts = [t for t, _ in second_half]
        vs = [v for _, v in second_half]
        mt, mv = sum(ts) / len(ts), sum(vs) / len(vs)
        var = sum((t - mt) ** 2 for t in ts)
        if var > 0:
            slope = sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / var * 60
    return {
        "samples": len(samples),
        "start_mb": round(samples[0][1], 1),
        "peak_mb": round(max(v for _, v in samples), 1),
        "end_mb": round(samples[-1][1], 1),
        "end_of_run_mb": round(in_run[-1][1], 1),
        "growth_second_half_mb": round(growth, 1),
        "slope_second_half_mb_per_min": None if slope is None else round(slope, 2),
        "series": [[round(t, 1), round(v, 1)] for t, v in samples],
    }


# --------------------------------------------------------------------------- report


def kind_row(run: Run, kind: str | None) -> dict[str, Any]:
    """``summarize`` plus p99, every status and the 429s."""
    results = [r for r in run.results if kind is None or r.kind == kind]
    row = summarize(run, kind)
    latencies = [r.latency_s * 1000 for r in results if r.ok]
    p99 = percentile(latencies, 99)
    statuses = Counter(str(r.status) for r in results)
    row.update({
        "kind": kind or "all",
        "latency_p99_ms": None if p99 is None else round(p99, 1),
        "latency_max_ms": round(max(latencies), 1) if latencies else None,
        "status_counts": dict(sorted(statuses.items())),
        "rate_limited_429": statuses.get("429", 0),
        # Shed requests (503/429 "overloaded", answered at once with Retry-After) are
        # the server working as designed under overload, not failures.
        "shed": sum(1 for r in results if r.error_code == "overloaded"),
        "server_errors_5xx": sum(1 for r in results if 500 <= r.status < 599
                                 and r.error_code != "overloaded"),
        "no_answer": statuses.get("599", 0),
    })
    # A sample message per error code: what went wrong, without the server log.
    messages: dict[str, str] = {}
    for r in results:
        if not r.ok and r.error_code and r.error_code not in messages:
            err = (r.envelope or {}).get("error") or {}
            messages[r.error_code] = str(err.get("message") or "")[:300]
    if messages:
        row["error_messages"] = messages
    return row


def server_log_errors(server: Server, limit: int = 80) -> list[str]:
    """The server log's lines about errors (tracebacks, ERROR, 5xx answers)."""
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    keep: list[str] = []
    in_traceback = False
    for line in lines:
        hit = ("Traceback" in line or " ERROR " in line or "[E " in line
               or '"status": 5' in line or " 500 " in line or " 503 " in line
               or " 504 " in line)
        if hit:
            in_traceback = "Traceback" in line
            keep.append(line)
        elif in_traceback:
            keep.append(line)
            if line and not line.startswith((" ", "\t")):
                in_traceback = False
    return keep[-limit:]


def markdown(report: dict[str, Any]) -> str:
    p, mem, eng = report["params"], report["memory"], report["engine"]
    w = p["weights"]
    lines = [
        "# Load test: completion, explain and tests at once",
        "",
        f"{p['model'] or 'Embedded model'}, {p['cpus']} CPUs (1-minute load average before "
        f"and after: {p['load_average_1m']}), {p['users']} closed-loop users for "
        f"{p['seconds']} s on loopback, kinds picked by a seeded RNG (seed {p['seed']}) with "
        f"weights complete {w['complete']} : explain {w['explain']} : tests {w['tests']}; "
        f"complete max_tokens {p['max_tokens']}, explain {p['explain_max_tokens']}, tests "
        f"rounds {p['tests_rounds']} and max_tokens {p['tests_max_tokens']}. Server "
        f"timeouts: completion {p['completion_timeout_s']} s, explain "
        f"{p['explain_timeout_s']} s.",
        "",
        "| kind | requests | ok | req/s | p50 ms | p95 ms | p99 ms | statuses | 429 | 5xx |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]

    def cell(value: Any) -> str:
        return "–" if value is None else str(value)

    for r in [*report["kinds"].values(), report["overall"]]:
        statuses = ", ".join(f"{s}: {n}" for s, n in r["status_counts"].items()) or "–"
        lines.append(
            f"| {r['kind']} | {r['requests']} | {r['ok']} | {r['requests_per_s']:.3f} "
            f"| {cell(r['latency_p50_ms'])} | {cell(r['latency_p95_ms'])} "
            f"| {cell(r['latency_p99_ms'])} | {statuses} | {r['rate_limited_429']} "
            f"| {r['server_errors_5xx']} |"
        )
    lines += [
        "",
        f"Server memory (VmRSS, {mem.get('samples', 0)} samples every "
        f"{p['sample_interval_s']} s): start {cell(mem.get('start_mb'))} MB, peak "
        f"{cell(mem.get('peak_mb'))} MB, end {cell(mem.get('end_mb'))} MB; growth over the "
        f"second half of the run {cell(mem.get('growth_second_half_mb'))} MB (slope "
        f"{cell(mem.get('slope_second_half_mb_per_min'))} MB/min).",
        "",
        f"Engine during the run: {cell(eng.get('requests'))} generations, "
        f"{cell(eng.get('tokens_generated'))} tokens, {cell(eng.get('batch_steps'))} batch "
        f"steps (mean batch {cell(eng.get('mean_batch_size'))}), prefix cache "
        f"{cell(eng.get('prefix_cache_hits'))} hits / {cell(eng.get('prefix_cache_misses'))} "
        f"misses, result cache hits {cell(eng.get('result_cache_hits'))}.",
        "",
        f"Verdict: {report['verdict']}.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- run


def make_repository(root: Path) -> None:
    """A small real git repository under the server's root, for the git calls."""
    repo = root / GIT_REPO
    repo.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        (repo / f"notes_{i}.py").write_text(f"VALUE = {i}\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org"}
    for cmd in (["git", "init", "-q"], ["git", "add", "."],
                ["git", "commit", "-q", "-m", "start"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    if args.distinct_users:  # one identity per simulated user (bench_identity.py)
        args.server_arg = [
            "--ServerApp.identity_provider_class=bench_identity.NamedTokenUsers",
            *args.server_arg,
        ]
        here = str(Path(__file__).resolve().parent)
        path = args.server_env.get("PYTHONPATH") or os.environ.get("PYTHONPATH")
        args.server_env["PYTHONPATH"] = here + (os.pathsep + path if path else "")
    extra = [
        f"--JupyterDsApp.completion_timeout={args.completion_timeout}",
        f"--JupyterDsApp.explain_timeout={args.explain_timeout}",
    ]
    if args.model_path:
        extra.append(f"--JupyterDsApp.model_path={args.model_path}")
    extra += args.server_arg
    log(f"starting the server: {' '.join(extra)}")
    started = time.monotonic()
    explain_sources = short_functions()
    cursors = typing_cursors(args.users, args.max_tokens, args.context_lines)
    users = [User(i, c, args, explain_sources) for i, c in enumerate(cursors)]
    log_errors: list[str] = []
    async with running_server(
        extra, args.ready_timeout, args.keep_server_dir, args.server_env
    ) as (server, health):
        ready_s = time.monotonic() - started
        if args.weights["git"]:
            make_repository(server.root_dir)
            for user in users:
                user.root = server.root_dir
        info = await engine_info(server)
        pid = server.process.pid
        log(f"ready in {ready_s:.1f} s: model {health.get('model')} on {info.get('device')}, "
            f"max_batch_size {info.get('max_batch_size')}, server pid {pid}, "
            f"RSS {rss_mb(pid) or 0:.0f} MB")
        await warm_up(server, args.max_tokens, args.context_lines)
        rss_ready = rss_mb(pid)
        before = await engine_info(server)
        samples: list[tuple[float, float]] = []
        run_started = time.monotonic()
        sampler = asyncio.create_task(
            sample_rss(pid, args.sample_interval, samples, run_started))
        log(f"{args.users} users for {args.seconds:g} s (weights {args.weights})")
        progress = asyncio.create_task(report_progress(run_started, args.seconds, samples))
        try:
            run = await run_clients(
                server, [u.next_call for u in users], args.seconds,
                timeout=max(args.completion_timeout, args.explain_timeout, 120.0) + 60,
            )
        finally:
            progress.cancel()
            # One more sample after the last answer, then stop.
            await asyncio.sleep(0)
            value = rss_mb(pid)
            if value is not None:
                samples.append((time.monotonic() - run_started, value))
            sampler.cancel()
        after = await engine_info(server)
        fives = sum(1 for r in run.results if 500 <= r.status < 599
                    and r.error_code != "overloaded")
        if fives:
            log_errors = server_log_errors(server)
            out_dir = Path(args.out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(server.log_path, out_dir / "load-server.log")
            log(f"{fives} answers 5xx; server log copied to {out_dir / 'load-server.log'}")
        alive = server.process.poll() is None

    kinds = {k: kind_row(run, k) for k in KINDS}
    overall = kind_row(run, None)
    memory = memory_summary(samples, args.seconds)
    memory["ready_mb"] = None if rss_ready is None else round(rss_ready, 1)
    problems = []
    if overall["server_errors_5xx"]:
        problems.append(f"{overall['server_errors_5xx']} answers 5xx")
    if overall["no_answer"]:
        problems.append(f"{overall['no_answer']} requests without an answer")
    if not alive:
        problems.append("the server died")
    verdict = "; ".join(problems) if problems else "zero 5xx, the server stayed up"
    return {
        "benchmark": "load",
        "params": {
            "users": args.users,
            "seconds": args.seconds,
            "weights": args.weights,
            "distinct_users": args.distinct_users,
            "seed": args.seed,
            "max_tokens": args.max_tokens,
            "context_lines": args.context_lines,
            "explain_max_tokens": args.explain_max_tokens,
            "tests_rounds": args.tests_rounds,
            "tests_max_tokens": args.tests_max_tokens,
            "completion_timeout_s": args.completion_timeout,
            "explain_timeout_s": args.explain_timeout,
            "sample_interval_s": args.sample_interval,
            "server_args": extra,
            "server_env": args.server_env,
            "model": args.model_path or None,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "files": [c.path for c in cursors],
            "load_average_1m": [load_before, load_average()],
        },
        "ready_s": round(ready_s, 1),
        "model": {k: info.get(k) for k in (
            "name", "kind", "device", "dtype", "quantization", "max_batch_size")},
        "kinds": kinds,
        "overall": overall,
        "memory": memory,
        "engine": engine_delta(before, after),
        "server_log_errors": log_errors,
        "ok": not problems,
        "verdict": verdict,
        "timestamp": int(time.time()),
    }


async def report_progress(started: float, seconds: float,
                          samples: list[tuple[float, float]]) -> None:
    while True:
        await asyncio.sleep(15)
        rss = f", RSS {samples[-1][1]:.0f} MB" if samples else ""
        log(f"{time.monotonic() - started:.0f}/{seconds:g} s{rss}")


def parse_weights(text: str) -> dict[str, int | float]:
    parts = [x.strip() for x in text.split(":")]
    if len(parts) == len(KINDS) - 1:
        parts.append("0")  # no git calls unless asked
    if len(parts) != len(KINDS):
        raise ValueError("three or four weights, complete:explain:tests[:git]")
    weights = {k: float(v) for k, v in zip(KINDS, parts, strict=True)}
    weights = {k: int(v) if v.is_integer() else v for k, v in weights.items()}
    if any(v < 0 for v in weights.values()) or not sum(weights.values()):
        raise ValueError("weights: not negative, not all zero")
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=6, help="concurrent users (default 6)")
    parser.add_argument("--seconds", type=float, default=90.0,
                        help="run time; requests in flight at the end are awaited (default 90)")
    parser.add_argument("--weights", default="8:2:1",
                        help="complete:explain:tests[:git] (default 8:2:1, no git)")
    parser.add_argument("--shared-identity", dest="distinct_users", action="store_false",
                        help="all users are the token's one identity (default: one each)")
    parser.add_argument("--distinct-users", dest="distinct_users", action="store_true",
                        default=True, help=argparse.SUPPRESS)  # the default
    parser.add_argument("--name", default="load",
                        help="report name: <out-dir>/<name>.json and .md (default load)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, default=16, help="of each completion")
    parser.add_argument("--context-lines", type=int, default=40,
                        help="completion context above and below the cursor (0: whole file)")
    parser.add_argument("--explain-max-tokens", type=int, default=48)
    parser.add_argument("--tests-rounds", type=int, default=1, help="1..5 (default 1)")
    parser.add_argument("--tests-max-tokens", type=int, default=16,
                        help="16.. (default 16, the smallest the API takes)")
    parser.add_argument("--completion-timeout", type=float, default=300.0,
                        help="the server's JupyterDsApp.completion_timeout: queueing behind "
                        "the other users on a small machine must not turn into 504s "
                        "(default 300)")
    parser.add_argument("--explain-timeout", type=float, default=300.0,
                        help="the server's JupyterDsApp.explain_timeout (default 300)")
    parser.add_argument("--sample-interval", type=float, default=2.0,
                        help="seconds between RSS samples (default 2)")
    parser.add_argument("--model-path", default="",
                        help="JupyterDsApp.model_path (default: the embedded model)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra server argument (repeatable)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the server (repeatable)")
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--keep-server-dir", action="store_true")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    try:
        args.weights = parse_weights(args.weights)
    except ValueError as exc:
        parser.error(f"--weights: {exc}")
    if args.users < 1:
        parser.error("--users: at least 1")
    if not 1 <= args.tests_rounds <= 5:
        parser.error("--tests-rounds: 1..5")
    if args.tests_max_tokens < 16:
        parser.error("--tests-max-tokens: 16 or more")
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env: NAME=VALUE")
    args.server_env = dict(item.split("=", 1) for item in args.server_env)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        report = asyncio.run(main_async(args))
    except ServerError as exc:
        log(f"failed: {exc}")
        return 2
    report["benchmark"] = args.name
    paths = publish(report, markdown(report), args.out_dir, args.name)
    log(f"wrote {paths[0]} and {paths[1]}")
    for line in report["server_log_errors"]:
        log(f"server log: {line}")
    log(report["verdict"])
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
