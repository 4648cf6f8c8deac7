"""Ground a suggestion in what the notebook's kernel holds.

A small model writes names that look right and do not exist: ``df["price"]`` for a
column called ``price_eur``, ``resid_std`` for a variable never defined. The kernel
context puts the real names in the prompt, which helps; this rule then checks the
suggestion against the same kernel answer, as a user would by running it:

* a string key of a DataFrame the kernel holds (``df["pric`` ...) that is not one of its
  columns becomes the column it most resembles (of those that start with what the user
  typed), when one is close enough; else the suggestion stops before it;
* a free name (not after ``.``, not bound in the suggestion itself) that is neither in the
  kernel, nor a builtin, nor anywhere in the prompt (the cell, the cells above, the
  context) ends the suggestion before it: what is left is offered only if it still parses
  (the validator that runs after this decides).

It only acts on what the kernel answered in full: names when the probe listed every name
(no ``more``, not ``partial``), columns when it listed every column of that DataFrame.
Attributes (``np.lnspace``) are not checked: the kernel's answer does not hold them.
"""

from __future__ import annotations

import builtins
import difflib
import io
import keyword
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jupyter_ds.completion.rules import open_triple_quote
from jupyter_ds.context import IDENTIFIER, PYTHON_LANGUAGES

# IPython's own names: not in the probe's answer (it leaves them out) but always there.
IPYTHON_NAMES = frozenset(("In", "Out", "get_ipython", "exit", "quit", "display", "open"))
BUILTIN_NAMES = frozenset(dir(builtins)) | IPYTHON_NAMES
SOFT_KEYWORDS = frozenset(getattr(keyword, "softkwlist", ()))
# What binds the names after it (up to ``in`` for ``for``, ``:`` for ``lambda``).
_BINDERS = frozenset(("def", "class", "as", "global", "nonlocal", "import"))
# A column key close enough to stand for a made-up one (difflib's ratio).
COLUMN_CUTOFF = 0.75


@dataclass(frozen=True)
class KnownNames:
    """What exists in the kernel, as far as its answer says so for certain."""

    names: frozenset[str] = frozenset()
    complete: bool = False  # ``names`` is every name of the namespace
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # whole lists only

    @classmethod
    def from_snapshot(cls, snapshot: Any) -> KnownNames:
        """From a :class:`~jupyter_ds.context.kernel.Snapshot`."""
        columns = {}
        for entry in snapshot.names:
            if entry.kind == "frame" and entry.columns and entry.ncols == len(entry.columns):
                labels = entry.column_names()
                if len(labels) == len(entry.columns):  # all string labels, none cut
                    columns[entry.name] = tuple(labels)
        return cls(names=frozenset(n.name for n in snapshot.names),
                   complete=not snapshot.more and not snapshot.partial, columns=columns)


@dataclass
class Grounded:
    """The suggestion after grounding, and what was changed (for ``data.context``)."""

    text: str
    cut_at: str | None = None  # the unknown name or column the suggestion stopped before
    fixed: list[str] = field(default_factory=list)  # "made -> real" column keys


def ground(text: str, prefix: str, known: KnownNames, prompt: str,
           language: str = "python") -> Grounded:
    """``text`` (a post-processed suggestion at the end of ``prefix``) checked against
    ``known``; ``prompt`` is every other text the model saw (its names count as known)."""
    if language.lower() not in PYTHON_LANGUAGES or not text.strip():
        return Grounded(text)
    head = prefix[prefix.rfind("\n") + 1:]
    stripped = head.lstrip()
    if stripped.startswith(("import ", "from ", "%", "!")) or open_triple_quote(prefix):
        return Grounded(text)  # imports, magics, and prose inside a multi-line string
    source = stripped + text
    offset = len(stripped)  # where the suggestion starts in ``source``
    tokens = _tokens(source)
    bound = _bound_names(tokens)
    seen = None  # the prompt's identifiers, read only if a name needs them
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in ``source``
    grounded = Grounded(text)
    cut = None
    for i, tok in enumerate(tokens):
        start = tok[2]
        if tok[0] == tokenize.STRING:
            if tok[3] <= offset:
                continue  # wholly typed by the user: not the suggestion's
            typed = source[start:offset] if start < offset else ""
            fix = _column_fix(tokens, i, known, typed)
            if fix is None:
                continue
            real, made = fix
            if real is None:  # stop before the key (at the cursor if the user typed it)
                cut, grounded.cut_at = max(start, offset), made
                break
            quote = tok[1][0]
            new = f"{quote}{real}{quote}"
            edits.append((max(start, offset), tok[3], new[len(typed):]))
            grounded.fixed.append(f"{made} -> {real}")
            continue
        if tok[0] != tokenize.NAME or start < offset:
            continue
        name = tok[1]
        if (keyword.iskeyword(name) or name in SOFT_KEYWORDS or name.startswith("_")
                or name in bound or not known.complete):
            continue
        if _after_dot(tokens, i) or _keyword_argument(tokens, i):
            continue
        if name in known.names or name in BUILTIN_NAMES:
            continue
        if seen is None:
            seen = names_in(prompt) | names_in(prefix)
        if name in seen:
            continue
        cut, grounded.cut_at = start, name
        break
    end = len(source) if cut is None else cut
    out = []
    at = offset
    for e_start, e_end, new in edits:
        if e_start >= end:
            break
        out.append(source[at:e_start])
        out.append(new)
        at = e_end
    out.append(source[at:end] if at < end else "")
    grounded.text = "".join(out).rstrip() if cut is not None else "".join(out)
    return grounded


@lru_cache(maxsize=8)
def names_in(text: str) -> frozenset[str]:
    """The identifiers of ``text``. Remembered: a streamed completion checks its growing
    suggestion against the same prompt and prefix at every chunk."""
    return frozenset(IDENTIFIER.findall(text))


# (type, string, start offset, end offset)
Token = tuple[int, str, int, int]


def _tokens(source: str) -> list[Token]:
    """The significant tokens of ``source`` with offsets, as far as it tokenizes (an
    unclosed bracket or string at the end, or an odd dedent, ends the list there)."""
    starts = [0]
    for line in source.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    out: list[Token] = []
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.COMMENT, tokenize.ENDMARKER}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in skip:
                continue
            if tok.type == tokenize.ERRORTOKEN:
                break
            (srow, scol), (erow, ecol) = tok.start, tok.end
            out.append((tok.type, tok.string, starts[srow - 1] + scol,
                        starts[erow - 1] + ecol))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def _bound_names(tokens: list[Token]) -> set[str]:
    """Names the suggestion binds itself (over-counted rather than missed: a name taken
    for bound is never cut): assignment and walrus targets, ``for`` targets, lambda and
    def parameters, ``as``/``def``/``class``/``import``/``global`` names."""
    bound: set[str] = set()
    mode = None  # "for" (until "in"), "lambda" (until ":"), "def" (until ":")
    statement_start = 0
    depth = 0
    for i, (kind, text, _, _) in enumerate(tokens):
        if kind == tokenize.OP:
            if text in "([{":
                depth += 1
            elif text in ")]}":
                depth = max(0, depth - 1)
            elif text == ":=" or (depth == 0 and text.endswith("=") and text not in
                                  ("==", "<=", ">=", "!=")):
                # Everything named since the statement began may be a target
                # (``a, b = ...``); for ``x := ...`` the name right before. (A ``=`` in
                # brackets is a keyword argument: its name is no reference.)
                for k in range(statement_start if text != ":=" else max(0, i - 1), i):
                    if tokens[k][0] == tokenize.NAME and not _after_dot(tokens, k):
                        bound.add(tokens[k][1])
                statement_start = i + 1
            elif text == ":" and mode in ("lambda", "def"):
                mode = None
            elif text == ";":
                statement_start = i + 1
            continue
        if kind != tokenize.NAME:
            continue
        if text == "for":
            mode = "for"
        elif text == "in" and mode == "for":
            mode = None
        elif text == "lambda":
            mode = "lambda"
        elif text == "def":
            mode = "def"
        elif mode in ("for", "lambda", "def") and not keyword.iskeyword(text):
            bound.add(text)
        elif i > 0 and tokens[i - 1][0] == tokenize.NAME and tokens[i - 1][1] in _BINDERS:
            bound.add(text)
    return bound


def _after_dot(tokens: list[Token], i: int) -> bool:
    return i > 0 and tokens[i - 1][1] == "."


def _keyword_argument(tokens: list[Token], i: int) -> bool:
    """``name=`` inside a call's brackets (a parameter name, not a reference)."""
    return i + 1 < len(tokens) and tokens[i + 1][1] == "=" and i > 0 \
        and tokens[i - 1][1] in ("(", ",")


def _column_fix(tokens: list[Token], i: int, known: KnownNames, typed: str
                ) -> tuple[str | None, str] | None:
    """For a string key right after ``<frame>[`` (or in a ``[[...]]`` list of keys): None
    when it is a real column or not a frame's key; else (the column to use, or None when
    none is close enough; the key as written). ``typed``: the part of the literal that the
    user typed (the replacement must start with it)."""
    body = _plain_string(tokens[i][1])
    if body is None:
        return None
    j = i - 1
    while j >= 0 and (tokens[j][1] == "," or tokens[j][0] == tokenize.STRING):
        j -= 1  # back over the other keys of a list
    if j < 1 or tokens[j][1] != "[":
        return None
    if tokens[j - 1][1] == "[":  # df[["a", "b"]]
        j -= 1
    frame = tokens[j - 1] if j >= 1 else None
    if frame is None or frame[0] != tokenize.NAME or frame[1] not in known.columns \
            or _after_dot(tokens, j - 1):
        return None
    columns = known.columns[frame[1]]
    if body in columns:
        return None
    typed_body = typed[1:]
    fitting = [c for c in columns if c.startswith(typed_body)]
    # A key that is part of a column's name (``price`` of ``price_eur``) stands for the
    # shortest such column; else the closest spelling, if close enough.
    holding = sorted((c for c in fitting if body and body.lower() in c.lower()), key=len)
    if holding:
        return holding[0], body
    close = difflib.get_close_matches(body, fitting, n=1, cutoff=COLUMN_CUTOFF)
    return (close[0] if close else None), body


def _plain_string(text: str) -> str | None:
    """The value of a one-line ``'...'``/``"..."`` literal without prefix or escapes."""
    if len(text) < 2 or text[0] not in "'\"" or text[-1] != text[0] or text[:3] in ('"""',
                                                                                   "'''"):
        return None
    body = text[1:-1]
    return None if "\\" in body or text[0] in body else body
