"""Repository context: what it adds to cross-file completion, and what it costs.

Packages: real multi-file pure-Python packages from PyPI, pinned (:data:`PACKAGES`,
``--packages`` to override), not written here and not the standard library that trained
the shipped FIM adapter. Each wheel is fetched once with ``pip download --no-deps
--only-binary :all:`` into ``build/bench-context/wheels`` and its ``.py`` files (no
``*.dist-info``/``*.data``) are extracted to ``build/bench-context/repos/<name>/``: the
root the repository context indexes, with the package folder inside it so that absolute
imports (``from click.core import X``) resolve. Files whose content digest is listed in the
adapter's ``data_manifest.json`` would be dropped and are reported (none expected).

Cursors (:func:`file_cursors`, with :mod:`ast`): in each file, the lines that use a name
bound by an import of ANOTHER file of the package (``from .mod import name``, ``from
pkg.mod import name``, ``from . import name``) or an attribute of a local module imported
whole (``mod.attr`` after ``import pkg.mod as mod`` or ``from . import mod``); names the
file binds again itself are left out. Not chosen: import lines, ``def``/``class`` headers
(decorators are code lines), docstrings and bare strings, uses inside f-strings, lines
with a comment after the cursor. The cursor stands right before the first such name of
the line (for ``mod.attr``: right after ``mod.``); the prefix is the file up to there,
the suffix the rest of the file from that line's break, the hidden target the rest of
the line (skipped when shorter than :data:`MIN_TARGET` characters stripped). At most
``--cursors-per-package`` per package, spread evenly over the candidates sorted by
(path, line). ``--cursors mid-line`` takes the other set instead (:func:`midline_cursors`:
the first place after ``= ``, ``(``, ``return `` or ``, `` on each code line of the files
that import from another file of the package), which shows what a context option costs
where the typed name is mostly not another file's; it is written to
``context_repository_midline.{json,md}``.

Arms: one engine as the server builds it by default (``LocalEngine``, dtype and
quantization ``auto``, the ``auto`` adapter: the embedded SmolLM2-135M with its shipped
FIM adapter, INT8 on CPU; the result cache off so that no arm is answered from the
other's identical prompt), behind the server's ``CompletionService`` with its default
settings, greedy, ``--max-tokens`` tokens: ``none`` (no context source), ``repository``
(``ContextGatherer([RepositoryContext.for_root(root)])`` with the server's default limits
and 50 ms budget, fully indexed and every module's symbols parsed before the run: warm;
the service's default settings) and ``repository_nudged`` (the same, with
``context_start_bias`` ``--start-bias``, 4 by default: the first token biased toward the
names the block shows, mid-line; off in the server by default). The arms answer the same
cursors with the same path, interleaved cursor by cursor, their order alternating; one
warm-up completion per arm first.

Metrics per arm, per package and in total: exact match and edit similarity of the first
line of the service's final output against the target, both stripped
(``evaluate.score``), and the share offered (non-blank), in percent of the cursors; the
EM gain in points and relative to ``none``; completion latency p50/p95
(``service.complete`` wall time). For the source: its own ms p50/p95 (``data.context``),
its tokens (mean), its states (used/empty/timeout/error), and how often the cursor's
name was among the definitions it used.

    .venv/bin/python benchmarks/context_repository.py [--packages click==8.1.7 ...]
        [--cursors cross-file|mid-line] [--cursors-per-package 20] [--max-tokens 48]
        [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import dataclasses
import hashlib
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
import tokenize
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from results_io import publish
from sampling import percent, quantile, spread

from jupyter_ds.finetune.evaluate import score as score_line

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench-context"
PACKAGES = (
    "click==8.1.7",
    "jinja2==3.1.4",
    "httpx==0.27.2",
    "attrs==24.2.0",
    "requests==2.32.3",
    "flask==3.0.3",
)
ARMS = ("none", "repository", "repository_nudged")
START_BIAS = 4.0  # the nudged arm's context_start_bias
MIN_TARGET = 4  # characters of the hidden rest of the line, stripped
SOURCE = "repository"
TARGET_GAIN_PERCENT = 30.0  # EM, relative, repository vs none
TARGET_SOURCE_P50_MS = 50.0
SNIPPET = re.compile(r":L\d+-L\d+$")  # how the source names a snippet it used


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- packages


@dataclass
class Package:
    """One repository root: a package's files as its wheel ships them."""

    name: str
    version: str
    root: Path
    wheel: str | None = None


def split_spec(spec: str) -> tuple[str, str]:
    name, sep, version = spec.partition("==")
    if not sep or not name.strip() or not version.strip():
        raise ValueError(f"{spec!r}: pin it as NAME==VERSION")
    return name.strip(), version.strip()


def fetch_wheel(spec: str, wheels: Path) -> Path:
    """The wheel of ``spec`` in ``wheels``, downloaded with pip unless already there."""
    name, version = split_spec(spec)
    stem = f"{name.lower().replace('-', '_')}-{version}-"

    def found() -> Path | None:
        for path in sorted(wheels.glob("*.whl")):
            if path.name.lower().startswith(stem):
                return path
        return None

    if (path := found()) is not None:
        return path
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"  pip download {spec}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                    ":all:", "--quiet", spec, "-d", str(wheels)], check=True)
    if (path := found()) is None:
        raise SystemExit(f"pip downloaded no wheel for {spec} into {wheels}")
    return path


def extract_package(wheel: Path, dest: Path) -> list[str]:
    """The wheel's ``.py`` files (not its metadata) written fresh under ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    written = []
    with zipfile.ZipFile(wheel) as zf:
        for member in sorted(zf.namelist()):
            top = member.split("/", 1)[0]
            if (not member.endswith(".py") or top.endswith((".dist-info", ".data"))
                    or member.startswith("/") or ".." in member.split("/")):
                continue
            target = dest / member
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(member))
            written.append(member)
    return written


def python_files(root: Path) -> list[str]:
    """The ``.py`` files under ``root``, relative, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.is_file())


def read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8").replace("\r\n", "\n")
    except (OSError, UnicodeDecodeError):
        return None


def digest16(text: str) -> str:
    """The content digest a fine-tuning manifest lists (sha256 of the text, 16 hex)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def manifest_digests(path: Path | None) -> tuple[set[str], dict[str, Any]]:
    """The content digests of every file a ``data_manifest.json`` lists (train and
    held out), and a note on it."""
    if path is None or not path.is_file():
        return set(), {"path": None if path is None else str(path), "files": 0}
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = list(data.get("train", [])) + list(data.get("heldout", []))
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return {d for _, d in entries}, {"path": str(shown), "root": data.get("root"),
                                    "files": len(entries)}


def in_manifest(root: Path, files: Iterable[str], digests: set[str]) -> list[str]:
    """The files under ``root`` whose content the manifest lists."""
    out = []
    for rel in files:
        text = read_text(root / rel)
        if text is not None and digest16(text) in digests:
            out.append(rel)
    return out


# --------------------------------------------------------------------------- cursors


@dataclass(frozen=True)
class Cursor:
    """One cross-file cursor: ``prefix + target + suffix`` is the file."""

    package: str
    path: str  # relative to the package's root
    line: int  # 1-based
    column: int  # characters into the line
    name: str  # the cross-file name the cursor stands before
    origin: str  # the file that binds it (the module file for ``mod.attr``)
    kind: str  # "import" (an imported name) or "attribute" (``mod.attr``)
    prefix: str
    target: str
    suffix: str


def module_names(files: Iterable[str]) -> dict[str, str]:
    """Dotted module name -> file, for the package's files (``a/__init__.py`` is ``a``)."""
    out = {}
    for rel in files:
        if not rel.endswith(".py"):
            continue
        parts = rel[:-3].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and all(p.isidentifier() for p in parts):
            out[".".join(parts)] = rel
    return out


def _from_base(rel: str, module: str | None, level: int) -> str | None:
    """The dotted module a ``from`` import in the file ``rel`` names; None when a relative
    import climbs above the root."""
    if not level:
        return module or None
    package = rel[:-3].split("/")[:-1]  # a module's package; ``__init__``'s is its own
    if level - 1 > len(package):
        return None
    base = package[: len(package) - (level - 1)]
    return ".".join(base + (module.split(".") if module else []))


def cross_file_bindings(tree: ast.AST, rel: str, modules: dict[str, str]
                        ) -> tuple[dict[str, str], dict[str, str]]:
    """(imported name -> the other file it comes from, local module -> its file): what
    the file ``rel`` binds by importing the package's other files."""
    names: dict[str, str] = {}
    mods: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _from_base(rel, node.module, node.level)
            if base is None:
                continue
            for alias in node.names:
                if alias.name == "*":
                    continue
                local = alias.asname or alias.name
                sub = modules.get(f"{base}.{alias.name}" if base else alias.name)
                if sub is not None:  # ``from . import mod``: a module
                    if sub != rel:
                        mods[local] = sub
                elif base in modules and modules[base] != rel:
                    names[local] = modules[base]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    found = modules.get(alias.name)
                    local = alias.asname
                else:  # ``import a.b`` binds ``a``
                    local = alias.name.split(".")[0]
                    found = modules.get(local)
                if found is not None and found != rel:
                    mods[local] = found
    # A name the file binds again itself (assigned, a parameter, a def...) is ambiguous.
    rebound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            rebound.add(node.id)
        elif isinstance(node, ast.arg):
            rebound.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            rebound.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            rebound.add(node.name)
    return ({k: v for k, v in names.items() if k not in rebound},
            {k: v for k, v in mods.items() if k not in rebound})


def excluded_lines(tree: ast.AST) -> set[int]:
    """Import lines, ``def``/``class`` headers, and docstrings or other bare strings."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) or (
                isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant | ast.JoinedStr)
                and isinstance(getattr(node.value, "value", ""), str)):
            out.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = node.body[0].lineno if node.body else node.lineno + 1
            out.update(range(node.lineno, max(body, node.lineno + 1)))
    return out


def comment_columns(text: str) -> dict[int, int]:
    """Line -> column where its comment starts."""
    out: dict[int, int] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.start[1]
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def _char_column(line: str, byte_offset: int) -> int:
    return len(line.encode("utf-8")[:byte_offset].decode("utf-8", errors="replace"))


def importing_file(text: str, rel: str, modules: dict[str, str]
                   ) -> tuple[ast.AST, dict[str, str], dict[str, str]] | None:
    """(tree, names, modules) of :func:`cross_file_bindings` for a file that parses and
    imports from another file of the package; None for any other file."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    names, mods = cross_file_bindings(tree, rel, modules)
    return (tree, names, mods) if names or mods else None


def file_cursors(package: str, rel: str, text: str, modules: dict[str, str]) -> list[Cursor]:
    """The candidate cursors of one file, by line (one per line, its first use)."""
    found = importing_file(text, rel, modules)
    if found is None:
        return []
    tree, names, mods = found
    lines = text.split("\n")
    skip = excluded_lines(tree)
    in_fstring: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            in_fstring.update(id(n) for n in ast.walk(node))
    uses: dict[int, tuple[int, str, str, str]] = {}  # line -> (column, name, origin, kind)
    for node in ast.walk(tree):
        if id(node) in in_fstring:
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
            row, name, origin, kind = node.lineno, node.id, names[node.id], "import"
            col = _char_column(lines[row - 1], node.col_offset)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and isinstance(node.value.ctx, ast.Load) and node.value.id in mods
              and node.end_lineno is not None and node.end_col_offset is not None):
            row, name, origin, kind = node.end_lineno, node.attr, mods[node.value.id], "attribute"
            col = _char_column(lines[row - 1], node.end_col_offset) - len(name)
        else:
            continue
        if row in skip or lines[row - 1][col:col + len(name)] != name:
            continue
        if row not in uses or col < uses[row][0]:
            uses[row] = (col, name, origin, kind)
    comments = comment_columns(text)
    offsets = [0]
    for line in lines[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    out = []
    for row in sorted(uses):
        col, name, origin, kind = uses[row]
        line = lines[row - 1]
        if row in comments or len(line[col:].strip()) < MIN_TARGET:
            continue  # a comment after the cursor is no code to predict
        start = offsets[row - 1]
        cursor = Cursor(package, rel, row, col, name, origin, kind, prefix=text[:start + col],
                        target=line[col:], suffix=text[start + len(line):])
        assert cursor.prefix + cursor.target + cursor.suffix == text
        out.append(cursor)
    return out


MID_LINE = re.compile(r"= |\(|return |, ")  # where a mid-line cursor may stand


def midline_cursors(package: str, rel: str, text: str, modules: dict[str, str]
                    ) -> list[Cursor]:
    """The other kind of cursor, for what a context option costs where the typed name is
    not another file's: in a file that imports from another file of the package (so the
    block is there), on each code line (the lines :func:`file_cursors` leaves out are left
    out here too) the first place after ``= ``, ``(``, ``return `` or ``, `` whose rest of
    the line is at least :data:`MIN_TARGET` characters; kind ``mid-line``, no name."""
    found = importing_file(text, rel, modules)
    if found is None:
        return []
    skip = excluded_lines(found[0])
    comments = comment_columns(text)
    out = []
    offset = 0
    for row, line in enumerate(text.split("\n"), 1):
        start = offset
        offset += len(line) + 1
        if row in skip or row in comments or not line.strip():
            continue
        for match in MID_LINE.finditer(line):
            col = match.end()
            if len(line[col:].strip()) >= MIN_TARGET:
                out.append(Cursor(package, rel, row, col, "", "", "mid-line",
                                  prefix=text[:start + col], target=line[col:],
                                  suffix=text[start + len(line):]))
                break
    return out


CURSOR_SETS = {"cross-file": file_cursors, "mid-line": midline_cursors}


def package_cursors(package: str, root: Path, per_package: int,
                    leave_out: Iterable[str] = (), kind: str = "cross-file"
                    ) -> tuple[list[Cursor], int]:
    """(the sampled cursors, how many candidates there were) of the package at ``root``;
    ``kind`` names the set (:data:`CURSOR_SETS`)."""
    files = python_files(root)
    modules = module_names(files)
    skip = set(leave_out)
    find = CURSOR_SETS[kind]
    candidates: list[Cursor] = []
    for rel in files:
        text = read_text(root / rel)
        if text is None or rel in skip:
            continue
        candidates.extend(find(package, rel, text, modules))
    candidates.sort(key=lambda c: (c.path, c.line))
    return spread(candidates, per_package), len(candidates)


# --------------------------------------------------------------------------- the run


def engine_args(args: argparse.Namespace) -> dict[str, Any]:
    """The server's defaults (``jupyter_ds/app.py``), the result cache off."""
    out: dict[str, Any] = {"dtype": args.dtype, "quantization": args.quantization,
                           "default_adapter": args.adapter, "result_cache_entries": 0}
    if args.model:
        out["model_path"] = args.model
    return out


def adapter_manifest(engine_info: dict[str, Any], args: argparse.Namespace) -> Path | None:
    """The ``data_manifest.json`` of the adapter the engine merged, if it has one."""
    from ds_engine.loader import resolve_default_adapter

    origin = "embedded" if not args.model else "folder"
    folder = resolve_default_adapter(args.adapter, origin)
    if folder is None or not engine_info.get("adapter"):
        return None
    return Path(folder) / "data_manifest.json"


async def answer(service: Any, cursor: Cursor, max_tokens: int) -> dict[str, Any]:
    """One completion at ``cursor``: the scored answer, its time and context report."""
    from jupyter_ds.completion.requests import CompleteRequest

    req = CompleteRequest(prefix=cursor.prefix, suffix=cursor.suffix, path=cursor.path,
                          language="python", max_tokens=max_tokens, temperature=0.0)
    started = time.perf_counter()
    try:
        data = await service.complete(req)
    except Exception as exc:  # an error is a miss, counted
        return {"error": f"{type(exc).__name__}: {exc}", "exact_match": False,
                "edit_similarity": 0.0, "offered": False, "answer": "",
                "ms": round((time.perf_counter() - started) * 1000, 1), "context": None}
    ms = round((time.perf_counter() - started) * 1000, 1)
    scored = score_line(data["output"], cursor.target)
    context = next((c for c in data.get("context", []) if c.get("source") == SOURCE), None)
    return {"answer": scored["answer"], "exact_match": scored["exact_match"],
            "edit_similarity": round(scored["edit_similarity"], 4),
            "offered": scored["offered"], "ms": ms,
            "prompt_tokens": data.get("prompt_tokens"), "context": context}


def warm_source(source: Any, timeout: float = 600.0) -> dict[str, Any]:
    """Index the root and parse every module's symbols, as a warm server has."""
    started = time.perf_counter()
    source.schedule_refresh()
    if not source.wait_idle(timeout):
        raise RuntimeError(f"indexing {source.index.root} took over {timeout} s")
    index = source.index
    for rel in sorted(index.files):
        index.parse_symbols(rel)
    return {"files": len(index.files), "parsed": index.parses, "skipped": dict(index.skipped),
            "seconds": round(time.perf_counter() - started, 2)}


async def run_package(engine: Any, package: Package, cursors: list[Cursor],
                      args: argparse.Namespace, done: list[int], total: int,
                      started: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every arm at every cursor of one package (their order alternating)."""
    from jupyter_ds.completion.service import CompletionService
    from jupyter_ds.context import ContextGatherer
    from jupyter_ds.context.repository import RepositoryContext

    source = RepositoryContext.for_root(package.root)
    assert source is not None
    try:
        warm = warm_source(source)
        settings = _settings()
        services = {
            "none": CompletionService(engine, settings, ContextGatherer([])),
            "repository": CompletionService(engine, settings, ContextGatherer([source])),
            "repository_nudged": CompletionService(
                engine, dataclasses.replace(settings, context_start_bias=args.start_bias),
                ContextGatherer([source])),
        }
        rows = []
        for k, cursor in enumerate(cursors):
            order = ARMS if (done[0] + k) % 2 == 0 else ARMS[::-1]
            row: dict[str, Any] = {
                "package": cursor.package, "path": cursor.path, "line": cursor.line,
                "column": cursor.column, "name": cursor.name, "origin": cursor.origin,
                "kind": cursor.kind, "target": cursor.target, "order": list(order)}
            for arm in order:
                row[arm] = await answer(services[arm], cursor, args.max_tokens)
            rows.append(row)
            n = done[0] + k + 1
            if n % 10 == 0 or n == total:
                log(f"  {n}/{total} cursors ({package.name}, "
                    f"{time.perf_counter() - started:.0f} s)")
        done[0] += len(cursors)
        return rows, warm
    finally:
        source.close()


# The two context arms send the same prompt: the one that runs second finds all of it in
# the engine's KV-prefix cache. Their latencies count only where they ran before the other.
TWINS = {"repository": "repository_nudged", "repository_nudged": "repository"}


def cold(row: dict[str, Any], arm: str) -> bool:
    """Whether ``arm`` answered ``row`` before the arm with the same prompt did."""
    twin = TWINS.get(arm)
    return twin is None or row["order"].index(arm) < row["order"].index(twin)


def summarize_arm(results: list[dict[str, Any]], cold_ms: list[float] | None = None
                  ) -> dict[str, Any]:
    """Scores over ``results``; latency over ``cold_ms`` where given (see :data:`TWINS`)."""
    ms = [r["ms"] for r in results] if cold_ms is None else cold_ms
    return {
        "cursors": len(results),
        "exact_match": percent([float(r["exact_match"]) for r in results]),
        "edit_similarity": percent([float(r["edit_similarity"]) for r in results]),
        "offered": percent([float(r["offered"]) for r in results]),
        "errors": sum("error" in r for r in results),
        "p50_ms": quantile(ms, 0.5),
        "p95_ms": quantile(ms, 0.95),
    }


def summarize_source(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What the repository source did at these cursors (the ``repository`` arm's report)."""
    reports = [(row, row["repository"]["context"]) for row in rows]
    states = Counter((c or {}).get("state", "missing") for _, c in reports)
    ms = [c["ms"] for _, c in reports if c and c.get("ms") is not None]
    tokens = [float((c or {}).get("tokens", 0)) for _, c in reports]
    used_lists = [(row, (c or {}).get("used", [])) for row, c in reports]
    definitions = [sum(not SNIPPET.search(u) for u in used) for _, used in used_lists]
    name_defined = sum(any(u.rsplit(":", 1)[-1] == row["name"] for u in used)
                       for row, used in used_lists)
    added = [row["repository"]["ms"] - row["none"]["ms"] for row in rows
             if cold(row, "repository")]
    return {
        "states": {s: states.get(s, 0) for s in ("used", "empty", "timeout", "error")}
        | {s: n for s, n in states.items() if s not in ("used", "empty", "timeout", "error")},
        "ms_p50": quantile(ms, 0.5),
        "ms_p95": quantile(ms, 0.95),
        "ms_max": max(ms) if ms else None,
        "tokens_mean": round(statistics.mean(tokens), 1) if tokens else None,
        "with_definitions": sum(d > 0 for d in definitions),
        "cursor_name_defined": name_defined,
        "completion_added_ms_p50": quantile(added, 0.5),
        "completion_added_ms_p95": quantile(added, 0.95),
    }


def gain(summaries: dict[str, dict[str, Any]], arm: str = "repository") -> dict[str, Any]:
    base, with_repo = summaries["none"], summaries[arm]
    em0, em1 = base["exact_match"], with_repo["exact_match"]
    es0, es1 = base["edit_similarity"], with_repo["edit_similarity"]
    return {
        "exact_match_points": None if em0 is None or em1 is None else round(em1 - em0, 1),
        "exact_match_relative_percent": (round(100 * (em1 - em0) / em0, 1)
                                         if em0 and em1 is not None else None),
        "edit_similarity_points": None if es0 is None or es1 is None else round(es1 - es0, 1),
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    arms = {arm: summarize_arm([r[arm] for r in rows],
                               [r[arm]["ms"] for r in rows if cold(r, arm)])
            for arm in ARMS}
    return {**arms, "gain": gain(arms), "gain_nudged": gain(arms, "repository_nudged"),
            "source": summarize_source(rows) if rows else None}


def verdict(total: dict[str, Any]) -> dict[str, Any]:
    rel = total["gain"]["exact_match_relative_percent"]
    p50 = (total["source"] or {}).get("ms_p50")
    return {
        "exact_match_gain": {"target_relative_percent": TARGET_GAIN_PERCENT, "got": rel,
                             "met": rel is not None and rel >= TARGET_GAIN_PERCENT},
        "source_latency": {"target_p50_ms": TARGET_SOURCE_P50_MS, "got_p50_ms": p50,
                           "met": p50 is not None and p50 <= TARGET_SOURCE_P50_MS},
    }


def prepare(args: argparse.Namespace) -> list[Package]:
    """The repository roots: ``--local`` folders as they are, else the pinned wheels."""
    if args.local:
        return [Package(Path(p).name, "local", Path(p).resolve()) for p in args.local]
    out = []
    for spec in args.packages:
        name, version = split_spec(spec)
        wheel = fetch_wheel(spec, args.work / "wheels")
        root = args.work / "repos" / name.lower()
        extract_package(wheel, root)
        out.append(Package(name.lower(), version, root, wheel.name))
    return out


async def run(args: argparse.Namespace, engine: Any | None = None) -> dict[str, Any]:
    """The whole benchmark; ``engine`` (already loaded) replaces the one ``args`` name."""
    t0 = time.perf_counter()
    packages = prepare(args)
    load_s = None
    own = engine is None
    if engine is None:
        from ds_engine.local import LocalEngine

        started = time.perf_counter()
        engine = LocalEngine(**engine_args(args))
        engine.load()
        load_s = round(time.perf_counter() - started, 1)
    try:
        info = engine.info().to_dict()
        log(f"  engine: {info.get('name')} ({info.get('quantization')}, {info.get('dtype')}), "
            f"adapter {info.get('adapter')}, template {info.get('template')}, "
            f"FIM {info.get('supports_fim')}, loaded in {load_s} s")
        manifest_path = adapter_manifest(info, args) if own else None
        digests, manifest = manifest_digests(manifest_path)
        chosen: dict[str, list[Cursor]] = {}
        meta: dict[str, dict[str, Any]] = {}
        for package in packages:
            files = python_files(package.root)
            overlap = in_manifest(package.root, files, digests)
            cursors, candidates = package_cursors(package.name, package.root,
                                                  args.cursors_per_package, overlap,
                                                  args.cursors)
            chosen[package.name] = cursors
            meta[package.name] = {
                "name": package.name, "version": package.version, "wheel": package.wheel,
                "root": str(package.root), "files": len(files),
                "bytes": sum((package.root / f).stat().st_size for f in files),
                "in_adapter_manifest": overlap, "candidates": candidates,
                "cursors": len(cursors),
                "cursor_kinds": dict(Counter(c.kind for c in cursors))}
            log(f"  {package.name} {package.version}: {len(files)} files, {candidates} "
                f"candidate cursors, {len(cursors)} chosen, {len(overlap)} in the manifest")
        total = sum(len(c) for c in chosen.values())
        if not total:
            raise SystemExit(f"no {args.cursors} cursors")
        # One warm-up completion per arm (first-call costs), not counted.
        first = next(c[0] for c in chosen.values() if c)
        first_pkg = next(p for p in packages if p.name == first.package)
        await run_package(engine, first_pkg, [first], args, [0], 1, time.perf_counter())
        rows: list[dict[str, Any]] = []
        warm: dict[str, Any] = {}
        done = [0]
        started = time.perf_counter()
        for package in packages:
            got, warm[package.name] = await run_package(
                engine, package, chosen[package.name], args, done, total, started)
            meta[package.name]["index"] = warm[package.name]
            rows += got
        run_s = round(time.perf_counter() - started, 1)
        info = engine.info().to_dict()
    finally:
        if own:
            engine.close()
    results = {"total": summarize(rows)}
    for package in packages:
        results[package.name] = summarize([r for r in rows if r["package"] == package.name])
    return {
        "benchmark": "context_repository",
        "method": METHODS[args.cursors] + (
            "; the same engine, greedy, answers each cursor with no context, with the warm "
            "repository context (the server's default), and with it and the first token "
            "nudged toward the names it shows; the first line of the final output is scored "
            "against the rest of the line."),
        "cursor_set": args.cursors,
        "model": info.get("name"),
        "adapter": info.get("adapter"),
        "engine": {"args": engine_args(args) if own else None,
                   "quantization": info.get("quantization"), "dtype": info.get("dtype"),
                   "template": info.get("template"), "supports_fim": info.get("supports_fim"),
                   "load_s": load_s},
        "settings": {"max_tokens": args.max_tokens, "cursors_per_package":
                     args.cursors_per_package, "min_target_chars": MIN_TARGET,
                     "completion": asdict(_settings()), "nudged_start_bias": args.start_bias,
                     "source": "RepositoryContext.for_root "
                     "defaults (timeout 0.05 s, refresh 5 s, 5000 files, 10 MB)"},
        "adapter_manifest": {**manifest, "overlapping_files": sum(
            len(m["in_adapter_manifest"]) for m in meta.values())},
        "packages": list(meta.values()),
        "cursors": total,
        "arms": list(ARMS),
        "results": results,
        "target": verdict(results["total"]),
        "run_seconds": run_s,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "per_cursor": rows,
    }


METHODS = {
    "cross-file": "Cross-file cursors in real PyPI packages (before the first name on a "
    "code line that another file of the package defines)",
    "mid-line": "Mid-line cursors in real PyPI packages (on code lines of files that import "
    "from another file of the package, the first place after `= `, `(`, `return ` or `, `; "
    "mostly not before another file's name: what a context option costs elsewhere)",
}
OUTPUTS = {"cross-file": "context_repository", "mid-line": "context_repository_midline"}


def _settings() -> Any:
    from jupyter_ds.completion.service import CompletionSettings

    return CompletionSettings()


def cell(value: Any) -> str:
    return "–" if value is None else str(value)


def markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    out = [
        f"# Repository context: {report.get('cursor_set', 'cross-file')} completion "
        f"({report['model']}, adapter "
        f"{report['adapter'] or 'none'}, {report['engine']['quantization']}, greedy, max "
        f"{report['settings']['max_tokens']} tokens)",
        "",
        report["method"],
        "",
        "Arms: `none` (no context), `repo` (the server's default: the repository block "
        "before the code, on top of the file's own prompt budget) and `nudged` (the same, "
        f"with `context_start_bias` {report['settings']['nudged_start_bias']:g}: the first "
        "token biased toward the names the block shows, at mid-line cursors where a name "
        "starts; an option, off by default).",
        "",
        "| package | cursors | EM none | EM repo | EM gain repo (rel.) | EM nudged "
        "| EM gain nudged (rel.) | ES none / repo / nudged | offered none / repo / nudged "
        "| latency p50/p95 none ms | latency p50/p95 repo ms "
        "| source p50/p95 ms | used/empty/timeout | source tokens (mean) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    versions = {p["name"]: p["version"] for p in report["packages"]}
    for key in [*versions, "total"]:
        s = res[key]
        none, repo, nudged = s["none"], s["repository"], s["repository_nudged"]
        g, gn = s["gain"], s["gain_nudged"]
        src = s["source"] or {}
        states = src.get("states", {})
        label = f"{key} {versions[key]}" if key in versions else "**total**"
        out.append(
            f"| {label} | {none['cursors']} | {cell(none['exact_match'])} "
            f"| {cell(repo['exact_match'])} | {cell(g['exact_match_points'])} pts "
            f"({cell(g['exact_match_relative_percent'])}%) | {cell(nudged['exact_match'])} "
            f"| {cell(gn['exact_match_points'])} pts "
            f"({cell(gn['exact_match_relative_percent'])}%) | {cell(none['edit_similarity'])} / "
            f"{cell(repo['edit_similarity'])} / {cell(nudged['edit_similarity'])} "
            f"| {cell(none['offered'])} / {cell(repo['offered'])} / {cell(nudged['offered'])} "
            f"| {cell(none['p50_ms'])} / {cell(none['p95_ms'])} "
            f"| {cell(repo['p50_ms'])} / {cell(repo['p95_ms'])} | {cell(src.get('ms_p50'))} / "
            f"{cell(src.get('ms_p95'))} | {states.get('used', 0)}/{states.get('empty', 0)}/"
            f"{states.get('timeout', 0)} | {cell(src.get('tokens_mean'))} |")
    tgt = report["target"]
    src = res["total"]["source"] or {}
    man = report["adapter_manifest"]
    targets = (
        f"Targets: EM +{tgt['exact_match_gain']['target_relative_percent']:g}% relative with "
        f"repository context: {cell(tgt['exact_match_gain']['got'])}% "
        f"({'met' if tgt['exact_match_gain']['met'] else 'not met'}); "
        if report.get("cursor_set", "cross-file") == "cross-file" else
        "Not the target's cursor set (the EM target is on cross-file cursors): this one "
        "shows what each arm costs or gains elsewhere. Target: ")
    out += [
        "",
        targets + "source p50 <= "
        f"{tgt['source_latency']['target_p50_ms']:g} ms warm: "
        f"{cell(tgt['source_latency']['got_p50_ms'])} ms "
        f"({'met' if tgt['source_latency']['met'] else 'not met'}). Completion latency "
        f"added by the context (per cursor, repo − none): p50 "
        f"{cell(src.get('completion_added_ms_p50'))} ms, p95 "
        f"{cell(src.get('completion_added_ms_p95'))} ms."
        + (f" The cursor's own name was among the definitions used at "
           f"{src.get('cursor_name_defined', 0)} of {res['total']['none']['cursors']} cursors."
           if report.get("cursor_set", "cross-file") == "cross-file" else ""),
        "",
        "The two context arms send the same prompt, so the second to run finds it all in "
        "the engine's KV-prefix cache: their latencies count only the cursors where they "
        "ran first (half of them).",
        "",
        "EM/ES/offered in percent of the cursors. Adapter training files "
        f"({cell(man.get('files'))} in {cell(man.get('path'))}) among the evaluated files: "
        f"{man['overlapping_files']}. Run: {report['run_seconds']} s.",
        "",
    ]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--packages", nargs="+", default=list(PACKAGES),
                        help="pinned NAME==VERSION wheels from PyPI (default: %(default)s)")
    parser.add_argument("--local", nargs="+", metavar="DIR",
                        help="repository roots on disk instead of --packages (tests)")
    parser.add_argument("--cursors", choices=sorted(CURSOR_SETS), default="cross-file",
                        help="the cursor set (default: %(default)s; mid-line: what the "
                        "options cost elsewhere, written to context_repository_midline)")
    parser.add_argument("--cursors-per-package", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--model", help="a model folder (default: the embedded model)")
    parser.add_argument("--adapter", default="auto", help="auto (the server's default), none, "
                        "or an adapter folder")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default="auto")
    parser.add_argument("--work", type=Path, default=WORK, help="wheels and extracted repos")
    parser.add_argument("--start-bias", type=float, default=START_BIAS,
                        help="the nudged arm's context_start_bias (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.cursors_per_package < 1 or args.max_tokens < 1:
        parser.error("--cursors-per-package and --max-tokens must be positive")
    for spec in args.packages:
        try:
            split_spec(spec)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    publish(report, markdown(report), args.out, OUTPUTS[args.cursors])
    return report


if __name__ == "__main__":
    main()
