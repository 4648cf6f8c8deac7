"""Syntax validation of completions: keep the longest part that leaves the code parseable.

``parses`` accepts code only when both CPython's ``compile`` and libcst's parser accept it;
IPython syntax (line magics, shell escapes, ``?`` help) is masked first, line for line, and
top-level ``await`` is allowed (IPython's autoawait).

``longest_valid`` validates a completion in its surroundings. To stay fast on large files it
compiles only a window: from the last top-level statement that starts in the prefix to the
first one after the cursor in the suffix. The text outside the window is checked (once per
prefix/suffix, cached) to be complete statements on its own; then the whole file parses
exactly when the window does. When that check fails (the file has an unrelated error, or the
window would cut a string), a few earlier/later boundaries are tried; and when no candidate
parses in the checked window, the nearest (unchecked) window is tried as well: an error far
from the cursor should not block completions.

Only Python (and IPython/notebook cells) has a validator; for other languages
``longest_valid`` returns the completion unchanged (``None`` when it is empty).
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Container
from functools import lru_cache

import libcst

from jupyter_ds.completion.rules import (
    PYTHON_LIKE,
    CompletionContext,
    _prefix_string_lines,
    _scan,
    _string_lines,
    first_logical_line_count,
)

__all__ = ["PYTHON_BODY_CELL_MAGICS", "longest_valid", "mask_ipython", "needs_code", "parses"]

#: Cell magics whose body is Python: the ``%%`` line is masked and the body validated. Any
#: other cell that starts with ``%%`` (``%%bash``, ``%%sql``, ...) is not Python: accepted.
PYTHON_BODY_CELL_MAGICS = frozenset({"time", "timeit", "capture", "prun"})

_TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT

_ERRORS = (SyntaxError, ValueError, libcst.ParserSyntaxError, RecursionError, MemoryError)

_LINE_MAGIC = re.compile(r"(?:%%?[A-Za-z_]|![^=])")
_ASSIGN_MAGIC = re.compile(
    r"[A-Za-z_]\w*(?:[ \t]*,[ \t]*[A-Za-z_]\w*)*[ \t]*=[ \t]*(?:!|%[A-Za-z_])"
)
_HELP = re.compile(r"\?{0,2}[\w.*\[\]]+\?{0,2}")
_CELL_MAGIC = re.compile(r"[ \t]*%%(\w*)")


def _is_ipython_line(stripped: str) -> bool:
    if not stripped:
        return False
    if stripped[0] in "%!":
        return _LINE_MAGIC.match(stripped) is not None or stripped == "!"
    if _ASSIGN_MAGIC.match(stripped):
        return True
    return "?" in stripped and _HELP.fullmatch(stripped) is not None


def mask_ipython(code: str) -> str | None:
    """``code`` with IPython-only lines replaced by ``pass`` at the same indentation.

    Returns None for a cell that is not Python at all (it starts with a ``%%`` magic whose body
    is not Python).
    """
    first = code.lstrip("\r\n")
    cell = _CELL_MAGIC.match(first)
    if cell:
        if cell.group(1) not in PYTHON_BODY_CELL_MAGICS:
            return None
    elif "%" not in code and "!" not in code and "?" not in code:
        return code
    lines = code.split("\n")
    for i, line in enumerate(lines):
        stripped = line.lstrip(" \t")
        if _is_ipython_line(stripped.rstrip("\r")) or (cell and stripped.startswith("%%")):
            indent = line[: len(line) - len(stripped)]
            lines[i] = indent + "pass" + ("\r" if line.endswith("\r") else "")
            cell = None  # only the first %% line is the cell magic
    return "\n".join(lines)


def _compiles(code: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # IPython runs top-level ``await`` in cells (autoawait).
            compile(code, "<completion>", "exec", _TOP_LEVEL_AWAIT, dont_inherit=True)
    except _ERRORS:
        return False
    return True


def _cst_parses(code: str) -> bool:
    try:
        libcst.parse_module(code)
    except _ERRORS:
        return False
    return True


def parses(code: str) -> bool:
    """Whether ``code`` (IPython syntax allowed) passes both ``compile`` and libcst."""
    masked = mask_ipython(code)
    if masked is None:
        return True
    return _compiles(masked) and _cst_parses(masked)


# --------------------------------------------------------------------------------------------
# The window around the cursor

_CONTINUATION = re.compile(r"(else|elif|except|finally|case)\b|[)\]}]")
_TRIES = 6  # boundaries tried on each side before the window is used unchecked


def _statement_starts(lines: list[str], skip: Container[int] = frozenset()) -> list[int]:
    """Indices of lines that may begin a top-level statement (column 0, not a continuation,
    not in ``skip``: the lines that begin inside a string)."""
    starts = []
    for i, line in enumerate(lines):
        if not line or line[0] in " \t\r#" or _CONTINUATION.match(line) or i in skip:
            continue
        # A decorated definition starts at its first decorator.
        if i > 0 and lines[i - 1].startswith("@"):
            continue
        starts.append(i)
    return starts


def _syntax_error(code: str) -> BaseException | None:
    """The error that parsing ``code`` to an AST raises (its ``lineno`` says where), or
    None when it parses."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(code, "<code>", "exec", ast.PyCF_ONLY_AST | _TOP_LEVEL_AWAIT, dont_inherit=True)
    except _ERRORS as exc:
        return exc
    return None


def _head_ok(head: str) -> bool:
    return _syntax_error(head) is None


# A fragment is most often a function body: ``return`` and ``await`` must stay legal in it.
_FRAGMENT_HEADER = "async def _fragment():\n"

_Start = tuple[int, str]  # (offset in the prefix, header line to put before the window)


@lru_cache(maxsize=16)
def _split_prefix(prefix: str) -> tuple[_Start, _Start]:
    """Where a window may start in ``prefix``: (checked, nearest).

    ``checked`` is the nearest top-level boundary whose head parses on its own (offset 0: the
    whole prefix); ``nearest`` is the last top-level statement start, checked or not. A prefix
    with no top-level line (a fragment: the context was trimmed inside a block) starts at its
    last least-indented statement, under an ``async def`` header.
    """
    lines = prefix.split("\n")
    # The cursor's line is never a boundary: the completion continues it.
    starts = _statement_starts(lines[:-1], _prefix_string_lines(prefix)[0])
    offsets = _line_offsets(lines)
    if not starts:
        index, width = _fragment_start(lines[:-1])
        start = (offsets[index], _FRAGMENT_HEADER if width else "")
        return start, start
    nearest = (offsets[starts[-1]], "")
    for index in list(reversed(starts))[:_TRIES]:
        masked = mask_ipython(prefix[: offsets[index]])
        if index == 0 or masked is None or _head_ok(masked):
            return (offsets[index], ""), nearest
    return nearest, nearest


def _fragment_start(lines: list[str]) -> tuple[int, int]:
    """(index, indentation) of the last least-indented statement line; (0, 0) if none."""
    widths = [
        (i, len(line) - len(line.lstrip(" \t")))
        for i, line in enumerate(lines)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not widths:
        return 0, 0
    least = min(width for _, width in widths)
    for i, width in reversed(widths):
        stripped = lines[i].lstrip()
        if width == least and not _CONTINUATION.match(stripped) and not stripped.startswith("@"):
            while i > 0 and lines[i - 1].lstrip().startswith("@"):
                i -= 1
            return i, least
    return 0, 0


_DECORATED = re.compile(r"(?:async[ \t]+def|def|class)\b|@")


@lru_cache(maxsize=16)
def _split_suffix(suffix: str, decorating: bool = False, quote: str = "") -> tuple[int, int]:
    """Where a window may end in ``suffix``: (checked, nearest); see ``_split_prefix``.

    With no top-level line after the cursor's, the window takes the whole suffix, and as the
    fallback the suffix up to its last line that leaves no bracket or triple-quoted string
    open (the suffix may have been trimmed in the middle of a statement).

    ``quote``: the triple quote left open after the prefix and the completion (a cursor in
    a docstring, or an answer that opens one), so that the suffix's strings are read the
    right way round: lines inside them are no boundaries.

    ``decorating``: the cursor's line, completed, is a top-level decorator. Then the
    definition it decorates (the first ``def``/``class`` after it, with only blank lines,
    comments and decorators between) is no boundary: a window ending before it would leave
    ``@property`` with nothing to decorate.
    """
    lines = suffix.split("\n")
    offsets = _line_offsets(lines)
    # Line 0 is the rest of the cursor's line.
    in_strings = _string_lines(quote + suffix)[0]
    starts = [i + 1 for i in _statement_starts(lines[1:], {i - 1 for i in in_strings})]
    if decorating:
        starts = [i for i in starts if not _decorated_by_cursor(lines, i)]
    if not starts:
        return len(suffix), _last_closed_line_end(lines, offsets)
    nearest = offsets[starts[0]]
    for index in starts[:_TRIES]:
        masked = mask_ipython(suffix[offsets[index] :])
        if masked is None or _head_ok(masked):
            return offsets[index], nearest
    return nearest, nearest


def _decorated_by_cursor(lines: list[str], index: int) -> bool:
    """Whether suffix line ``index`` is a definition or decorator with nothing but blank
    lines, comments and decorators between it and the cursor's line."""
    return _DECORATED.match(lines[index]) is not None and all(
        not line.strip() or line.lstrip().startswith(("#", "@")) for line in lines[1:index]
    )


def _last_closed_line_end(lines: list[str], offsets: list[int]) -> int:
    """End of the last suffix line after which no bracket or triple quote is left open.

    The scan starts after the cursor's line, unaware of what the prefix left open, so this is
    only a fallback.
    """
    depth, quote, end = 0, None, len(lines[0])
    for i in range(1, len(lines)):
        depth, quote = _scan(lines[i], depth, quote)
        if depth == 0 and quote is None:
            end = offsets[i] + len(lines[i])
    return end


def _line_offsets(lines: list[str]) -> list[int]:
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    return offsets


# --------------------------------------------------------------------------------------------
# Candidates

_BOUNDARY_CHARS = frozenset(")]},\"'")


def _candidates(completion: str, first_lines: int = 1) -> list[str]:
    """Truncations of ``completion``, longest first, without trailing whitespace, distinct.

    ``first_lines`` is how many physical lines the first logical line takes. Besides the whole
    text and its cuts at line ends, its first logical line is cut within its last physical line
    (``[row for row in reader`` / ``if row] + more(`` keeps ``... if row] + more``) and within
    its first one. Only those two lines: cuts in every line of a long unclosed literal would
    cost a compile each, on every streamed chunk.
    """
    lines = completion.split("\n")
    found = [completion]
    found += ["\n".join(lines[:k]) for k in range(len(lines) - 1, 0, -1)]
    for index in dict.fromkeys((first_lines - 1, 0)):
        head = "".join(line + "\n" for line in lines[:index])
        found += [head + cut for cut in _line_cuts(lines[index])]
    out, seen = [], set()
    for candidate in found:
        candidate = candidate.rstrip()
        if candidate.strip() and candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
    return out


def _line_cuts(line: str) -> list[str]:
    """``line`` cut after a closing bracket, a comma, an identifier or a string; longest first."""
    cuts = set()
    for i in range(1, len(line)):
        before, after = line[i - 1], line[i]
        if before in _BOUNDARY_CHARS or (_word(before) and not _word(after)):
            cuts.add(i)
    return [line[:i] for i in sorted(cuts, reverse=True)]


def _word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def longest_valid(
    completion: str, prefix: str, suffix: str, language: str = "python", *, strict: bool = True
) -> str | None:
    """The longest truncation of ``completion`` with which prefix + it + suffix parses.

    Candidates, longest first: the whole text, cuts at each line end, then cuts of the first
    logical line (physical lines joined while a bracket or triple-quoted string that the
    completion opened is open) after a closing bracket, a comma, an identifier or a string.
    ``compile`` filters them; libcst confirms the first that compiles unless ``strict`` is off
    (for text shown while streaming: libcst builds a tree of the whole window, tens of
    milliseconds on a large class, and holds the GIL that the engine's thread needs
    meanwhile). None when no non-empty candidate parses. Not a Python-like language: the
    completion unchanged (None when empty), for want of a validator.
    """
    if language.lower() not in PYTHON_LIKE:
        return completion or None
    if not completion.strip():
        return None
    windows = _windows(completion, prefix, suffix)
    if windows is None:  # a cell that is not Python
        return completion.rstrip()
    ctx = CompletionContext(prefix, suffix, language)
    candidates = _candidates(completion, first_logical_line_count(completion, ctx))
    for before, after, (start, end, unchecked) in windows:
        for candidate in candidates:
            code = mask_ipython(before + candidate + after)
            if code is not None and not (_compiles(code) and (not strict or _cst_parses(code))):
                continue
            if unchecked and not _error_elsewhere(prefix, candidate, suffix, start, end):
                continue
            return candidate
    return None


_Window = tuple[str, str, tuple[int, int, bool]]  # before, after, (start, end, unchecked)


def _windows(completion: str, prefix: str, suffix: str) -> list[_Window] | None:
    """The code around the cursor to compile a completion in: the checked window, then
    the nearest one (unchecked) where it differs; None for a cell that is not Python."""
    cell = _CELL_MAGIC.match(prefix.lstrip("\r\n") or completion.lstrip("\r\n"))
    if cell and cell.group(1) not in PYTHON_BODY_CELL_MAGICS:
        return None
    head, near_head = _split_prefix(prefix)
    # A top-level decorator, typed or suggested, must keep its definition in the window.
    decorating = (prefix.rpartition("\n")[2] + completion).startswith("@")
    # The suffix is read from the quote left open after the completion: a cursor in a
    # docstring, or a completion that opens or closes one itself.
    quote = _string_lines(_prefix_string_lines(prefix)[1] + completion)[1]
    tail, near_tail = _split_suffix(suffix, decorating, quote)
    spans = [(head, tail, False)]
    if (near_head, near_tail) != (head, tail):
        # The checked window failing everything may be the fault of an error far away.
        spans.append((near_head, near_tail, True))
    out = []
    for (start, header), end, unchecked in spans:
        before, after = header + prefix[start:], suffix[:end]
        if start and cell:
            # The window must not lose the cell magic that decides how the cell is read.
            before = "%%" + cell.group(1) + "\n" + before
        out.append((before, after, (start, end, unchecked)))
    return out


def needs_code(prefix: str, suffix: str, language: str = "python") -> bool:
    """Whether the code around the cursor fails to compile with nothing inserted there
    (``x = |``, ``@|``, ``except |``, ``foo(a, |``): an empty answer is never right.

    Only the checked window is compiled (its edges parse on their own), and an error
    found above the cursor's line is someone else's: it does not make every cursor
    below it look unfinished. False for languages that have no validator and for cells
    that are not Python.
    """
    if language.lower() not in PYTHON_LIKE:
        return False
    windows = _windows("", prefix, suffix)
    if windows is None:
        return False
    before, after, _ = windows[0]
    code = mask_ipython(before + after)
    error = None if code is None else _syntax_error(code)
    if error is None:
        return False
    line = getattr(error, "lineno", None)
    return line is None or line > before.count("\n")


def _error_elsewhere(prefix: str, candidate: str, suffix: str, start: int, end: int) -> bool:
    """Whether the whole file parses, or fails only outside the window (start, end).

    Guards the unchecked window: a candidate it accepts must not break the file where the
    window does not see (one ``compile`` of the file; libcst is too slow for that).
    """
    code = mask_ipython(prefix + candidate + suffix)
    error = None if code is None else _syntax_error(code)
    if error is None:
        return True
    line = getattr(error, "lineno", None)
    if not line:
        return False
    first = prefix.count("\n", 0, start) + 1
    last = first + (prefix[start:] + candidate + suffix[:end]).count("\n")
    return not first <= line <= last
