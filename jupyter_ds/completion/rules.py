"""Post-processing rules for raw model completions, in the style of Tabby's post-processors.

Every rule is a small named function ``(text, ctx) -> text``. ``PIPELINE`` lists them in the
order ``postprocess`` applies them:

1. ``strip_markdown_fences`` first: chat-tuned models wrap code in fences, and every later rule
   must see the code, not the fence lines.
2. ``strip_echoed_prefix``: once the fences are gone the model's echo of the cursor line (or of
   the last lines) is at the very start; it must go before any rule that reasons about "the
   first line" of the completion.
3. ``join_typed_whitespace``: BPE tokenizers glue a space to the next word, so after the
   spaces a user typed the model often answers with one space too many or with a line break
   first; the code belongs where the cursor is.
4. ``limit_to_line_when_midline``: with text right of the cursor only one line makes sense.
5. ``stop_at_block_end``: cut where the completion leaves the cursor's block.
6. ``drop_suffix_repeats``: after the cut, the tail that remains may still rewrite the suffix.
7. ``trim_trailing_whitespace`` last, so that the rules above can rely on line structure.

The rules are line based (no lexer): a tiny bracket/quote scanner is the only parsing. They
accept ``\\r\\n`` input and return text with the line ending that the prefix uses; tabs count
as in Python (to the next multiple of 8) when indentation is compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import NamedTuple

__all__ = [
    "PIPELINE",
    "PYTHON_LIKE",
    "CompletionContext",
    "block_complete",
    "drop_suffix_repeats",
    "join_typed_whitespace",
    "limit_to_line_when_midline",
    "postprocess",
    "stop_at_block_end",
    "strip_echoed_prefix",
    "strip_markdown_fences",
    "trim_trailing_whitespace",
]

#: Languages whose blocks are delimited by indentation (notebook cells included).
PYTHON_LIKE = frozenset({"python", "python3", "py", "ipython", "ipython3", "jupyter"})


@dataclass(frozen=True)
class CompletionContext:
    """What surrounds the cursor: the text before it, the text after it, the language."""

    prefix: str
    suffix: str = ""
    language: str = "python"

    @property
    def is_python(self) -> bool:
        return self.language.lower() in PYTHON_LIKE

    @property
    def eol(self) -> str:
        """The line ending of the document (the prefix's, else the suffix's, else LF)."""
        for text in (self.prefix, self.suffix):
            if "\r\n" in text:
                return "\r\n"
            if "\n" in text:
                return "\n"
        return "\n"

    @property
    def current_line(self) -> str:
        """The cursor's line up to the cursor."""
        return self.prefix.rsplit("\n", 1)[-1]


Rule = Callable[[str, CompletionContext], str]


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _lf_context(ctx: CompletionContext) -> CompletionContext:
    if "\r" not in ctx.prefix and "\r" not in ctx.suffix:
        return ctx
    return CompletionContext(_lf(ctx.prefix), _lf(ctx.suffix), ctx.language)


def _line_based(rule: Rule) -> Rule:
    """Let ``rule`` work on LF text; give its result the document's line ending."""

    @wraps(rule)
    def wrapper(text: str, ctx: CompletionContext) -> str:
        out = rule(_lf(text), _lf_context(ctx))
        eol = ctx.eol
        return out.replace("\n", eol) if eol != "\n" else out

    return wrapper


# --------------------------------------------------------------------------------------------
# Small line helpers


def _indent(line: str) -> int:
    """Indentation width in columns; a tab advances to the next multiple of 8, as in Python."""
    stripped = line.lstrip(" \t")
    return len(line[: len(line) - len(stripped)].expandtabs(8))


_CLOSERS = ")]}"
_OPENER_OF = {")": "(", "]": "[", "}": "{"}
_COLON_END = re.compile(r":[ \t]*(#.*)?$")
_DEF = re.compile(r"(async[ \t]+)?(def|class)\b")


def _scan(line: str, depth: int, quote: str | None) -> tuple[int, str | None]:
    """Bracket depth and open triple quote after ``line``, starting from ``depth``/``quote``.

    Skips strings and comments. A single-quoted string ends with its line.
    """
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if quote is not None:
            if ch == "\\":
                i += 2
            elif line.startswith(quote, i):
                i += len(quote)
                quote = None
            else:
                i += 1
            continue
        if ch == "#":
            break
        if ch in "\"'":
            quote = line[i : i + 3] if line[i : i + 3] in ('"""', "'''") else ch
            i += len(quote)
            continue
        if ch in "([{":
            depth += 1
        elif ch in _CLOSERS:
            depth = max(depth - 1, 0)
        i += 1
    if quote is not None and len(quote) == 1:
        quote = None
    return depth, quote


class _Cursor(NamedTuple):
    depth: int  # open brackets before the cursor's line
    quote: str | None  # open triple quote before the cursor's line
    block_indent: int  # a later line indented less than this leaves the block
    level: int  # indentation of the statement the cursor is in (or stands at)


_SCAN_LINES = 60  # how far back the prefix is scanned for open brackets and strings


@lru_cache(maxsize=8)
def _cursor(prefix: str) -> _Cursor:
    lines = prefix.split("\n")[-_SCAN_LINES:]
    depth, quote = 0, None
    stmt_indent = 0  # indentation of the line that began the current logical line
    colon_indent: int | None = None  # set when the last logical line ends with ':'
    for line in lines[:-1]:
        if depth == 0 and quote is None and line.strip() and not _is_comment(line):
            stmt_indent = _indent(line)
        depth, quote = _scan(line, depth, quote)
        if line.strip() and not _is_comment(line) and depth == 0 and quote is None:
            colon_indent = stmt_indent if _COLON_END.search(line) else None
    before = (depth, quote)
    cur = lines[-1]
    if cur.strip():
        if depth == 0 and quote is None:
            stmt_indent = _indent(cur)
        depth, quote = _scan(cur, depth, quote)
        if depth == 0 and quote is None and not _is_comment(cur):
            colon_indent = stmt_indent if _COLON_END.search(cur) else None
    if colon_indent is not None:
        # The cursor may already stand deeper, after the indentation of the new block.
        block = max(colon_indent + 1, 0 if cur.strip() else _indent(cur))
    elif cur.strip() or depth or quote:
        block = stmt_indent
    else:
        block = _indent(cur)
    level = stmt_indent if cur.strip() else _indent(cur)
    return _Cursor(before[0], before[1], block, level)


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


# --------------------------------------------------------------------------------------------
# The rules

_FENCE = re.compile(r"^[ \t]*```+[ \t]*([\w+#.-]*)[ \t]*$")


@_line_based
def strip_markdown_fences(text: str, ctx: CompletionContext) -> str:
    """Keep the inside of the first ```` ``` ```` fence; drop a lone opening or closing fence.

    A fence line with a language tag, or one with nothing but blank lines before it, opens a
    fence; a bare fence after code closes one (the model finished and went on to chat). Left
    alone where the user may be writing fences: markdown, a Python string (a docstring), or
    in another language a fence in the nearby prefix.
    """
    if "```" not in text or _user_writes_fences(ctx):
        return text
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if _FENCE.match(line)]
    if fences:
        first = fences[0]
        tagged = bool(_FENCE.match(lines[first]).group(1))  # type: ignore[union-attr]
        code_before = any(line.strip() for line in lines[:first])
        if code_before and not tagged and len(fences) == 1:
            lines = lines[:first]  # a lone closing fence
        else:
            end = fences[1] if len(fences) > 1 else len(lines)
            lines = lines[first + 1 : end]
    # A fence glued to the end of a code line: "    return x```".
    for i, line in enumerate(lines):
        at = line.find("```")
        if at >= 0:
            lines = [*lines[:i], line[:at]]
            break
    return "\n".join(lines)


def _user_writes_fences(ctx: CompletionContext) -> bool:
    if ctx.language.lower() in {"markdown", "md"}:
        return True
    if not ctx.is_python:
        return "```" in ctx.prefix[-4000:]
    cursor = _cursor(ctx.prefix)
    return _scan(ctx.current_line, cursor.depth, cursor.quote)[1] is not None


_MIN_ECHO = 4  # non-blank characters an echo must have before it is removed


@_line_based
def strip_echoed_prefix(text: str, ctx: CompletionContext) -> str:
    """Remove the model's repetition of the end of the prefix.

    Either the last lines of the prefix (ending with the cursor line up to the cursor), or the
    cursor line alone (with or without its indentation), or the indentation the cursor already
    stands after.
    """
    prefix = ctx.prefix
    if not text or not prefix:
        return text
    # Multi-line echo: the longest prefix tail, starting at a line start, that text begins with.
    starts: list[int] = []
    pos = prefix.rfind("\n")
    while pos >= 0 and len(prefix) - (pos + 1) <= len(text):
        starts.append(pos + 1)
        pos = prefix.rfind("\n", 0, pos)
    if pos < 0 and len(prefix) <= len(text):
        starts.append(0)
    for start in reversed(starts):
        echo = prefix[start:]
        if "\n" in echo and len(echo.strip()) >= _MIN_ECHO and text.startswith(echo):
            return text[len(echo) :]
    cur = ctx.current_line
    content = cur.strip()
    if content:
        if len(content) >= 2 and text.startswith(cur):
            return text[len(cur) :]
        bare = cur.lstrip()
        if bare != cur and len(content) >= 2 and text.startswith(bare):
            return text[len(bare) :]
        return text
    if cur and text.startswith(cur):
        # The cursor stands after indentation and the model indented again. Keep it when the
        # editor did not indent after a ':' line (the model then supplies the missing level).
        last = next((ln for ln in reversed(prefix.split("\n")[:-1]) if ln.strip()), "")
        if _COLON_END.search(last) and _indent(cur) <= _indent(last):
            return text
        return text[len(cur) :]
    return text


_STRAY_SPACES = re.compile(r"[ ]{1,3}(?=\S)")


@_line_based
def join_typed_whitespace(text: str, ctx: CompletionContext) -> str:
    """After typed whitespace, put the completion's code where the cursor is.

    Measured on HumanEval single-line infilling with SmolLM2 (cursor after the indentation
    of an empty line), every raw answer began with a line break (107 of 164) or one space
    too many (57): the tokenizer's ``' result'`` follows an indentation token, not the
    spaces already typed. One to three stray spaces are dropped (four or more, or a tab,
    are a deliberate deeper indentation); on a line holding only indentation, leading line
    breaks go, and the next line's indentation is taken as already typed.
    """
    line = ctx.current_line
    if not line or line[-1] not in " \t" or not text:
        return text
    if not line.strip() and text[0] == "\n":
        rest = text.lstrip("\n")
        if not rest.strip():
            return text
        typed = line
        return rest[len(typed) :] if rest.startswith(typed) else rest.lstrip(" \t")
    stray = _STRAY_SPACES.match(text)
    return text[stray.end() :] if stray else text


@_line_based
def limit_to_line_when_midline(text: str, ctx: CompletionContext) -> str:
    """With non-blank text right of the cursor, keep only the completion's first line."""
    if ctx.suffix.split("\n", 1)[0].strip():
        return text.split("\n", 1)[0]
    return text


def _block_cut(text: str, ctx: CompletionContext) -> int | None:
    """Index of the first completion line outside the cursor's block (None: no cut)."""
    cursor = _cursor(ctx.prefix)
    lines = text.split("\n")
    first = ctx.current_line + lines[0]
    depth, quote = _scan(first, cursor.depth, cursor.quote)
    at_statement = cursor.depth == 0 and cursor.quote is None
    seen_def = at_statement and _DEF.match(first.lstrip(" \t")) is not None
    # Typed text before the cursor: the user is inside a statement, and the suggestion
    # ends with it (unless it is a block header, whose body is then the suggestion).
    typed = ctx.current_line.strip()
    # (Not after a decorator, a comment, or a string opener such as a docstring's quotes.)
    mid_statement = bool(typed) and not typed.lstrip("rRbBuUfF").startswith(
        ("@", "#", '"', "'")
    )
    header_level: int | None = None
    for i in range(1, len(lines)):
        line = lines[i]
        if mid_statement and depth == 0 and quote is None:
            if not _COLON_END.search(first if i == 1 else lines[i - 1]):
                return i
            mid_statement = False
            header_level = cursor.level  # the header's body ends back at its level
        if depth == 0 and quote is None and line.strip():
            stripped = line.lstrip(" \t")
            indent = _indent(line)
            if indent < cursor.block_indent and stripped[0] not in _CLOSERS:
                return i
            if header_level is not None and indent <= header_level:
                return i
            if at_statement and indent == cursor.level:
                if stripped.startswith("@") and seen_def:
                    return i
                if _DEF.match(stripped):
                    if seen_def:
                        return i
                    seen_def = True
        depth, quote = _scan(line, depth, quote)
    return None


@_line_based
def stop_at_block_end(text: str, ctx: CompletionContext) -> str:
    """Stop before the first line that leaves the cursor's block (Python-like languages only).

    When the cursor line already has text before the cursor, the user is inside a
    statement: the suggestion ends where that statement does (brackets closed), unless the
    statement is a block header ending with ``:``, whose body then follows the rules below.
    The block is the cursor line's (the line's statement, when the cursor is inside brackets),
    or one level deeper when the prefix's last logical line ends with ``:``. Lines inside
    brackets or triple-quoted strings, and lines that start with a closing bracket, never end
    the block. Stop too before a second ``def``/``class`` (or its decorators) at the cursor's
    own level: at top level, or among the methods of a class body. The completion's first
    line continues the cursor's line, so its indentation is not looked at.
    """
    if not ctx.is_python or "\n" not in text:
        return text
    cut = _block_cut(text, ctx)
    return text if cut is None else "\n".join(text.split("\n")[:cut])


@_line_based
def drop_suffix_repeats(text: str, ctx: CompletionContext) -> str:
    """Drop what the model rewrote of the suffix.

    Trailing completion lines equal to the suffix's first non-blank lines go (as does
    everything from a run of the suffix's first two lines on); and closing brackets or quotes
    that the completion ends with and the cursor line's suffix starts with are not doubled.
    """
    suffix_lines = ctx.suffix.split("\n")
    wanted = [line.strip() for line in suffix_lines if line.strip()][:100]
    if wanted and text:
        lines = text.split("\n")
        skip_first = bool(ctx.current_line.strip())
        numbered = [
            (i, line.strip())
            for i, line in enumerate(lines)
            if line.strip() and not (i == 0 and skip_first)
        ]
        for j, (index, _) in enumerate(numbered):
            tail = [s for _, s in numbered[j:]]
            run = [s for _, s in numbered[j : j + 2]]
            if tail == wanted[: len(tail)] or (len(run) == 2 and run == wanted[:2]):
                text = "\n".join(lines[:index])
                break
    closing = re.match(r"[)\]}\"']*", suffix_lines[0]).group()  # type: ignore[union-attr]
    if closing and text:
        body = text.rstrip()
        for k in range(len(closing), 0, -1):
            dup = closing[:k]
            if body.endswith(dup) and _unmatched(body, dup):
                return body[: len(body) - k]
    return text


def _unmatched(body: str, dup: str) -> bool:
    """Whether every character of ``dup`` closes something the completion did not open."""
    for ch in set(dup):
        if ch in _OPENER_OF:
            if body.count(ch) - body.count(_OPENER_OF[ch]) < dup.count(ch):
                return False
        elif body.count(ch) % 2 == 0 or dup.count(ch) > 1:
            return False
    return True


@_line_based
def trim_trailing_whitespace(text: str, ctx: CompletionContext) -> str:
    """Strip trailing spaces of each line and trailing blank lines; keep leading whitespace."""
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()


PIPELINE: tuple[Rule, ...] = (
    strip_markdown_fences,
    strip_echoed_prefix,
    join_typed_whitespace,
    limit_to_line_when_midline,
    stop_at_block_end,
    drop_suffix_repeats,
    trim_trailing_whitespace,
)


def postprocess(text: str, ctx: CompletionContext) -> str:
    """Apply ``PIPELINE`` in order; the result uses the prefix's line ending."""
    text = _lf(text)
    lf_ctx = _lf_context(ctx)
    for rule in PIPELINE:
        text = rule.__wrapped__(text, lf_ctx)  # type: ignore[attr-defined]
    eol = ctx.eol
    return text.replace("\n", eol) if eol != "\n" else text


def block_complete(text: str, ctx: CompletionContext) -> bool:
    """Whether the streamed ``text`` already reaches a point where the rules would cut it.

    True once a markdown fence has closed, once the cursor is mid-line and a line break came,
    or once (Python-like languages) a line leaves the cursor's block. Never while the text can
    still be an echo of the prefix, which is removed only when complete.
    """
    text = _lf(text)
    ctx = _lf_context(ctx)
    if "```" in text and not _user_writes_fences(ctx):
        complete = text.split("\n")[:-1]  # a fence line is known only once its line ends
        fences = [i for i, line in enumerate(complete) if _FENCE.match(line)]
        if len(fences) >= 2:
            return True
        if fences:
            first = fences[0]
            tagged = _FENCE.match(complete[first]).group(1)  # type: ignore[union-attr]
            if not tagged and any(line.strip() for line in complete[:first]):
                return True  # a closing fence after code
    text = strip_echoed_prefix.__wrapped__(  # type: ignore[attr-defined]
        strip_markdown_fences.__wrapped__(text, ctx), ctx  # type: ignore[attr-defined]
    )
    text = join_typed_whitespace.__wrapped__(text, ctx)  # type: ignore[attr-defined]
    if _echo_in_progress(text, ctx.prefix):
        return False
    if ctx.suffix.split("\n", 1)[0].strip():
        return "\n" in text
    if not ctx.is_python or "\n" not in text:
        return False
    return _block_cut(text, ctx) is not None


def _echo_in_progress(text: str, prefix: str) -> bool:
    """Whether ``text`` may be the start of an echo of the prefix's last lines."""
    if len(text.strip()) < 2:
        return False
    pos = len(prefix)
    for _ in range(_SCAN_LINES):
        pos = prefix.rfind("\n", 0, pos)
        start = pos + 1
        if prefix.startswith(text, start) and start + len(text) < len(prefix):
            return True
        if pos < 0:
            break
    return False
