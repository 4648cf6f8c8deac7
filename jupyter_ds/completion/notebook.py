"""Notebook context: the cells above the one being edited, fitted into the prompt.

JupyterLab's completion provider sends the notebook's ``path`` (relative to the server
root) and the ``cell_id`` of the cell under the cursor. This module reads the saved
notebook, takes the cells before that one (nearest first), and renders them in front of
the current cell's prefix:

* In the model's notebook format where its vocabulary has the tokens (StarCoder,
  StarCoder2, SmolLM). StarCoder2's "Jupyter - structured" training format
  (arXiv:2402.19173, section 5.4) is
  ``<jupyter_start><jupyter_text>text0<jupyter_code>code0\\n<jupyter_output>output0...``;
  we emit the same chain without the outputs (they are mostly noise and cost budget),
  end each code cell with a newline as in that layout, and open the current cell with
  its own marker, so the model continues a cell the way it saw cells continued::

      <jupyter_start><jupyter_text>md<jupyter_code>cell1\\n<jupyter_code>cell2\\n<jupyter_code>{prefix}

  Markdown cells are kept when the vocabulary has ``<jupyter_text>``.
* Otherwise as plain code in the "percent" cell format (Jupytext, VS Code, Spyder), code
  cells only::

      # %%\\ncell1\\n\\n# %%\\ncell2\\n\\n# %%\\n{prefix}

Only whole cells are used, the nearest first; the first one that does not fit the token
budget ends the selection (older cells are dropped, never a hole in the middle). The
prompt keeps the older cells first and the current cell last, so that the start of the
prompt stays the same from one keystroke to the next.

No Jupyter server imports: the service gets the server root as a plain path. A path that
is absolute or leaves the root (``..``, a symlink) is a 400 naming ``path``; anything
else that stops us from reading the notebook (not a notebook, not saved yet, unknown
cell id, too big, invalid JSON) just means no extra context.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_ds.errors import bad_request
from jupyter_ds.paths import locate

log = logging.getLogger(__name__)

CountTokens = Callable[[str], int]

MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
NOTEBOOK_CACHE_SIZE = 8
# Upper bound on characters per token when pre-selecting candidate cells: cells beyond
# budget * this many characters cannot fit, so they are never rendered or counted.
MAX_CHARS_PER_TOKEN = 16
DEFAULT_CHARS_PER_TOKEN = 3.0
PLAIN_CELL_MARKER = "# %%\n"


@dataclass(frozen=True)
class Cell:
    """One cell of a saved notebook: its id, ``code``/``markdown``/``raw``, its source."""

    id: str | None
    kind: str
    source: str


@dataclass(frozen=True)
class PrecedingCells:
    """The cells above the current one (``cells[0]`` is the nearest) and its own kind."""

    cells: tuple[Cell, ...]
    current_kind: str


# ------------------------------------------------------------------------ paths


def resolve_notebook_path(
    root_dir: str | os.PathLike[str], path: str, field: str = "path"
) -> Path | None:
    """The real path of ``path`` under ``root_dir``; a 400 naming ``path`` if it leaves it.

    ``path`` is relative to the root with ``/`` separators, as JupyterLab sends it. An
    absolute path or one whose ``..`` climbs above the root is refused. A path whose
    symlinks resolve outside the root is legitimate in Jupyter (it follows them), so it is
    not an error, but it is never read: None, no context. The file need not exist.
    """
    if path.startswith("RTC:"):  # JupyterLab's collaborative drive prefix
        path = path[len("RTC:"):]
    if not path:
        raise bad_request(f"field '{field}' is empty", field)
    where = locate(root_dir, path, field, allow_root=True)
    if not where.inside:
        log.debug("notebook context: %s resolves outside the server root; not read", path)
        return None
    return where.real


# ------------------------------------------------------------------------ reading


def _source(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return None


def parse_notebook(data: bytes) -> tuple[Cell, ...] | None:
    """The cells of an nbformat-4 notebook, or None when ``data`` is not one."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list):
        return None
    cells = []
    for raw in doc["cells"]:
        if not isinstance(raw, dict):
            return None
        source = _source(raw.get("source", ""))
        kind = raw.get("cell_type")
        if source is None or not isinstance(kind, str):
            return None
        cell_id = raw.get("id")
        cells.append(Cell(cell_id if isinstance(cell_id, str) else None, kind, source))
    return tuple(cells)


class NotebookReader:
    """Reads notebooks under one root, with a small LRU keyed by (path, mtime, size).

    A keystroke costs a ``stat`` once the notebook is cached; a saved change (new mtime or
    size) is read again. Safe to share between threads.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        *,
        max_bytes: int = MAX_NOTEBOOK_BYTES,
        cache_size: int = NOTEBOOK_CACHE_SIZE,
    ):
        self.root_dir = os.fspath(root_dir)
        self.max_bytes = max_bytes
        self.cache_size = max(1, cache_size)
        self._cache: OrderedDict[str, tuple[int, int, tuple[Cell, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # files actually read and parsed (tests and metrics)

    def cells(self, path: str) -> tuple[Cell, ...] | None:
        """All cells of the notebook at ``path`` (relative to the root), or None.

        Raises the 400 of :func:`resolve_notebook_path` for a path that leaves the root.
        """
        real = resolve_notebook_path(self.root_dir, path)
        if real is None or real.suffix.lower() != ".ipynb":
            return None
        try:
            st = real.stat()
        except OSError:
            log.debug("notebook context: %s is not saved yet", path)
            return None
        if not real.is_file():
            return None
        if st.st_size > self.max_bytes:
            log.debug("notebook context: %s is %d bytes, over %d", path, st.st_size,
                      self.max_bytes)
            return None
        key = str(real)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
                self._cache.move_to_end(key)
                return hit[2]
        try:
            with open(real, "rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as exc:
            log.debug("notebook context: cannot read %s: %s", path, exc)
            return None
        if len(data) > self.max_bytes:
            return None
        cells = parse_notebook(data)
        if cells is None:
            log.debug("notebook context: %s is not a valid notebook", path)
            return None
        with self._lock:
            self.reads += 1
            self._cache[key] = (st.st_mtime_ns, st.st_size, cells)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return cells

    def preceding(
        self, path: str, cell_id: str, *, include_markdown: bool = False
    ) -> PrecedingCells | None:
        """The non-empty code (and, if asked, markdown) cells above ``cell_id``.

        None when the notebook cannot be read or has no cell with that id.
        """
        cells = self.cells(path)
        if cells is None:
            return None
        index = next((i for i, c in enumerate(cells) if c.id == cell_id), None)
        if index is None:
            log.debug("notebook context: no cell %r in %s (not saved yet?)", cell_id, path)
            return None
        kinds = {"code", "markdown"} if include_markdown else {"code"}
        above = tuple(
            c for c in reversed(cells[:index]) if c.kind in kinds and c.source.strip()
        )
        return PrecedingCells(above, cells[index].kind)


def given_cells(cells: Sequence[Any], *, include_markdown: bool = False) -> PrecedingCells:
    """The cells a client sent (``CompleteRequest.cells``: notebook order, the nearest
    last) as :meth:`NotebookReader.preceding` gives a saved notebook's: nearest first,
    non-empty code (and, if asked, markdown) cells; the current cell is code."""
    kinds = {"code", "markdown"} if include_markdown else {"code"}
    above = tuple(Cell(None, c.cell_type, c.source) for c in reversed(cells)
                  if c.cell_type in kinds and c.source.strip())
    return PrecedingCells(above, "code")


# ------------------------------------------------------------------------ format


def _same(text: str) -> str:
    return text


@dataclass(frozen=True)
class NotebookFormat:
    """How cells are glued in front of the current cell for one model.

    ``escape`` neutralizes control tokens in the cells' sources (the template's
    :meth:`~ds_engine.templates.PromptTemplate.escape`): a saved cell is user text, and
    only the markers put here may reach the tokenizer as control tokens.
    """

    code: str | None = None  # the code-cell token; None means the plain "# %%" format
    text: str | None = None
    start: str | None = None
    escape: Callable[[str], str] = field(default=_same, compare=False, repr=False)

    @classmethod
    def from_tokens(
        cls, tokens: Mapping[str, str], escape: Callable[[str], str] | None = None
    ) -> NotebookFormat:
        """From a template's ``notebook_tokens`` (kinds ``code``, ``text``, ``start``)."""
        esc = escape or _same
        if "code" not in tokens:
            return cls(escape=esc)
        return cls(
            code=tokens["code"], text=tokens.get("text"), start=tokens.get("start"), escape=esc
        )

    @property
    def structured(self) -> bool:
        return self.code is not None

    @property
    def includes_markdown(self) -> bool:
        return self.text is not None

    def accepts_current(self, kind: str) -> bool:
        """Whether a cell of this kind can be the current one (code, or text if marked)."""
        return kind == "code" or (kind == "markdown" and self.text is not None)

    def piece(self, cell: Cell) -> str:
        """One preceding cell as it appears in the prompt."""
        src = self.escape(cell.source)
        if self.code is None:
            return f"{PLAIN_CELL_MARKER}{src.rstrip()}\n\n"
        if cell.kind == "markdown" and self.text is not None:
            return self.text + src
        source = src if src.endswith("\n") else src + "\n"
        return self.code + source

    def head(self) -> str:
        """What opens the context (``<jupyter_start>`` where the model has it)."""
        return self.start or ""

    def tail(self, current_kind: str = "code") -> str:
        """The current cell's opening marker, right before its prefix."""
        if self.code is None:
            return PLAIN_CELL_MARKER
        return self.text if current_kind == "markdown" and self.text else self.code

    def render(self, cells: Sequence[Cell], current_kind: str = "code") -> str:
        """``cells`` (oldest first) and the current cell's opening marker; "" for none."""
        if not cells:
            return ""
        return self.head() + "".join(self.piece(c) for c in cells) + self.tail(current_kind)


# ------------------------------------------------------------------------ budget


def fit_cells(
    pieces: Sequence[str],
    count: CountTokens,
    budget: int,
    *,
    head: str = "",
    tail: str = "",
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
) -> int:
    """How many of the rendered cells ``pieces`` (nearest first) fit in ``budget`` tokens.

    The context for ``k`` cells is ``head + pieces[k-1] + ... + pieces[0] + tail`` (oldest
    first); the answer is the largest ``k`` whose context counts at most ``budget`` tokens:
    whole cells, the nearest ones. A first guess from ``chars_per_token`` is checked and
    its neighbour probed, so the usual cost is two ``count`` calls; a wrong guess falls back
    to a binary search between them.
    """
    if budget <= 0 or not pieces:
        return 0
    fixed = len(head) + len(tail)
    # Candidates: cells beyond budget * MAX_CHARS_PER_TOKEN characters cannot fit.
    limit = budget * MAX_CHARS_PER_TOKEN
    ratio = max(chars_per_token, 0.25)
    chars, n, guess = fixed, 0, 0
    for piece in pieces:
        chars += len(piece)
        if chars > limit:
            break
        n += 1
        if chars / ratio <= budget:
            guess = n
    if n == 0:
        return 0
    memo: dict[int, bool] = {0: True}

    def fits(k: int) -> bool:
        if k not in memo:
            memo[k] = count(head + "".join(reversed(pieces[:k])) + tail) <= budget
        return memo[k]

    guess = min(max(1, guess), n)
    low, high = 0, n  # invariant: fits(low); the answer is in [low, high]
    if fits(guess):
        low = guess
        if low < high and not fits(low + 1):
            high = low
        elif low < high:
            low += 1
    else:
        high = guess - 1
        if high > low and fits(high):
            low = high
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


class CountMemo:
    """A small LRU over a token counter: rendered context repeats from key to key."""

    def __init__(self, count: CountTokens, size: int = 64):
        self._count = count
        self._size = size
        self._memo: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.calls = 0  # calls that reached the real counter

    def __call__(self, text: str) -> int:
        with self._lock:
            if text in self._memo:
                self._memo.move_to_end(text)
                return self._memo[text]
        value = self._count(text)
        with self._lock:
            self.calls += 1
            self._memo[text] = value
            while len(self._memo) > self._size:
                self._memo.popitem(last=False)
        return value


def notebook_context(
    preceding: PrecedingCells,
    fmt: NotebookFormat,
    count: CountTokens,
    budget: int,
    *,
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
) -> str:
    """The text to put before the current cell's prefix: the nearest cells that fit."""
    if not fmt.accepts_current(preceding.current_kind):
        return ""
    cells = [c for c in preceding.cells if c.kind == "code" or fmt.includes_markdown]
    pieces = [fmt.piece(c) for c in cells]
    head, tail = fmt.head(), fmt.tail(preceding.current_kind)
    k = fit_cells(
        pieces, count, budget, head=head, tail=tail, chars_per_token=chars_per_token
    )
    return head + "".join(reversed(pieces[:k])) + tail if k else ""
