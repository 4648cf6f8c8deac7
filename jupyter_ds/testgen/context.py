"""What the model is shown when it writes tests for a function.

The function's own source, the imports of its module, the signatures (not bodies) of
what it calls that this module defines, and the existing tests that mention it: enough
to call the function correctly without spending the prompt on unrelated code.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from jupyter_ds.errors import ApiError, bad_request


@dataclass(frozen=True)
class TargetContext:
    """The function under test and its surroundings, ready for a prompt."""

    module: str  # import name of the module under test, e.g. "stats"
    function: str  # the function's (qualified) name: "mean" or "Stack.push"
    source: str  # the function's source, decorators included
    imports: list[str] = field(default_factory=list)
    callee_signatures: list[str] = field(default_factory=list)
    existing_tests: list[str] = field(default_factory=list)

    @property
    def import_line(self) -> str:
        top = self.function.split(".")[0]
        return f"from {self.module} import {top}"


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, src: str) -> str:
    """The header line(s) of a definition, with its docstring's first line if any."""
    if isinstance(node, ast.ClassDef):
        header = f"class {node.name}:"
    else:
        seg = ast.get_source_segment(src, node) or ""
        body_start = node.body[0]
        lines = seg.splitlines()
        header = "\n".join(lines[: max(1, body_start.lineno - node.lineno)])
    doc = ast.get_docstring(node)
    if doc:
        header += f'\n    """{doc.strip().splitlines()[0]}"""'
    return header + "\n    ..."


def _definitions(tree: ast.Module) -> dict[str, ast.AST]:
    defs: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        defs[f"{node.name}.{item.name}"] = item
    return defs


def _called_names(node: ast.AST) -> list[str]:
    names: list[str] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            if isinstance(func, ast.Name):
                names.append(func.id)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                names.append(func.attr if func.value.id == "self" else func.value.id)
    return list(dict.fromkeys(names))


def public_functions(source: str) -> list[str]:
    """Names of the functions and methods a user would want tests for, in file order."""
    tree = ast.parse(source)
    return [
        name
        for name, node in _definitions(tree).items()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and not name.split(".")[-1].startswith("_")
    ]


def target_context(
    source: str,
    module: str,
    function: str | None = None,
    existing_tests: str | None = None,
) -> TargetContext:
    """Build the context for ``function`` of a module's ``source`` (first public one if None)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        message = f"source does not parse: line {exc.lineno}: {exc.msg}"
        raise bad_request(message, "source") from None
    defs = _definitions(tree)
    if function is None:
        candidates = public_functions(source)
        if not candidates:
            raise bad_request("source defines no public function to test", "target")
        function = candidates[0]
    node = defs.get(function)
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
        known = ", ".join(n for n in defs if isinstance(defs[n], funcs))
        raise ApiError(
            404,
            "not_found",
            f"no function '{function}' in the source (has: {known or 'none'})",
            field="target",
        )
    imports = [
        ast.get_source_segment(source, n) or ""
        for n in tree.body
        if isinstance(n, (ast.Import, ast.ImportFrom))
    ]
    callees = []
    for name in _called_names(node):
        callee = defs.get(name) or defs.get(f"{function.split('.')[0]}.{name}")
        if callee is not None and callee is not node:
            callees.append(_signature(callee, source))  # type: ignore[arg-type]
    tests: list[str] = []
    if existing_tests:
        short = function.split(".")[-1]
        try:
            test_tree = ast.parse(existing_tests)
        except SyntaxError:
            test_tree = None
        for n in test_tree.body if test_tree else []:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                seg = ast.get_source_segment(existing_tests, n) or ""
                if short in seg:
                    tests.append(seg)
    seg = ast.get_source_segment(source, node) or ""
    decorators = [ast.get_source_segment(source, d) or "" for d in node.decorator_list]
    full = "".join(f"@{d}\n" for d in decorators) + seg
    return TargetContext(
        module=module,
        function=function,
        source=full,
        imports=[i for i in imports if i],
        callee_signatures=callees,
        existing_tests=tests,
    )
