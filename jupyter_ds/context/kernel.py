"""Kernel-aware context: what the notebook's live kernel holds, read without side effects.

A notebook user types ``df[`` with a kernel that knows exactly what ``df`` is. This source
finds the notebook's kernel through the Jupyter server's session manager (a session maps a
notebook path to a kernel id) and asks it, over the kernel's own protocol, for the names
in scope: DataFrame columns and dtypes, array shapes, signatures, modules, type names. The
answer becomes plain lines for the prompt (``df: DataFrame (3 columns: a int64, ...)``).

Why the question is safe to ask (see also :mod:`jupyter_ds.context.kernel_probe`):

- It is one ``execute_request`` with ``silent=True, store_history=False``, empty ``code``
  and a single ``user_expressions`` entry. A silent execute never increments the
  execution count, never publishes ``execute_input``, and never touches ``In``, ``Out``,
  ``_``/``__``/``___``, ``_i*`` or the history database: empty code returns before
  IPython's history, displayhook and ``pre_run_cell``/``post_run_cell`` events. What
  remains is IPython's ``post_execute`` event, which every silent execute fires (the
  widget and variable-inspector protocols do the same), and ``last_execution_result``,
  which IPython sets to an empty result.
- ``user_expressions`` are evaluated after the (empty) code, outside the displayhook, so
  their value never lands in ``Out`` or ``_``. Ours is an expression that ``exec``s the
  audited snippet (the text of ``kernel_probe.py``) into a fresh dict whose builtins are
  the real ``builtins`` module and calls its ``probe`` with the user namespace as an
  argument: it defines no name in the user namespace and looks up only ``__import__``
  there. The snippet reads the namespace and never runs user code (no ``repr``, no
  property, no ``__getattr__``, no ``__len__`` of user classes) and never raises.
- The only other code that runs is the kernel's: IPython formats the returned string
  (a formatter a user registered for ``str`` would see our JSON text, nothing else).
- ``complete_request`` and ``inspect_request`` were not used: IPython's completer
  (jedi) reads attributes of live objects, and inspection calls ``repr``, so both can run
  user properties and ``__getattr__``.

Bounded: nothing is sent to a busy kernel (the request would wait behind the user's
code), a starting or dead one, or a kernel whose language is not Python (asked once, with
``kernel_info``). Answers are cached per kernel until the kernel does something that is
not ours (its IOPub ``status`` and ``execute_input`` messages say so), so typing in a cell
reuses them, and each answer carries the kernel's execution count. One probe at a time
per kernel; a gather waits for it at most ``timeout_s``, after which the answer still
fills the cache. The lines fit ``budget_tokens``, names used in the prefix first.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.session import Session

from jupyter_ds.context import (
    IDENTIFIER,
    PYTHON_LANGUAGES,
    ContextBlock,
    ContextQuery,
    CountTokens,
)
from jupyter_ds.context.grounding import KnownNames

log = logging.getLogger(__name__)

#: The audited snippet, sent as it is: the kernel execs this text, it never imports it.
PROBE_SOURCE = Path(__file__).with_name("kernel_probe.py").read_text(encoding="utf-8")
EXPRESSION_KEY = "jupyter_ds"
MAX_REPLY_CHARS = 2_000_000  # a probe answer is bounded by its limits; this is a backstop

# Requests that do not change the user's namespace: a kernel busy with one of them
# still counts as busy, but the cached answer stays good.
READ_ONLY_REQUESTS = frozenset((
    "kernel_info_request", "complete_request", "inspect_request", "is_complete_request",
    "comm_info_request", "history_request",
))
# Server-side kernel states (jupyter_server's MappingKernelManager) that can answer.
READY_STATES = frozenset(("idle", "busy"))


def probe_expression(limits: dict[str, int] | None = None) -> str:
    """The ``user_expressions`` entry: exec the snippet into a fresh dict, call ``probe``.

    ``locals()`` at the top of a user expression is the user namespace (IPython evaluates
    them with it as locals); only ``__import__`` is looked up there, everything else the
    snippet needs comes from the real ``builtins`` module it is given.
    """
    return (
        "(lambda src, ns, limits: (lambda d: __import__('builtins').exec(src, d) or "
        "d['probe'](ns, limits))({'__builtins__': __import__('builtins'), "
        "'__name__': 'jupyter_ds_kernel_probe'}))"
        f"({PROBE_SOURCE!r}, __import__('builtins').locals(), {dict(limits or {})!r})"
    )


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class KernelName:
    """One name in the kernel, as the probe described it (validated, never trusted)."""

    name: str
    kind: str  # frame, series, array, function, class, module, other
    type_name: str = ""
    signature: str = ""
    module: str = ""
    dtype: str = ""
    shape: tuple[int, ...] = ()
    device: str = ""
    ncols: int = 0
    columns: tuple[tuple[Any, str], ...] = ()  # (label as JSON, dtype)

    def line(self, max_columns: int | None = None) -> str:
        """The prompt line; a DataFrame shows its first ``max_columns`` columns."""
        if self.kind == "frame":
            shown = self.columns if max_columns is None else self.columns[:max_columns]
            described = [f"{_label_text(label)} {dtype}" for label, dtype in shown]
            if self.ncols > len(shown):
                described.append(f"… {self.ncols - len(shown)} more")
            plural = "" if self.ncols == 1 else "s"
            inner = f"{self.ncols} column{plural}"
            if described:
                inner += ": " + ", ".join(described)
            return f"{self.name}: {self.type_name} ({inner})"
        if self.kind in ("array", "series"):
            shape = "(" + ", ".join(str(n) for n in self.shape) + ("," if len(
                self.shape) == 1 else "") + ")"
            device = f" {self.device}" if self.device else ""
            return f"{self.name}: {self.type_name} {self.dtype} {shape}{device}"
        if self.kind == "function":
            return f"{self.name}{self.signature}"
        if self.kind == "class":
            return f"{self.name}: class{self.signature}"
        if self.kind == "module":
            return f"{self.name}: module {self.module}"
        return f"{self.name}: {self.type_name}"

    def column_names(self) -> list[str]:
        """The string column labels (all the probe sent, not only those shown)."""
        return [label for label, _ in self.columns if isinstance(label, str)
                and not label.endswith("…")]


@dataclass
class Snapshot:
    """One probe answer for one kernel: valid while the kernel's generation is the same."""

    names: list[KernelName]
    execution_count: int | None
    generation: int
    more: int = 0  # names past the probe's cap
    partial: bool = False
    costs: dict[str, int] = field(default_factory=dict)  # line -> tokens, per counter
    counter: Any = None
    known: KnownNames | None = None  # made on first use, for grounding

    def get(self, name: str) -> KernelName | None:
        return next((n for n in self.names if n.name == name), None)


def parse_reply(content: dict[str, Any], generation: int = 0) -> Snapshot | None:
    """The probe's answer from an ``execute_reply`` content, or None when it has none."""
    if not isinstance(content, dict) or content.get("status") != "ok":
        return None
    result = (content.get("user_expressions") or {}).get(EXPRESSION_KEY)
    if not isinstance(result, dict) or result.get("status") != "ok":
        return None
    text = (result.get("data") or {}).get("text/plain")
    if not isinstance(text, str) or len(text) > MAX_REPLY_CHARS:
        return None
    try:
        # IPython's text/plain of the returned str is its repr; literal_eval reads back
        # exactly a string literal and nothing else.
        raw = ast.literal_eval(text)
        data = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("names"), list):
        return None
    names = [n for n in (_kernel_name(e) for e in data["names"]) if n is not None]
    count = content.get("execution_count")
    return Snapshot(
        names=names,
        execution_count=count if isinstance(count, int) else None,
        generation=generation,
        more=_int(data.get("more")),
        partial=bool(data.get("partial")),
    )


def _kernel_name(entry: object) -> KernelName | None:
    if not isinstance(entry, dict):
        return None
    name, kind = entry.get("n"), entry.get("k")
    if not isinstance(name, str) or not name.isidentifier() or not isinstance(kind, str):
        return None
    shape = entry.get("shape")
    columns: list[tuple[Any, str]] = []
    for pair in entry.get("cols") or ():
        if isinstance(pair, list) and len(pair) == 2:
            columns.append((_json_label(pair[0]), _clean(pair[1])))
    return KernelName(
        name=name,
        kind=kind if kind in ("frame", "series", "array", "function", "class", "module",
                              "other") else "other",
        type_name=_clean(entry.get("t")) or "object",
        signature=_clean(entry.get("sig"), 300),
        module=_clean(entry.get("module")),
        dtype=_clean(entry.get("dtype")),
        shape=tuple(_int(n) for n in shape[:32]) if isinstance(shape, list) else (),
        device=_clean(entry.get("device")),
        ncols=_int(entry.get("ncols")),
        columns=tuple(columns),
    )


def _clean(value: object, limit: int = 120) -> str:
    """Untrusted text from the kernel, on one line and bounded."""
    if not isinstance(value, str):
        return ""
    return " ".join(value.split())[:limit]


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and (
        0 <= value < 10**15) else 0


@dataclass(frozen=True)
class OpaqueLabel:
    """A column label that is not a builtin scalar: its type, and its text when its
    library (numpy, pandas) printed it, e.g. a Timestamp; never offered as a name."""

    type_name: str
    text: str = ""

    def __str__(self) -> str:
        return self.text or f"<{self.type_name}>"


def _json_label(label: object) -> Any:
    if isinstance(label, str):
        return label[:120]
    if isinstance(label, list):
        return tuple(_json_label(x) for x in label[:8])
    if label is None or isinstance(label, (bool, int, float)):
        return label
    if isinstance(label, dict):
        return OpaqueLabel(_clean(label.get("t")) or "?", _clean(label.get("s")))
    return OpaqueLabel("?")


def _label_text(label: Any) -> str:
    """A column label as it reads in the prompt: bare when an identifier, else quoted."""
    if isinstance(label, str):
        return label if label.isidentifier() else repr(label)
    if isinstance(label, tuple):
        return "(" + ", ".join(_label_text(x) for x in label) + ")"
    if isinstance(label, OpaqueLabel):
        return str(label)
    return repr(label)


# --------------------------------------------------------------------------- rendering


def rank(names: Iterable[KernelName], prefix: str) -> tuple[list[KernelName], int]:
    """Names used in the prefix first, the one nearest the cursor first; then the rest
    in the probe's order (most recently defined first). Also how many were used."""
    last_use: dict[str, int] = {}
    for match in IDENTIFIER.finditer(prefix[-8_000:]):
        last_use[match.group()] = match.start()
    names = list(names)
    used = sorted((n for n in names if n.name in last_use), key=lambda n: -last_use[n.name])
    return used + [n for n in names if n.name not in last_use], len(used)


def render(snapshot: Snapshot, prefix: str, budget_tokens: int,
           count: CountTokens) -> ContextBlock | None:
    """The lines that fit ``budget_tokens`` (each counted as the commented line it
    becomes); a DataFrame too wide for its share shows its first columns and how many
    more there are."""
    if snapshot.counter is not count:  # costs are per counter (per model)
        snapshot.costs, snapshot.counter = {}, count

    def cost(line: str) -> int:
        if line not in snapshot.costs:
            snapshot.costs[line] = count(f"# {line}\n")
        return snapshot.costs[line]

    lines: list[str] = []
    used: list[str] = []
    over = 0
    columns_cut = 0
    left = budget_tokens
    # No one name takes more than half the budget, and one the prefix does not use (a
    # wide DataFrame nobody is typing about) a sixth.
    share_used, share_other = max(8, budget_tokens // 2), max(8, budget_tokens // 6)
    ranked, in_prefix = rank(snapshot.names, prefix)
    for position, entry in enumerate(ranked):
        if left < 4:  # nothing fits any more: the rest are left out uncounted
            over += 1
            continue
        line = entry.line()
        room = min(left, share_used if position < in_prefix else share_other)
        spent = cost(line)
        if entry.kind == "frame" and spent > room:
            fitted = _fit_frame(entry, room, cost)
            if fitted is None:
                over += 1
                continue
            line, spent, shown = fitted
        elif spent > left:
            over += 1
            continue
        else:
            shown = len(entry.columns)
        if entry.kind == "frame":
            columns_cut += entry.ncols - shown
        lines.append(line)
        used.append(entry.name)
        left -= spent
    if not lines:
        return None
    skipped: dict[str, int] = {}
    if over or snapshot.more:
        skipped["names"] = over + snapshot.more
    if columns_cut:
        skipped["columns"] = columns_cut
    return ContextBlock("kernel", "\n".join(lines) + "\n", used=used, skipped=skipped)


def _fit_frame(entry: KernelName, room: int,
               cost: CountTokens) -> tuple[str, int, int] | None:
    """The line with the most leading columns that fits ``room`` tokens (binary search:
    a line's cost grows with its columns)."""
    low, high = 0, len(entry.columns)
    best = None
    while low <= high:
        middle = (low + high) // 2
        line = entry.line(middle)
        spent = cost(line)
        if spent <= room:
            best = (line, spent, middle)
            low = middle + 1
        else:
            high = middle - 1
    return best


# --------------------------------------------------------------------------- kernels


class _KernelLink:
    """One kernel's client (shell + IOPub, started once), what it has seen and its cache.

    The IOPub reader keeps the *generation*: it moves whenever the kernel works on a
    request that is not ours and may change the namespace (a ``status`` of someone
    else's request, an ``execute_input``, a restart). A snapshot taken at generation g
    is valid while the generation is still g. It also keeps which foreign requests are
    running, so a busy kernel is known without asking it.
    """

    def __init__(self, kernel_id: str, manager: Any) -> None:
        self.kernel_id = kernel_id
        self.manager = manager
        self.provisioner = getattr(manager, "provisioner", None)
        self.ports = _ports(manager)
        session = manager.session
        # Our own Session (same key): its message ids and replay check are not shared
        # with the server's use of the manager's session.
        self.session = Session(config=session.config, key=session.key,
                               signature_scheme=session.signature_scheme,
                               username="jupyter-ds")
        self.client = manager.client(session=self.session)
        try:  # no stdin (never asks for input), no heartbeat, no control requests
            self.client.start_channels(shell=True, iopub=True, stdin=False, hb=False,
                                       control=False)
        except Exception:
            self.client.stop_channels()
            raise
        self.generation = 0
        self.synced = False  # seen a status on IOPub: our view of busy is current
        self.synced_event = asyncio.Event()
        self.own: dict[str, float] = {}
        self.foreign_busy: dict[str, float] = {}
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.python: bool | None = None
        self.language = ""
        self.snapshot: Snapshot | None = None
        self.refresh: asyncio.Task[Snapshot | None] | None = None
        self.refresh_started = 0.0
        self.sent: Counter[str] = Counter()
        self.closed = False
        self._tasks = [asyncio.ensure_future(self._read_shell()),
                       asyncio.ensure_future(self._read_iopub())]

    # requests -----------------------------------------------------------------------

    def send(self, msg_type: str, content: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        msg = self.session.msg(msg_type, content)
        msg_id = msg["header"]["msg_id"]
        # Registered before anything can answer: this runs without yielding.
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if len(self.pending) > 16:  # requests given up on whose answer never came
            for given_up in [key for key, each in self.pending.items() if each.done()]:
                del self.pending[given_up]
        self.pending[msg_id] = future
        self.own[msg_id] = time.monotonic()
        if len(self.own) > 64:  # ids whose idle status never came
            for old in sorted(self.own, key=self.own.__getitem__)[:32]:
                self.own.pop(old, None)
        self.client.shell_channel.send(msg)
        self.sent[msg_type] += 1
        return future

    async def _read_shell(self) -> None:
        channel = self.client.shell_channel
        while not self.closed:
            try:
                msg = await channel.get_msg()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad signature or a closed socket
                if self.closed or channel.socket is None:
                    return
                continue
            future = self.pending.pop(msg.get("parent_header", {}).get("msg_id", ""), None)
            if future is not None and not future.done():
                future.set_result(msg)

    async def _read_iopub(self) -> None:
        socket = self.client.iopub_channel.socket
        while not self.closed and socket is not None:
            try:
                frames = await socket.recv_multipart()
                _, frames = self.session.feed_identities(frames)
                # Headers only: a notebook's outputs can be large, and only status
                # messages' content is read.
                msg = self.session.deserialize(frames, content=False)
                self.on_iopub(msg)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.closed or socket.closed:
                    return

    def on_iopub(self, msg: dict[str, Any]) -> None:
        msg_type = msg["header"].get("msg_type")
        parent = msg.get("parent_header") or {}
        parent_id = parent.get("msg_id", "")
        foreign_change = parent.get("msg_type") not in READ_ONLY_REQUESTS
        if msg_type == "execute_input":
            self.generation += 1
            return
        if msg_type != "status":
            return
        content = msg["content"]
        if isinstance(content, (bytes, memoryview)):
            content = self.session.unpack(bytes(content))
        state = content.get("execution_state")
        self.synced = True
        self.synced_event.set()
        if state == "starting":  # a (re)started kernel: nothing we knew holds
            self.generation += 1
            self.foreign_busy.clear()
            return
        mine = parent_id in self.own
        if state == "busy" and not mine:
            self.foreign_busy[parent_id] = time.monotonic()
            self.generation += foreign_change
        elif state == "idle":
            if mine:
                self.own.pop(parent_id, None)
            else:
                self.foreign_busy.pop(parent_id, None)
                self.generation += foreign_change

    # state --------------------------------------------------------------------------

    def busy(self, server_state: str | None) -> bool:
        """Whether the kernel is working on someone else's request."""
        if not self.synced:
            return server_state not in (None, "idle")
        if self.foreign_busy and server_state == "idle":
            # The server's view agrees it is idle: an idle we missed long ago is stale.
            now = time.monotonic()
            for parent_id, since in list(self.foreign_busy.items()):
                if now - since > 5.0:
                    del self.foreign_busy[parent_id]
        return bool(self.foreign_busy)

    def valid_snapshot(self) -> Snapshot | None:
        snapshot = self.snapshot
        if snapshot is not None and snapshot.generation == self.generation:
            return snapshot
        return None

    def restarted(self, manager: Any) -> bool:
        """The same kernel id, but another process or other ports: a new client."""
        return (manager is not self.manager
                or getattr(manager, "provisioner", None) is not self.provisioner
                or _ports(manager) != self.ports)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self._tasks:
            task.cancel()
        if self.refresh is not None:
            self.refresh.cancel()
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
        try:
            self.client.stop_channels()
        except Exception:  # a context already gone: nothing left to close
            pass


def _ports(manager: Any) -> tuple[Any, ...]:
    return tuple(getattr(manager, f"{name}_port", None) for name in ("shell", "iopub"))


class KernelContext:
    """The ``kernel`` context source. Built with the server's session and kernel managers
    (``serverapp.session_manager``, ``serverapp.kernel_manager``); :meth:`close` when the
    server stops."""

    name = "kernel"

    def __init__(self, session_manager: Any, kernel_manager: Any, *, enabled: bool = True,
                 timeout_s: float = 0.1, max_names: int = 200, max_columns: int = 200,
                 stale_after_s: float = 30.0, logger: logging.Logger | None = None) -> None:
        self.session_manager = session_manager
        self.kernel_manager = kernel_manager
        self.enabled = enabled
        self.timeout_s = timeout_s
        self.limits = {"names": max_names, "columns": max_columns}
        self.stale_after_s = stale_after_s  # a probe unanswered this long is given up
        self.log = logger or log
        self._expression = probe_expression(self.limits)
        self._links: dict[str, _KernelLink] = {}
        self._kernel_of_path: dict[str, str] = {}
        self._failed: set[str] = set()  # paths whose failure was logged with a traceback
        self._unsupported: set[str] = set()  # kernels without a ZMQ client (a gateway)

    # the ContextSource protocol -----------------------------------------------------

    async def gather(self, query: ContextQuery, budget_tokens: int,
                     count: CountTokens) -> ContextBlock | None:
        """Lines describing the notebook kernel's names within ``budget_tokens``, or None
        (off, no kernel, not Python, busy, dead, or no answer within ``timeout_s``)."""
        if not self.enabled or not query.path or budget_tokens <= 0:
            return None
        if query.language and query.language.lower() not in PYTHON_LANGUAGES:
            return None
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            snapshot = await self.snapshot(query.path, deadline)
            if snapshot is None:
                return None
            block = render(snapshot, query.prefix, budget_tokens, count)
            if block is not None:
                if snapshot.known is None:
                    snapshot.known = KnownNames.from_snapshot(snapshot)
                block.known = snapshot.known
            return block
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a kernel must never fail a completion
            first = query.path not in self._failed
            self._failed.add(query.path)
            (self.log.warning if first else self.log.debug)(
                "jupyter-ds: kernel context for %s failed: %s", query.path, exc,
                exc_info=first)
            return None

    # what the benchmark and the tests ask directly ---------------------------------

    async def snapshot(self, path: str, deadline: float | None = None) -> Snapshot | None:
        """The kernel's current answer for the notebook at ``path``: the cache when the
        kernel has done nothing since, else a probe waited for until ``deadline``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s if deadline is None else deadline
        self._prune()
        kernel_id = await self._kernel_id(path)
        if kernel_id is None:
            return None
        link = await self._link(kernel_id)
        if link is None:
            return None
        cached = link.valid_snapshot()
        if cached is not None:
            return cached
        if link.python is False:
            return None
        if link.busy(getattr(link.manager, "execution_state", None)):
            # Someone else's code is running: a probe would wait behind it (and one
            # already sent is waiting there), so no context, at once.
            return None
        refresh = link.refresh
        if refresh is not None and not refresh.done():
            if time.monotonic() - link.refresh_started > self.stale_after_s:
                refresh.cancel()  # its answer was lost: ask again
                refresh = None
        if refresh is None or refresh.done():
            refresh = link.refresh = asyncio.ensure_future(self._refresh(link))
            link.refresh_started = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(refresh),
                                          max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            return None  # the answer, when it comes, still fills the cache
        except asyncio.CancelledError:
            if refresh.cancelled():
                return None  # the probe was given up (stale, or the kernel went away)
            raise

    def requests_sent(self, kernel_id: str) -> Counter[str]:
        """Requests sent to a kernel so far, by message type (zero for unknown ids)."""
        link = self._links.get(kernel_id)
        return Counter(link.sent) if link is not None else Counter()

    def close(self) -> None:
        """Close every kernel client (the server is stopping)."""
        for link in self._links.values():
            link.close()
        self._links.clear()
        self._kernel_of_path.clear()

    # internals ----------------------------------------------------------------------

    async def _kernel_id(self, path: str) -> str | None:
        path = _normal(path)
        try:
            model = await self.session_manager.get_session(path=path)
        except Exception:  # no session for this path (404), or the kernel is gone
            self._kernel_of_path.pop(path, None)
            return None
        kernel = (model or {}).get("kernel") or {}
        kernel_id = kernel.get("id")
        if not isinstance(kernel_id, str):
            return None
        self._kernel_of_path[path] = kernel_id
        return kernel_id

    async def _link(self, kernel_id: str) -> _KernelLink | None:
        """The kernel's client, made on first use; None when the kernel cannot answer now
        (starting, restarting, dead), checked without sending it anything."""
        try:
            manager = self.kernel_manager.get_kernel(kernel_id)
        except KeyError:
            self._drop(kernel_id)
            return None
        state = getattr(manager, "execution_state", None)
        if state is not None and state not in READY_STATES:
            return None
        alive = manager.is_alive()
        if inspect.isawaitable(alive):
            alive = await alive
        if not alive:
            return None
        link = self._links.get(kernel_id)
        if link is not None and link.restarted(manager):
            self._drop(kernel_id)
            link = None
        if link is None:  # connecting sends the kernel nothing
            if kernel_id in self._unsupported:
                return None
            try:
                link = _KernelLink(kernel_id, manager)
            except Exception as exc:  # e.g. a gateway's kernels: no local ZMQ sockets
                self._unsupported.add(kernel_id)
                self.log.info("jupyter-ds: no kernel context for kernel %s: cannot connect "
                              "to it (%s)", kernel_id, exc)
                return None
            self._links[kernel_id] = link
        return link

    async def _refresh(self, link: _KernelLink) -> Snapshot | None:
        """Ask the kernel (kernel_info first, once) and cache the answer if nothing else
        ran on the kernel in between."""
        if link.python is None:
            reply = await link.send("kernel_info_request", {})
            info = reply.get("content", {}).get("language_info") or {}
            language = str(info.get("name") or "").lower()
            link.python, link.language = language in PYTHON_LANGUAGES, language
            if not link.python:
                self.log.info(
                    "jupyter-ds: no kernel context for kernel %s (%s): its language is %r, "
                    "not Python", link.kernel_id, getattr(link.manager, "kernel_name", "?"),
                    language or "unknown")
                return None
            if not link.synced:
                # The kernel_info's own status on IOPub says our subscription is live
                # (a SUB socket misses what is published before it is): give it a moment.
                try:
                    await asyncio.wait_for(link.synced_event.wait(), 0.02)
                except asyncio.TimeoutError:
                    pass
            if link.busy(getattr(link.manager, "execution_state", None)):
                return None
        generation = link.generation
        # Before our IOPub subscription has seen a status, someone else's execution
        # could have gone unseen: such an answer is used once, not cached.
        cacheable = link.synced
        started = time.monotonic()
        reply = await link.send("execute_request", {
            "code": "",
            "silent": True,
            "store_history": False,
            "user_expressions": {EXPRESSION_KEY: self._expression},
            "allow_stdin": False,
            "stop_on_error": False,
        })
        snapshot = parse_reply(reply.get("content", {}), generation)
        if snapshot is None:
            self.log.debug("jupyter-ds: kernel %s gave no usable context", link.kernel_id)
            return None
        self.log.debug("jupyter-ds: kernel %s described %d names in %.1f ms",
                       link.kernel_id, len(snapshot.names),
                       (time.monotonic() - started) * 1000)
        if cacheable and link.generation == generation and not link.closed:
            link.snapshot = snapshot
        return snapshot

    def _prune(self) -> None:
        """Close the clients of kernels the server no longer has."""
        for kernel_id in list(self._links):
            try:
                known = kernel_id in self.kernel_manager
            except Exception:
                known = True
            if not known:
                self._drop(kernel_id)

    def _drop(self, kernel_id: str) -> None:
        link = self._links.pop(kernel_id, None)
        if link is not None:
            link.close()
        for path, known in list(self._kernel_of_path.items()):
            if known == kernel_id:
                del self._kernel_of_path[path]


def _normal(path: str) -> str:
    return path.strip("/")
