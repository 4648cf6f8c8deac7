"""Adapters at serving time, and completion while a fine-tuning job trains.

All through the completion service over ``LocalEngine`` (the embedded SmolLM2-135M,
INT8 on CPU as served by default), on a typing replay through stdlib ``textwrap.py``
(every word end and line end of 12 lines, 16 tokens, greedy, caches off so every request
is computed):

* **cost of an adapter**: the same SPM prompts on the engine with the adapter merged into
  its weights (how the default is served) and on the engine with the same adapter
  attached unmerged and named by each request (how an admin-loaded adapter is served);
  the raw model (prefix-only prompts, no adapter) for reference;
* **load and switch**: seconds to attach the adapter to a running engine; the p50 of
  requests that alternate between two adapters against requests that stay on one;
* **during training**: the p50 with a ``jupyter-ds finetune`` child running as the
  server's job runs it (all cores but one, ``nice 10``), against the p50 idle.

    .venv/bin/python benchmarks/adapters.py [--adapter DIR] [--points 40]
        [--train-dir DIR] [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from latency import log, percentile, typing_points
from results_io import publish

ROOT = Path(__file__).resolve().parent.parent


def engine(adapter: str, quantization: str) -> Any:
    from ds_engine.local import LocalEngine

    eng = LocalEngine(default_adapter=adapter, quantization=quantization,
                      prefix_cache_entries=0, result_cache_entries=0)
    eng.load()
    return eng


async def replay(service: Any, points: list, adapters: list[str | None]) -> list[float]:
    """Milliseconds per completion; request ``i`` names ``adapters[i % len(adapters)]``."""
    from jupyter_ds.completion.requests import CompleteRequest

    times = []
    for i, point in enumerate(points):
        req = CompleteRequest(prefix=point.prefix, suffix=point.suffix, max_tokens=16,
                              temperature=0.0, adapter=adapters[i % len(adapters)])
        started = time.perf_counter()
        await service.complete(req)
        times.append((time.perf_counter() - started) * 1000)
    return times


def stats(times: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(percentile(times, 0.95), 1), "n": len(times)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from ds_engine.loader import DEFAULT_ADAPTER_DIR

    from jupyter_ds.completion.service import CompletionService, CompletionSettings

    adapter = args.adapter or str(DEFAULT_ADAPTER_DIR)
    source = (Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py").read_text()
    # The cursor moves through existing lines, as when its results were first taken.
    points = typing_points(source, 120, 12, writing=False)[: args.points]
    log(f"  {len(points)} typing points; adapter {adapter}")
    settings = CompletionSettings(max_tokens=16)
    report: dict[str, Any] = {"benchmark": "adapters", "adapter": adapter,
                              "points": len(points), "quantization": args.quantization}

    raw = engine("none", args.quantization)
    raw_service = CompletionService(raw, settings)
    await replay(raw_service, points[:3], [None])  # warm-up
    report["raw_prefix_only"] = stats(await replay(raw_service, points, [None]))
    log(f"  raw: {report['raw_prefix_only']}")
    started = time.perf_counter()
    raw.load_adapter("fim", adapter)
    report["attach_s"] = round(time.perf_counter() - started, 3)
    second = Path(tempfile.mkdtemp()) / "fim2"
    shutil.copytree(adapter, second)
    raw.load_adapter("fim2", str(second))
    await replay(raw_service, points[:3], ["fim"])
    report["attached"] = stats(await replay(raw_service, points, ["fim"]))
    report["switching"] = stats(await replay(raw_service, points, ["fim", "fim2"]))
    log(f"  attached: {report['attached']}, switching: {report['switching']}")
    raw.close()

    merged = engine(adapter, args.quantization)
    merged_service = CompletionService(merged, settings)
    await replay(merged_service, points[:3], [None])
    report["merged"] = stats(await replay(merged_service, points, [None]))
    log(f"  merged: {report['merged']}")
    report["attached_cost_percent"] = round(
        100 * (report["attached"]["p50_ms"] / report["merged"]["p50_ms"] - 1), 1)
    report["switch_cost_percent"] = round(
        100 * (report["switching"]["p50_ms"] / report["attached"]["p50_ms"] - 1), 1)

    train_dir = args.train_dir or str(Path(sysconfig.get_paths()["stdlib"]) / "json")
    out = Path(tempfile.mkdtemp()) / "job"
    cores = os.cpu_count() or 1
    child = subprocess.Popen(
        [sys.executable, "-m", "jupyter_ds.cli", "finetune", train_dir, "--out", str(out),
         "--max-minutes", "30", "--threads", str(max(1, cores - 1)), "--nice", "10",
         "--base-adapter", "none", "--eval-every", "100000000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(args.train_warmup)  # past the child's model load, into its training
        report["during_training"] = stats(await replay(merged_service, points, [None]))
    finally:
        child.terminate()
        child.wait(60)
    report["idle_again"] = stats(await replay(merged_service, points, [None]))
    report["training_threads"] = max(1, cores - 1)
    report["training_slowdown_percent"] = round(
        100 * (report["during_training"]["p50_ms"] / report["idle_again"]["p50_ms"] - 1), 1)
    log(f"  during training: {report['during_training']}, idle: {report['idle_again']}")
    merged.close()
    return report


def markdown(r: dict[str, Any]) -> str:
    rows = [
        ("raw model, prefix-only prompts", r["raw_prefix_only"]),
        ("adapter merged (the served default)", r["merged"]),
        ("same adapter attached, named per request", r["attached"]),
        ("two adapters, alternating per request", r["switching"]),
        ("merged, while a fine-tuning job trains", r["during_training"]),
        ("merged, idle again", r["idle_again"]),
    ]
    out = [f"# Adapters: typing replay ({r['points']} points, 16 tokens, {r['quantization']})",
           "", "| served as | p50 ms | p95 ms |", "| --- | --- | --- |"]
    out += [f"| {name} | {s['p50_ms']} | {s['p95_ms']} |" for name, s in rows]
    out += ["", f"Attaching the adapter to a running engine: {r['attach_s']} s. Attached vs "
            f"merged: {r['attached_cost_percent']:+}%; switching vs staying: "
            f"{r['switch_cost_percent']:+}%; during training ({r['training_threads']} "
            f"training thread(s), nice 10): {r['training_slowdown_percent']:+}%.", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=None, help="adapter folder (default: shipped)")
    parser.add_argument("--points", type=int, default=40)
    parser.add_argument("--quantization", default="int8")
    parser.add_argument("--train-dir", default=None, help="folder the training job reads")
    parser.add_argument("--train-warmup", type=float, default=45.0,
                        help="seconds between starting the job and measuring")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    report = asyncio.run(run(args))
    publish(report, markdown(report), args.out_dir, "adapters")


if __name__ == "__main__":
    main()
