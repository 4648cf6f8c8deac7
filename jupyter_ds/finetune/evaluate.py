"""Single-line infilling on held-out files: the figure a fine-tuning run is judged by.

A cursor stands at the indentation of a line that holds one whole statement (see
:func:`candidate_lines`), with up to 60 lines before and 20 after, as an editor shows a
fresh line to fill. The model answers greedily; the first line of its answer is compared
with the hidden line (both stripped): exact match, edit similarity (1 - Levenshtein /
longer length), and whether anything was offered at all.

Two prompts: ``base`` is the raw model given the prefix alone (its best use without FIM
training), ``fim`` the template of the adapter. Both go through the engine's own token
loop (:func:`ds_engine.generation.run_generation`), so the figures are those a server
with the same prompt would give.
"""

from __future__ import annotations

import io
import random
import statistics
import time
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ds_engine.generation import run_generation
from ds_engine.interface import GenerationRequest
from ds_engine.templates import PromptTemplate

# Lines not worth hiding: their code alone, without information of its own.
TRIVIAL = frozenset({"else:", "try:", "finally:", "pass", "break", "continue", "return"})
LINES_BEFORE = 60
LINES_AFTER = 20


@dataclass(frozen=True)
class Cursor:
    """One task: ``prefix + hidden + suffix`` is the window of the file around the line."""

    path: str
    line: int  # 1-based
    prefix: str  # up to LINES_BEFORE lines, ending with the hidden line's indentation
    hidden: str  # the line's code, without indentation and line break
    suffix: str  # the line break, then up to LINES_AFTER lines


def candidate_lines(source: str, first_line: int = 1) -> list[int]:
    """1-based numbers of the lines (from ``first_line`` on) that may be hidden.

    A candidate holds one whole logical line on its own physical line, which does not
    start with a string (docstrings, bare strings) and is not a lone keyword (``TRIVIAL``).
    Blank and comment-only lines are no logical lines; lines inside brackets or
    multi-line strings are not the start and end of one. Source that does not tokenize
    has no candidates.
    """
    lines = source.splitlines()
    found: list[int] = []
    start: tokenize.TokenInfo | None = None
    skip = {tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.COMMENT, tokenize.ENCODING}
    try:
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
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return []
    return found


def cursor_at(path: str, source: str, row: int) -> Cursor:
    """The cursor at the indentation of line ``row`` (1-based) of ``source``."""
    rows = source.splitlines(keepends=True)
    body = rows[row - 1].rstrip("\r\n")
    code = body.lstrip(" \t")
    indent = body[: len(body) - len(code)]
    before = "".join(rows[max(0, row - 1 - LINES_BEFORE) : row - 1])
    after = "".join(rows[row : row + LINES_AFTER])
    tail = rows[row - 1][len(body) :]  # the hidden line's own line break
    return Cursor(path, row, before + indent, code, tail + after)


def sample_cursors(files: Sequence[Any], count: int, seed: int = 0) -> list[Cursor]:
    """``count`` cursors spread over ``files`` (objects with ``path`` and ``text``).

    Seeded and independent of anything but the files, so every evaluation of a run (and
    of the raw model) sees the same cursors.
    """
    rng = random.Random(seed)
    pool: list[tuple[str, str, int]] = []
    for f in sorted(files, key=lambda f: f.path):
        pool.extend((f.path, f.text, row) for row in candidate_lines(f.text))
    picked = rng.sample(pool, min(count, len(pool)))
    return [cursor_at(path, text, row) for path, text, row in picked]


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


def first_line(text: str) -> str:
    """The text up to its first line break (the whole text without one)."""
    return text.split("\n", 1)[0].rstrip("\r")


def score(answer: str, hidden: str) -> dict[str, Any]:
    line = first_line(answer).strip()
    return {
        "answer": line,
        "exact_match": line == hidden.strip(),
        "edit_similarity": edit_similarity(line, hidden.strip()),
        "offered": bool(line),
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Percentages over ``rows`` (each from :func:`score`), and the median latency."""
    if not rows:
        return {"cursors": 0}

    def pct(key: str) -> float:
        return round(100 * statistics.mean(float(r[key]) for r in rows), 1)

    out = {
        "cursors": len(rows),
        "exact_match": pct("exact_match"),
        "edit_similarity": pct("edit_similarity"),
        "offered": pct("offered"),
    }
    if all("latency_ms" in r for r in rows):
        out["p50_ms"] = round(statistics.median(r["latency_ms"] for r in rows), 1)
    return out


def prompt_for(template: PromptTemplate, cursor: Cursor, use_fim: bool) -> str:
    """The prompt a server would build (no path, no notebook context)."""
    if use_fim and template.fim is not None:
        return template.completion_prompt(cursor.prefix, cursor.suffix)
    return template.escape(cursor.prefix)


def evaluate(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    cursors: Sequence[Cursor],
    use_fim: bool,
    stop_token_ids: Sequence[int] = (),
    max_tokens: int = 24,
    context_window: int = 8192,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Greedy single-line answers at ``cursors``; the summary plus one row per cursor."""
    stops = ["\n", *template.stop]
    rows = []
    for i, cursor in enumerate(cursors):
        started = time.perf_counter()
        result = run_generation(
            model,
            tokenizer,
            GenerationRequest(
                prompt=prompt_for(template, cursor, use_fim),
                max_tokens=max_tokens,
                stop=stops,
            ),
            context_window=context_window,
            stop_token_ids=stop_token_ids,
        )
        row = score(template.cut_special(result.text), cursor.hidden)
        row.update(path=cursor.path, line=cursor.line, hidden=cursor.hidden,
                   latency_ms=(time.perf_counter() - started) * 1000)
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(cursors))
    return {**summarize(rows), "rows": rows}
