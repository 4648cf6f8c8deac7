"""What a module offers to the files that import it: signatures and docstrings.

Parsed with libcst, never imported: a repository's code is untrusted and importing it
would run it. What a completion needs from an imported module is what a reader of its
API needs: each top-level function's signature, each class's bases, fields and method
signatures, public constants, and the first paragraph of their docstrings. Bodies are
left out (they cost tokens and say little about how to call the function).

libcst is slow (about 3 ms per kilobyte), so the repository index parses a file only
when some cursor imports it, in the background (see :mod:`jupyter_ds.context.repository`).

libcst's native parser also crashes the process (a segmentation fault) or runs for
minutes on deeply nested code that is small and valid, such as ``x = 1+1+...`` with
10,000 terms or 3,000 nested brackets. So a file reaches libcst only after CPython's
own parser (which refuses such nesting with an exception) has read it and its tree is
at most :data:`MAX_AST_DEPTH` deep, measured without recursion (see :func:`too_deep`).
A file that does not pass offers no symbols; its snippets are still ranked.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass, field

import libcst as cst
from libcst.helpers import get_full_name_for_node

MAX_AST_DEPTH = 200  # libcst has parsed 2,000 levels on a thread's stack: a wide margin
MAX_DOC_CHARS = 300  # of a docstring's first paragraph
MAX_SIGNATURE_CHARS = 300
MAX_VALUE_CHARS = 80  # a constant's value longer than this is shown as "..."
MAX_MEMBERS = 16  # fields and methods shown per class
MAX_SYMBOL_CHARS = 1600  # one rendered symbol, classes included
MAX_DECORATOR_CHARS = 60
# Methods that say how to build or call an instance, shown although not "public".
DUNDER_SHOWN = frozenset({"__init__", "__call__", "__enter__", "__iter__", "__getitem__"})


@dataclass(frozen=True)
class Symbol:
    """One name a module defines, rendered as it would be shown in a prompt."""

    name: str
    kind: str  # "function", "class" or "variable"
    text: str  # signature and docstring, ending in a newline


@dataclass(frozen=True)
class ReExport:
    """``from <module> import <name> as <alias>`` at a module's top level: how a package's
    ``__init__`` offers names that another of its modules defines."""

    alias: str
    module: str
    level: int
    name: str  # "*" for a star import


@dataclass
class ModuleSymbols:
    """The symbols of one module, in the order they are defined."""

    symbols: dict[str, Symbol] = field(default_factory=dict)
    exports: list[ReExport] = field(default_factory=list)
    all_names: list[str] | None = None  # a literal ``__all__``, when there is one
    ok: bool = True  # False when the file does not parse (nothing is offered then)

    def public(self) -> list[str]:
        """The names ``import module`` users should see: ``__all__`` when the module
        says, else every defined or re-exported name without a leading underscore."""
        if self.all_names is not None:
            return list(self.all_names)
        names = [n for n in self.symbols if not n.startswith("_")]
        names += [e.alias for e in self.exports
                  if e.name != "*" and not e.alias.startswith("_") and e.alias not in names]
        return names


_BRACKET_SPACE = re.compile(r"([(\[{]) | ([)\]}])")


class _NoComments(cst.CSTTransformer):
    """Drops comments, so that a signature can be joined onto one line."""

    def leave_Comment(self, original_node: cst.Comment, updated_node: cst.Comment
                      ) -> cst.RemovalSentinel:
        return cst.RemovalSentinel.REMOVE


def _one_line(module: cst.Module, node: cst.CSTNode) -> str:
    code = module.code_for_node(node.visit(_NoComments()))  # type: ignore[arg-type]
    # Joined onto one line, a bracket that ended a line is followed by a space.
    return _BRACKET_SPACE.sub(r"\1\2", " ".join(code.split()))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def first_paragraph(doc: str | None) -> str | None:
    """The first paragraph of a cleaned docstring, clipped; None for none."""
    if not doc or not doc.strip():
        return None
    para = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0].strip()
    return _clip(para.replace('"""', "'''"), MAX_DOC_CHARS)


def _docstring(doc: str, indent: str) -> str:
    """``doc`` as a triple-quoted docstring at ``indent``."""
    lines = doc.split("\n")
    body = "\n".join([lines[0], *(f"{indent}{line}".rstrip() for line in lines[1:])])
    return f'{indent}"""{body}"""\n'


def _with_doc(header: str, doc: str | None, indent: str) -> str:
    if doc is None:
        return f"{indent}{header} ...\n"
    return f"{indent}{header}\n" + _docstring(doc, indent + "    ")


def _decorators(module: cst.Module, node: cst.FunctionDef | cst.ClassDef,
                indent: str) -> str:
    out = ""
    for deco in node.decorators[:2]:
        text = _one_line(module, deco.decorator)
        if len(text) <= MAX_DECORATOR_CHARS:
            out += f"{indent}@{text}\n"
    return out


def _function(module: cst.Module, node: cst.FunctionDef, indent: str = "") -> str:
    params = _one_line(module, node.params).rstrip(",").rstrip()
    returns = f" -> {_one_line(module, node.returns.annotation)}" if node.returns else ""
    prefix = "async def" if node.asynchronous else "def"
    header = _clip(f"{prefix} {node.name.value}({params}){returns}", MAX_SIGNATURE_CHARS)
    doc = first_paragraph(node.get_docstring())
    return _decorators(module, node, indent) + _with_doc(header + ":", doc, indent)


def _assignment(module: cst.Module, stmt: cst.BaseSmallStatement,
                indent: str = "") -> tuple[str, str] | None:
    """``(name, "NAME: type = value")`` for an assignment to one plain name."""
    if isinstance(stmt, cst.AnnAssign) and isinstance(stmt.target, cst.Name):
        name = stmt.target.value
        head = f"{name}: {_one_line(module, stmt.annotation.annotation)}"
        value = stmt.value
    elif (isinstance(stmt, cst.Assign) and len(stmt.targets) == 1
          and isinstance(stmt.targets[0].target, cst.Name)):
        name = stmt.targets[0].target.value
        head, value = name, stmt.value
    else:
        return None
    if value is not None:
        shown = _one_line(module, value)
        head += f" = {shown if len(shown) <= MAX_VALUE_CHARS else '...'}"
    return name, f"{indent}{_clip(head, MAX_SIGNATURE_CHARS)}\n"


def _class(module: cst.Module, node: cst.ClassDef) -> str:
    args = [_one_line(module, a).rstrip(",").rstrip() for a in (*node.bases, *node.keywords)]
    header = f"class {node.name.value}({', '.join(args)}):" if args else (
        f"class {node.name.value}:")
    doc = first_paragraph(node.get_docstring())
    text = _decorators(module, node, "") + header + "\n"
    if doc is not None:
        text += _docstring(doc, "    ")
    members = 0
    body = node.body.body if isinstance(node.body, cst.IndentedBlock) else ()
    for stmt in body:
        if members >= MAX_MEMBERS or len(text) > MAX_SYMBOL_CHARS:
            text += "    ...\n"
            break
        if isinstance(stmt, cst.FunctionDef):
            name = stmt.name.value
            if name.startswith("_") and name not in DUNDER_SHOWN:
                continue
            text += _function(module, stmt, "    ")
            members += 1
        elif isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                found = _assignment(module, small, "    ")
                if found and not found[0].startswith("_"):
                    text += found[1]
                    members += 1
    if members == 0 and doc is None:
        text += "    ...\n"
    return _clip_symbol(text)


def _clip_symbol(text: str) -> str:
    if len(text) <= MAX_SYMBOL_CHARS:
        return text
    cut = text.rfind("\n", 0, MAX_SYMBOL_CHARS)
    return text[: cut + 1] + "    ...\n"


def _all_names(value: cst.BaseExpression) -> list[str] | None:
    if not isinstance(value, (cst.List, cst.Tuple)):
        return None
    names = []
    for element in value.elements:
        if not isinstance(element.value, cst.SimpleString):
            return None
        evaluated = element.value.evaluated_value
        if isinstance(evaluated, str):
            names.append(evaluated)
    return names


def _statements(body: object, depth: int = 0):
    """Top-level statements, looking into ``if``/``try``/``with`` blocks at module level
    (``if TYPE_CHECKING:``, ``try: import fast except ImportError: def slow...``)."""
    for stmt in body:  # type: ignore[attr-defined]
        if depth < 2 and isinstance(stmt, (cst.If, cst.Try, cst.With)):
            blocks = [stmt.body]
            if isinstance(stmt, cst.If) and stmt.orelse is not None:
                blocks.append(stmt.orelse.body)  # type: ignore[arg-type]
            if isinstance(stmt, cst.Try):
                blocks += [h.body for h in stmt.handlers]
            for block in blocks:
                inner = block.body if isinstance(block, cst.IndentedBlock) else (
                    [block] if isinstance(block, cst.SimpleStatementSuite) else [])
                if isinstance(block, cst.If):  # elif
                    yield from _statements([block], depth + 1)
                else:
                    yield from _statements(inner, depth + 1)
        else:
            yield stmt


def too_deep(text: str, limit: int = MAX_AST_DEPTH) -> bool:
    """Whether ``text`` must not be given to libcst: CPython's parser refuses it (a
    syntax error, or nesting past its own limits) or its tree is deeper than ``limit``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like
            tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return True
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return False


def module_symbols(text: str) -> ModuleSymbols:
    """The symbols of the Python source ``text``; an empty, ``ok=False`` result when it
    does not parse or is too deeply nested for libcst (see :func:`too_deep`). Never
    raises (the text comes from any file in the repository)."""
    if too_deep(text):
        return ModuleSymbols(ok=False)
    try:
        return _collect(cst.parse_module(text))
    except Exception:  # a syntax error, or libcst failing on garbage: nothing offered
        return ModuleSymbols(ok=False)


def _collect(module: cst.Module) -> ModuleSymbols:
    out = ModuleSymbols()
    for stmt in _statements(module.body):
        if isinstance(stmt, cst.FunctionDef):
            name = stmt.name.value
            out.symbols.setdefault(name, Symbol(name, "function", _clip_symbol(
                _function(module, stmt))))
        elif isinstance(stmt, cst.ClassDef):
            name = stmt.name.value
            out.symbols.setdefault(name, Symbol(name, "class", _class(module, stmt)))
        elif isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                if isinstance(small, cst.ImportFrom):
                    out.exports += _exports(small)
                    continue
                if (isinstance(small, cst.Assign) and len(small.targets) == 1
                        and isinstance(small.targets[0].target, cst.Name)
                        and small.targets[0].target.value == "__all__"):
                    out.all_names = _all_names(small.value)
                    continue
                found = _assignment(module, small)
                if found:
                    out.symbols.setdefault(found[0], Symbol(found[0], "variable",
                                                            found[1]))
    return out


def _exports(node: cst.ImportFrom) -> list[ReExport]:
    module = get_full_name_for_node(node.module) if node.module is not None else ""
    level = len(node.relative)
    if isinstance(node.names, cst.ImportStar):
        return [ReExport("*", module or "", level, "*")]
    out = []
    for alias in node.names:
        name = get_full_name_for_node(alias.name) or ""
        asname = alias.asname.name if alias.asname is not None else None
        local = asname.value if isinstance(asname, cst.Name) else name
        if name and "." not in name:
            out.append(ReExport(local, module or "", level, name))
    return out
