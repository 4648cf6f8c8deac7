"""Kernel context on real notebooks: exact match, edit similarity and hallucinated names,
with and without the live kernel's names in the prompt.

Notebooks: the example notebooks of statsmodels (``examples/notebooks/*.ipynb`` in its
sdist from PyPI, version :data:`NOTEBOOKS_RELEASE`, sha256 checked): real analyses not
written here, on data that ships with statsmodels (no network at run time). Neither the
model nor its shipped FIM adapter was trained on them (the adapter's data_manifest.json
lists this Python's standard library only).

Each notebook runs in a real IPython kernel, started through Jupyter server's own session
and kernel managers as the server does, cell by cell. Before a cell that holds cursors
runs, every cursor of it is completed twice by the server's ``CompletionService`` on the
same engine, greedy, with the preceding cells in the request (``cells``, as a notebook
client sends them):

* ``none``: no context source (what every other assistant sees: the text);
* ``kernel_prompt``: the server's :class:`~jupyter_ds.context.kernel.KernelContext`, on
  the notebook's kernel, in the prompt only (``kernel_grounding`` off);
* ``kernel``: the server's default: that prompt, and the suggestion checked against the
  kernel's answer (:mod:`jupyter_ds.context.grounding`: made-up columns corrected, the
  suggestion stopped before a name that exists nowhere). Its generation is the same as
  ``kernel_prompt``'s (same prompt, greedy), so ``kernel_prompt`` runs after it and gets
  the engine's cached result: only ``none`` and ``kernel`` latencies are measured.

The kernel's answer is fetched once before the cell's cursors (as the user's earlier
keystrokes in the cell would have), so a cursor reads the cache; that first probe's time
is reported as ``probe ms``, the time inside each completion as ``context ms``.

Cursors (:func:`pick_cursors`): single-line statements of a code cell (no imports, no
``def``/``class`` lines, no magics) that use a name bound by an earlier cell; the cursor
stands after ``=`` of an assignment, else after the indentation, and the hidden target is
the rest of the line. At most ``--cursors-per-notebook``, spread evenly over the notebook.

Scores, on the first line of the service's final output (empty: nothing offered): exact
match and edit similarity against the hidden target (``evaluate.score``); and
*hallucinated*: the suggestion names something that does not exist when the cursor's cell
runs: a name neither in the kernel, nor a builtin, nor bound earlier in the cell or in the
suggestion itself; an attribute the kernel's object lacks (``np.foo``); a column the
DataFrame lacks (``df["foo"]``, ``df.foo``). The kernel answers those checks itself
(:data:`CHECK_EXPRESSION`, a silent ``user_expressions`` request) before the cell runs.
The rate is over the suggestions offered that parse (:func:`references`).

A notebook whose cell fails (a download, a missing optional package) stops there; its
cursors so far count, and the report lists why it stopped.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from results_io import publish
from sampling import quantile, spread

from jupyter_ds.finetune.evaluate import score as score_line

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_RELEASE = ("statsmodels", "0.14.6")
NOTEBOOKS_SHA256 = "4d17873d3e607d398b85126cd4ed7aad89e4e9d89fc744cdab1af3189a996c2a"
NOTEBOOKS_DIR = "examples/notebooks/"
# ``kernel_prompt``: kernel context in the prompt only (kernel_grounding off); ``kernel``:
# the server's default, the prompt and the check of the suggestion against the kernel.
ARMS = ("none", "kernel_prompt", "kernel")


def log(text: str) -> None:
    print(f"[context-notebook] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ the notebooks


def fetch_notebooks(cache: Path) -> dict[str, dict[str, Any]]:
    """name -> notebook JSON, from the pinned sdist (downloaded once into ``cache``)."""
    name, version = NOTEBOOKS_RELEASE
    archive = cache / f"{name}-{version}.tar.gz"
    if not archive.exists() or _sha256(archive) != NOTEBOOKS_SHA256:
        cache.mkdir(parents=True, exist_ok=True)
        index = urllib.request.Request(f"https://pypi.org/simple/{name}/", headers={
            "Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(index, timeout=60) as answer:
            files = json.load(answer)["files"]
        url = next(f["url"] for f in files if f["filename"] == archive.name)
        log(f"downloading {url}")
        partial = archive.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=300) as answer, open(partial, "wb") as out:
            while chunk := answer.read(1 << 20):
                out.write(chunk)
        if _sha256(partial) != NOTEBOOKS_SHA256:
            partial.unlink()
            raise SystemExit(f"{archive.name}: sha256 differs from the pinned one")
        partial.replace(archive)
    books: dict[str, dict[str, Any]] = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            _head, _, rest = member.name.partition("/")
            if rest.startswith(NOTEBOOKS_DIR) and rest.endswith(".ipynb") and member.isfile():
                data = tar.extractfile(member)
                if data is not None:
                    books[Path(rest).name] = json.load(data)
    return dict(sorted(books.items()))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def code_cells(book: dict[str, Any]) -> list[dict[str, str]]:
    """The notebook's cells as a client sends them: source text and type."""
    cells = []
    for cell in book.get("cells", []):
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else str(source)
        cells.append({"cell_type": cell.get("cell_type", "code"), "source": text})
    return cells


# ---------------------------------------------------------------------------- cursors


@dataclass(frozen=True)
class Cursor:
    """One cursor in a cell: the cell text before and after it, and the hidden rest of
    its line. ``head`` is the line's text before the cursor."""

    cell: int
    line: int
    prefix: str
    suffix: str
    target: str
    head: str


def bound_names(source: str) -> set[str]:
    """Names a cell's code binds at its top level and below (assignments, imports,
    ``def``/``class``, loop and ``with`` targets); empty for code that does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
    return names


def pick_cursors(source: str, known: set[str], cell: int) -> list[Cursor]:
    """Every cursor of one cell (see the module's docstring), in line order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # magics, shell escapes: no cursors in this cell
        return []
    lines = source.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    found: dict[int, Cursor] = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr,
                                 ast.Return)):
            continue
        if node.lineno != node.end_lineno or node.value is None:
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a bare string (a docstring)
        uses = {n.id for n in ast.walk(node.value)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        if not uses & known:
            continue
        row = node.lineno - 1
        text = lines[row]
        if isinstance(node, ast.Expr):
            col = len(text) - len(text.lstrip())
        else:
            col = _char_col(text, node.value.col_offset)
        target = text[col:].rstrip()
        if len(target.strip()) < 4 or "#" in target:
            continue
        start = offsets[row] + col
        found[row] = Cursor(cell=cell, line=row, prefix=source[:start],
                            suffix=source[offsets[row] + len(text):], target=target,
                            head=text[:col])
    return [found[row] for row in sorted(found)]


def _char_col(text: str, byte_col: int) -> int:
    """ast's UTF-8 byte offset as a character offset."""
    return len(text.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


def plan(cells: list[dict[str, str]], per_notebook: int) -> dict[int, list[Cursor]]:
    """Cell index -> its chosen cursors, spread over the notebook."""
    known: set[str] = set()
    candidates: list[Cursor] = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        if known:
            candidates.extend(pick_cursors(cell["source"], known, i))
        known |= bound_names(cell["source"])
    chosen: dict[int, list[Cursor]] = {}
    for cursor in spread(candidates, per_notebook):
        chosen.setdefault(cursor.cell, []).append(cursor)
    return chosen


# ------------------------------------------------------------------ hallucinated names


@dataclass(frozen=True)
class Ref:
    """Something a suggestion names: ``("name", x)``, ``("attr", x, a)``, ``("col", x, c)``."""

    kind: str
    base: str
    member: str = ""

    def as_list(self) -> list[str]:
        return [self.kind, self.base, self.member]


def references(head: str, answer: str, cell_prefix: str) -> list[Ref] | None:
    """What the completed line (``head`` + ``answer``) names that must exist for it to
    run; None when the line does not parse even closed (then it is not judged).

    Names bound on the line itself (comprehension and lambda variables, walrus targets,
    assignment targets) or earlier in the cell (``cell_prefix``) are not asked about.
    """
    tree = _parse_line(head + answer)
    if tree is None:
        return None
    local = bound_names(_complete_lines(cell_prefix)) | _line_bindings(tree)
    refs: list[Ref] = []
    seen: set[tuple[str, str, str]] = set()

    def add(ref: Ref) -> None:
        key = (ref.kind, ref.base, ref.member)
        if key not in seen:
            seen.add(key)
            refs.append(ref)

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id not in local:
                add(Ref("name", node.id))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id not in local:
                add(Ref("attr", node.value.id, node.attr))
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            if node.value.id in local:
                continue
            for key in _string_keys(node.slice):
                add(Ref("col", node.value.id, key))
    return refs


def _string_keys(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [e.value for e in node.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def _line_bindings(tree: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
             and isinstance(n.ctx, (ast.Store, ast.Del))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Lambda):
            names |= {a.arg for a in [*node.args.args, *node.args.kwonlyargs,
                                      *node.args.posonlyargs]}
    return names


def _parse_line(line: str) -> ast.AST | None:
    """The line as a module, closed where it was cut: open brackets and strings closed,
    a block header given a body. None if nothing makes it parse."""
    text = line.strip()
    if not text:
        return None
    closers = _closers(text)
    for attempt in (text, text + closers, text + closers + " pass",
                    text + closers + ": pass"):
        try:
            return ast.parse(attempt)
        except SyntaxError:
            continue
    return None


def _closers(text: str) -> str:
    """The brackets (and a string quote) left open at the end of ``text``."""
    stack: list[str] = []
    pairs = {"(": ")", "[": "]", "{": "}"}
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            break
        elif ch in pairs:
            stack.append(pairs[ch])
        elif ch in ")]}" and stack:
            stack.pop()
        i += 1
    return quote + "".join(reversed(stack))


def _complete_lines(prefix: str) -> str:
    """The cell's lines before the cursor's line, as far as they parse on their own."""
    lines = prefix.split("\n")[:-1]
    while lines:
        text = "\n".join(lines)
        try:
            ast.parse(text)
            return text
        except SyntaxError:
            lines.pop()
    return ""


# The kernel judges each reference: a name in its namespace or a builtin; an attribute
# of the named object; a column of the named DataFrame. Read-only except hasattr, which
# may run a property of the benchmark's own notebook objects (never a user's: this is a
# benchmark), and defines nothing in the namespace.
CHECK_EXPRESSION = (
    "(lambda ns, b, checks: __import__('json').dumps(["
    "(c[1] in ns or hasattr(b, c[1])) if c[0] == 'name' else "
    "(c[1] not in ns or hasattr(ns[c[1]], c[2])) if c[0] == 'attr' else "
    "(c[1] not in ns or not hasattr(ns[c[1]], 'columns') "
    "or c[2] in [str(x) for x in ns[c[1]].columns])"
    " for c in checks]))(get_ipython().user_ns, __import__('builtins'), {checks})"
)


# ----------------------------------------------------------------------- the kernel


class Lab:
    """Jupyter server's kernel and session managers, as the server has them (without its
    HTTP side): notebooks live under ``root/notebooks``."""

    def __init__(self, root: Path) -> None:
        from jupyter_client.kernelspec import KernelSpecManager
        from jupyter_server.services.contents.manager import ContentsManager
        from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
        from jupyter_server.services.sessions.sessionmanager import SessionManager

        (root / "notebooks").mkdir(parents=True, exist_ok=True)
        self.kernels = AsyncMappingKernelManager(
            root_dir=str(root), connection_dir=str(root),
            kernel_spec_manager=KernelSpecManager())
        self.sessions = SessionManager(kernel_manager=self.kernels,
                                       contents_manager=ContentsManager(root_dir=str(root)))


class NotebookKernel:
    """A notebook's kernel, started through the session manager, driven like a frontend."""

    def __init__(self, manager: Any, path: str) -> None:
        self.manager = manager
        self.path = path
        self.client = manager.client()
        self.client.start_channels()

    async def ready(self) -> None:
        await self.client.wait_for_ready(timeout=120)
        await self.settle()

    async def run(self, code: str, timeout: float) -> dict[str, Any]:
        """A normal execute (as the user's Shift+Enter); its reply content."""
        msg_id = self.client.execute(code, allow_stdin=False)
        reply = await self.client._async_recv_reply(msg_id, timeout=timeout)
        await self.settle()
        return reply["content"]

    async def expression(self, expression: str, timeout: float = 60) -> Any:
        """A silent ``user_expressions`` evaluation, its JSON value (None on error)."""
        msg_id = self.client.execute("", silent=True, store_history=False,
                                     user_expressions={"x": expression}, allow_stdin=False)
        reply = await self.client._async_recv_reply(msg_id, timeout=timeout)
        await self.settle()
        value = reply["content"].get("user_expressions", {}).get("x", {})
        if value.get("status") != "ok":
            return None
        return json.loads(ast.literal_eval(value["data"]["text/plain"]))

    async def settle(self) -> None:
        """Until the server's own view of the kernel is idle again (the context source
        reads it to tell a busy kernel)."""
        deadline = time.monotonic() + 30
        while self.manager.execution_state != "idle" and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.03)

    def close(self) -> None:
        self.client.stop_channels()


# ------------------------------------------------------------------------------ run


@dataclass
class Row:
    notebook: str
    cell: int
    line: int
    target: str
    answers: dict[str, str] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    refs: dict[str, list[list[str]] | None] = field(default_factory=dict)
    missing: dict[str, list[list[str]]] = field(default_factory=dict)


async def complete(service: Any, cells: list[dict[str, str]], cursor: Cursor, path: str,
                   max_tokens: int) -> tuple[str, float, dict[str, Any] | None]:
    """One completion as a notebook client asks for it: its first line, ms, context."""
    from jupyter_ds.completion.requests import CompleteRequest, ContextCell

    req = CompleteRequest(
        prefix=cursor.prefix, suffix=cursor.suffix, path=path, language="python",
        max_tokens=max_tokens, temperature=0.0,
        cells=[ContextCell(source=c["source"], cell_type=c["cell_type"])
               for c in cells[:cursor.cell]])
    from jupyter_ds.errors import ApiError

    started = time.perf_counter()
    try:
        data = await service.complete(req)
    except ApiError as exc:  # e.g. over the server's 30 s: counted, nothing offered
        log(f"  {path}: {exc}")
        return "", (time.perf_counter() - started) * 1000, {"state": "failed"}
    ms = (time.perf_counter() - started) * 1000
    kernel = next((c for c in data.get("context") or [] if c.get("source") == "kernel"), None)
    return data["output"].split("\n", 1)[0], ms, kernel


async def run_notebook(name: str, cells: list[dict[str, str]], cursors: dict[int, list[Cursor]],
                       lab: Any, services: dict[str, Any], source: Any, args: Any
                       ) -> tuple[list[Row], dict[str, Any]]:
    """Run one notebook in a new kernel, completing its cursors before their cells run."""
    path = f"notebooks/{name}"
    session = await lab.sessions.create_session(path=path, kernel_name="python3",
                                                type="notebook", name=name)
    kernel = NotebookKernel(lab.kernels.get_kernel(session["kernel"]["id"]), path)
    rows: list[Row] = []
    status: dict[str, Any] = {"cells_run": 0, "stopped": None, "probe_ms": []}
    started = time.monotonic()
    try:
        await kernel.ready()
        # Figures drawn off screen, not sent back as images (nobody looks at them).
        await kernel.run("try:\n    import matplotlib\n    get_ipython().run_line_magic("
                         "'matplotlib', 'agg')\nexcept ImportError:\n    pass", timeout=60)
        last = max(cursors) if cursors else -1
        for i, cell in enumerate(cells):
            if i > last:
                break
            if i in cursors:
                t = time.perf_counter()
                await source.snapshot(path, asyncio.get_running_loop().time() + 30)
                status["probe_ms"].append(round((time.perf_counter() - t) * 1000, 1))
                for k, cursor in enumerate(cursors[i]):
                    row = Row(name, i, cursor.line, cursor.target.strip())
                    # Alternate which arm goes first: neither always finds a warm cache.
                    order = ("none", "kernel") if k % 2 == 0 else ("kernel", "none")
                    for arm in (*order, "kernel_prompt"):
                        text, ms, ctx = await complete(services[arm], cells, cursor, path,
                                                       args.max_tokens)
                        row.answers[arm] = text
                        if arm != "kernel_prompt":
                            row.ms[arm] = round(ms, 1)
                        if arm == "kernel":
                            row.context = ctx or {}
                        refs = references(cursor.head, text, cursor.prefix) if text else None
                        row.refs[arm] = [r.as_list() for r in refs] if refs is not None else None
                    await judge(kernel, row)
                    rows.append(row)
            if cell["cell_type"] != "code" or not cell["source"].strip():
                continue
            if time.monotonic() - started > args.notebook_timeout:
                status["stopped"] = f"cell {i}: over {args.notebook_timeout:.0f} s"
                break
            try:
                reply = await kernel.run(cell["source"], timeout=args.cell_timeout)
            except TimeoutError:
                status["stopped"] = f"cell {i}: over {args.cell_timeout:.0f} s"
                break
            if reply.get("status") != "ok":
                why = f"{reply.get('ename')}: {str(reply.get('evalue', ''))[:80]}"
                status["stopped"] = f"cell {i}: {why}"
                break
            status["cells_run"] = i + 1
    finally:
        kernel.close()
        await lab.sessions.delete_session(session["id"])
    return rows, status


async def judge(kernel: NotebookKernel, row: Row) -> None:
    """Ask the kernel which of the row's references do not exist."""
    wanted: list[list[str]] = []
    for refs in row.refs.values():
        for ref in refs or []:
            if ref not in wanted:
                wanted.append(ref)
    if not wanted:
        for arm in row.refs:
            row.missing[arm] = []
        return
    verdicts = await kernel.expression(CHECK_EXPRESSION.format(checks=json.dumps(wanted)))
    if not isinstance(verdicts, list) or len(verdicts) != len(wanted):
        verdicts = [True] * len(wanted)  # could not judge: count nothing as made up
    ok = {json.dumps(ref): bool(v) for ref, v in zip(wanted, verdicts, strict=False)}
    for arm, refs in row.refs.items():
        row.missing[arm] = [ref for ref in refs or [] if not ok[json.dumps(ref)]]


# ------------------------------------------------------------------------ summaries


def summarize(rows: list[Row], arm: str) -> dict[str, Any]:
    """One arm's figures over ``rows``, in percent where a share."""
    scores = [score_line(row.answers.get(arm, ""), row.target) for row in rows]
    judged = [row for row in rows if row.refs.get(arm) is not None]
    made_up = [row for row in judged if row.missing.get(arm)]
    columns = [row for row in judged
               if any(ref[0] == "col" for ref in row.missing.get(arm, []))]
    attributes = [row for row in judged
                  if any(ref[0] == "attr" for ref in row.missing.get(arm, []))]
    n = len(rows) or 1
    return {
        "cursors": len(rows),
        "exact_match": round(100 * sum(s["exact_match"] for s in scores) / n, 1),
        "edit_similarity": round(100 * sum(s["edit_similarity"] for s in scores) / n, 1),
        "offered": round(100 * sum(s["offered"] for s in scores) / n, 1),
        "judged": len(judged),
        "hallucinated": round(100 * len(made_up) / len(judged), 1) if judged else None,
        "hallucinated_columns": round(100 * len(columns) / len(judged), 1) if judged else None,
        "hallucinated_attributes": round(100 * len(attributes) / len(judged), 1)
        if judged else None,
        "ms_p50": quantile([row.ms[arm] for row in rows if arm in row.ms], 0.5),
        "ms_p95": quantile([row.ms[arm] for row in rows if arm in row.ms], 0.95),
    }


def context_cost(rows: list[Row], probes: list[float]) -> dict[str, Any]:
    states: dict[str, int] = {}
    for row in rows:
        state = row.context.get("state", "absent")
        states[state] = states.get(state, 0) + 1
    ms = [float(row.context["ms"]) for row in rows if "ms" in row.context]
    tokens = [int(row.context.get("tokens", 0)) for row in rows if row.context]
    return {
        "states": states,
        "context_ms_p50": quantile(ms, 0.5), "context_ms_p95": quantile(ms, 0.95),
        "probe_ms_p50": quantile(probes, 0.5), "probe_ms_p95": quantile(probes, 0.95),
        "tokens_mean": round(statistics.mean(tokens), 1) if tokens else None,
    }


def markdown(report: dict[str, Any]) -> str:
    arms = report["arms"]
    out = [
        f"Kernel context on {report['cursors']} cursors of {report['notebooks_used']} "
        f"statsmodels {NOTEBOOKS_RELEASE[1]} example notebooks run in a real kernel; "
        f"model {report['model']} (adapter {report['adapter']}), greedy, same cursors.",
        "",
        "| context | exact match | edit similarity | offered | hallucinated (of judged) "
        "| bad columns | bad attributes | judged | completion p50 / p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        a = arms[arm]
        out.append(
            f"| {arm} | {a['exact_match']}% | {a['edit_similarity']}% | {a['offered']}% "
            f"| {a['hallucinated']}% | {a['hallucinated_columns']}% "
            f"| {a['hallucinated_attributes']}% | {a['judged']} "
            + (f"| {a['ms_p50']} / {a['ms_p95']} |" if a["ms_p50"] is not None
               else "| (kernel's generation, cached) |"))
    cost = report["kernel_context"]
    out += [
        "",
        f"Kernel source: in the completion p50 {cost['context_ms_p50']} ms, p95 "
        f"{cost['context_ms_p95']} ms (states {cost['states']}); the first probe after a "
        f"cell ran p50 {cost['probe_ms_p50']} ms, p95 {cost['probe_ms_p95']} ms; "
        f"{cost['tokens_mean']} tokens on average.",
        "",
        "Hallucinated suggestions, relative to `none`: " + ", ".join(
            f"{arm} {ratio}" for arm, ratio in report["hallucination_ratio"].items()) + ".",
        "",
    ]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ main


async def run(args: argparse.Namespace, books: dict[str, dict[str, Any]] | None = None,
              engine: Any = None) -> dict[str, Any]:
    """The benchmark over ``books`` (name -> notebook JSON; default: the pinned release's)
    on ``engine`` (default: ``--engine-class`` built as the server builds it, loaded)."""
    from ds_engine.factory import make_engine
    from ds_engine.interface import EngineConfig

    from jupyter_ds.completion.service import CompletionService, CompletionSettings
    from jupyter_ds.context import ContextGatherer
    from jupyter_ds.context.kernel import KernelContext

    if books is None:
        books = fetch_notebooks(Path(args.cache))
    if args.notebooks:
        wanted = set(args.notebooks.split(","))
        books = {k: v for k, v in books.items() if k in wanted or k.removesuffix(".ipynb")
                 in wanted}
    if args.limit:
        books = dict(list(books.items())[:args.limit])
    log(f"{len(books)} notebooks")

    if engine is None:
        engine = make_engine(args.engine_class, EngineConfig(model_path=args.model or None))
    t = time.perf_counter()
    if hasattr(engine, "load"):
        engine.load()
    info = engine.info().to_dict()
    log(f"loaded {info.get('name')} in {time.perf_counter() - t:.1f} s "
        f"(adapter {info.get('adapter')})")

    work = Path(args.cache) / "lab"
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ["IPYTHONDIR"] = str(work / "ipython")  # not the user's profile
    lab = Lab(work)
    source = KernelContext(lab.sessions, lab.kernels)  # the server's defaults (0.1 s budget)
    settings = CompletionSettings()
    kernel = ContextGatherer([source])
    services = {
        "none": CompletionService(engine, settings),
        "kernel_prompt": CompletionService(
            engine, dataclasses.replace(settings, kernel_grounding=False), kernel),
        "kernel": CompletionService(engine, settings, kernel)}
    rows: list[Row] = []
    stops: dict[str, Any] = {}
    probes: list[float] = []
    started = time.monotonic()
    try:
        for n, (name, book) in enumerate(books.items(), 1):
            cells = code_cells(book)
            cursors = plan(cells, args.cursors_per_notebook)
            if not cursors:
                stops[name] = {"cursors": 0, "stopped": "no cursors"}
                continue
            t = time.monotonic()
            got, status = await run_notebook(name, cells, cursors, lab, services, source, args)
            rows += got
            probes += status.pop("probe_ms")
            stops[name] = {"cursors": len(got), **status}
            done = sum(len(v) for v in cursors.values())
            log(f"{n}/{len(books)} {name}: {len(got)}/{done} cursors, "
                f"{time.monotonic() - t:.0f} s"
                + (f", stopped at {status['stopped']}" if status["stopped"] else "")
                + f" (total {len(rows)} cursors, {time.monotonic() - started:.0f} s)")
    finally:
        source.close()
        await lab.kernels.shutdown_all(now=True)
        if hasattr(engine, "close"):
            engine.close()

    arms = {arm: summarize(rows, arm) for arm in ARMS}
    none_rate = arms["none"]["hallucinated"]
    return {
        "benchmark": "context_notebook",
        "method": "statsmodels example notebooks run cell by cell in a real kernel; each "
                  "cursor completed without and with kernel context before its cell runs",
        "notebooks_release": "==".join(NOTEBOOKS_RELEASE),
        "model": info.get("name"), "adapter": info.get("adapter"),
        "max_tokens": args.max_tokens,
        "notebooks": len(books),
        "notebooks_used": sum(1 for s in stops.values() if s.get("cursors")),
        "cursors": len(rows),
        "arms": arms,
        # The target: the rate with kernel context at most half the rate without.
        "hallucination_ratio": {
            arm: round(arms[arm]["hallucinated"] / none_rate, 2)
            if none_rate and arms[arm]["hallucinated"] is not None else None
            for arm in ARMS[1:]},
        "kernel_context": context_cost(rows, probes),
        "per_notebook": stops,
        "seconds": round(time.monotonic() - started, 1),
        "rows": [row.__dict__ for row in rows] if args.rows else None,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=str(ROOT / "build" / "bench-context"),
                        help="where the sdist and the kernels' working folder go")
    parser.add_argument("--notebooks", default="", help="comma-separated names (default all)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many notebooks")
    parser.add_argument("--cursors-per-notebook", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--cell-timeout", type=float, default=120.0)
    parser.add_argument("--notebook-timeout", type=float, default=300.0)
    parser.add_argument("--engine-class", default="ds_engine.local.LocalEngine")
    parser.add_argument("--model", default="", help="model path (default: the embedded one)")
    parser.add_argument("--rows", action="store_true", help="every cursor in the JSON")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--name", default="context_notebook")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    publish(report, markdown(report), args.out, args.name)
    return report


if __name__ == "__main__":
    main()
