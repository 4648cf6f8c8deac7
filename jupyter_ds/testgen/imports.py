"""A small model of import statements, so that imports can be merged without duplicates.

Candidates, the sandbox's test module and an existing test file all spell imports their own
way (``import os, sys``, ``from x import (a, b)``, aliases). Reducing every statement to
one binding per name lets us compare them exactly and render only what is missing, which
is what keeps an existing file's own import lines untouched.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_LINE = 99


@dataclass(frozen=True)
class ImportedName:
    """One name bound by an import: ``import module [as alias]`` or ``from ... import``."""

    module: str
    name: str | None = None
    alias: str | None = None
    level: int = 0

    @property
    def is_from(self) -> bool:
        """``from module import name`` rather than ``import module``."""
        return self.name is not None

    @property
    def is_future(self) -> bool:
        """A ``from __future__`` import, which must precede every other statement."""
        return self.module == "__future__" and self.level == 0

    @property
    def is_star(self) -> bool:
        """``from module import *``, which binds names nobody can see."""
        return self.name == "*"

    @property
    def source_module(self) -> str:
        """The module as written after ``from``, dots included."""
        return "." * self.level + self.module

    def alias_clause(self) -> str:
        """``name`` or ``name as alias``: the part after ``import``."""
        base = self.name if self.is_from else self.module
        return f"{base} as {self.alias}" if self.alias else str(base)


def names_in_node(node: ast.Import | ast.ImportFrom) -> list[ImportedName]:
    """The names one ``ast`` import statement binds, in order."""
    if isinstance(node, ast.Import):
        return [ImportedName(alias.name, None, alias.asname) for alias in node.names]
    module = node.module or ""
    return [ImportedName(module, alias.name, alias.asname, node.level) for alias in node.names]


def parse_imports(code: str) -> list[ImportedName]:
    """The names bound by ``code``, which must hold import statements only.

    Raises ``ValueError`` when ``code`` does not parse or holds anything but imports, so that
    a caller cannot smuggle other statements in through the import list.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError as error:
        raise ValueError(f"import does not parse: {code!r}") from error
    names: list[ImportedName] = []
    for node in tree.body:
        if not isinstance(node, ast.Import | ast.ImportFrom):
            raise ValueError(f"not an import statement: {code!r}")
        names.extend(names_in_node(node))
    return names


def top_level_imports(tree: ast.Module) -> set[ImportedName]:
    """The names imported by a module's top-level import statements."""
    found: set[ImportedName] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.update(names_in_node(node))
    return found


def unique(names: Iterable[ImportedName]) -> list[ImportedName]:
    """``names`` without repeats, first occurrence kept."""
    return list(dict.fromkeys(names))


def _render_from(module: str, clauses: Sequence[str]) -> str:
    """One ``from`` statement, wrapped in parentheses when it would be too long."""
    line = f"from {module} import {', '.join(clauses)}"
    if len(line) <= MAX_LINE:
        return line
    body = "".join(f"    {clause},\n" for clause in clauses)
    return f"from {module} import (\n{body})"


def render_imports(names: Iterable[ImportedName]) -> list[str]:
    """Import statements for ``names``: ``__future__`` first, then in first-seen order.

    ``from`` imports of one module share one statement, placed where the module first
    appears; ``import`` names get one statement each (the PEP 8 spelling).
    """
    ordered = unique(names)
    ordered.sort(key=lambda name: not name.is_future)  # stable: only hoists __future__
    slots: list[tuple[str, str]] = []  # ("import", statement) or ("from", module)
    from_groups: dict[str, list[str]] = {}
    for name in ordered:
        if not name.is_from:
            slots.append(("import", f"import {name.alias_clause()}"))
            continue
        module = name.source_module
        if module not in from_groups:
            from_groups[module] = []
            slots.append(("from", module))
        from_groups[module].append(name.alias_clause())
    return [
        _render_from(text, from_groups[text]) if kind == "from" else text for kind, text in slots
    ]
