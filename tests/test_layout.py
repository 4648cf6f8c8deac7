"""The shape of the house: tiers import downwards only, no module imports itself back,
and what the code points at exists in the repository.

Imports are read from the source (``ast``), including those inside functions: a cycle
hidden in a function body is still a cycle to whoever carries the code on.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"jupyter_ds": ROOT / "jupyter_ds", "ds_engine": ROOT / "engine" / "ds_engine"}


def modules() -> dict[str, Path]:
    """Every module of both packages, by dotted name (a package is its ``__init__``)."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def _resolve(name: str) -> str | None:
    """The most specific known module that ``name`` (a module or a name in one) is."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def imports_of(module: str) -> set[str]:
    """The known modules ``module`` imports, anywhere in its body."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package_of(module).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                out.add(target)
    return out


def _is_parent_package(a: str, b: str) -> bool:
    """``a`` is a package that contains ``b``: importing ``b`` runs ``a``'s ``__init__``,
    which may re-export from ``b`` — Python's own layout, not a cycle between modules."""
    return b.startswith(a + ".")


def find_cycle() -> list[str] | None:
    graph = {
        m: {t for t in imports_of(m) if not _is_parent_package(t, m)
            and not _is_parent_package(m, t)}
        for m in MODULES
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_layout_reader_sees_a_cycle_when_there_is_one(monkeypatch, tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from jupyter_ds.b import g\n")
    (tmp_path / "b.py").write_text("from jupyter_ds.a import f\n")
    monkeypatch.setitem(MODULES, "jupyter_ds.a", tmp_path / "a.py")
    monkeypatch.setitem(MODULES, "jupyter_ds.b", tmp_path / "b.py")
    cycle = find_cycle()
    assert cycle is not None and {"jupyter_ds.a", "jupyter_ds.b"} <= set(cycle)


def test_no_import_cycle():
    assert find_cycle() is None


def test_the_model_tier_never_imports_the_routing_tier():
    for module in (m for m in MODULES if m.startswith("ds_engine")):
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                    node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    assert top not in ("jupyter_ds", "jupyter_server", "jupyter_core"), (
                        f"{module} imports {name}")


@pytest.mark.parametrize("module", ["jupyter_ds.pipeline", "jupyter_ds.services"])
def test_the_pipeline_knows_no_transport(module):
    """REST, the WebSocket and the coming LSP server share it: no web framework in it."""
    source = MODULES[module].read_text(encoding="utf-8")
    assert not re.search(r"^\s*(from|import) tornado", source, re.M)


# A path written in code or docs: a folder of the repository, then a file with a suffix.
PATH_REF = re.compile(
    r"(?<![\w/.-])((?:jupyter_ds|engine|labextension|docs|benchmarks|deploy)"
    r"/[\w./-]*\w\.(?:py|ts|md|yaml|json))\b"
)


def referenced_paths() -> list[tuple[Path, str]]:
    files = [*MODULES.values(), *(ROOT / "docs").glob("*.md"), ROOT / "README.md",
             *(ROOT / "labextension" / "src").glob("*.ts")]
    refs = []
    for path in files:
        for match in PATH_REF.finditer(path.read_text(encoding="utf-8")):
            refs.append((path, match.group(1)))
    return refs


def test_docs_and_docstrings_point_only_at_files_in_the_repository():
    missing = []
    for path, ref in referenced_paths():
        if "*" in ref or "<" in ref:
            continue
        candidates = [ROOT / ref, ROOT / "engine" / ref, path.parent / ref]
        if not any(c.exists() for c in candidates):
            missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert not missing, "\n".join(missing)
    for path in [*MODULES.values(), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        assert "DESIGN.md" not in path.read_text(encoding="utf-8"), (
            f"{path.relative_to(ROOT)} cites a DESIGN.md that is not in the repository")
