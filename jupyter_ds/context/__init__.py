"""Context for completion beyond the text around the cursor.

A completion's prompt holds the cursor's file (or cell) and, for notebooks, the cells
above it. Sources here add what the text alone does not say: the live kernel's names and
data (:mod:`jupyter_ds.context.kernel`) and the rest of the repository
(:mod:`jupyter_ds.context.repository`). Each source is a :class:`ContextSource`; the
completion service asks every enabled source at once (:class:`ContextGatherer`), each
within its own time budget, and puts what came back before the code, within a token
budget, as comments in the file's language. A source that is slow, fails or has nothing
adds nothing: the completion never waits on context past its budget.

What was used is reported in the answer's ``data.context`` (:meth:`Gathered.report`), so
a user can see why a suggestion was made.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

CountTokens = Callable[[str], int]

# Kernel languages whose names the kernel source describes and grounding checks.
PYTHON_LANGUAGES = frozenset(("python", "ipython", "python3"))
IDENTIFIER = re.compile(r"[^\W\d]\w*")  # a Python identifier, Unicode letters included
# What the completion service gives context at its default settings, min(context_tokens
# 384, (max_prompt_tokens 1024 - 8) // 3): fine-tuning builds its blocks within it.
DEFAULT_CONTEXT_TOKENS = 338


@dataclass(frozen=True)
class ContextQuery:
    """What a source may look at: the request's file and the text around the cursor."""

    path: str | None
    prefix: str
    suffix: str
    language: str
    cell_id: str | None = None
    user: str | None = None


@dataclass
class ContextBlock:
    """What one source contributes: ``text`` (plain, unescaped; the service comments it
    out and escapes it) and ``used`` (what went into it: names, ``file:symbol``...)."""

    source: str
    text: str
    used: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # what was left out, counted
    # What certainly exists where the code runs (the kernel's names and columns), for
    # checking the suggestion (:mod:`jupyter_ds.context.grounding`); None: not known.
    known: Any = None
    # Names a suggestion at a name's start may well begin with (the definitions this
    # block shows): the completion service nudges the first token toward them.
    starts: list[str] = field(default_factory=list)


class ContextSource(Protocol):
    """One kind of context. ``gather`` returns None when it has nothing for this cursor
    (or is off for it); it must not raise for bad repositories or kernels, only log."""

    name: str
    timeout_s: float

    async def gather(self, query: ContextQuery, budget_tokens: int,
                     count: CountTokens) -> ContextBlock | None: ...


@dataclass
class Gathered:
    """The blocks of one completion, and per source what happened (for ``data.context``)."""

    blocks: list[ContextBlock] = field(default_factory=list)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)

    def text(self) -> str:
        return "".join(b.text for b in self.blocks if b.text)

    def known(self) -> tuple[str, Any] | None:
        """The first block's ``known`` names, with its source's name; None if none."""
        return next(((b.source, b.known) for b in self.blocks if b.known is not None), None)

    def starts(self) -> list[str]:
        """Every block's :attr:`ContextBlock.starts`, once each, in block order."""
        return list(dict.fromkeys(n for b in self.blocks for n in b.starts))

    def note(self, source: str, **facts: Any) -> None:
        """Add ``facts`` to ``source``'s entry of the report (what it changed)."""
        if source in self.status:
            self.status[source].update(facts)

    def report(self, count: CountTokens) -> list[dict[str, Any]]:
        """``data.context``: one entry per source asked, with its tokens and what it used
        (or why it gave nothing)."""
        out = []
        by_source = {b.source: b for b in self.blocks}
        for name, status in self.status.items():
            block = by_source.get(name)
            entry: dict[str, Any] = {"source": name, **status}
            if block is not None and block.text:
                entry["tokens"] = count(block.text)
                entry["used"] = list(block.used)
                if block.skipped:
                    entry["skipped"] = dict(block.skipped)
            else:
                entry.setdefault("tokens", 0)
            out.append(entry)
        return out


class ContextGatherer:
    """Asks every source at once, each bounded by its ``timeout_s``."""

    def __init__(self, sources: Sequence[ContextSource] = ()) -> None:
        self.sources = list(sources)

    async def gather(self, query: ContextQuery, budget_tokens: int,
                     count: CountTokens) -> Gathered:
        gathered = Gathered()
        if not self.sources or budget_tokens <= 0:
            return gathered

        async def one(source: ContextSource) -> None:
            started = time.monotonic()
            try:
                block = await asyncio.wait_for(
                    source.gather(query, budget_tokens, count), source.timeout_s)
            except asyncio.TimeoutError:
                gathered.status[source.name] = {"state": "timeout",
                                                "ms": _ms(started)}
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a source must never fail the completion
                log.warning("jupyter-ds: %s context failed: %s", source.name, exc,
                            exc_info=True)
                gathered.status[source.name] = {"state": "error", "ms": _ms(started)}
                return
            state = "used" if block is not None and block.text else "empty"
            gathered.status[source.name] = {"state": state, "ms": _ms(started)}
            if block is not None and block.text:
                gathered.blocks.append(block)

        await asyncio.gather(*(one(s) for s in self.sources))
        # A stable order in the prompt: the sources' order, not their finishing order.
        order = {s.name: i for i, s in enumerate(self.sources)}
        gathered.blocks.sort(key=lambda b: order.get(b.source, len(order)))
        return gathered


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


COMMENT_PREFIX = {"python": "# ", "r": "# ", "julia": "# ", "shell": "# ", "bash": "# "}


def as_comments(text: str, language: str) -> str:
    """``text`` as line comments of ``language`` (``# `` by default), ending in a newline."""
    mark = COMMENT_PREFIX.get(language.lower(), "# ")
    lines = text.rstrip("\n").split("\n")
    return "".join(f"{mark}{line}".rstrip() + "\n" for line in lines)
