"""Decode speed, one variant per process: the INT8 engine eager, the INT8 engine with the
compiled decode step, and llama.cpp on the same GGUF, over the same typing prompts.

``benchmarks/latency.py`` holds every variant in one process, which is fair to machine
noise but not to the engine: each engine's worker thread brings its own OpenMP thread
pool, and with more OpenMP threads than cores libgomp sleeps between parallel regions,
so every engine there decodes slower than a server's only engine. Here each variant
runs alone in a child process, as a server would, one after the other, over the same
keystrokes (``latency.typing_points``: every word end and line end of 8 lines of the
standard library's ``textwrap``, the lines being written), 16 greedy tokens forced:

- ``engine_int8``: ``LocalEngine`` (KV-prefix cache, INT8, ``default_adapter="none"``: the
  GGUF's own weights, as llama.cpp runs them, so that both decode the same tokens) through
  the ``CompletionService`` the server uses, its early cut kept from the engine (as in
  ``latency.py``);
- ``engine_int4`` and ``engine_int4_compiled``: the same with 4-bit weights
  (``quantization="int4"``, groups of 32 as GGUF's Q4_1), eager and compiled;
- ``engine_int8_compiled``: the same with ``compile_decode`` (``ds_engine.compiled``); its
  compilation, while loading, is timed apart;
- ``llama_cpp``: one ``Llama`` on the same GGUF and the prompts the engine built (prefix
  KV reused between calls, as the engine's prefix cache does).

Then **fresh cursors**, where a user jumps into a file: 12 cursors spread over the
standard library's ``difflib`` (at a line's indentation, 60 lines before it and 20 after,
as ``--fresh-cursors``), each prompt new to every cache; the engines' time to first token
and full time against llama.cpp's prompt processing (its time to first token) on the
same prompts.

Decode ms/token is (last token - first token) / (tokens - 1) per keystroke, as they
reach the caller (so what the service does after the stream, its validation, is not in
it; it is in the full time). Outputs of the compiled engine are compared with the eager
engine's.

    .venv/bin/python benchmarks/decode_speed.py [--lines 8] [--requests N]
        [--no-llama-cpp] [--out-dir benchmarks/results]

JSON goes to stdout and ``<out-dir>/decode_speed.json``, a markdown table to
``<out-dir>/decode_speed.md``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from ds_engine.loader import resolve_model_source
from ds_engine.local import LocalEngine
from latency import (
    SOURCE_FILE,
    LlamaCpp,
    Sample,
    engine_runner,
    llama_cpp_skipped,
    llama_cpp_version,
    log,
    percentile,
    typing_points,
)
from results_io import publish

from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.completion.service import CompletionService, CompletionSettings

ROOT = Path(__file__).resolve().parent.parent
TARGET_DECODE_VS_LLAMA = 1.5  # decode ms/token at most 1.5x llama.cpp's
TARGET_FULL_VS_LLAMA = 1.0  # typing p50 at most llama.cpp's
LABELS = {
    "engine_int8": "engine + KV-prefix cache + INT8, eager",
    "engine_int8_compiled": "engine + KV-prefix cache + INT8, compiled decode (static KV cache)",
    "engine_int4": "engine + KV-prefix cache + INT4, eager",
    "engine_int4_compiled": "engine + KV-prefix cache + INT4, compiled decode",
    "llama_cpp": "llama.cpp (llama-cpp-python, same GGUF, prefix KV reused)",
}


def _requests(args: argparse.Namespace) -> list[CompleteRequest]:
    source = inspect.getsource(textwrap)
    points = typing_points(source, args.start_line, args.lines)[: args.requests or None]
    return [CompleteRequest(prefix=p.prefix, suffix=p.suffix, path=SOURCE_FILE,
                            max_tokens=args.max_tokens) for p in points]


def fresh_requests(args: argparse.Namespace) -> list[CompleteRequest]:
    """``args.fresh_cursors`` cursors evenly over difflib: 60 lines before, 20 after."""
    import difflib

    rows = inspect.getsource(difflib).splitlines(keepends=True)
    lines = [i for i in range(60, len(rows) - 20) if rows[i].strip()]
    step = max(1, len(lines) // max(1, args.fresh_cursors))
    out = []
    for i in lines[::step][: args.fresh_cursors]:
        indent = len(rows[i]) - len(rows[i].lstrip())
        prefix = "".join(rows[i - 60 : i]) + rows[i][:indent]
        suffix = rows[i][indent:] + "".join(rows[i + 1 : i + 21])
        out.append(CompleteRequest(prefix=prefix, suffix=suffix, path="difflib.py",
                                   max_tokens=args.max_tokens))
    return out


def _summary(samples: list[Sample]) -> dict[str, Any]:
    decode = [d for s in samples if (d := s.decode_s_per_token) is not None]
    ms = lambda v: round(v * 1000, 1)  # noqa: E731
    return {
        "ttft_p50_ms": ms(percentile([s.ttft_s for s in samples], 0.5)),
        "ttft_p95_ms": ms(percentile([s.ttft_s for s in samples], 0.95)),
        "full_p50_ms": ms(percentile([s.full_s for s in samples], 0.5)),
        "full_p95_ms": ms(percentile([s.full_s for s in samples], 0.95)),
        "decode_ms_per_token_p50": ms(percentile(decode, 0.5)) if decode else None,
        "mean_tokens": round(sum(s.tokens for s in samples) / len(samples), 1),
    }


# --------------------------------------------------------------------------- a child


ENGINES = ("engine_int8", "engine_int8_compiled", "engine_int4", "engine_int4_compiled")


async def _engine_child(args: argparse.Namespace, name: str) -> dict[str, Any]:
    started = time.perf_counter()
    engine = LocalEngine(result_cache_entries=0, quantization=name.split("_")[1],
                         default_adapter="none", compile_decode=name.endswith("_compiled"))
    engine.load()
    load_s = time.perf_counter() - started
    try:
        run = engine_runner(engine, args.max_tokens, full_length=True)
        service = CompletionService(engine, CompletionSettings(max_tokens=args.max_tokens))
        samples, prompts = [], []
        for n, req in enumerate(_requests(args), 1):
            prompts.append(service._prompt(req)[0])
            samples.append(await run(req, prompts[-1]))
            if n % 10 == 0:
                log(f"  {n} keystrokes")
        fresh, fresh_prompts = [], []
        for req in fresh_requests(args):
            fresh_prompts.append(service._prompt(req)[0])
            fresh.append(await run(req, fresh_prompts[-1]))
        static = engine._model.static
        extra = {"compile_s": round(static.compile_seconds, 1),
                 "compiled_steps": engine.info().counters.compiled_steps_total} if static else {}
        return {"samples": [s.__dict__ for s in samples], "prompts": prompts,
                "fresh": [s.__dict__ for s in fresh], "fresh_prompts": fresh_prompts,
                "stops": list(engine.template.stop), "load_s": round(load_s, 1), **extra}
    finally:
        engine.close()


def _llama_child(args: argparse.Namespace) -> dict[str, Any]:
    prompts = json.loads(Path(args.prompts).read_text(encoding="utf-8"))
    source = resolve_model_source()
    stops = json.loads(args.stops)
    llama = LlamaCpp(source.path, args.threads, args.n_ctx, stops)
    llama.complete("def add(a, b):\n    return", 3)  # first-call costs
    samples = [llama.complete(p, args.max_tokens) for p in prompts["typing"]]
    fresh = [llama.complete(p, args.max_tokens) for p in prompts["fresh"]]
    return {"samples": [s.__dict__ for s in samples], "fresh": [s.__dict__ for s in fresh]}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.child == "llama_cpp":
        out = _llama_child(args)
    else:
        out = asyncio.run(_engine_child(args, args.child))
    Path(args.result).write_text(json.dumps(out), encoding="utf-8")


# --------------------------------------------------------------------------- the parent


def _run_child(name: str, args: argparse.Namespace, work: Path, **extra: str) -> dict[str, Any]:
    result = work / f"{name}.json"
    cmd = [sys.executable, __file__, "--child", name, "--result", str(result),
           "--threads", str(args.threads), "--start-line", str(args.start_line),
           "--lines", str(args.lines), "--requests", str(args.requests),
           "--max-tokens", str(args.max_tokens), "--n-ctx", str(args.n_ctx),
           "--fresh-cursors", str(args.fresh_cursors)]
    for key, value in extra.items():
        cmd += [f"--{key}", value]
    log(f"running {name} in its own process")
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    log(f"  {name} done in {time.perf_counter() - started:.0f} s")
    return json.loads(result.read_text(encoding="utf-8"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="jds-decode-"))
    raw: dict[str, dict[str, Any]] = {}
    for name in ENGINES:
        if not (args.no_compile and name.endswith("_compiled")):
            raw[name] = _run_child(name, args, work)
    notes = []
    skipped = llama_cpp_skipped(args.no_llama_cpp, resolve_model_source())
    if skipped is not None:
        notes.append(skipped)
    else:
        prompts = work / "prompts.json"
        prompts.write_text(json.dumps({"typing": raw["engine_int8"]["prompts"],
                                       "fresh": raw["engine_int8"]["fresh_prompts"]}),
                           encoding="utf-8")
        # The template's stops, as latency.py passes them.
        raw["llama_cpp"] = _run_child("llama_cpp", args, work, prompts=str(prompts),
                                      stops=json.dumps(raw["engine_int8"]["stops"]))
    samples = {name: [Sample(**s) for s in data["samples"]] for name, data in raw.items()}
    fresh = {name: [Sample(**s) for s in data["fresh"]] for name, data in raw.items()}
    rows: dict[str, dict[str, Any]] = {}
    for name, got in samples.items():
        rows[name] = {"label": LABELS[name], **_summary(got),
                      "fresh": _summary(fresh[name]),
                      **{k: v for k, v in raw[name].items()
                         if k in ("load_s", "compile_s", "compiled_steps")}}
    eager = samples["engine_int8"]
    for name in (*ENGINES[1:], "llama_cpp"):
        if name in samples:
            rows[name]["output_equals_eager"] = round(sum(
                a.text == b.text for a, b in zip(samples[name], eager, strict=True))
                / len(eager), 3)
    targets: dict[str, Any] = {}
    if "llama_cpp" in rows:
        ll = rows["llama_cpp"]
        for name in ENGINES:
            if name in rows:
                rows[name]["decode_over_llama_cpp"] = round(
                    rows[name]["decode_ms_per_token_p50"] / ll["decode_ms_per_token_p50"], 2)
                rows[name]["full_over_llama_cpp"] = round(
                    rows[name]["full_p50_ms"] / ll["full_p50_ms"], 2)
        best = min((n for n in rows if n != "llama_cpp"),
                   key=lambda n: rows[n]["decode_ms_per_token_p50"])
        for name in ENGINES:
            if name in rows:
                rows[name]["fresh"]["full_over_llama_cpp_prompt"] = round(
                    rows[name]["fresh"]["full_p50_ms"] / ll["fresh"]["ttft_p50_ms"], 2)
        targets = {
            "fresh_target": "full p50 <= llama.cpp's prompt processing (TTFT) p50",
            "fresh_met": rows[best]["fresh"]["full_over_llama_cpp_prompt"] <= 1.0,
            "judged_variant": best,
            "decode_target": f"<= {TARGET_DECODE_VS_LLAMA}x llama.cpp's ms/token",
            "decode_met": rows[best]["decode_over_llama_cpp"] <= TARGET_DECODE_VS_LLAMA,
            "typing_target": f"<= {TARGET_FULL_VS_LLAMA}x llama.cpp's full p50",
            "typing_met": rows[best]["full_over_llama_cpp"] <= TARGET_FULL_VS_LLAMA,
        }
    return {
        "benchmark": "decode_speed",
        "model": resolve_model_source().path.name,
        "machine": {"cpus": os.cpu_count(), "threads": args.threads,
                    "platform": platform.platform(), "llama_cpp_python": llama_cpp_version()},
        "run": {"file": "textwrap.py", "lines": f"{args.start_line + 1}-"
                f"{args.start_line + args.lines} (1-based)", "keystrokes": len(eager),
                "max_tokens": args.max_tokens, "fresh_cursors": len(fresh["engine_int8"]),
                "order": "one child process per variant, in the order of the table"},
        "variants": rows,
        "targets": targets,
        "notes": notes,
    }


def markdown(report: dict[str, Any]) -> str:
    r, m = report["run"], report["machine"]
    lines = [
        "# Decode speed, one variant per process",
        "",
        f"{report['model']}, {m['cpus']} CPUs ({m['threads']} threads), {r['keystrokes']} "
        f"keystrokes through {r['file']} lines {r['lines']} (the lines being written), "
        f"{r['max_tokens']} tokens forced, greedy; the GGUF's own weights on both sides (no "
        "adapter); each variant alone in its own process, one after the other. Times in ms.",
        "",
        "| variant | TTFT p50 | full p50 | full p95 | decode ms/token p50 | × llama.cpp decode "
        "| × llama.cpp full |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["variants"].values():
        lines.append(
            f"| {row['label']} | {row['ttft_p50_ms']} | {row['full_p50_ms']} | "
            f"{row['full_p95_ms']} | {row['decode_ms_per_token_p50']} | "
            f"{row.get('decode_over_llama_cpp', '')} | {row.get('full_over_llama_cpp', '')} |")
    lines += [
        "",
        f"Fresh cursors ({r['fresh_cursors']} in difflib.py, 60 lines before and 20 after, "
        "each prompt new to every cache):",
        "",
        "| variant | TTFT p50 | TTFT p95 | full p50 | full p95 | full p50 / llama.cpp's "
        "prompt processing p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["variants"].values():
        f = row["fresh"]
        lines.append(f"| {row['label']} | {f['ttft_p50_ms']} | {f['ttft_p95_ms']} | "
                     f"{f['full_p50_ms']} | {f['full_p95_ms']} | "
                     f"{f.get('full_over_llama_cpp_prompt', '')} |")
    lines.append("")
    compiled = report["variants"].get("engine_int8_compiled")
    if compiled is not None:
        lines.append(
            f"- Compiled decode: compiled in {compiled['compile_s']} s while loading, "
            f"{compiled['compiled_steps']} steps through it; output equal to the eager "
            f"engine's at {compiled['output_equals_eager']:.0%} of keystrokes (bfloat16 "
            "activations round differently in fused kernels).")
    ll = report["variants"].get("llama_cpp")
    if ll is not None:
        lines.append(
            "- Mean tokens: " + ", ".join(f"{n} {row['mean_tokens']}" for n, row in
                                           report["variants"].items())
            + "; output equal to the INT8 eager engine's: " + ", ".join(
                f"{n} {row['output_equals_eager']:.0%}" for n, row in report["variants"].items()
                if "output_equals_eager" in row)
            + " (llama.cpp: its own 4-bit kernels on the file's Q4_1 weights).")
    t = report["targets"]
    if t:
        lines.append(
            f"- Judged on {LABELS[t['judged_variant']]}: decode {t['decode_target']}: "
            f"{'met' if t['decode_met'] else 'not met'}; typing {t['typing_target']}: "
            f"{'met' if t['typing_met'] else 'not met'}; fresh cursors {t['fresh_target']}: "
            f"{'met' if t['fresh_met'] else 'not met'}.")
        lines.append(
            "- llama-cpp-python is built by `make bench` as the machine allows: on a CPU with "
            "AMX its AMX kernels are left out (they crashed here), while torch's bfloat16 "
            "GEMMs (the engine's prefill) use AMX through oneDNN.")
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-line", type=int, default=250)
    parser.add_argument("--lines", type=int, default=8)
    parser.add_argument("--requests", type=int, default=0,
                        help="at most this many keystrokes (default 0: all of --lines)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--fresh-cursors", type=int, default=12)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp context size")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--child", choices=sorted(LABELS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    parser.add_argument("--stops", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    report = run(args)
    publish(report, markdown(report), args.out_dir, "decode_speed")


if __name__ == "__main__":
    main()
