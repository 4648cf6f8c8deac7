"""Scale: 1 vs 2 model-server replicas behind the router, the router's added latency, and
a queueing simulation of 1,000 users on up to 10 replicas.

Three parts, one run (``make bench-scale``):

1. **Replicas.** ``ds-engine serve`` replicas of the embedded model (each a subprocess on
   a free port of 127.0.0.1) and Jupyter servers whose ``routes`` send completion (and the
   chat tasks, so that no server loads a model of its own) to them through
   ``RemoteEngine`` with ``retries: 0``. Closed-loop clients typing through their own
   standard-library modules (``throughput.py``'s clients, imported) for a fixed time per
   row: requests/s, p50, p95, errors. Configurations:

   * ``in-process``: the baseline, a Jupyter server with its own engine (no routes);
   * ``1 replica, 2 cores``: one replica, not pinned, torch's default threads (as the
     in-process engine);
   * ``1 replica, 1 core``: one replica pinned to core 0 (``taskset -c 0``, ``--threads
     1``);
   * ``2 replicas, 1 core each``: the same replica plus one pinned to core 1.

   On a 2-core machine the honest split is a core per replica: "2 replicas" then has the
   same CPUs as "1 replica, 2 cores", and "1 replica, 1 core" is the unit that the
   simulation multiplies (a Kubernetes pod has a fixed CPU limit). The Jupyter servers
   and the clients are not pinned: they share both cores with the replicas.
2. **The router's added latency**: one client, the same prompts sent to the in-process
   server and to the routed one (Jupyter -> pool -> RemoteEngine -> ds-engine serve, 1
   replica, 2 cores), alternating which goes first, one pair at a time: p50/p95 of each,
   the difference and the ratio, and how many completions were identical.
3. **A simulation** (``benchmarks/queueing.py``, whose docstring states the model and
   its assumptions), fed with part 1's "1 replica, 1 core" figures: the solo service
   times (the 1-client row) and the batching gain (the 4- and 8-client rows over the
   1-client one). 1,000 users typing; 10 replicas fixed; the KEDA rule of
   ``deploy/k8s/keda/scaledobject.yaml`` (2..10) over a day-like ramp; how many replicas
   the load needs. It is a model on paper, not a measurement, and the report says so.

    .venv/bin/python benchmarks/scale.py [--clients 4,8] [--seconds 20] [--solo-seconds 40]
        [--latency-pairs 30] [--users 1000] [--out-dir benchmarks/results]
    .venv/bin/python benchmarks/scale.py --sim-from benchmarks/results/scale.json
        (the simulation again, from a previous run's measurements)

JSON goes to stdout and ``<out-dir>/scale.json``, the tables to ``<out-dir>/scale.md``;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import queueing as q
from results_io import publish
from throughput import (
    Server,
    ServerError,
    TypingCursor,
    api_call,
    engine_info,
    load_average,
    module_source,
    new_http_client,
    percentile,
    run_clients,
    running_server,
    summarize,
    typing_cursors,
    warm_up,
)

from jupyter_ds.routing.pool import AFFINITY_SLACK

ROOT = Path(__file__).resolve().parent.parent
KEDA_YAML = ROOT / "deploy" / "k8s" / "keda" / "scaledobject.yaml"
SERVED_NAME = "smollm2"
LATENCY_MODULE = "tokenize"  # not among throughput.SOURCE_MODULES nor its warm-up file
LISTENING = re.compile(r"ds-engine serve: listening on (http://\S+)")

# Configurations of part 1: (name, replicas as (cpus, threads) or None for in-process).
IN_PROCESS = "in-process"
ONE_BOTH = "1 replica, 2 cores"
ONE_CORE = "1 replica, 1 core"
TWO_CORES = "2 replicas, 1 core each"

# A day on paper: users online over time (s, users) for the autoscaled run.
RAMP = ((0, 200), (600, 1000), (1800, 1000), (2400, 200), (3000, 200))


def log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- replicas


@dataclass
class Replica:
    """A ``ds-engine serve`` subprocess and how to reach it."""

    name: str
    process: subprocess.Popen
    log_path: Path
    cpus: str | None
    threads: int | None
    url: str = ""  # http://127.0.0.1:PORT, once listening
    ready_s: float | None = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "".join(text.splitlines(keepends=True)[-lines:])


def serve_command(args: argparse.Namespace, cpus: str | None, threads: int | None) -> list[str]:
    """``ds-engine serve`` on any free port, pinned with taskset to ``cpus`` if given."""
    script = Path(sys.executable).with_name("ds-engine")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "ds_engine.cli"]
    cmd += ["serve", "--port", "0", "--served-model-name", SERVED_NAME]
    if args.model_path:
        cmd += ["--model-path", args.model_path]
    if threads:
        cmd += ["--threads", str(threads)]
    if cpus is not None:
        if shutil.which("taskset") is None:
            raise SystemExit("taskset (util-linux) is needed to pin replicas to cores")
        cmd = ["taskset", "-c", cpus, *cmd]
    return cmd


def start_replica(args: argparse.Namespace, name: str, cpus: str | None, threads: int | None,
                  work_dir: Path) -> Replica:
    log_path = work_dir / f"replica-{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            serve_command(args, cpus, threads), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env,
        )
    atexit.register(_kill_if_running, process)
    pin = f"cores {cpus}" if cpus is not None else "not pinned"
    log(f"replica {name}: pid {process.pid}, {pin}, threads {threads or 'default'} "
        f"(log {log_path})")
    return Replica(name, process, log_path, cpus, threads)


def _kill_if_running(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()


async def wait_replica(replica: Replica, started: float, timeout: float) -> None:
    """Wait for the listening line, then for ``GET /health`` 200 (model loaded)."""
    http = new_http_client(2)
    deadline = started + timeout
    try:
        while True:
            if replica.process.poll() is not None:
                raise ServerError(f"replica {replica.name} exited with "
                                  f"{replica.process.returncode}:\n{replica.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"replica {replica.name} not ready after {timeout:.0f} s:"
                                  f"\n{replica.log_tail()}")
            if not replica.url:
                match = LISTENING.search(replica.log_path.read_text(errors="replace"))
                if match:
                    replica.url = match.group(1)
            else:
                with contextlib.suppress(Exception):
                    response = await http.fetch(replica.url + "/health", raise_error=False,
                                                request_timeout=5)
                    if response.code == 200:
                        replica.ready_s = round(time.monotonic() - started, 1)
                        log(f"replica {replica.name} ready at {replica.url} in "
                            f"{replica.ready_s} s")
                        return
            await asyncio.sleep(0.3)
    finally:
        http.close()


def stop_replica(replica: Replica, timeout: float = 20.0) -> None:
    if replica.process.poll() is not None:
        return
    replica.process.send_signal(signal.SIGTERM)
    try:
        replica.process.wait(timeout)
    except subprocess.TimeoutExpired:
        replica.process.kill()
        replica.process.wait(5)


@contextlib.asynccontextmanager
async def running_replicas(args: argparse.Namespace, specs: list[tuple[str, str | None,
                                                                       int | None]]):
    """``async with running_replicas(args, [(name, cpus, threads), ...]) as replicas:``
    started together, ready, stopped after (their logs kept only on failure)."""
    work_dir = Path(tempfile.mkdtemp(prefix="jupyter-ds-scale-"))
    replicas: list[Replica] = []
    failed = True
    try:
        started = time.monotonic()
        replicas = [start_replica(args, *spec, work_dir) for spec in specs]
        await asyncio.gather(*(wait_replica(r, started, args.ready_timeout)
                               for r in replicas))
        yield replicas
        for r in replicas:
            if r.process.poll() is not None:
                raise ServerError(f"replica {r.name} died during the run:\n{r.log_tail()}")
        failed = False
    finally:
        for r in replicas:
            stop_replica(r)
        if failed:
            log(f"replica logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)


# --------------------------------------------------------------------------- routes


def route_options(args: argparse.Namespace) -> dict[str, Any]:
    """RemoteEngine options that render prompts as the in-process engine does for the
    same model: its FIM family, control tokens, tokenizer (exact counts) and chat
    template; no retries on the replica (the pool fails over)."""
    from ds_engine.loader import default_cache_dir, gguf_cache_key, resolve_model_source
    from ds_engine.templates import KNOWN_CONTROL_TOKENS, detect_template

    source = resolve_model_source(args.model_path or None)
    folder = (Path(source.path) if source.kind == "hf"
              else default_cache_dir() / gguf_cache_key(Path(source.path)))
    tokenizer = folder / "tokenizer.json"
    vocab = set(json.loads(tokenizer.read_text(encoding="utf-8"))["model"]["vocab"])
    tokens = [t for t in KNOWN_CONTROL_TOKENS if t in vocab]
    fim = args.fim
    if fim == "auto":
        fim = None
        if not args.model_path:  # the embedded model: its default adapter's FIM format
            import ds_engine

            meta = Path(ds_engine.__file__).parent / "default_adapter" / "jupyter_ds_adapter.json"
            if meta.is_file():
                fim = json.loads(meta.read_text(encoding="utf-8"))["fim"]["family"]
        if fim is None:
            detected = detect_template(vocab).fim
            fim = detected.family if detected else None
    options: dict[str, Any] = {"model": SERVED_NAME, "fim": fim, "tokens": tokens,
                               "tokenizer": str(tokenizer), "retries": 0}
    if args.remote_timeout is not None:
        options["timeout_s"] = args.remote_timeout
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            options["chat_template"] = template
    return options


def router_args(args: argparse.Namespace, replicas: list[Replica]) -> list[str]:
    """Jupyter server arguments: completion and chat routed to ``replicas``."""
    route = {"endpoints": [r.url + "/v1" for r in replicas], "options": route_options(args)}
    routes = {"completion": route, "chat": route}
    return [f"--JupyterDsApp.routes={routes!r}", *common_args(args)]


def common_args(args: argparse.Namespace) -> list[str]:
    extra = [f"--JupyterDsApp.completion_timeout={args.completion_timeout}"]
    if args.queue_timeout is not None:
        extra.append(f"--JupyterDsApp.completion_queue_timeout={args.queue_timeout}")
    if args.model_path:
        extra.append(f"--JupyterDsApp.model_path={args.model_path}")
    return extra


# --------------------------------------------------------------------------- part 1


async def load_rows(name: str, server: Server, cursors: list[TypingCursor],
                    counts: list[int], seconds: dict[int, float], args: argparse.Namespace,
                    replicas: list[Replica] | None = None,
                    runs: list[Any] | None = None) -> list[dict[str, Any]]:
    """Closed-loop rows (one per client count) against ``server``; the cursors carry on
    from row to row, so no prompt is asked twice of a replica (no result-cache hits).
    Each row also says how much of the prompts the engines' prefix caches reused (and,
    for replicas, their mean time to first token), from their counters."""
    rows = []
    for n in counts:
        before = await engine_counters(server, replicas)
        run = await run_clients(server, [c.next_call for c in cursors[:n]], seconds[n],
                                timeout=args.completion_timeout + 60)
        row = {"config": name, **summarize(run),
               "engine": counters_delta(before, await engine_counters(server, replicas))}
        rows.append(row)
        if runs is not None:
            runs.append(run)
        log(f"[{name}] {n} clients: {row['requests_per_s']:.2f} req/s, p50 "
            f"{row['latency_p50_ms']} ms, p95 {row['latency_p95_ms']} ms, errors "
            f"{row['errors_by_status'] or 0}, prompt reused "
            f"{pct(row['engine'].get('prompt_reused_share'))}")
    return rows


# Counters of `ds-engine serve`'s /metrics (vLLM's names), summed over the replicas.
REPLICA_METRICS = {
    "vllm:prefix_cache_queries_total": "prompt_tokens",
    "vllm:prefix_cache_hits_total": "prompt_tokens_reused",
    "vllm:time_to_first_token_seconds_sum": "ttft_sum_s",
    "vllm:time_to_first_token_seconds_count": "ttft_count",
}
FINISHED = "vllm:request_success_total"  # per replica: how the router spread the requests


async def engine_counters(server: Server, replicas: list[Replica] | None) -> dict[str, float]:
    """Prompt tokens (and reused ones) so far: the in-process engine's from ``GET
    models``, else the replicas' from their ``/metrics``; {} when unreadable."""
    if not replicas:
        info = await engine_info(server)
        return {key: float(info[name]) for key, name in (
            ("prompt_tokens", "prompt_tokens_total"),
            ("prompt_tokens_reused", "prompt_tokens_reused_total"))
            if info.get(name) is not None}
    totals: dict[str, float] = {}
    http = new_http_client(4)
    try:
        for replica in replicas:
            with contextlib.suppress(Exception):
                response = await http.fetch(replica.url + "/metrics", request_timeout=10)
                for line in response.body.decode(errors="replace").splitlines():
                    if line.startswith("#"):
                        continue
                    name = line.split("{", 1)[0].split(" ", 1)[0]
                    value = float(line.rsplit(None, 1)[-1])
                    if name in REPLICA_METRICS:
                        key = REPLICA_METRICS[name]
                        totals[key] = totals.get(key, 0.0) + value
                    elif name == FINISHED:
                        key = f"finished:{replica.name}"
                        totals[key] = totals.get(key, 0.0) + value
    finally:
        http.close()
    return totals


def counters_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    out: dict[str, Any] = {k: int(v) for k, v in d.items() if k in ("prompt_tokens",
                                                                    "prompt_tokens_reused")}
    if d.get("prompt_tokens"):
        out["prompt_reused_share"] = round(d.get("prompt_tokens_reused", 0) /
                                           d["prompt_tokens"], 3)
    if d.get("ttft_count"):
        out["replica_ttft_mean_ms"] = round(1000 * d["ttft_sum_s"] / d["ttft_count"], 1)
    split = {k.split(":", 1)[1]: int(v) for k, v in d.items() if k.startswith("finished:")}
    if len(split) > 1:
        out["finished_by_replica"] = split
    return out


def files_by_replica(cursors: list[TypingCursor], replicas: list[Replica]) -> dict[str, list]:
    """Which replica rendezvous hashing gives each client's file (the pool's own score):
    where the requests go while no replica is ``affinity_slack`` busier than another."""
    from types import SimpleNamespace

    from jupyter_ds.routing.pool import rendezvous_score

    out: dict[str, list] = {r.name: [] for r in replicas}
    for cursor in cursors:
        best = max(replicas, key=lambda r: rendezvous_score(
            cursor.path, SimpleNamespace(url=r.url + "/v1")))
        out[best.name].append(cursor.path)
    return out


def solo_times(run_results: list[Any]) -> list[float]:
    return [round(r.latency_s, 4) for r in run_results if r.ok]


# --------------------------------------------------------------------------- part 2


async def router_latency(local: Server, routed: Server, pairs: int,
                         args: argparse.Namespace) -> dict[str, Any]:
    """One client, the same prompts to both servers, one pair at a time, alternating
    which server goes first."""
    path, text = module_source(LATENCY_MODULE)
    cursors = {"in-process": TypingCursor(path, text, args.max_tokens, args.context_lines),
               "remote": TypingCursor(path, text, args.max_tokens, args.context_lines)}
    servers = {"in-process": local, "remote": routed}
    samples: dict[str, list[dict[str, Any]]] = {"in-process": [], "remote": []}
    http = new_http_client(2)
    try:
        for i in range(pairs):
            order = ("in-process", "remote") if i % 2 == 0 else ("remote", "in-process")
            for path_name in order:
                body = cursors[path_name].next_body()
                result = await api_call(http, servers[path_name], "POST", "complete", body,
                                        args.completion_timeout + 60, "complete")
                data = (result.envelope or {}).get("data") or {}
                samples[path_name].append({
                    "ok": result.ok, "status": result.status,
                    "client_ms": round(result.latency_s * 1000, 1),
                    "server_ms": data.get("latency_ms"), "output": data.get("output"),
                    "tokens": data.get("token_count"),
                })
    finally:
        http.close()
    out: dict[str, Any] = {"pairs": pairs, "module": path}
    for name, rows in samples.items():
        ok = [r for r in rows if r["ok"]]
        client = [r["client_ms"] for r in ok]
        server = [r["server_ms"] for r in ok if r["server_ms"] is not None]
        out[name] = {
            "ok": len(ok), "errors": len(rows) - len(ok),
            "p50_ms": percentile(client, 50), "p95_ms": percentile(client, 95),
            "mean_ms": round(statistics.fmean(client), 1) if client else None,
            "server_p50_ms": percentile(server, 50), "server_p95_ms": percentile(server, 95),
            "mean_tokens": round(statistics.fmean([r["tokens"] or 0 for r in ok]), 2)
            if ok else None,
        }
    both = [(a, b) for a, b in zip(samples["in-process"], samples["remote"],
                                                   strict=True)
            if a["ok"] and b["ok"]]
    diffs = [b["client_ms"] - a["client_ms"] for a, b in both]
    local_p50, remote_p50 = out["in-process"]["p50_ms"], out["remote"]["p50_ms"]
    local_p95, remote_p95 = out["in-process"]["p95_ms"], out["remote"]["p95_ms"]
    out["added_p50_ms"] = _sub(remote_p50, local_p50)
    out["added_p95_ms"] = _sub(remote_p95, local_p95)
    out["ratio_p50"] = _div(remote_p50, local_p50)
    out["ratio_p95"] = _div(remote_p95, local_p95)
    out["paired_diff_median_ms"] = (round(statistics.median(diffs), 1) if diffs else None)
    out["identical_outputs"] = sum(1 for a, b in both if a["output"] == b["output"])
    out["compared"] = len(both)
    out["samples_ms"] = {name: [r["client_ms"] if r["ok"] else None for r in rows]
                         for name, rows in samples.items()}
    return out


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


# --------------------------------------------------------------------------- part 3


def sim_input(rows: list[dict[str, Any]], solo_s: list[float]) -> dict[str, Any]:
    """What the simulation is fed: the 1-replica-1-core rows' rates and solo times."""
    rps = {r["clients"]: r["requests_per_s"] for r in rows if r["config"] == ONE_CORE}
    return {"config": ONE_CORE, "rps_by_clients": rps, "solo_s": solo_s}


def run_simulation(feed: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    rps = {int(k): float(v) for k, v in feed["rps_by_clients"].items()}
    profile = q.ServiceProfile.from_measurements(feed["solo_s"], rps, args.max_batch)
    model = q.UserModel(typing_share=args.typing_share, burst_mean_s=args.burst_mean_s,
                        request_interval_s=args.request_interval_s)
    try:
        rule = q.keda_rule_from_yaml(KEDA_YAML)
    except (ImportError, OSError, KeyError, IndexError, TypeError, ValueError) as exc:
        log(f"KEDA rule not read from {KEDA_YAML} ({exc}): the defaults, which match it")
        rule = q.KedaRule()
    solo_p95 = percentile(list(profile.solo_s), 95)
    slo = round(args.slo_factor * solo_p95, 3)
    base = q.SimConfig(pod_start_s=args.pod_start_s, miss_penalty=args.miss_penalty,
                       max_queued=args.max_queued)
    users, seed, steady = args.users, args.seed, args.sim_seconds

    def strip(summary: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in summary.items() if k != "timeline"}

    log(f"simulation: {users} users, {model.rps_per_user * users:.1f} requests/s offered; "
        f"replica: solo mean {profile.mean_solo_s:.3f} s, gain at {profile.max_batch} "
        f"{profile.gain[-1]:.2f}, capacity {profile.capacity_rps:.2f} requests/s")
    flat = [(0, users)]
    arrivals = q.typing_arrivals(flat, model, steady, seed)
    fixed = {}
    for router in ("global", "per-user"):
        cfg = q.SimConfig(**{**base.__dict__, "replicas": rule.max_replicas, "router": router,
                             "warmup_s": 120.0, "sample_s": steady})
        fixed[router] = strip(q.simulate(profile, cfg, arrivals, steady, seed))
        log(f"simulation: {rule.max_replicas} replicas fixed, {router} router: p95 "
            f"{fixed[router]['p95_s']} s, shed {fixed[router]['shed_rate']:.1%}, superseded "
            f"{fixed[router]['superseded_share']:.1%}")
    duration = RAMP[-1][0]
    ramp_arrivals = q.typing_arrivals(RAMP, model, duration, seed)
    cfg = q.SimConfig(**{**base.__dict__, "replicas": rule.min_replicas, "autoscale": rule,
                         "sample_s": 60.0})
    autoscaled = q.simulate(profile, cfg, ramp_arrivals, duration, seed, RAMP)
    log(f"simulation: autoscaled {rule.min_replicas}..{rule.max_replicas} over the ramp: "
        f"p95 {autoscaled['p95_s']} s, shed {autoscaled['shed_rate']:.1%}, replicas max "
        f"{autoscaled['replicas_max']}")
    needed = {}
    for router in ("global", "per-user"):
        needed[router] = q.replicas_needed(
            profile, users, model, p95_slo_s=slo, max_shed=args.max_shed, router=router,
            duration_s=steady, seed=seed, base=base)
        log(f"simulation: {router} router needs {needed[router]['replicas']} replicas "
            f"(utilisation bound {needed[router]['utilisation_bound']})")
    slack = []
    for value in args.slack_values:
        if value == base.affinity_slack:
            found = needed["global"]
        else:
            cfg = q.SimConfig(**{**base.__dict__, "affinity_slack": value})
            found = q.replicas_needed(profile, users, model, p95_slo_s=slo,
                                      max_shed=args.max_shed, duration_s=steady, seed=seed,
                                      base=cfg)
        at = found.get("at_needed") or {}
        slack.append({"affinity_slack": value, "replicas": found["replicas"],
                      "p95_s": at.get("p95_s"), "prefix_hit_share": at.get("prefix_hit_share")})
        log(f"simulation: affinity_slack {value}: {found['replicas']} replicas")
    sensitivity = []
    for interval in args.sensitivity_intervals:
        if interval == args.request_interval_s:
            continue
        m = q.UserModel(typing_share=args.typing_share, burst_mean_s=args.burst_mean_s,
                        request_interval_s=interval)
        found = q.replicas_needed(profile, users, m, p95_slo_s=slo, max_shed=args.max_shed,
                                  duration_s=steady, seed=seed, base=base)
        sensitivity.append({"request_interval_s": interval,
                            "offered_rps": found["offered_rps"],
                            "replicas": found["replicas"],
                            "utilisation_bound": found["utilisation_bound"]})
    sensitivity.append({"request_interval_s": args.request_interval_s,
                        "offered_rps": needed["global"]["offered_rps"],
                        "replicas": needed["global"]["replicas"],
                        "utilisation_bound": needed["global"]["utilisation_bound"]})
    sensitivity.sort(key=lambda r: r["request_interval_s"])
    return {
        "note": "SIMULATION (benchmarks/queueing.py), not a measurement: a model fed with "
                "the measured service times of one replica",
        "profile": {
            "from": feed.get("config"),
            "solo_samples": len(profile.solo_s),
            "solo_p50_s": percentile(list(profile.solo_s), 50),
            "solo_p95_s": solo_p95,
            "solo_mean_s": round(profile.mean_solo_s, 4),
            "gain": [round(g, 3) for g in profile.gain],
            "measured_rps_by_clients": rps,
            "capacity_rps_per_replica": round(profile.capacity_rps, 3),
        },
        "assumptions": {
            "users": users,
            "typing_share": model.typing_share,
            "burst_mean_s": model.burst_mean_s,
            "request_interval_s": model.request_interval_s,
            "debounce_s": model.debounce_s,
            "requests_per_s_per_user": round(model.rps_per_user, 4),
            "miss_penalty": base.miss_penalty,
            "pod_start_s": base.pod_start_s,
            "max_batch": profile.max_batch,
            "max_queued": base.max_queued,
            "queue_timeout_s": base.queue_timeout_s,
            "completion_timeout_s": base.completion_timeout_s,
            "affinity_slack": base.affinity_slack,
            "slo": f"p95 <= {args.slo_factor} x solo p95 ({slo} s) and at most "
                   f"{args.max_shed:.0%} shed or timed out",
            "steady_seconds": steady,
            "ramp": [list(p) for p in RAMP],
            "seed": seed,
        },
        "keda": rule.__dict__,
        "fixed_max_replicas": fixed,
        "autoscaled": {k: v for k, v in autoscaled.items() if k != "timeline"},
        "autoscaled_timeline": autoscaled["timeline"],
        "needed": needed,
        "sensitivity": sensitivity,
        "affinity_slack": slack,
        "seconds": round(time.monotonic() - started, 1),
    }


# --------------------------------------------------------------------------- the run


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    counts = sorted(set(args.clients))
    seconds = {n: args.seconds for n in counts}
    seconds[1] = args.solo_seconds
    cursors = typing_cursors(max(counts), args.max_tokens, args.context_lines)
    rows: list[dict[str, Any]] = []
    configs: dict[str, dict[str, Any]] = {}
    solo: list[float] = []
    latency: dict[str, Any] = {}

    # Phase 1: the in-process server and one unpinned replica behind a router.
    log("phase 1: in-process server and 1 replica (2 cores)")
    local_args = common_args(args)
    async with running_replicas(args, [("both", None, None)]) as (both,):
        async with running_server(local_args, args.ready_timeout) as (local, _), \
                running_server(router_args(args, [both]), args.ready_timeout) as (routed, _):
            await warm_up(local, args.max_tokens, args.context_lines)
            await warm_up(routed, args.max_tokens, args.context_lines)
            if args.latency_pairs:
                log(f"router latency: {args.latency_pairs} pairs, one client")
                latency = await router_latency(local, routed, args.latency_pairs, args)
                log(f"router latency: p50 in-process {latency['in-process']['p50_ms']} ms, "
                    f"remote {latency['remote']['p50_ms']} ms (+{latency['added_p50_ms']} ms, "
                    f"x{latency['ratio_p50']}); identical outputs {latency['identical_outputs']}"
                    f"/{latency['compared']}")
            rows += await load_rows(IN_PROCESS, local, cursors, counts_without_1(counts),
                                    seconds, args)
            rows += await load_rows(ONE_BOTH, routed, cursors, counts_without_1(counts),
                                    seconds, args, [both])
        configs[IN_PROCESS] = {"replicas": 0, "cpus": "all (not pinned)",
                               "threads": "torch's default"}
        configs[ONE_BOTH] = {"replicas": 1, "cpus": "all (not pinned)",
                             "threads": "torch's default",
                             "ready_s": [both.ready_s]}

    # Phase 2: two replicas, a core each; a router over the first alone, one over both.
    log("phase 2: replicas pinned to a core each (taskset, --threads 1)")
    async with running_replicas(args, [("core0", "0", 1), ("core1", "1", 1)]) as (r0, r1):
        async with running_server(router_args(args, [r0]), args.ready_timeout) as (one, _), \
                running_server(router_args(args, [r0, r1]), args.ready_timeout) as (two, _):
            await warm_up(one, args.max_tokens, args.context_lines)
            await warm_up(two, args.max_tokens, args.context_lines)
            runs: list[Any] = []
            rows += await load_rows(ONE_CORE, one, cursors, counts, seconds, args, [r0], runs)
            if counts[0] == 1:
                solo = solo_times(runs[0].results)
            rows += await load_rows(TWO_CORES, two, cursors, counts_without_1(counts),
                                    seconds, args, [r0, r1])
            for row in rows:
                if row["config"] == TWO_CORES:
                    row["files_by_replica"] = files_by_replica(cursors[:row["clients"]],
                                                               [r0, r1])
        configs[ONE_CORE] = {"replicas": 1, "cpus": "core 0", "threads": 1,
                             "ready_s": [r0.ready_s]}
        configs[TWO_CORES] = {"replicas": 2, "cpus": "core 0, core 1", "threads": 1,
                              "ready_s": [r0.ready_s, r1.ready_s]}
    add_ratios(rows)
    return {"configs": configs, "rows": rows, "router_latency": latency,
            "sim_input": sim_input(rows, solo)}


def counts_without_1(counts: list[int]) -> list[int]:
    return [n for n in counts if n != 1]


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's requests/s over the in-process server's at the same client count."""
    base = {r["clients"]: r["requests_per_s"] for r in rows if r["config"] == IN_PROCESS}
    one = {r["clients"]: r["requests_per_s"] for r in rows if r["config"] == ONE_CORE}
    for r in rows:
        r["x_in_process"] = _div(r["requests_per_s"], base.get(r["clients"]))
        r["x_one_core"] = _div(r["requests_per_s"], one.get(r["clients"]))


# --------------------------------------------------------------------------- report


def cell(value: Any, suffix: str = "") -> str:
    return "–" if value is None else f"{value}{suffix}"


def settings_note(p: dict[str, Any]) -> str:
    """Which timeouts differ from the project's defaults in these rows, and why."""
    notes = []
    if p.get("completion_queue_timeout_s") is not None:
        notes.append(f"every Jupyter server has `completion_queue_timeout` "
                     f"{p['completion_queue_timeout_s']:g} s (default 5 s)")
    if p.get("remote_timeout_s") is not None:
        notes.append(f"the routes' RemoteEngine `timeout_s` is {p['remote_timeout_s']:g} s "
                     f"(default 10 s)")
    if not notes:
        return ""
    return (" Timeouts: " + " and ".join(notes) + ", so that the rows measure what the "
            "replicas serve rather than what they shed: with the default, a completion that "
            "a replica of this CPU cannot start within 5 s is shed (429).")


def signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+g}"


def statuses(row: dict[str, Any]) -> str:
    return ", ".join(f"{s}: {n}" for s, n in row["errors_by_status"].items()) or "0"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def markdown(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = ["# Scale: replicas, the router's cost, and a simulation of 1,000 users", ""]
    if report.get("rows"):
        lines += [
            "## 1. One vs two replicas on this machine (measured)",
            "",
            f"Embedded model, {p['cpus']} CPUs (1-minute load average before and after: "
            f"{p['load_average_1m']}), {p['seconds']} s per row ({p['solo_seconds']} s at 1 "
            f"client). Closed-loop clients typing through their own standard-library modules, "
            f"`complete` with max_tokens {p['max_tokens']} at each word end, through Jupyter "
            f"servers whose `routes` send completion to `ds-engine serve` replicas "
            f"(RemoteEngine, `retries: 0`); the baseline server runs the engine in-process. "
            f"Replicas on one core each are pinned with `taskset -c N` and `--threads 1`; "
            f"Jupyter and the clients share both cores with them."
            + settings_note(p)
            + " *Prompt reused*: the share of prompt tokens the engines' prefix caches "
            "reused; *replica TTFT*: the replicas' mean time to first token.",
            "",
            "| configuration | clients | requests | req/s | p50 ms | p95 ms | errors "
            "| prompt reused | replica TTFT ms | × in-process | × 1 replica, 1 core |",
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
        ]
        for r in report["rows"]:
            engine = r.get("engine") or {}
            lines.append(
                f"| {r['config']} | {r['clients']} | {r['requests']} | "
                f"{r['requests_per_s']:.2f} | {cell(r['latency_p50_ms'])} | "
                f"{cell(r['latency_p95_ms'])} | {statuses(r)} | "
                f"{pct(engine.get('prompt_reused_share'))} | "
                f"{cell(engine.get('replica_ttft_mean_ms'))} | {cell(r.get('x_in_process'))} | "
                f"{cell(r.get('x_one_core'))} |")
        for r in report["rows"]:
            engine = r.get("engine") or {}
            if r.get("files_by_replica") or engine.get("finished_by_replica"):
                files = "; ".join(f"{name}: {', '.join(paths) or 'none'}"
                                  for name, paths in (r.get("files_by_replica") or {}).items())
                done = ", ".join(f"{name} {n}" for name, n in
                                 (engine.get("finished_by_replica") or {}).items())
                lines += ["", f"{r['config']}, {r['clients']} clients: requests finished per "
                          f"replica {done or '–'}; files by rendezvous hashing {files or '–'}."]
        lines += ["", "| configuration | replicas | CPUs | torch threads "
                  "| replica start to ready |", "|---|---:|---|---|---|"]
        for name, c in report["configs"].items():
            ready = ", ".join(f"{v} s" for v in c.get("ready_s") or []) or "–"
            lines.append(f"| {name} | {c['replicas']} | {c['cpus']} | {c['threads']} | "
                         f"{ready} |")
        lines += ["", "Replicas load the model from the converted-model cache; the in-process "
                  "server's engine is in the Jupyter process."]
    lat = report.get("router_latency") or {}
    if lat.get("in-process"):
        a, b = lat["in-process"], lat["remote"]
        lines += [
            "",
            "## 2. The router's added latency (measured)",
            "",
            f"One client, {lat['pairs']} prompts typed through `{lat['module']}`, each sent "
            f"to both servers one after the other (alternating which goes first): "
            f"in-process (Jupyter -> LocalEngine) and remote (Jupyter -> pool -> "
            f"RemoteEngine -> `ds-engine serve`, 1 replica, 2 cores), same model.",
            "",
            "| path | ok | p50 ms | p95 ms | mean ms | server-side p50 ms | mean tokens |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| in-process | {a['ok']} | {cell(a['p50_ms'])} | {cell(a['p95_ms'])} | "
            f"{cell(a['mean_ms'])} | {cell(a['server_p50_ms'])} | {cell(a['mean_tokens'])} |",
            f"| remote | {b['ok']} | {cell(b['p50_ms'])} | {cell(b['p95_ms'])} | "
            f"{cell(b['mean_ms'])} | {cell(b['server_p50_ms'])} | {cell(b['mean_tokens'])} |",
            "",
            f"Added by the router: p50 {cell(lat['added_p50_ms'], ' ms')} "
            f"(× {cell(lat['ratio_p50'])}), p95 {cell(lat['added_p95_ms'], ' ms')} "
            f"(× {cell(lat['ratio_p95'])}); median of the paired differences "
            f"{cell(lat['paired_diff_median_ms'], ' ms')}. Identical completions: "
            f"{lat['identical_outputs']} of {lat['compared']}.",
        ]
    sim = report.get("simulation")
    if sim:
        lines += sim_markdown(sim)
    lines += ["", "## Conclusions", "", conclusions(report)]
    return "\n".join(lines) + "\n"


def sim_markdown(sim: dict[str, Any]) -> list[str]:
    pr, a, k = sim["profile"], sim["assumptions"], sim["keda"]
    lines = [
        "",
        "## 3. Simulation of the engine tier (a model, not a measurement)",
        "",
        f"**This part is a simulation** (`benchmarks/queueing.py`, its docstring states the "
        f"model), fed with part 1's *{pr['from']}* figures: {pr['solo_samples']} solo "
        f"service times (p50 {pr['solo_p50_s']} s, p95 {pr['solo_p95_s']} s, mean "
        f"{pr['solo_mean_s']} s) and the batching gain (requests/s with k in the batch over "
        f"alone: " + ", ".join(f"{i}: {g}" for i, g in enumerate(pr["gain"]) if i) +
        f"), so one replica completes at most {pr['capacity_rps_per_replica']} requests/s.",
        "",
        f"Assumptions: {a['users']} users online; each types {a['typing_share']:.0%} of the "
        f"time in bursts of {a['burst_mean_s']:g} s on average and, while typing, asks for a "
        f"completion every {a['request_interval_s']:g} s on average (pauses longer than the "
        f"{a['debounce_s'] * 1000:.0f} ms debounce), i.e. {a['requests_per_s_per_user']} "
        f"requests/s per user; a user's new request supersedes the pending one; a request "
        f"off its user's previous replica pays {1 + a['miss_penalty']:g}× its service time "
        f"(prefix-cache miss); batch {a['max_batch']}, {a['max_queued']} may wait, a request "
        f"not started in {a['queue_timeout_s']:g} s is shed; a new pod serves after "
        f"{a['pod_start_s']:g} s. Service level: {a['slo']}. KEDA rule from "
        f"`deploy/k8s/keda/scaledobject.yaml`: desired = ceil(waiting / {k['threshold']:g}) "
        f"in {k['min_replicas']}..{k['max_replicas']}, polled every {k['polling_s']:g} s, up "
        f"{k['up_pods']} pods / {k['up_period_s']:g} s, down {k['down_pods']} / "
        f"{k['down_period_s']:g} s after a {k['down_window_s']:g} s window. Steady runs "
        f"last {a['steady_seconds']:g} s (the first 120 s not counted); seed {a['seed']}.",
        "",
        "*Shed* counts requests shed or timed out among those not overtaken; *superseded*, "
        "requests overtaken by the user's next one (of all sent); *busy*, the share of "
        "replica time with a request running.",
        "",
        "| scenario (simulated) | offered req/s | completed req/s | p50 s | p95 s | shed "
        "| superseded | prefix hits | replicas (mean / max) | busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, s: dict[str, Any]) -> str:
        return (f"| {name} | {s['offered_rps']:.1f} | {s['completed_rps']:.1f} | "
                f"{cell(s['p50_s'])} | {cell(s['p95_s'])} | "
                f"{pct(s['shed_rate'] + s['timeout_rate'])} | "
                f"{pct(s['superseded_share'])} | {pct(s['prefix_hit_share'])} | "
                f"{s['mean_replicas']} / {s['replicas_max']} | "
                f"{pct(s['replica_utilisation'])} |")

    for router, s in sim["fixed_max_replicas"].items():
        lines.append(row(f"{k['max_replicas']} replicas fixed, {a['users']} users, "
                         f"{router} router", s))
    lines.append(row(f"KEDA {k['min_replicas']}..{k['max_replicas']}, users "
                     f"{min(u for _, u in a['ramp'])}->{a['users']}->"
                     f"{a['ramp'][-1][1]} over {a['ramp'][-1][0] // 60} min",
                     sim["autoscaled"]))
    for router, n in sim["needed"].items():
        if n.get("at_needed"):
            lines.append(row(f"{n['replicas']} replicas fixed (the fewest that meet the "
                             f"service level), {router} router", n["at_needed"]))
    lines += [
        "",
        "Replicas the load needs (simulated, fixed count, fewest meeting the service level; "
        "the utilisation bound is offered load × mean service time / the gain at a full "
        "batch):",
        "",
        "| router | request every (s, while typing) | offered req/s | replicas needed "
        "| utilisation bound |",
        "|---|---:|---:|---:|---:|",
    ]
    for router, n in sim["needed"].items():
        lines.append(f"| {router} | {a['request_interval_s']:g} | {n['offered_rps']} | "
                     f"{cell(n['replicas'])} | {n['utilisation_bound']} |")
    for s in sim["sensitivity"]:
        if s["request_interval_s"] != a["request_interval_s"]:
            lines.append(f"| global | {s['request_interval_s']:g} | {s['offered_rps']} | "
                         f"{cell(s['replicas'])} | {s['utilisation_bound']} |")
    if sim.get("affinity_slack"):
        lines += [
            "",
            f"Replicas needed by the pool's `affinity_slack` (simulated, global router, a "
            f"request every {a['request_interval_s']:g} s while typing; the default is "
            f"{a['affinity_slack']}):",
            "",
            "| affinity_slack | replicas needed | p95 s there | prefix hits there |",
            "|---:|---:|---:|---:|",
        ]
        for row in sim["affinity_slack"]:
            lines.append(f"| {row['affinity_slack']} | {cell(row['replicas'])} | "
                         f"{cell(row['p95_s'])} | {pct(row['prefix_hit_share'])} |")
    lines += [
        "",
        "The autoscaled run over time (simulated; each minute for the first five, then every "
        "five; the offered load and latencies are those of the minute before):",
        "",
        "| minute | users online | offered req/s | replicas ready | replicas set | waiting "
        "| p50 s | p95 s | shed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in sim["autoscaled_timeline"]:
        if t["t_s"] <= 300 or t["t_s"] % 300 == 0:
            lines.append(f"| {t['t_s'] // 60} | {cell(t['users_online'])} | "
                         f"{t['offered_rps']} | {t['replicas_ready']} | {t['replicas_set']} | "
                         f"{t['waiting']} | {cell(t['p50_s'])} | {cell(t['p95_s'])} | "
                         f"{pct(t['shed_share'])} |")
    return lines


def conclusions(report: dict[str, Any]) -> str:
    """A short paragraph with the figures (every number comes from this run)."""
    parts = []
    rows = {(r["config"], r["clients"]): r for r in report.get("rows", [])}
    counts = sorted({r["clients"] for r in report.get("rows", []) if r["clients"] > 1})
    if counts:
        n = counts[-1]
        one, two = rows.get((ONE_CORE, n)), rows.get((TWO_CORES, n))
        both, local = rows.get((ONE_BOTH, n)), rows.get((IN_PROCESS, n))
        if one and two:
            parts.append(
                f"at {n} clients two replicas on a core each completed "
                f"{two['requests_per_s']:.2f} requests/s against {one['requests_per_s']:.2f} "
                f"for one replica on one core (× {cell(two.get('x_one_core'))}; p95 "
                f"{cell(two['latency_p95_ms'])} vs {cell(one['latency_p95_ms'])} ms)")
        if two and both and local:
            ratio = _div(two["requests_per_s"], both["requests_per_s"])
            verdict = ("serves more than" if (ratio or 0) > 1.05 else
                       "serves less than" if (ratio or 0) < 0.95 else "serves about as much as")
            parts.append(
                f"on the same 2 cores, splitting them between two replicas {verdict} one "
                f"replica using both ({two['requests_per_s']:.2f} vs "
                f"{both['requests_per_s']:.2f} requests/s, × {cell(ratio)}); the in-process "
                f"server did {local['requests_per_s']:.2f} (p95 {cell(local['latency_p95_ms'])}"
                f" ms)")
        slack = report["params"].get("affinity_slack", 4)  # 4 before it was recorded
        if two and two.get("files_by_replica"):
            files = {k: len(v) for k, v in two["files_by_replica"].items()}
            done = (two.get("engine") or {}).get("finished_by_replica") or {}
            parts.append(
                f"with two replicas the pool's rendezvous hashing put the {n} clients' files "
                f"{' / '.join(str(v) for v in files.values())} on the replicas (requests "
                f"finished {' / '.join(str(v) for v in done.values()) or '–'}): with few "
                f"files and `affinity_slack` {slack}, requests spill over to the idler replica "
                f"only once the busier one holds more than {slack} above it")
        reuse = [(r.get("engine") or {}).get("prompt_reused_share")
                 for r in report.get("rows", [])]
        reuse = [x for x in reuse if x is not None]
        if reuse and max(reuse) < 0.1:
            parts.append(
                f"the prefix caches reused at most {pct(max(reuse))} of the prompt tokens: "
                f"the default adapter's FIM format puts the suffix first, and this replay "
                f"moves the cursor through existing text, so the suffix changes at every "
                f"request (while one types, it stays put), hence whole-prompt prefills and "
                f"the multi-second service times")
        failed = [f"{r['config']} at {r['clients']} clients {r['errors']} of "
                  f"{r['requests']} ({statuses(r)})"
                  for r in report.get("rows", []) if r["errors"]]
        if failed:
            parts.append("errors (a 503 is a shed request): " + "; ".join(failed))
    lat = report.get("router_latency") or {}
    if lat.get("in-process"):
        parts.append(
            f"the router (Jupyter -> pool -> RemoteEngine -> HTTP -> replica) changed a "
            f"single completion's p50 by {signed(lat['added_p50_ms'])} ms (× "
            f"{cell(lat['ratio_p50'])}; median of the paired differences "
            f"{signed(lat['paired_diff_median_ms'])} ms) and its p95 by "
            f"{signed(lat['added_p95_ms'])} ms, with {lat['identical_outputs']} of "
            f"{lat['compared']} completions identical")
    text = "; ".join(parts)
    text = (text[0].upper() + text[1:] + ".") if text else ""
    sim = report.get("simulation")
    if sim:
        a, k, pr = sim["assumptions"], sim["keda"], sim["profile"]
        fixed = sim["fixed_max_replicas"]["global"]
        auto = sim["autoscaled"]
        need = sim["needed"]
        per_user = need.get("per-user", {}).get("replicas")
        at_need = need["global"].get("at_needed") or {}
        lost = pct(fixed["shed_rate"] + fixed["timeout_rate"])
        if fixed["p95_s"] is None:
            at_max = (f"no completion is answered within the {a['completion_timeout_s']:g} s "
                      f"timeout, {lost} are shed or time out and the rest are overtaken")
        else:
            at_max = (f"p95 is {fixed['p95_s']} s, {pct(fixed['superseded_share'])} of the "
                      f"requests are overtaken by the user's next keystroke before their "
                      f"answer and {lost} of the others shed or time out")
        text += (
            f" **Simulated, not measured**: {a['users']} users typing send "
            f"{fixed['offered_rps']:.1f} requests/s; a replica like the measured one "
            f"({pr['solo_mean_s']} s per completion alone, at most "
            f"{pr['capacity_rps_per_replica']} requests/s with a full batch) needs "
            f"{cell(need['global']['replicas'])} replicas to keep p95 within "
            f"{a['slo'].split(' and ')[0].replace('p95 <= ', '')} (one router that sees every "
            f"request; {cell(per_user)} when each user's server routes on its own). With the "
            f"KEDA maximum of {k['max_replicas']}, {at_max}; over the ramp the rule reaches "
            f"{auto['replicas_max']} replicas (p95 {cell(auto['p95_s'], ' s')}).")
        slack = {r["affinity_slack"]: r["replicas"] for r in sim.get("affinity_slack", [])}
        if len(slack) > 1 and None not in slack.values():
            default = a["affinity_slack"]
            best = min(slack, key=lambda v: (slack[v], v))
            text += (" The pool's `affinity_slack` changes the count: "
                     + ", ".join(f"{v}: {n}" for v, n in sorted(slack.items()))
                     + f" replicas needed (fewest at {best}; at the default, {default}, a "
                     f"file's replica holds up to {default} more requests than the least busy "
                     f"one before any spills over, and each one more slows a CPU replica's "
                     f"batch).")
        if at_need.get("superseded_share") is not None:
            text += (f" Even with enough replicas, {pct(at_need['superseded_share'])} of the "
                     f"requests are overtaken by the next keystroke (p50 {at_need['p50_s']} s "
                     f"against a request every {a['request_interval_s']:g} s of typing): "
                     f"more replicas cut the queueing, only faster ones cut that.")
    return text


# --------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load_before = load_average()
    started = time.monotonic()
    params = {
        "clients": args.clients, "seconds": args.seconds,
        "solo_seconds": args.solo_seconds, "latency_pairs": args.latency_pairs,
        "max_tokens": args.max_tokens, "context_lines": args.context_lines,
        "affinity_slack": AFFINITY_SLACK,
        "completion_timeout_s": args.completion_timeout,
        "completion_queue_timeout_s": args.queue_timeout,
        "remote_timeout_s": args.remote_timeout,
        "model": args.model_path or None, "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    if args.sim_from:
        previous = json.loads(Path(args.sim_from).read_text(encoding="utf-8"))
        measured = {k: previous.get(k) for k in ("configs", "rows", "router_latency",
                                                 "sim_input")}
        measured["measured_at"] = previous.get("timestamp")
        params = {**params, **(previous.get("params") or {})}  # those of the measurements
    else:
        measured = await measure(args)
        params["load_average_1m"] = [load_before, load_average()]
    params["sim_from"] = args.sim_from or None
    simulation = None
    feed = measured.get("sim_input") or {}
    if not args.no_sim and feed.get("solo_s") and 1 in {int(k) for k in
                                                        feed.get("rps_by_clients", {})}:
        simulation = await asyncio.to_thread(run_simulation, feed, args)
    elif not args.no_sim:
        log("simulation skipped: no 1-client row on one core to feed it")
    return {
        "benchmark": "scale",
        "params": params,
        **measured,
        "simulation": simulation,
        "run_seconds": round(time.monotonic() - started, 1),
        "timestamp": int(time.time()),
    }


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,8",
                        help="client counts of the load rows (1: the solo row on one core "
                        "that feeds the simulation; default 1,4,8)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per row (default 20)")
    parser.add_argument("--solo-seconds", type=float, default=40.0,
                        help="the 1-client row (the simulation's service times; default 40)")
    parser.add_argument("--latency-pairs", type=int, default=30,
                        help="prompts sent to both paths for the router's cost (default 30)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--context-lines", type=int, default=40)
    parser.add_argument("--completion-timeout", type=float, default=120.0)
    parser.add_argument("--remote-timeout", type=float, default=-1.0,
                        help="the routes' RemoteEngine timeout_s (default: RemoteEngine's "
                        "own, 10 s past the request's start deadline, which ds-engine serve "
                        "enforces)")
    parser.add_argument("--queue-timeout", type=float, default=30.0,
                        help="every server's completion_queue_timeout (default 30; the "
                        "project's 5 s sheds most requests of a slow CPU replica, see the "
                        "report); negative: leave the servers' default")
    parser.add_argument("--model-path", default="",
                        help="model of the replicas and the in-process server (default: the "
                        "embedded model)")
    parser.add_argument("--fim", default="auto",
                        help="the routes' FIM family (auto: as the in-process engine picks)")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    # The simulation's assumptions (benchmarks/queueing.py).
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--typing-share", type=float, default=0.2)
    parser.add_argument("--burst-mean-s", type=float, default=40.0)
    parser.add_argument("--request-interval-s", type=float, default=3.0)
    parser.add_argument("--sensitivity-intervals", default="2,5,10",
                        help="other request intervals to size for (default 2,5,10)")
    parser.add_argument("--slack-values", default="0,1,2,4",
                        help="affinity_slack values to size for (global router; default "
                        "0,1,2,4)")
    parser.add_argument("--miss-penalty", type=float, default=1.0)
    parser.add_argument("--pod-start-s", type=float, default=60.0)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queued", type=int, default=64)
    parser.add_argument("--slo-factor", type=float, default=2.0,
                        help="service level: p95 within this many solo p95s (default 2)")
    parser.add_argument("--max-shed", type=float, default=0.01)
    parser.add_argument("--sim-seconds", type=float, default=600.0,
                        help="simulated time of each steady run (default 600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sim", action="store_true", help="measure only")
    parser.add_argument("--sim-from", default="",
                        help="skip the measurements: simulate from this scale.json's")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    args.clients = sorted({int(x) for x in args.clients.split(",") if x.strip()})
    args.sensitivity_intervals = parse_floats(args.sensitivity_intervals)
    args.slack_values = [int(v) for v in parse_floats(args.slack_values)]
    if args.queue_timeout is not None and args.queue_timeout < 0:
        args.queue_timeout = None
    if args.remote_timeout is not None and args.remote_timeout < 0:
        args.remote_timeout = None
    if not args.clients or min(args.clients) < 1:
        parser.error("--clients: positive integers")
    if os.cpu_count() and os.cpu_count() < 2 and not args.sim_from:
        parser.error("two cores are needed to pin two replicas")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        report = asyncio.run(main_async(args))
    except ServerError as exc:
        log(f"failed: {exc}")
        return 2
    paths = publish(report, markdown(report), args.out_dir, "scale")
    log(f"wrote {paths[0]} and {paths[1]} ({report['run_seconds']} s)")
    fives = sum(r.get("server_errors_5xx", 0) for r in report.get("rows") or [])
    if fives:
        log(f"{fives} server errors (5xx) in the load rows (shed requests are 503s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
