"""Fill-in-the-middle training examples, drawn the way cursors see code.

A file is cut at two points into prefix, middle and suffix. Where the cut falls is drawn
from a mix of span kinds (:data:`SPAN_WEIGHTS`): the rest of a line from its indentation
(an editor's cursor on a fresh line), the rest of a line from inside it, a few whole
lines, AST-aware spans (a statement block's body, a call's arguments, the right-hand
side of an assignment or a ``return``), a random character span, and an empty middle at
the end of a line, so that the model learns when to offer nothing.

Each part is escaped (user text never becomes a control token: see
:meth:`ds_engine.templates.PromptTemplate.escape`) and tokenized on its own, exactly as
the engine tokenizes a prompt whose parts are separated by control tokens, so a prefix
that ends in indentation or inside a word is seen in training as it is at inference.
The example is laid out in PSM or SPM order with the markers of a
:class:`~ds_engine.templates.FimFormat`; the loss covers only the middle and the token
that ends it.
"""

from __future__ import annotations

import ast
import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ds_engine.templates import FimFormat

from jupyter_ds.context import DEFAULT_CONTEXT_TOKENS

if TYPE_CHECKING:
    from jupyter_ds.finetune.context import TrainingContext

IGNORE_INDEX = -100

SPAN_WEIGHTS: dict[str, float] = {
    "line_rest": 0.45,  # cursor at a line's indentation, the rest of the line
    "line_inside": 0.17,  # cursor inside a line, the rest of the line
    "lines": 0.10,  # two to four whole lines from the first one's indentation
    "ast": 0.15,  # a block body, call arguments, the right-hand side of = or return
    "random": 0.05,  # any character span
    "empty": 0.08,  # nothing to add at the end of a line
}


@dataclass(frozen=True)
class FimSettings:
    """Sizes (in tokens) and mixes of the examples."""

    max_prefix_tokens: int = 256
    max_suffix_tokens: int = 64
    max_middle_tokens: int = 64
    prefix_lines: int = 60  # as many lines before the cursor are tokenized, at most
    suffix_lines: int = 20
    spm_rate: float = 0.5  # share of SPM examples (the rest PSM)
    filename_rate: float = 0.3  # share of prefixes that start with "<filename>path\n"
    # Repository context (finetune/context.py): the share of examples at a cross-file
    # cursor (always with context), the share of the others that get a context block,
    # and the block's budget (the completion service's at its defaults).
    cross_file_rate: float = 0.0
    context_rate: float = 0.0
    max_context_tokens: int = DEFAULT_CONTEXT_TOKENS


@dataclass
class Example:
    """Token ids and labels of one example, and where it came from (for tests and logs)."""

    input_ids: list[int]
    labels: list[int]
    kind: str
    order: str
    path: str
    middle: str

    @property
    def supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


# --------------------------------------------------------------------------- spans


class SpanSampler:
    """Draws (start, end) character spans of one file; parses it once for AST spans."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.line_starts = [0]
        for i, ch in enumerate(text):
            if ch == "\n":
                self.line_starts.append(i + 1)
        self._ast: list[tuple[int, int]] | None = None

    # Line i (0-based) spans [start, end) without its line break.
    def line(self, i: int) -> tuple[int, int]:
        start = self.line_starts[i]
        end = self.text.find("\n", start)
        return start, len(self.text) if end == -1 else end

    @property
    def n_lines(self) -> int:
        return len(self.line_starts)

    def code_lines(self) -> list[int]:
        return [i for i in range(self.n_lines) if self.text[slice(*self.line(i))].strip()]

    def ast_spans(self) -> list[tuple[int, int]]:
        if self._ast is None:
            self._ast = _ast_spans(self.text, self.line_starts)
        return self._ast

    def draw(self, kind: str, rng: random.Random) -> tuple[int, int] | None:
        lines = self.code_lines()
        if not lines:
            return None
        if kind == "ast":
            spans = self.ast_spans()
            return rng.choice(spans) if spans else None
        if kind == "random":
            a = rng.randrange(len(self.text))
            return a, min(len(self.text), a + rng.randint(1, 120))
        i = rng.choice(lines)
        start, end = self.line(i)
        content = self.text[start:end]
        indent = start + len(content) - len(content.lstrip())
        if kind == "line_rest":
            return indent, end
        if kind == "line_inside":
            if end - indent < 2:
                return None
            return rng.randint(indent + 1, end - 1), end
        if kind == "empty":
            return end, end
        if kind == "lines":
            k = rng.randint(2, 4)
            last = min(self.n_lines - 1, i + k - 1)
            return indent, self.line(last)[1]
        raise ValueError(f"unknown span kind {kind!r}")


def _ast_spans(text: str, line_starts: Sequence[int]) -> list[tuple[int, int]]:
    """Character spans of block bodies, call arguments and assigned/returned values."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    lines = text.split("\n")

    def offset(lineno: int, col: int) -> int:
        # ast columns count UTF-8 bytes.
        line = lines[lineno - 1]
        return line_starts[lineno - 1] + len(line.encode()[:col].decode("utf-8", "replace"))

    def span(node: Any) -> tuple[int, int] | None:
        if getattr(node, "end_lineno", None) is None:
            return None
        return offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset)

    spans: list[tuple[int, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Return)):
            value = node.value
            if value is not None and (s := span(value)):
                spans.append(s)
        elif isinstance(node, ast.Call) and (node.args or node.keywords):
            parts = [span(a) for a in (*node.args, *node.keywords)]
            parts = [p for p in parts if p]
            if parts:
                spans.append((min(p[0] for p in parts), max(p[1] for p in parts)))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(node, ast.stmt):
            first, last = span(body[0]), span(body[-1])
            if first and last and body[0].lineno > node.lineno:
                spans.append((first[0], last[1]))
    return [(a, b) for a, b in spans if 0 <= a < b <= len(text)]


# --------------------------------------------------------------------------- examples


class ExampleBuilder:
    """Turns (file, span) into token ids for one FIM format and tokenizer."""

    def __init__(
        self,
        tokenizer: Any,
        fim: FimFormat,
        escape: Callable[[str], str],
        end_token: str,
        settings: FimSettings | None = None,
        filename_token: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.fim = fim
        self.escape = escape
        self.settings = settings or FimSettings()
        pre, suf, mid = fim.sentinels
        self.ids = {name: self._token_id(t) for name, t in
                    (("pre", pre), ("suf", suf), ("mid", mid), ("end", end_token))}
        self.filename_id = self._token_id(filename_token) if filename_token else None

    def _token_id(self, token: str) -> int:
        ids = self.tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{token!r} is not a single token of this tokenizer")
        return ids[0]

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        return self.tokenizer(self.escape(text), add_special_tokens=False)["input_ids"]

    def build(
        self, path: str, text: str, start: int, end: int, kind: str, rng: random.Random,
        context: str = "",
    ) -> Example | None:
        """The example with ``text[start:end]`` as middle, or None if it does not fit.

        ``context`` (commented repository context) goes between the filename line and
        the prefix, where :meth:`ds_engine.templates.PromptTemplate.completion_prompt`
        puts it."""
        s = self.settings
        middle = text[start:end]
        middle_ids = self.encode(middle)
        if len(middle_ids) > s.max_middle_tokens:
            return None
        before = text[:start]
        cut = _nth_from_end(before, "\n", s.prefix_lines)
        prefix_ids = self.encode(before[cut:])[-s.max_prefix_tokens :]
        after = text[end:]
        stop = _nth(after, "\n", s.suffix_lines + 1)
        suffix_ids = self.encode(after[:stop])[: s.max_suffix_tokens]
        if context:
            prefix_ids = [*self.encode(context)[: s.max_context_tokens], *prefix_ids]
        if self.filename_id is not None and rng.random() < s.filename_rate:
            prefix_ids = [self.filename_id, *self.encode(path + "\n"), *prefix_ids]
        order = "spm" if rng.random() < s.spm_rate else "psm"
        ids = self.ids
        if order == "spm":
            layout = [ids["pre"], ids["suf"], *suffix_ids, ids["mid"], *prefix_ids]
        else:
            layout = [ids["pre"], *prefix_ids, ids["suf"], *suffix_ids, ids["mid"]]
        target = [*middle_ids, ids["end"]]
        return Example(
            input_ids=layout + target,
            labels=[IGNORE_INDEX] * len(layout) + target,
            kind=kind,
            order=order,
            path=path,
            middle=middle,
        )


def _nth_from_end(text: str, ch: str, n: int) -> int:
    """Index just after the n-th ``ch`` from the end (0 if there are fewer)."""
    pos = len(text)
    for _ in range(n):
        pos = text.rfind(ch, 0, pos)
        if pos == -1:
            return 0
    return pos + 1


def _nth(text: str, ch: str, n: int) -> int:
    """Index of the n-th ``ch`` from the start (len(text) if there are fewer)."""
    pos = -1
    for _ in range(n):
        pos = text.find(ch, pos + 1)
        if pos == -1:
            return len(text)
    return pos


class ExampleStream:
    """An endless, seeded stream of examples over a list of files.

    Files are drawn in proportion to their size (a big module holds more cursors), the
    span kind by :data:`SPAN_WEIGHTS`. ``state()``/``restore()`` let a resumed run carry on
    with the same random sequence.
    """

    def __init__(
        self,
        files: Sequence[Any],
        builder: ExampleBuilder,
        seed: int = 0,
        weights: dict[str, float] | None = None,
        context: TrainingContext | None = None,
    ) -> None:
        if not files:
            raise ValueError("no files to draw examples from")
        self.files = list(files)
        self.builder = builder
        self.rng = random.Random(seed)
        w = weights or SPAN_WEIGHTS
        self.kinds, self.kind_weights = list(w), list(w.values())
        sizes = [max(1, len(f.text)) for f in self.files]
        self.cumulative = []
        total = 0
        for size in sizes:
            total += size
            self.cumulative.append(total)
        self.samplers: dict[int, SpanSampler] = {}
        self.context = context

    def _sampler(self, index: int) -> SpanSampler:
        sampler = self.samplers.get(index)
        if sampler is None:
            if len(self.samplers) > 256:
                self.samplers.clear()
            sampler = self.samplers[index] = SpanSampler(self.files[index].text)
        return sampler

    def next(self) -> Example:
        s = self.builder.settings
        for _ in range(1000):
            index = bisect.bisect_right(self.cumulative, self.rng.randrange(self.cumulative[-1]))
            f = self.files[index]
            span, kind, with_context = None, "cross_file", False
            if self.context is not None and self.rng.random() < s.cross_file_rate:
                span = self.context.cross_file_cursor(
                    f.path, f.text, self._sampler(index).line_starts, self.rng)
                with_context = span is not None
            if span is None:
                kind = self.rng.choices(self.kinds, self.kind_weights)[0]
                span = self._sampler(index).draw(kind, self.rng)
                if span is None:
                    continue
                with_context = self.context is not None and self.rng.random() < s.context_rate
            context = ""
            if with_context:
                context = self.context.block(f.path, f.text[: span[0]], f.text[span[1] :])
            example = self.builder.build(f.path, f.text, span[0], span[1], kind, self.rng,
                                         context=context)
            if example is not None:
                return example
        raise ValueError("could not draw an example from these files (all too short or long)")

    def state(self) -> Any:
        return self.rng.getstate()

    def restore(self, state: Any) -> None:
        self.rng.setstate(_tuplify(state))


def _tuplify(value: Any) -> Any:
    # random's state goes through JSON as lists; setstate wants tuples.
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
