"""Model load time (first and cached) and 16-token completion latency on the embedded model.

Replays a cursor through a real file that this project did not write (the standard
library's ``textwrap``): at the end of each of N lines, a 16-token greedy completion
through the same CompletionService the server uses, and, side by side in the same
process, naive ``transformers.generate`` on the same prompts. Prints JSON.

    .venv/bin/python benchmarks/latency.py [--requests 20] [--fresh-cache]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import statistics
import sys
import tempfile
import textwrap
import time

import torch
from ds_engine.local import LocalEngine

from jupyter_ds.requests import CompleteRequest
from jupyter_ds.services.completion import CompletionService, CompletionSettings


def cursor_points(source: str, count: int) -> list[tuple[str, str]]:
    """(prefix, suffix) at the end of evenly spread non-blank lines."""
    lines = source.splitlines(keepends=True)
    candidates = [i for i, line in enumerate(lines) if line.strip() and i > 20]
    step = max(1, len(candidates) // count)
    points = []
    for i in candidates[::step][:count]:
        offset = sum(len(x) for x in lines[: i + 1])
        points.append((source[:offset], source[offset:]))
    return points


def typing_points(source: str, start_line: int, lines: int) -> list[tuple[str, str]]:
    """(prefix, suffix) at every word end of ``lines`` consecutive lines: a person typing."""
    rows = source.splitlines(keepends=True)
    offset = sum(len(x) for x in rows[:start_line])
    points = []
    for row in rows[start_line : start_line + lines]:
        for i, ch in enumerate(row):
            if ch in " (\n" and i > 0 and row[i - 1].isalnum():
                points.append((source[: offset + i], source[offset + i :]))
        offset += len(row)
    return points


async def typing_run(args: argparse.Namespace) -> dict:
    """Replay typing; the engine with its KV-prefix cache vs. without vs. naive generate."""
    source = inspect.getsource(textwrap)
    points = typing_points(source, args.start_line, args.lines)[: args.requests]
    variants = {
        "prefix_cache": LocalEngine(result_cache_entries=0),
        "no_cache": LocalEngine(prefix_cache_entries=0, result_cache_entries=0),
    }
    for engine in variants.values():
        engine.load()
    timings: dict[str, list[float]] = {name: [] for name in [*variants, "naive_generate"]}
    services = {
        name: CompletionService(engine, CompletionSettings(max_tokens=16))
        for name, engine in variants.items()
    }
    loaded = variants["no_cache"].loaded
    for n, (prefix, suffix) in enumerate(points, 1):
        req = CompleteRequest(prefix=prefix, suffix=suffix, path="textwrap.py", max_tokens=16)
        for name, service in services.items():
            t0 = time.perf_counter()
            await service.complete(req)
            timings[name].append(time.perf_counter() - t0)
        prompt, _ = services["no_cache"]._prompt(req)
        ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            loaded.model.generate(**ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
        timings["naive_generate"].append(time.perf_counter() - t0)
        print(f"  keystroke {n}/{len(points)}: " + ", ".join(
            f"{k} {v[-1] * 1000:.0f} ms" for k, v in timings.items()), file=sys.stderr,
            flush=True)
    naive = percentile(timings["naive_generate"], 0.5)
    info = variants["prefix_cache"].info()
    for engine in variants.values():
        engine.close()
    return {
        "mode": "typing",
        "file": "textwrap.py (standard library)",
        "keystrokes": len(points),
        "p50_ms": {k: round(percentile(v, 0.5) * 1000) for k, v in timings.items()},
        "p95_ms": {k: round(percentile(v, 0.95) * 1000) for k, v in timings.items()},
        "p50_speedup_vs_naive": {
            k: round(naive / percentile(v, 0.5), 2) for k, v in timings.items()
        },
        "prompt_tokens_reused_share": round(
            info["prompt_tokens_reused_total"] / max(1, info["prompt_tokens_total"]), 3
        ),
        "torch_threads": torch.get_num_threads(),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def progress(stage: str, fraction: float) -> None:
    print(f"  load: {stage} {fraction:.0%}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict:
    cache = tempfile.mkdtemp(prefix="jds-bench-") if args.fresh_cache else None
    t0 = time.perf_counter()
    first = LocalEngine(cache_dir=cache, progress=progress)
    first.load()
    first_s = time.perf_counter() - t0
    first_from_cache = first.info()["from_cache"]
    first.close()

    t0 = time.perf_counter()
    engine = LocalEngine(cache_dir=cache)
    engine.load()
    cached_s = time.perf_counter() - t0

    service = CompletionService(engine, CompletionSettings(max_tokens=16))
    loaded = engine.loaded
    points = cursor_points(inspect.getsource(textwrap), args.requests)
    ours, naive, tokens = [], [], []
    for n, (prefix, suffix) in enumerate(points, 1):
        req = CompleteRequest(prefix=prefix, suffix=suffix, path="textwrap.py", max_tokens=16)
        t0 = time.perf_counter()
        data = await service.complete(req)
        ours.append(time.perf_counter() - t0)
        tokens.append(data["token_count"])
        # Naive baseline: the same prompt, plain generate, 16 new tokens, greedy.
        prompt, _ = service._prompt(req)
        ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            loaded.model.generate(**ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
        naive.append(time.perf_counter() - t0)
        print(f"  request {n}/{len(points)}: {ours[-1]*1000:.0f} ms (naive "
              f"{naive[-1]*1000:.0f} ms)", file=sys.stderr, flush=True)
    engine.close()
    return {
        "model": engine.info()["name"],
        "load_first_s": round(first_s, 2),
        "load_first_from_cache": first_from_cache,
        "load_cached_s": round(cached_s, 2),
        "requests": len(points),
        "mean_tokens": round(statistics.mean(tokens), 1),
        "p50_ms": round(percentile(ours, 0.5) * 1000),
        "p95_ms": round(percentile(ours, 0.95) * 1000),
        "naive_generate_p50_ms": round(percentile(naive, 0.5) * 1000),
        "p50_ratio_naive_over_ours": round(percentile(naive, 0.5) / percentile(ours, 0.5), 2),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--fresh-cache", action="store_true",
                        help="convert the GGUF into a new temporary cache (first-start time)")
    parser.add_argument("--typing", action="store_true",
                        help="replay typing word by word (KV-prefix cache vs. none vs. naive)")
    parser.add_argument("--start-line", type=int, default=240)
    parser.add_argument("--lines", type=int, default=12)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(typing_run(args) if args.typing else run(args)), indent=2))


if __name__ == "__main__":
    main()
