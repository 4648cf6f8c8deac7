"""Repository context in training examples, built by the server's own context source.

A model that never saw a context block before its prefix does not use one: with the
definitions of the typed name in its prompt at half the cross-file cursors, the shipped
adapter's exact match did not move (``benchmarks/results/context_repository.md``). So
examples get the block a completion would get, from :class:`RepositoryContext` itself,
rendered as the completion service renders it (:func:`jupyter_ds.context.as_comments`),
within the same token budget.

The "repository" of a training file is the package it lies in, its first folder under
the corpus root; the files directly under the root form one more. Only training files
are indexed (copied into a temporary folder per package), so held-out and excluded files
never reach an example, not even as context. Parsing runs inline
(:class:`InlineWorker`): an example's context is the same however fast the run goes,
and a resumed run draws the same examples.

Cross-file cursors (:meth:`TrainingContext.cross_file_cursor`) stand before the first
name of a line whose definition in another file the line's imports reach, the cursor
the context is for; the middle is the rest of the line.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jupyter_ds.context import (
    DEFAULT_CONTEXT_TOKENS,
    IDENTIFIER,
    ContextQuery,
    as_comments,
)
from jupyter_ds.context.repository import (
    IndexLimits,
    InlineWorker,
    RepositoryContext,
    RepositoryIndex,
)

log = logging.getLogger(__name__)

# Lines that start like these are not cursors for a name defined elsewhere.
_NOT_A_USE = ("import ", "from ", "def ", "class ", "async def ", "@", "#", '"', "'")


def package_of(path: str) -> str:
    """The training "repository" of ``path``: its first folder ("" at the root)."""
    return path.split("/", 1)[0] if "/" in path else ""


class TrainingContext:
    """Repository context blocks and cross-file cursors for training files."""

    def __init__(self, files: Sequence[Any], count: Callable[[str], int],
                 budget_tokens: int = DEFAULT_CONTEXT_TOKENS,
                 limits: IndexLimits | None = None) -> None:
        self.count = count
        self.budget_tokens = budget_tokens
        self.limits = limits or IndexLimits()
        self.packages: dict[str, list[Any]] = {}
        for f in files:
            if f.path.endswith(".py"):
                self.packages.setdefault(package_of(f.path), []).append(f)
        self._sources: dict[str, RepositoryContext | None] = {}
        self._tmp: Path | None = None

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _source(self, package: str) -> RepositoryContext | None:
        """The package's context source, indexed on first use; None for a lone file."""
        if package in self._sources:
            return self._sources[package]
        members = self.packages.get(package, [])
        source = None
        if len(members) > 1:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="jupyter-ds-train-context-"))
            root = self._tmp / f"p{len(self._sources)}"
            for f in members:
                target = root / f.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f.text, encoding="utf-8")
            index = RepositoryIndex(root, self.limits)
            stats = index.refresh()
            log.info("training context for %r: %d files indexed, skipped %s",
                     package or "(root)", stats.files, stats.skipped)
            source = RepositoryContext(index, worker=InlineWorker())
        self._sources[package] = source
        return source

    def _query(self, path: str, prefix: str, suffix: str) -> ContextQuery:
        return ContextQuery(path=path, prefix=prefix, suffix=suffix, language="python")

    def block(self, path: str, prefix: str, suffix: str) -> str:
        """The commented block the completion service puts before this cursor's prefix,
        or "" when the repository has nothing for it."""
        source = self._source(package_of(path)) if path.endswith(".py") else None
        if source is None:
            return ""
        found = source.collect(self._query(path, prefix, suffix), self.budget_tokens,
                               self.count)
        if found is None or not found.text:
            return ""
        return as_comments(found.text, "python")

    def cross_file_cursor(self, path: str, text: str, line_starts: Sequence[int],
                          rng: random.Random, tries: int = 32) -> tuple[int, int] | None:
        """``(start, end)``: the rest of a line from its first name that another file
        defines (as this file's imports reach it), or None after ``tries`` lines."""
        source = self._source(package_of(path)) if path.endswith(".py") else None
        if source is None or not line_starts:
            return None
        for _ in range(tries):
            i = rng.randrange(len(line_starts))
            start = line_starts[i]
            end = text.find("\n", start)
            end = len(text) if end == -1 else end
            line = text[start:end]
            body = line.lstrip()
            if not body or body.startswith(_NOT_A_USE) or len(body) < 4:
                continue
            names = source.defined_names(self._query(path, text[:start], text[end:]))
            if not names:
                continue
            for match in IDENTIFIER.finditer(line):
                if match.group(0) in names:
                    if end - (start + match.start()) >= 4:
                        return start + match.start(), end
                    break
        return None
