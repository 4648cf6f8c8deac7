"""Overload: 200 concurrent completions, with load shedding and without, side by side.

Starts a real Jupyter server with jupyter-ds on the embedded model (``throughput.py``'s
machinery), once as configured by default (load shedding on: ``max_queued`` 64,
``completion_queue_timeout`` 5 s) and once with shedding off (``load_shedding=False``),
and sends each ``--requests`` (200) completions at the
same moment, from ``--users`` (25) distinct identities (``bench_identity.py``, so that
``max_concurrent_per_user`` holds no one back), each a word end of a standard-library
module (40 lines of context, 16 tokens).

Per configuration: answers by status, how many completed within the deadline
(``completion_timeout``, 30 s), the goodput (completions within the deadline per second
of the run), the latency of completed and of shed answers (p50/p95), and 504s. With
shedding, every request should either complete within its deadline or be shed at once.

    .venv/bin/python benchmarks/overload.py [--requests 200] [--users 25]
        [--configs shedding,no-shedding] [--out-dir benchmarks/results]

JSON goes to stdout and ``<out-dir>/overload.json``, a table to ``<out-dir>/overload.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_io import publish
from throughput import (
    ServerError,
    api_call,
    load_average,
    new_http_client,
    percentile,
    running_server,
    typing_cursors,
    warm_up,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS: dict[str, list[str]] = {
    "shedding": [],  # the defaults
    "no-shedding": ["--JupyterDsApp.load_shedding=False"],
}


def log(message: str) -> None:
    print(f"[overload] {message}", file=sys.stderr, flush=True)


# Jupyter's access log: "503 POST /jupyter-ds/v1/complete (user@127.0.0.1) 22.46ms".
SHED_LOG = re.compile(r"\b(?:503|429) POST \S*jupyter-ds/v1/complete \(.*?\) ([0-9.]+)ms")


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


async def run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    here = str(Path(__file__).resolve().parent)
    extra = [
        *CONFIGS[name],
        "--ServerApp.identity_provider_class=bench_identity.NamedTokenUsers",
        f"--JupyterDsApp.completion_timeout={args.deadline}",
        *args.server_arg,
    ]
    env = {"PYTHONPATH": here + (os.pathsep + os.environ["PYTHONPATH"]
                                 if os.environ.get("PYTHONPATH") else "")}
    cursors = typing_cursors(20, 16, 40)  # 20 modules: prompts of every shape
    async with running_server(extra, args.ready_timeout, False, env) as (server, _health):
        await warm_up(server, 16, 40)
        http = new_http_client(args.requests + 8)
        calls = [cursors[i % len(cursors)].next_call() for i in range(args.requests)]
        log(f"{name}: {args.requests} completions at once from {args.users} users")
        started = time.monotonic()
        try:
            results = await asyncio.gather(*(
                api_call(http, server, c.method, c.route, c.body, args.deadline + 60,
                         "complete", f"user{i % args.users}")
                for i, c in enumerate(calls)
            ))
        finally:
            http.close()
        wall = max(r.finished for r in results) - started
        # The server's own time for each shed answer (from its first byte in to the
        # answer): what the server spends, apart from the queue of 200 arrivals.
        log_text = server.log_path.read_text(errors="replace")
        shed_server = [float(m) / 1000 for m in SHED_LOG.findall(log_text)]
    statuses = Counter(str(r.status) for r in results)
    done = [r for r in results if r.ok]
    in_time = [r for r in done if r.latency_s <= args.deadline]
    shed = [r for r in results if r.error_code == "overloaded"]
    retry_after = [((r.envelope or {}).get("error") or {}).get("retry_after") for r in shed]
    row = {
        "config": name,
        "requests": len(results),
        "statuses": dict(sorted(statuses.items())),
        "completed": len(done),
        "completed_in_deadline": len(in_time),
        "shed": len(shed),
        "timeouts_504": statuses.get("504", 0),
        "other_failures": len(results) - len(done) - len(shed),
        "wall_s": round(wall, 2),
        "goodput_per_s": round(len(in_time) / wall, 3) if wall > 0 else None,
        "completed_p50_ms": ms(percentile([r.latency_s for r in done], 50)),
        "completed_p95_ms": ms(percentile([r.latency_s for r in done], 95)),
        "shed_p50_ms": ms(percentile([r.latency_s for r in shed], 50)),
        "shed_p95_ms": ms(percentile([r.latency_s for r in shed], 95)),
        "shed_server_p50_ms": ms(percentile(shed_server, 50)),
        "shed_server_p95_ms": ms(percentile(shed_server, 95)),
        "retry_after_s": sorted(set(x for x in retry_after if isinstance(x, int))),
    }
    log(f"{name}: {row['statuses']}, goodput {row['goodput_per_s']}/s, shed p50 "
        f"{row['shed_p50_ms']} ms, completed p95 {row['completed_p95_ms']} ms")
    return row


def markdown(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [
        "# Overload: concurrent completions with and without load shedding",
        "",
        f"Embedded model, {p['cpus']} CPUs (1-minute load average before and after: "
        f"{p['load_average_1m']}); {p['requests']} completions sent at once from "
        f"{p['users']} users, deadline {p['deadline_s']} s.",
        "",
        "| config | completed in deadline | shed | 504 | other | goodput /s | done p50 ms "
        "| done p95 ms | shed p50 ms | shed p95 ms | shed in server p50 / p95 ms | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['config']} | {r['completed_in_deadline']} | {r['shed']} | "
            f"{r['timeouts_504']} | {r['other_failures']} | {r['goodput_per_s']} | "
            f"{r['completed_p50_ms']} | {r['completed_p95_ms']} | {r['shed_p50_ms']} | "
            f"{r['shed_p95_ms']} | {r['shed_server_p50_ms']} / {r['shed_server_p95_ms']} | "
            f"{r['wall_s']} |"
        )
    lines += [
        "",
        "Shed latency as the clients see it includes waiting behind the other arrivals "
        "(one event loop takes 200 requests in turn); the server's own time for a shed "
        "answer is from Jupyter's access log. Shed answers after about "
        "completion_queue_timeout are completions dropped from the queue before prefill.",
    ]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    rows = [await run_config(name, args) for name in args.configs]
    return {
        "benchmark": "overload",
        "params": {
            "requests": args.requests,
            "users": args.users,
            "deadline_s": args.deadline,
            "configs": {name: CONFIGS[name] for name in args.configs},
            "server_args": args.server_arg,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m": [load_before, load_average()],
        },
        "rows": rows,
        "timestamp": int(time.time()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--users", type=int, default=25)
    parser.add_argument("--deadline", type=float, default=30.0,
                        help="the server's completion_timeout (default 30)")
    parser.add_argument("--configs", default="shedding,no-shedding")
    parser.add_argument("--server-arg", action="append", default=[])
    parser.add_argument("--ready-timeout", type=float, default=900.0)
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        parser.error(f"--configs: from {', '.join(CONFIGS)}")
    if args.requests < 1 or args.users < 1:
        parser.error("--requests and --users: at least 1")
    try:
        report = asyncio.run(main_async(args))
    except ServerError as exc:
        log(f"failed: {exc}")
        return 2
    paths = publish(report, markdown(report), args.out_dir, "overload")
    log(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
