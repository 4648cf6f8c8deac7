"""The imports of the file being edited, and the repository files they name.

The text around a cursor is being typed: it rarely parses as a whole. Import statements
are found line by line instead (a line that starts with ``import`` or ``from``, with its
parenthesised or backslash continuation), and each is parsed on its own with :mod:`ast`,
so a syntax error anywhere else, or in one import, costs only that import. This is on
the completion's path: a regular expression over the text plus one tiny parse per
import, well under a millisecond for a file of a thousand lines.

Resolution mirrors Python's without importing anything: a relative import is taken
from the file's own folder; an absolute one from the folders a script or a test runner
would have on ``sys.path`` for this file: its own folder and each folder above it up to
the root, and their ``src`` folders (the "src layout"), nearest first. Only files in the
index count, so a standard-library or installed name resolves to nothing.
"""

from __future__ import annotations

import ast
import posixpath
import re
from collections.abc import Container
from dataclasses import dataclass

_IMPORT_LINE = re.compile(r"^[ \t]*(?:from[ \t]+[\w.]+[ \t]+import\b|import[ \t]+\w)",
                          re.MULTILINE)
MAX_STATEMENT_CHARS = 2000
MAX_IMPORTS = 200  # a file with more is generated; the first ones are enough


@dataclass(frozen=True)
class Import:
    """One imported module and the local names it binds.

    ``import a.b`` is ``Import("a.b", 0, (), "a")``; ``import a.b as m`` binds ``m``;
    ``from ..a import x as y`` is ``Import("a", 2, (("x", "y"),), None)``.
    """

    module: str
    level: int
    names: tuple[tuple[str, str], ...]  # (name in the module, local name); ("*", "*")
    bound: str | None  # the local name of a plain ``import``
    offset: int  # where the statement starts in the text
    end: int  # where it ends


def _statement_end(text: str, start: int) -> int:
    """The end of the logical line that starts at ``start`` (brackets and backslashes)."""
    depth = 0
    i = start
    limit = min(len(text), start + MAX_STATEMENT_CHARS)
    while i < limit:
        c = text[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c == "\\" and text.startswith("\\\n", i):
            i += 2
            continue
        elif c == "#":
            newline = text.find("\n", i)
            i = limit if newline < 0 else newline
            continue
        elif c in "\n;" and depth == 0:
            return i
        i += 1
    return i


def parse_imports(text: str) -> list[Import]:
    """Every import statement of ``text`` that parses, in order; never raises."""
    out: list[Import] = []
    for match in _IMPORT_LINE.finditer(text):
        if len(out) >= MAX_IMPORTS:
            break
        start = match.start()
        end = _statement_end(text, start)
        source = text[start:end].strip()
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    bound = alias.asname or alias.name.split(".")[0]
                    out.append(Import(alias.name, 0, (), bound, start, end))
            elif isinstance(node, ast.ImportFrom):
                names = tuple((a.name, a.asname or a.name) for a in node.names)
                out.append(Import(node.module or "", node.level, names, None, start, end))
    return out


def folder_of(rel: str) -> str:
    """The folder of the "/"-separated relative path ``rel`` ("" for the root)."""
    return posixpath.dirname(rel)


def search_bases(rel: str) -> list[str]:
    """Folders an absolute import of the file ``rel`` is looked up from, nearest first:
    its folder and each one above it, each followed by its ``src`` folder."""
    bases: list[str] = []
    folder = folder_of(rel)
    while True:
        bases.append(folder)
        bases.append(posixpath.join(folder, "src") if folder else "src")
        if not folder:
            break
        folder = folder_of(folder)
    return list(dict.fromkeys(bases))


def _join(base: str, dotted: str) -> str:
    parts = [p for p in dotted.split(".") if p]
    return posixpath.join(base, *parts) if parts else base


def module_file(folder_path: str, known: Container[str]) -> str | None:
    """The file of the module at ``folder_path`` (no suffix): ``x.py`` or
    ``x/__init__.py``, if the index has it."""
    if folder_path:
        if (candidate := folder_path + ".py") in known:
            return candidate
    candidate = posixpath.join(folder_path, "__init__.py") if folder_path else "__init__.py"
    return candidate if candidate in known else None


def package_base(rel: str, level: int) -> str | None:
    """The folder a relative import of ``level`` dots in ``rel`` starts from; None when
    it climbs above the root."""
    folder = folder_of(rel)
    for _ in range(level - 1):
        if not folder:
            return None
        folder = folder_of(folder)
    return folder


def module_paths(module: str, level: int, rel: str) -> list[str]:
    """Where the module ``module`` imported from the file ``rel`` may live (paths without
    suffix, in lookup order): one place for a relative import, one per search base for
    an absolute one."""
    if level:
        base = package_base(rel, level)
        return [] if base is None else [_join(base, module)]
    if not module:
        return []
    return [_join(base, module) for base in search_bases(rel)]


def resolve_module(module: str, level: int, rel: str,
                   known: Container[str]) -> tuple[str, str] | None:
    """``(file, module path without suffix)`` of ``module`` imported from ``rel``."""
    for path in module_paths(module, level, rel):
        found = module_file(path, known)
        if found:
            return found, path
    return None


def resolve_submodule(module: str, level: int, name: str, rel: str,
                      known: Container[str]) -> str | None:
    """The file of ``from module import name`` when ``name`` is a module of the package
    (a namespace package, without ``__init__.py``, included)."""
    for path in module_paths(module, level, rel):
        found = module_file(posixpath.join(path, name), known)
        if found:
            return found
    return None


_TYPING_IMPORT = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import\b[^\n#;]*\Z")


def import_at_cursor(prefix: str) -> tuple[str, int] | None:
    """``(module, level)`` when the cursor is in a ``from module import ...`` being
    typed (its names are what the user wants to see), else None."""
    line = prefix[prefix.rfind("\n") + 1:]
    match = _TYPING_IMPORT.match(line)
    if match is None:
        # Inside a parenthesised list that started on an earlier line.
        back = prefix.rfind("from", max(0, len(prefix) - 2000))
        if back < 0:
            return None
        segment = prefix[prefix.rfind("\n", 0, back) + 1:]
        if "(" not in segment or ")" in segment:
            return None
        match = _TYPING_IMPORT.match(segment.replace("\n", " "))
    if match is None or not (match.group(1) or match.group(2)):
        return None
    return match.group(2), len(match.group(1))
