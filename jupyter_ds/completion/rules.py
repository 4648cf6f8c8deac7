"""Post-processing rules for raw model completions, in the style of Tabby's post-processors.

Every rule is a small named function ``(text, ctx) -> text``. ``PIPELINE`` lists them in the
order ``postprocess`` applies them:

1. ``strip_markdown_fences`` first: chat-tuned models wrap code in fences, and every later rule
   must see the code, not the fence lines.
2. ``strip_chat_prose``: chat-tuned models also talk ("Sure! Here is the code:", "This function
   adds ..."); like the fences, the talk must go before a rule reasons about the first line.
3. ``strip_echoed_prefix``: once the fences and the talk are gone the model's echo of the cursor
   line (or of the last lines) is at the very start; it must go before any rule that reasons
   about "the first line" of the completion.
4. ``join_typed_whitespace``: BPE tokenizers glue a space to the next word, so after the
   spaces a user typed the model often answers with one space too many or with a line break
   first; the code belongs where the cursor is.
5. ``indent_body_after_header``: on the empty line under a block header, a body the model
   wrote too shallow is moved to the header's level plus one, before the block rules measure it.
6. ``limit_to_line_when_midline``: with text right of the cursor only one (logical) line makes
   sense.
7. ``stop_at_block_end``: cut where the completion leaves the cursor's block.
8. ``drop_suffix_repeats``: after the cut, the tail that remains may still rewrite the suffix.
9. ``trim_trailing_whitespace`` last, so that the rules above can rely on line structure.

The rules are line based (no lexer): a tiny bracket/quote scanner is the only parsing. A
"logical line" is as in Python: physical lines joined while a bracket or a triple-quoted string
is open; a rule that keeps "the first line" keeps the first logical line. The rules accept
``\\r\\n`` input and return text with the line ending that the prefix uses; tabs count as in
Python (to the next multiple of 8) when indentation is compared.
"""

from __future__ import annotations

import bisect
import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, wraps
from itertools import pairwise
from typing import NamedTuple

__all__ = [
    "PIPELINE",
    "PYTHON_LIKE",
    "CompletionContext",
    "block_complete",
    "drop_suffix_repeats",
    "first_logical_line_count",
    "indent_body_after_header",
    "join_typed_whitespace",
    "limit_to_line_when_midline",
    "missing_body_indent",
    "open_triple_quote",
    "postprocess",
    "stop_at_block_end",
    "strip_chat_prose",
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


def _walk(line: str, depth: int, quote: str | None) -> tuple[int, str | None, bool]:
    """Bracket depth, the quote still open and whether a comment ends ``line``, starting
    from ``depth``/``quote``; strings and comments are skipped."""
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
            return depth, None, True
        if ch in "\"'":
            quote = line[i : i + 3] if line[i : i + 3] in ('"""', "'''") else ch
            i += len(quote)
            continue
        if ch in "([{":
            depth += 1
        elif ch in _CLOSERS:
            depth = max(depth - 1, 0)
        i += 1
    return depth, quote, False


def _scan(line: str, depth: int, quote: str | None) -> tuple[int, str | None]:
    """Bracket depth and open triple quote after ``line``, starting from ``depth``/``quote``.

    Skips strings and comments. A single-quoted string ends with its line.
    """
    depth, quote, _ = _walk(line, depth, quote)
    if quote is not None and len(quote) == 1:
        quote = None
    return depth, quote


def _joins_next(line: str, quote: str | None) -> bool:
    """Whether ``line`` (code, ``quote`` open after it) ends with a backslash that joins
    the next line to its logical line (``if a and \\`` / ``   b:``)."""
    return quote is None and line.endswith("\\") and not _walk(line, 0, None)[2]


class _Cursor(NamedTuple):
    depth: int  # open brackets before the cursor's line
    quote: str | None  # open triple quote before the cursor's line
    block_indent: int  # a later line indented less than this leaves the block
    level: int  # indentation of the statement the cursor is in (or stands at)


# A comment or a whole string literal (an unclosed one runs to the end): matched left to
# right, so quotes in comments and ``#`` in strings are skipped. Only the spans of triple-
# quoted strings are used: lines that begin inside one are text, not code.
_STRING_OR_COMMENT = re.compile(
    r"""\#[^\n]*"""
    r"""|(\"\"\"|\'\'\')(?:\\(?:.|\Z)|(?!\1)[^\\])*(?:\1|\Z)"""
    r"""|\"(?:\\.|[^\\"\n])*\"?|\'(?:\\.|[^\\'\n])*\'?""",
    re.DOTALL,
)


def _string_lines(text: str) -> tuple[dict[int, str], str]:
    """(line index -> its triple quote, for the lines of ``text`` that begin inside a
    triple-quoted string; the triple quote left open at the end of ``text``, or "").

    One regex over the text (8 ms for 300 KB), where scanning it line by line in Python
    would be too slow for every keystroke (prefixes: :data:`_prefix_string_lines`). Such
    lines are a docstring's or a template's: their column-0 lines are no statements, and a
    scan that starts in one must know it."""
    inside: dict[int, str] = {}
    offsets = [0]
    offsets += [m.end() for m in re.finditer("\n", text)]
    open_quote = ""
    for match in _STRING_OR_COMMENT.finditer(text):
        quote = match.group(1)
        if quote is None:
            continue
        body = match.group()
        open_quote = quote if len(body) < 6 or not body.endswith(quote) else ""
        if "\n" in body:
            first = bisect.bisect_right(offsets, match.start())  # first line starting in it
            last = bisect.bisect_right(offsets, match.end() - 1)  # ... to its last character
            inside.update(dict.fromkeys(range(first, last), quote))
    return inside, open_quote


#: :func:`_string_lines` of a prefix, which every scan and window of one request reads.
#: Short or one-off texts (a streamed completion, a suffix whose split is cached) call
#: the function itself, so that they do not push the prefixes out of this cache.
_prefix_string_lines = lru_cache(maxsize=16)(_string_lines)


_SCAN_LINES = 60  # how far back the prefix is scanned for open brackets and strings


def _scan_window(prefix: str) -> tuple[list[str], str | None]:
    """The last :data:`_SCAN_LINES` lines of ``prefix`` and the triple quote open where
    they start. A scan that starts inside a long docstring must know it, or it reads the
    closing quotes as opening ones and the code after them as text (seen in tomlkit's
    parser)."""
    lines = prefix.split("\n")
    start = max(len(lines) - _SCAN_LINES, 0)
    return lines[start:], _prefix_string_lines(prefix)[0].get(start) if start else None


@lru_cache(maxsize=8)
def _cursor(prefix: str) -> _Cursor:
    lines, quote = _scan_window(prefix)
    depth, joined = 0, False
    stmt_indent = 0  # indentation of the line that began the current logical line
    colon_indent: int | None = None  # set when the last logical line ends with ':'
    for line in lines[:-1]:
        if depth == 0 and quote is None and not joined and line.strip() and not _is_comment(
                line):
            stmt_indent = _indent(line)
        depth, quote = _scan(line, depth, quote)
        joined = _joins_next(line, quote)
        if line.strip() and not _is_comment(line) and depth == 0 and quote is None:
            colon_indent = stmt_indent if _COLON_END.search(line) else None
    before = (depth, quote)
    cur = lines[-1]
    if cur.strip():
        if depth == 0 and quote is None and not joined:
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


_NEW_NAME = re.compile(r"(\b(def|class|as|for|global|nonlocal|lambda)|[\w)\]}'\"])[ \t]+$")
_NAME_STARTS_AFTER = frozenset(" \t([{,=:.+-*/%<>!&|^~@;")
_EXPRESSION_KEYWORDS = frozenset((
    "return", "yield", "if", "elif", "while", "in", "not", "and", "or", "is", "else",
    "assert", "raise", "await", "del", "with", "from", "import", "print"))


def at_name_start(prefix: str) -> bool:
    """Whether the next characters are the start of an existing name: the cursor stands
    in code (not a string or a comment) after an operator, a bracket, a comma or the
    indentation, and not where a new name is bound (``def |``, ``as |``, ``for |``) or
    after a finished operand (``x |``: an operator or a keyword comes next)."""
    if open_triple_quote(prefix) is not None:
        return False
    line = prefix.rsplit("\n", 1)[-1]
    if line and line[-1] not in _NAME_STARTS_AFTER:
        return False
    if re.search(r"(^|[^\w.])\d[\w.]*\.$", line):
        return False  # ``1.``: a number goes on
    _, quote, comment = _walk(line, 0, None)
    if quote is not None or comment:
        return False  # in a string or a comment
    if re.match(r"[ \t]*(async[ \t]+)?def\b", line) and not re.search(r"(:|->)[ \t]*$", line):
        return False  # ``def f(a, |``: a parameter, a new name (not after ``:``/``->``)
    keyword = re.search(r"([A-Za-z_]\w*)[ \t]+$", line)
    if keyword is not None and keyword.group(1) in _EXPRESSION_KEYWORDS:
        return True  # ``return |``, ``if |``, ``in |``: an expression comes next
    return _NEW_NAME.search(line) is None


def open_triple_quote(prefix: str) -> str | None:
    """The triple quote left open before the cursor's line (the cursor is in a docstring
    or another multi-line string), else None."""
    return _cursor(prefix).quote


def first_logical_line_count(text: str, ctx: CompletionContext) -> int:
    """How many physical lines of ``text`` its first logical line takes (at least 1).

    A line break inside a bracket or a triple-quoted string that the completion opened does not
    end the statement: ``[row for row in reader`` / ``if row]`` is one line, and a rule that
    keeps only the first line must keep both. Brackets that were open before the cursor do not
    count (the suffix closes those: ``sorted(|)``), and inside a triple-quoted string that was
    open at the cursor every line break counts, as the rules have always treated them.
    """
    lines = text.split("\n")
    if len(lines) == 1:
        return 1
    cursor = _cursor(_lf(ctx.prefix))
    cur = _lf(ctx.current_line)
    base, open_quote = _scan(cur, cursor.depth, cursor.quote)
    if open_quote is not None:
        return 1
    # The first completion line continues the cursor's line: scan them together, so that a
    # string the cursor line opened (quotes, brackets in it) is read as a string.
    depth, quote = _scan(cur + lines[0], cursor.depth, cursor.quote)
    count = 1
    while count < len(lines) and (depth > base or quote is not None):
        depth, quote = _scan(lines[count], depth, quote)
        count += 1
    return count


# --------------------------------------------------------------------------------------------
# The rules

_FENCE = re.compile(r"^[ \t]*```+[ \t]*([\w+#.-]*)[ \t]*$")


@_line_based
def strip_markdown_fences(text: str, ctx: CompletionContext) -> str:
    """Keep the inside of the first ```` ``` ```` fence; drop a lone opening or closing fence.

    A fence line with a language tag, or one with nothing but blank lines or chat prose before
    it ("Here it is:"), opens a fence; a bare fence after code closes one (the model finished
    and went on to chat). Left alone where the user may be writing fences: markdown, a Python
    string (a docstring), or in another language a fence in the nearby prefix.
    """
    if "```" not in text or _user_writes_fences(ctx):
        return text
    lines = text.split("\n")
    fences = [i for i, line in enumerate(lines) if _FENCE.match(line)]
    if fences:
        first = fences[0]
        tagged = bool(_FENCE.match(lines[first]).group(1))  # type: ignore[union-attr]
        if _code_before(lines[:first]) and not tagged and len(fences) == 1:
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


def _code_before(lines: list[str]) -> bool:
    """Whether ``lines`` (those before a bare fence) hold code, not just blanks or chat prose."""
    return any(line.strip() and not _is_prose(line) for line in lines)


def _user_writes_fences(ctx: CompletionContext) -> bool:
    if ctx.language.lower() in {"markdown", "md"}:
        return True
    if not ctx.is_python:
        return "```" in ctx.prefix[-4000:]
    cursor = _cursor(ctx.prefix)
    return _scan(ctx.current_line, cursor.depth, cursor.quote)[1] is not None


#: Words a chat answer's sentences start with, capitalised as at the start of a sentence.
_PROSE_OPENERS = (
    "Sure", "Certainly", "Absolutely", "Okay", "Alright", "Sorry", "Here", "This", "That",
    "These", "The", "Note", "I", "You", "We", "Let", "It", "In", "To", "Below", "Above",
    "Explanation", "Now", "First", "Finally",
)  # fmt: skip
_PROSE_START = re.compile(rf"(?:{'|'.join(_PROSE_OPENERS)})(?:'[a-z]+)?(?=[\s!,.:]|$)")
#: Openings that are chat even before the sentence is complete (so never shown mid-stream).
_CHAT_OPENING = re.compile(
    r"(?:Sure|Certainly|Absolutely|Okay|Alright|Sorry)(?:[!,.]|$)|Here(?:'s| is| are)\b"
)
_PLAIN_WORD = re.compile(r"[A-Za-z][A-Za-z']*")
# Words that may stand between two names in code: Python's keywords, and a few of JavaScript's.
_CODE_WORDS = frozenset(keyword.kwlist + keyword.softkwlist) | {"of", "instanceof", "typeof"}
#: Languages in which the user writes prose: nothing there is chat to strip.
_PROSE_LANGUAGES = frozenset({"markdown", "md", "text", "plaintext", "txt", "rst", "latex", "tex"})


def _is_prose(line: str) -> bool:
    """Whether ``line`` is a sentence of chat, not code: a small heuristic that errs to code.

    Chat openings (``Sure``, ``Certainly!``, ``Here is``) are prose as they stand. Otherwise the
    line must start with a capitalised word that chat answers start with (``Here``, ``This``,
    ``The``, ``Note``, ``I``, ``You``, ...), and then either
    - have ``!`` right after that word (``Note!``), or
    - end with ``:`` or ``.`` and hold no comment (``Here is the code:``), or
    - hold two plain words in a row, neither a keyword (``The answer``, ``adds two``).
    None of these can be code: a name is never followed by ``!``, a statement never ends with
    ``.`` and a header never starts with a capitalised word, and two names side by side are a
    syntax error unless a keyword joins them (``I if flag else J`` stays code). So ``I = 1``,
    ``Note(text)``, ``Note: str = ""``, ``This is None`` are left alone.
    """
    stripped = line.strip()
    if _CHAT_OPENING.match(stripped):
        return True
    start = _PROSE_START.match(stripped)
    if start is None:
        return False
    if stripped[start.end() : start.end() + 1] == "!":
        return True
    if stripped[-1] in ":." and "#" not in stripped:
        return True
    words = stripped.split()
    return any(
        _PLAIN_WORD.fullmatch(a) is not None
        and _PLAIN_WORD.fullmatch(b) is not None
        and a not in _CODE_WORDS
        and b not in _CODE_WORDS
        for a, b in pairwise(words)
    )


def _user_writes_prose(ctx: CompletionContext) -> bool:
    """Whether the cursor is where the user writes prose: a comment, a string, a text file."""
    if ctx.language.lower() in _PROSE_LANGUAGES:
        return True
    cur = ctx.current_line
    if not ctx.is_python and re.search(r"//|/\*|^\s*(\*|--)", cur):
        return True  # a comment in a C-like or SQL-like language
    cursor = _cursor(ctx.prefix)
    # An opening bracket put at the cursor counts only in code: in a string (single- or
    # triple-quoted) or after a "#" the scanner skips it.
    depth = _scan(cur, cursor.depth, cursor.quote)[0]
    return _scan(cur + "(", cursor.depth, cursor.quote)[0] == depth


def _prose_bounds(lines: list[str], ctx: CompletionContext) -> tuple[int, int]:
    """``(start, end)``: ``lines[start:end]`` is the code between leading and trailing prose.

    Leading prose lines and the blank lines around them go; when the cursor's line holds code,
    the lines after leading prose cannot continue it, and nothing is left. The first prose
    line after code ends the code (the model went on to explain it); lines inside a bracket or
    triple-quoted string, as the scanner sees them from the cursor on, are never prose.
    """
    start, prose_seen = 0, False
    while start < len(lines) and (_is_prose(lines[start]) or not lines[start].strip()):
        prose_seen = prose_seen or bool(lines[start].strip())
        start += 1
    if not prose_seen:
        start = 0
    elif ctx.current_line.strip():
        return len(lines), len(lines)
    cursor = _cursor(ctx.prefix)
    depth, quote = cursor.depth, cursor.quote
    for i in range(start, len(lines)):
        line = lines[i]
        if i > start and depth == 0 and quote is None and _is_prose(line):
            return start, i
        depth, quote = _scan(ctx.current_line + line if i == start else line, depth, quote)
    return start, len(lines)


@_line_based
def strip_chat_prose(text: str, ctx: CompletionContext) -> str:
    """Drop the sentences a chat-tuned model writes around its code; keep only the code.

    Leading prose (``Sure! Here is the code:``) and the blank lines after it go, and so does
    everything from the first sentence after the code on (``This function adds ...``). A
    completion that is only prose becomes empty rather than being shown, and validation would
    otherwise keep a name from it (``Sure``). Which lines are prose is decided by ``_is_prose``.
    Left alone where the user writes prose: a comment, a string or docstring, a text file.
    """
    if not text.strip() or _user_writes_prose(ctx):
        return text
    lines = text.split("\n")
    start, end = _prose_bounds(lines, ctx)
    if (start, end) == (0, len(lines)):
        return text
    return "\n".join(lines[start:end])


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


def _leading(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


@lru_cache(maxsize=8)
def _header_above(prefix: str) -> tuple[str, str] | None:
    """``(indentation, unit)`` of the block header the prefix ends with, else None.

    The prefix's last logical line must end with ``:`` (brackets and strings closed), and the
    cursor's line must hold nothing but indentation. The unit is what the file adds after a
    header: the last header-to-body step in the scanned prefix (4 spaces or a tab, say); with
    none, a tab if the header is indented with tabs, else 4 spaces.
    """
    if prefix.rpartition("\n")[2].strip():
        return None
    lines, quote = _scan_window(prefix)
    depth, joined = 0, False
    stmt = ""  # indentation of the line that began the current logical line
    header: str | None = None  # set while the last logical line ends with ':'
    unit: str | None = None
    for line in lines[:-1]:
        if depth == 0 and quote is None and not joined and line.strip() and not _is_comment(
                line):
            stmt = _leading(line)
            step = stmt[len(header) :] if header is not None else ""
            if step and stmt.startswith(header or "") and len(set(step)) == 1:
                unit = step
        depth, quote = _scan(line, depth, quote)
        joined = _joins_next(line, quote)
        if line.strip() and not _is_comment(line) and depth == 0 and quote is None:
            header = stmt if _COLON_END.search(line) else None
    if header is None or depth or quote is not None:
        return None
    return header, unit or ("\t" if "\t" in header else "    ")


def missing_body_indent(ctx: CompletionContext) -> str:
    """The indentation a blank cursor line lacks to stand in the body of the header above.

    At column 0 after ``if x > hi:`` the model is asked to continue from a place where no
    body starts; the completion service puts this indentation at the end of the prompt's
    prefix (and in front of the answer), so the model sees the cursor where the body goes.
    """
    if not ctx.is_python or ctx.suffix.split("\n", 1)[0].strip():
        return ""
    found = _header_above(ctx.prefix)
    if found is None:
        return ""
    target, cur = found[0] + found[1], ctx.current_line
    if len(cur) >= len(target) or not target.startswith(cur):
        return ""
    return target[len(cur) :]


def _body_is_relative(lines: list[str], first: int, base: int, target: int) -> bool:
    """Whether ``lines[first:]`` were written as a block of their own, from the column ``base``.

    So they are when no later statement line already reaches the body's level ``target`` and
    each one that is indented deeper than the statement before follows a header (``if a:`` /
    ``    b()``). Otherwise the model indented the later lines for the file and only forgot
    the first line's indentation (``return hi`` / ``    return x``, the suffix's dedent).
    """
    depth, quote = 0, None
    previous, after_header = base, False
    for i in range(first, len(lines)):
        line = lines[i]
        if i > first and depth == 0 and quote is None and line.strip() and not _is_comment(line):
            indent = _indent(line)
            if indent >= target or (indent > previous and not after_header):
                return False
            previous = indent
        depth, quote = _scan(line, depth, quote)
        if line.strip() and not _is_comment(line) and depth == 0 and quote is None:
            after_header = _COLON_END.search(line) is not None
    return True


@_line_based
def indent_body_after_header(text: str, ctx: CompletionContext) -> str:
    """Indent a body written too shallow under the block header the prefix ends with.

    At column 0 of the empty line after ``if x > hi:`` (the editor did not indent), a model
    often answers ``return hi``: it reads the cursor as being after the indentation. Without a
    body at the header's level plus one the code cannot parse, and validation threw the whole
    answer away. The first code line gets the header's indentation plus the file's unit (see
    ``_header_above``); later lines get the same shift when the model wrote the block from
    column 0, else they keep their own indentation (``_body_is_relative``). Lines inside a
    triple-quoted string are never touched: that would change the string.
    """
    if not ctx.is_python or ctx.suffix.split("\n", 1)[0].strip():
        return text
    found = _header_above(ctx.prefix)
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if found is None or first is None:
        return text
    header, unit = found
    target, cur = header + unit, ctx.current_line if first == 0 else ""
    base = cur + _leading(lines[first])  # the first code line's indentation in the file
    if _indent(base) >= _indent(target) or not target.startswith(cur):
        return text
    shift_all = _body_is_relative(lines, first, _indent(base), _indent(target))
    lines[first] = target[len(cur) :] + lines[first].lstrip(" \t")
    depth, quote = _scan(lines[first], 0, None)
    for i in range(first + 1, len(lines)):
        line = lines[i]
        if shift_all and quote is None and line.strip() and line.startswith(base):
            lines[i] = target + line[len(base) :]
        depth, quote = _scan(line, depth, quote)
    return "\n".join(lines)


@_line_based
def limit_to_line_when_midline(text: str, ctx: CompletionContext) -> str:
    """With non-blank text right of the cursor, keep only the completion's first logical line.

    The suffix follows on the cursor's line, so the completion cannot go on to other
    statements; but a line break inside a bracket or triple-quoted string that the completion
    opened does not end its line (``sorted([row for row in reader`` / ``if row])``), and
    cutting there left an unclosed bracket that validation then threw away whole.
    """
    if ctx.suffix.split("\n", 1)[0].strip():
        return "\n".join(text.split("\n")[: first_logical_line_count(text, ctx)])
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
    block_indent = cursor.block_indent
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
            if indent < block_indent and stripped[0] not in _CLOSERS:
                if header_level is None and _try_needs(stripped, indent, ctx.suffix):
                    block_indent = indent + 1  # the handler and its body are the answer's
                    depth, quote = _scan(line, depth, quote)
                    continue
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


_HANDLER = re.compile(r"(except|finally)\b")
_CLAUSE = re.compile(r"(except|finally|else)\b")


def _try_needs(stripped: str, indent: int, suffix: str) -> bool:
    """Whether a completion line ``except ...:``/``finally:`` at ``indent`` completes a
    ``try`` the file leaves without one: the suffix's next line at that level or less is
    no clause of it. A ``try:`` body cut before its handler cannot parse, and the answer
    would be lost whole; where the suffix already has the handler, the cut stays."""
    if _HANDLER.match(stripped) is None:
        return False
    for line in suffix.split("\n")[1:]:
        if not line.strip() or _is_comment(line) or _indent(line) > indent:
            continue
        return not (_indent(line) == indent and _CLAUSE.match(line.lstrip(" \t")))
    return True


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
    strip_chat_prose,
    strip_echoed_prefix,
    join_typed_whitespace,
    indent_body_after_header,
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

    True once a markdown fence has closed, once a whole line of chat prose follows code, once
    the cursor is mid-line and a line break came after the first logical line, or once
    (Python-like languages) a line leaves the cursor's block. Never while the text can still be
    an echo of the prefix, which is removed only when complete. The text goes through the same
    rules as in ``postprocess`` before the cut is looked for, so that both cut at one place.
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
            if not tagged and _code_before(complete[:first]):
                return True  # a closing fence after code
    text = strip_markdown_fences.__wrapped__(text, ctx)  # type: ignore[attr-defined]
    if text.strip() and not _user_writes_prose(ctx):
        lines = text.split("\n")
        start, end = _prose_bounds(lines, ctx)
        # A prose line is known only once its line ends ("Note." may go on as "Note.x").
        if end < len(lines) - 1 and "\n".join(lines[start:end]).strip():
            return True  # the model finished the code and went on to explain it
        text = "\n".join(lines[start:])
    text = strip_echoed_prefix.__wrapped__(text, ctx)  # type: ignore[attr-defined]
    text = join_typed_whitespace.__wrapped__(text, ctx)  # type: ignore[attr-defined]
    text = indent_body_after_header.__wrapped__(text, ctx)  # type: ignore[attr-defined]
    if _echo_in_progress(text, ctx.prefix):
        return False
    if ctx.suffix.split("\n", 1)[0].strip():
        return first_logical_line_count(text, ctx) < text.count("\n") + 1
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
