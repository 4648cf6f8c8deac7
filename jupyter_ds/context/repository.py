"""Repository context: what the rest of the repository says about the cursor's code.

Two kinds of text, as the best assistants use outside notebooks:

* **imported local modules**: the signatures and docstrings of the names the cursor's
  file imports from modules under the root (resolved by path, parsed with libcst, never
  imported), the names used nearest the cursor first;
* **similar snippets**: windows of other files ranked by BM25 against the identifiers of
  the last lines before the cursor (what Tabby and Copilot's neighbouring tabs do).

The index lives in memory and is built and refreshed in the background
(:class:`RepositoryIndex`, on one daemon thread): a completion uses it as it is and
never waits for it (the first completion in a repository may get nothing while the first
indexing runs). A refresh lists the files again and re-reads only those whose size or
mtime changed; it runs at most every ``refresh_s`` seconds, and only when completions ask.

Memory is bounded by two documented limits, enforced when files are admitted:
``max_files`` (5,000 Python files) and ``max_total_bytes`` (10 MB of source); a file
over ``max_file_bytes`` (1 MB) is skipped. The index holds each admitted file's text and
its BM25 postings, about 7 bytes of memory per byte of source (8 once every module is
parsed; measured on this repository), so at most about 80 MB at the defaults; libcst
results are kept only for files some cursor imported. What is left out is counted by
reason and reported in ``data.context`` (``skipped``), and a log line says once that a
limit was reached.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_ds.context import ContextBlock, ContextQuery, CountTokens
from jupyter_ds.context.bm25 import BM25Index, ChunkTerms, Hit, chunk_file, identifiers
from jupyter_ds.context.imports import (
    import_at_cursor,
    parse_imports,
    resolve_module,
    resolve_submodule,
)
from jupyter_ds.context.repo_files import list_python_files
from jupyter_ds.context.symbols import ModuleSymbols, module_symbols
from jupyter_ds.paths import normalise_relative

log = logging.getLogger(__name__)

MAX_MODULE_NAMES = 64  # of one module imported whole (``import pkg.mod``)
MAX_WANTED = 256  # imported names looked up for one completion
MAX_PIECES = 48  # names and snippets weighed for one completion
MEMO_SIZE = 2048  # token counts of rendered symbols and snippets kept


@dataclass(frozen=True)
class IndexLimits:
    """The repository index's bounds (see the module's docstring for the memory they
    imply). Files past a limit are skipped and counted, in listing order (git's order,
    or the walk's: folders sorted by name), shallower paths first."""

    max_files: int = 5_000
    max_file_bytes: int = 1_000_000
    max_total_bytes: int = 10_000_000
    chunk_lines: int = 12
    chunk_stride: int = 6


@dataclass
class FileEntry:
    """One indexed file: its version (mtime and size), text, and line offsets."""

    rel: str
    real: str
    mtime_ns: int
    size: int
    text: str
    line_starts: array[int]
    symbols: ModuleSymbols | None = None  # parsed on demand

    def lines(self, first: int, last: int) -> str:
        """Lines ``first``..``last`` (1-based, inclusive), without the final newline."""
        n = len(self.line_starts)
        first, last = max(1, first), min(n, last)
        if first > last:
            return ""
        end = self.line_starts[last] - 1 if last < n else len(self.text)
        return self.text[self.line_starts[first - 1]:end]


def _line_starts(text: str) -> array[int]:
    starts = array("I", [0])
    at = text.find("\n")
    while at >= 0:
        starts.append(at + 1)
        at = text.find("\n", at + 1)
    return starts


@dataclass
class RefreshStats:
    files: int = 0
    read: int = 0
    removed: int = 0
    seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)


class RepositoryIndex:
    """The Python files under ``root``: text, BM25 chunks and (on demand) symbols.

    Writers (:meth:`refresh`, :meth:`parse_symbols`) do the slow work (reading, parsing,
    tokenising) without the lock and hold it only to swap one file in; readers hold it
    while they look, which is short. Safe to call from any thread; never raises for
    what is in the repository.
    """

    def __init__(self, root: str | os.PathLike[str], limits: IndexLimits | None = None,
                 git_timeout_s: float = 10.0) -> None:
        self.root = Path(os.path.realpath(root))
        self.limits = limits or IndexLimits()
        self.git_timeout_s = git_timeout_s
        self.lock = threading.Lock()
        self._refreshing = threading.Lock()  # one refresh at a time
        self.files: dict[str, FileEntry] = {}
        self.bm25 = BM25Index()
        self.skipped: dict[str, int] = {}
        # Files refused for what they hold (binary, not UTF-8), by version: not re-read
        # while unchanged, and still counted.
        self._refused: dict[str, tuple[int, int, str]] = {}
        self.reads = 0  # files read since the start (tests count them)
        self.parses = 0  # files parsed by libcst
        self.refreshes = 0
        self.ready = False  # a first refresh has completed
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ refresh

    def refresh(self) -> RefreshStats:
        """List the files again; read those new or changed (size, mtime); drop the gone."""
        with self._refreshing:
            started = time.monotonic()
            stats = self._refresh()
            stats.seconds = time.monotonic() - started
            self.refreshes += 1
            self.ready = True
            return stats

    def _refresh(self) -> RefreshStats:
        limits = self.limits
        listing = list_python_files(self.root, self.git_timeout_s)
        skipped: Counter[str] = Counter(listing.skipped)
        # Shallow paths first: a package's own modules before vendored or nested copies
        # when a limit is reached.
        ordered = sorted(listing.files, key=lambda f: (f[0].count("/"), f[0]))
        stats = RefreshStats()
        kept: set[str] = set()
        total = 0
        for rel, real in ordered:
            if len(kept) >= limits.max_files:
                skipped["over_limit"] += 1
                continue
            try:
                st = os.stat(real)
            except OSError:
                continue
            if st.st_size > limits.max_file_bytes:
                skipped["huge"] += 1
                continue
            if total + st.st_size > limits.max_total_bytes:
                skipped["over_limit"] += 1
                continue
            version = (st.st_mtime_ns, st.st_size)
            refused = self._refused.get(rel)
            if refused is not None and refused[:2] == version:
                skipped[refused[2]] += 1
                continue
            entry = self.files.get(rel)
            if entry is None or (entry.mtime_ns, entry.size) != version or entry.real != real:
                reason = self._read(rel, real, version)
                stats.read += 1
                if reason:
                    skipped[reason] += 1
                    continue
            kept.add(rel)
            total += st.st_size
        gone = [rel for rel in self.files if rel not in kept]
        for rel in gone:
            with self.lock:
                self.files.pop(rel, None)
                self.bm25.remove_file(rel)
        listed = {rel for rel, _ in listing.files}
        self._refused = {k: v for k, v in self._refused.items() if k in listed}
        stats.removed = len(gone)
        stats.files = len(kept)
        stats.skipped = {k: v for k, v in sorted(skipped.items()) if v}
        self.skipped = stats.skipped
        for reason in ("over_limit", "walk_limit"):
            if skipped[reason] and reason not in self._warned:
                self._warned.add(reason)
                log.warning(
                    "jupyter-ds: repository context under %s left %d files out (%s: at "
                    "most %d files, %d bytes in all); raise the limits or narrow the root",
                    self.root, skipped[reason], reason, limits.max_files,
                    limits.max_total_bytes)
        return stats

    def _read(self, rel: str, real: str, version: tuple[int, int]) -> str:
        """Read and index one file; the reason it is refused, or ""."""
        self.reads += 1
        try:
            with open(real, "rb") as f:
                data = f.read(self.limits.max_file_bytes + 1)
        except OSError:
            self._drop(rel)
            return "unreadable"
        reason = ""
        if len(data) > self.limits.max_file_bytes:
            reason = "huge"  # it grew since the stat
        elif b"\0" in data:
            reason = "binary"
        else:
            try:
                text = data.decode("utf-8").replace("\r\n", "\n")
            except UnicodeDecodeError:
                reason = "not_utf8"
        if reason:
            self._refused[rel] = (*version, reason)
            self._drop(rel)
            return reason
        self._refused.pop(rel, None)
        chunks: list[ChunkTerms] = chunk_file(text, self.limits.chunk_lines,
                                              self.limits.chunk_stride)
        entry = FileEntry(rel, real, version[0], version[1], text, _line_starts(text))
        with self.lock:
            self.files[rel] = entry
            self.bm25.add_file(rel, chunks)
        return ""

    def _drop(self, rel: str) -> None:
        with self.lock:
            if self.files.pop(rel, None) is not None:
                self.bm25.remove_file(rel)

    # ------------------------------------------------------------------ symbols

    def symbols(self, rel: str) -> ModuleSymbols | None:
        """The symbols of ``rel`` if they were parsed for its current version."""
        entry = self.files.get(rel)
        return entry.symbols if entry is not None else None

    def parse_symbols(self, rel: str) -> None:
        """Parse ``rel`` with libcst (slow: call it off the completion's path)."""
        entry = self.files.get(rel)
        if entry is None or entry.symbols is not None:
            return
        parsed = module_symbols(entry.text)
        self.parses += 1
        with self.lock:
            if self.files.get(rel) is entry:  # not replaced meanwhile
                entry.symbols = parsed

    # ------------------------------------------------------------------ search

    def search(self, terms: list[str], k: int, exclude: str | None) -> list[Hit]:
        with self.lock:
            return self.bm25.search(terms, k, exclude=exclude)


class BackgroundWorker:
    """One daemon thread that runs submitted jobs in order, each key once while pending.

    A daemon, so that a long first indexing never holds up the server's exit (it only
    reads); its own thread rather than the event loop's executor, so that indexing
    never takes a slot that request handlers wait for.
    """

    def __init__(self, name: str = "jupyter-ds-repository-index") -> None:
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Hashable, Callable[[], object]] | None] = (
            queue.SimpleQueue())
        self._pending: set[Hashable] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, key: Hashable, job: Callable[[], object]) -> bool:
        """Queue ``job`` unless one with ``key`` is pending; whether it was queued."""
        with self._guard:
            if self._closed or key in self._pending:
                return False
            self._pending.add(key)
            self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name,
                                                daemon=True)
                self._thread.start()
        self._queue.put((key, job))
        return True

    def pending(self, key: Hashable) -> bool:
        with self._guard:
            return key in self._pending

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no job is pending (tests, benchmarks); whether it got there."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        with self._guard:
            self._closed = True
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            key, job = item
            try:
                job()
            except Exception as exc:  # a job must never kill the worker
                log.warning("jupyter-ds: repository index job %r failed: %s", key, exc,
                            exc_info=True)
            finally:
                with self._guard:
                    self._pending.discard(key)
                    if not self._pending:
                        self._idle.set()


class InlineWorker:
    """A :class:`BackgroundWorker` for batch use (training examples, offline tools):
    each job runs at once on the caller's thread, so every answer sees the whole
    repository parsed, the same for the same input, at the cost of the latency that the
    server's worker keeps off a completion's path."""

    def submit(self, key: Hashable, job: Callable[[], object]) -> bool:
        job()
        return True

    def pending(self, key: Hashable) -> bool:
        return False

    def wait_idle(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


@dataclass(eq=False)  # compared by identity
class _Piece:
    """One part of the block: a symbol of an imported module, or a snippet."""

    path: str
    text: str
    used: str
    header: str
    name: str = ""  # a symbol's name where the cursor's file uses it (its import alias)


class RepositoryContext:
    """The ``repository`` context source (:class:`jupyter_ds.context.ContextSource`)."""

    name = "repository"

    def __init__(self, index: RepositoryIndex, *, timeout_s: float = 0.05,
                 refresh_s: float = 5.0, snippets: int = 3, query_lines: int = 20,
                 definitions_share: float = 0.8, definition_share: float = 0.15,
                 worker: BackgroundWorker | InlineWorker | None = None) -> None:
        self.index = index
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.snippets = snippets
        self.query_lines = query_lines
        self.definitions_share = definitions_share
        self.definition_share = definition_share
        self.worker = worker or BackgroundWorker()
        self._last_refresh: float | None = None  # monotonic end of the last refresh
        self._memo: dict[str, int] = {}
        self._memo_for: CountTokens | None = None

    @classmethod
    def for_root(cls, root_dir: str | os.PathLike[str], *, enabled: bool = True,
                 max_files: int = IndexLimits.max_files,
                 max_file_bytes: int = IndexLimits.max_file_bytes,
                 max_total_bytes: int = IndexLimits.max_total_bytes,
                 timeout_s: float = 0.05, refresh_s: float = 5.0) -> RepositoryContext | None:
        """The source for the server root ``root_dir`` as the server's settings say;
        None when it is off. Nothing is read until a completion asks."""
        if not enabled:
            return None
        limits = IndexLimits(max_files=max(0, int(max_files)),
                             max_file_bytes=max(0, int(max_file_bytes)),
                             max_total_bytes=max(0, int(max_total_bytes)))
        return cls(RepositoryIndex(root_dir, limits), timeout_s=timeout_s,
                   refresh_s=refresh_s)

    def close(self) -> None:
        """Stop the background thread (the index is dropped with the source)."""
        self.worker.close()

    # ------------------------------------------------------------------ background

    def schedule_refresh(self) -> None:
        """Refresh in the background if the last one ended ``refresh_s`` ago or more."""
        now = time.monotonic()
        if self._last_refresh is not None and now - self._last_refresh < self.refresh_s:
            return

        def job() -> None:
            try:
                stats = self.index.refresh()
                log.debug("jupyter-ds: repository index of %s: %d files, %d read, %d gone, "
                          "%.2f s, skipped %s", self.index.root, stats.files, stats.read,
                          stats.removed, stats.seconds, stats.skipped)
            finally:
                self._last_refresh = time.monotonic()

        self.worker.submit("refresh", job)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for the background work queued so far (tests, benchmarks)."""
        return self.worker.wait_idle(timeout)

    # ------------------------------------------------------------------ gather

    async def gather(self, query: ContextQuery, budget_tokens: int,
                     count: CountTokens) -> ContextBlock | None:
        """Definitions and snippets for this cursor from the index as it is now.

        Runs on the event loop without awaiting anything: the work is a regular
        expression over the cursor's text, dictionary look-ups and one bounded BM25
        query (a few milliseconds on a repository of 200 files, see the README), which
        costs less than a hop to a thread would. The gatherer's ``timeout_s`` therefore
        cannot cut it short; the bounds on the query and on the pieces weighed are what
        keep it short.
        """
        return self.collect(query, budget_tokens, count)

    def collect(self, query: ContextQuery, budget_tokens: int,
                count: CountTokens) -> ContextBlock | None:
        """:meth:`gather`'s work, callable without an event loop (training examples
        are built with it, so that they hold what a completion's prompt holds)."""
        rel = self._relative(query)
        if rel is None:
            return None
        self.schedule_refresh()
        if not self.index.ready or budget_tokens <= 0:
            return None  # the first indexing is still running
        definitions = self._definitions(rel, query)
        snippets = self._snippets(rel, query.prefix)
        if not definitions and not snippets:
            return None
        text, used = self._fit(definitions, snippets, budget_tokens, count)
        if not text:
            return None
        shown = {p.used: p.name for p in definitions if p.name}
        return ContextBlock(self.name, text, used=used, skipped=dict(self.index.skipped),
                            starts=[shown[u] for u in used if u in shown])

    def defined_names(self, query: ContextQuery) -> set[str]:
        """The names whose definitions in other files this cursor's imports reach (what
        :meth:`collect` may show): training draws cross-file cursors with it."""
        rel = self._relative(query)
        if rel is None or not self.index.ready:
            return set()
        return {p.used.rsplit(":", 1)[1] for p in self._definitions(rel, query)}

    def _relative(self, query: ContextQuery) -> str | None:
        """The query's path relative to the root, if it is a Python file there."""
        if not query.path or query.language.lower() not in ("python", "ipython", "py"):
            return None
        try:
            rel = normalise_relative(query.path)
        except Exception:  # absolute, climbing out, NUL...: no context, silently
            return None
        return rel if rel.endswith((".py", ".ipynb")) else None

    # ------------------------------------------------------------------ definitions

    def _definitions(self, rel: str, query: ContextQuery) -> list[_Piece]:
        """Symbols of the imported local modules, the names used nearest the cursor
        first; modules not parsed yet are queued for parsing and skipped this time."""
        known = self.index.files
        wanted: list[tuple[str, str, str]] = []  # (file, name, local name), import order
        typing = import_at_cursor(query.prefix)
        if typing is not None:  # ``from pkg.mod import |``: what pkg.mod offers
            found = resolve_module(typing[0], typing[1], rel, known)
            if found is not None:
                wanted += [(found[0], n, n) for n in self._public(found[0])]
        for imp in parse_imports(query.prefix) + parse_imports(query.suffix):
            found = resolve_module(imp.module, imp.level, rel, known)
            if not imp.names:  # ``import pkg.mod``: what the module offers
                if found is not None:
                    wanted += [(found[0], n, n) for n in self._public(found[0])]
                continue
            for name, local in imp.names:
                if name == "*":
                    if found is not None:
                        wanted += [(found[0], n, n) for n in self._public(found[0])]
                    continue
                # Python's order: the package's own attribute, else its submodule.
                if found is not None and self._defines(found[0], name):
                    wanted.append((found[0], name, local))
                    continue
                sub = resolve_submodule(imp.module, imp.level, name, rel, known)
                if sub is not None:
                    wanted += [(sub, n, n) for n in self._public(sub)]
                elif found is not None:
                    wanted.append((found[0], name, local))  # not parsed yet, or not there
        return self._symbol_pieces(wanted, query.prefix)

    def _defines(self, file: str, name: str) -> bool:
        symbols = self._parsed(file)
        return symbols is not None and (name in symbols.symbols or any(
            e.alias == name for e in symbols.exports))

    def _parsed(self, file: str) -> ModuleSymbols | None:
        """``file``'s symbols, or None after queueing its parse (off this path)."""
        symbols = self.index.symbols(file)
        if symbols is None and file in self.index.files:
            self.worker.submit(("symbols", file), lambda: self.index.parse_symbols(file))
        return symbols

    def _public(self, file: str) -> list[str]:
        symbols = self._parsed(file)
        return symbols.public()[:MAX_MODULE_NAMES] if symbols is not None else []

    def _symbol_pieces(self, wanted: list[tuple[str, str, str]], prefix: str
                       ) -> list[_Piece]:
        """Pieces for ``wanted`` names, following re-exports, ordered by the last use of
        each local name before the cursor (nearest first; unused ones keep import
        order; a name's own import line counts as a use, a far one)."""
        tail = prefix[-8000:]
        last_use: dict[str, int] = {}
        for i, name in enumerate(identifiers(tail)):
            last_use[name] = i
        seen: set[tuple[str, str]] = set()
        ranked: list[tuple[float, int, _Piece]] = []
        for order, (file, name, local) in enumerate(wanted[:MAX_WANTED]):
            piece = self._symbol(file, name, depth=0)
            if piece is None or (piece.path, piece.used) in seen:
                continue
            seen.add((piece.path, piece.used))
            piece.name = local
            use = last_use.get(local)
            ranked.append((-(use if use is not None else -1), order, piece))
        ranked.sort(key=lambda r: (r[0], r[1]))
        return [p for _, _, p in ranked]

    def _symbol(self, file: str, name: str, depth: int) -> _Piece | None:
        symbols = self._parsed(file)
        if symbols is None:
            return None
        symbol = symbols.symbols.get(name)
        if symbol is not None:
            return _Piece(file, symbol.text, f"{file}:{name}", f"Path: {file}\n")
        if depth >= 3:
            return None
        for export in symbols.exports:  # ``from .core import name`` in a package
            if export.alias != name and export.name != "*":
                continue
            found = resolve_module(export.module, export.level, file, self.index.files)
            if found is None:
                continue
            target = name if export.name == "*" else export.name
            piece = self._symbol(found[0], target, depth + 1)
            if piece is not None:
                return piece
        return None

    # ------------------------------------------------------------------ snippets

    def _snippets(self, rel: str, prefix: str) -> list[_Piece]:
        """Windows of other files that share the most (rare) identifiers with the last
        ``query_lines`` lines before the cursor."""
        if self.snippets <= 0:
            return []
        tail = "\n".join(prefix[-6000:].split("\n")[-self.query_lines:])
        terms = identifiers(tail)
        if not terms:
            return []
        pieces = []
        for hit in self.index.search(terms, self.snippets, exclude=rel):
            entry = self.index.files.get(hit.path)
            if entry is None:
                continue
            lines = [line[:200] for line in entry.lines(hit.first, hit.last).split("\n")]
            pieces.append(_Piece(
                hit.path, "\n".join(lines).rstrip() + "\n", f"{hit.path}:L{hit.first}-L{hit.last}",
                f"Path: {hit.path} (lines {hit.first}-{hit.last})\n"))
        return pieces

    # ------------------------------------------------------------------ budget

    def _count(self, count: CountTokens, text: str) -> int:
        """``count(text)``, remembered: the same symbols and snippets come back from
        keystroke to keystroke, and counting is the engine's tokenizer."""
        if count is not self._memo_for:
            self._memo.clear()
            self._memo_for = count
        value = self._memo.get(text)
        if value is None:
            value = self._memo[text] = count(text)
            if len(self._memo) > MEMO_SIZE:
                self._memo.pop(next(iter(self._memo)))
        return value

    def _shrink(self, piece: _Piece, head: str, room: int, count: CountTokens
                ) -> tuple[_Piece | None, int]:
        """``piece`` cut to the most leading lines (two at least, then ``...``) that fit
        ``room`` tokens with ``head``; (None, 0) when not even two do."""
        lines = piece.text.rstrip("\n").split("\n")
        indent = lines[1][:len(lines[1]) - len(lines[1].lstrip())] if len(lines) > 1 else ""
        low, high, best = 2, len(lines) - 1, None
        while low <= high:  # the counts grow with the lines kept: a binary search
            mid = (low + high) // 2
            text = "\n".join(lines[:mid]) + f"\n{indent or '    '}...\n"
            need = self._count(count, head + text)
            if need <= room:
                best, low = (text, need), mid + 1
            else:
                high = mid - 1
        if best is None:
            return None, 0
        return _Piece(piece.path, best[0], piece.used, piece.header, piece.name), best[1]

    def _fit(self, definitions: list[_Piece], snippets: list[_Piece], budget: int,
             count: CountTokens) -> tuple[str, list[str]]:
        """The pieces that fit ``budget`` tokens: definitions first (up to
        ``definitions_share`` of it when there are snippets too), then snippets, then
        more definitions in what is left. At most :data:`MAX_PIECES` are weighed.

        In the first pass one definition takes at most ``definition_share`` of the
        budget (48 tokens at least), cut to its leading lines: the signature and the
        docstring's head of several names help more than one whole class. On the
        cross-file cursors of the standard library's packages (a development set, not
        the benchmark's packages), the typed name's definition is in the block at
        82.6 % of them, against 64.0 % with whole definitions and 0.6 for definitions
        (``make bench-context-retrieval``, benchmarks/results/context_retrieval.md)."""
        chosen: dict[str, _Piece] = {}  # what it is (``used``) -> piece, in order taken
        headers: set[str] = set()
        used = 0
        weighed = 0

        def take(pieces: list[_Piece], limit: int, grouped: bool, cap: int) -> None:
            nonlocal used, weighed
            for piece in pieces:
                if piece.used in chosen:
                    continue
                if weighed >= MAX_PIECES or used >= limit:
                    return
                weighed += 1
                head = "" if grouped and piece.header in headers else piece.header
                need = self._count(count, head + piece.text)
                room = min(limit - used, cap)
                if need > room and grouped:
                    # A class too big for its room: its first lines (the header, the
                    # docstring, the first members), not nothing.
                    piece, need = self._shrink(piece, head, room, count)
                if piece is not None and used + need <= limit:
                    chosen[piece.used] = piece
                    used += need
                    if grouped:
                        headers.add(piece.header)

        cap = max(48, int(budget * self.definition_share))
        take(definitions, int(budget * self.definitions_share) if snippets else budget, True,
             cap)
        take(snippets, budget, False, budget)
        take(definitions, budget, True, budget)  # what is left, uncapped
        picked = list(chosen.values())
        while picked:
            text, names = _render([p for p in picked if p in snippets],
                                  [p for p in picked if p not in snippets])
            # Counted apart, pieces can sum to less than their join: check the whole.
            if self._count(count, text) <= budget:
                return text, names
            picked.pop()
        return "", []


def _render(snippets: list[_Piece], definitions: list[_Piece]) -> tuple[str, list[str]]:
    """Snippets first, then the definitions, nearest the code they explain, grouped
    under one ``Path:`` line per file (files in the order of their best-ranked name)."""
    parts = [p.header + p.text for p in snippets]
    used = [p.used for p in snippets]
    by_file: dict[str, list[_Piece]] = {}
    for piece in definitions:
        by_file.setdefault(piece.path, []).append(piece)
    for pieces in by_file.values():
        parts.append(pieces[0].header + "".join(p.text for p in pieces))
        used += [p.used for p in pieces]
    return "".join(parts), used
