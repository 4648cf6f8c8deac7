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
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
