"""Turn a model's answer into test candidates, and reject the unfit ones before any run.

The answer is free text: prose, several fenced blocks, or code cut short by ``max_tokens``.
We take the Python fenced blocks (or the whole answer when it has no fences), split them
into top-level definitions with libcst, and judge each one on its own, so that one broken
test does not cost the others.

Validation is static and cheap; the sandbox is the security boundary. What is checked:

* each unit parses (libcst) and compiles (``compile``: ``break`` outside a loop, ``await``
  outside ``async def``, ... only fail there);
* a test module holds only definitions, so importing it runs nothing: allowed are imports
  (not ``*``, not relative: the test file lives elsewhere), ``test*`` functions (sync or
  async; pytest's default prefix), ``Test*`` classes whose members are test methods,
  fixtures, xunit ``setup``/``teardown`` hooks, a docstring or literal constants,
  ``@pytest.fixture`` functions, module-level xunit hooks (``setup_module``, ...), and
  constants: ``NAME = <literal>`` where ``ast.literal_eval`` accepts the value, so nothing
  is called. Anything else at the top level (calls, computed assignments, ``if``, loops,
  ``with``, ``try``, ``if __name__ == "__main__":``) is a side effect;
* what *is* evaluated at import (decorators, default values, annotations, class bases)
  must not call an obviously harmful function (``os.system``, ``sys.exit``, ``open``,
  ``subprocess``...): a short deny-list catching the blatant cases, not a sandbox;
* duplicates are dropped by AST: two definitions are equal when ``ast.dump`` agrees once
  the name is normalised and the docstring removed, whether the other one is an earlier
  candidate or a test already in the existing file. A test whose name is taken by
  different code is renamed (``test_x_2``); a fixture or constant cannot be (tests
  refer to it by name), so a clash is rejected.

Every rejection carries a stable ``reason`` code (see ``REASONS``) and a message.
"""

from __future__ import annotations

import ast
import copy
import re
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import libcst as cst

from .imports import ImportedName, names_in_node, parse_imports, render_imports, unique
from .insert import new_test_file

DOES_NOT_PARSE = "does_not_parse"
TRUNCATED = "truncated"
DOES_NOT_COMPILE = "does_not_compile"
SIDE_EFFECT = "side_effect"
STAR_IMPORT = "star_import"
RELATIVE_IMPORT = "relative_import"
NOT_A_TEST = "not_a_test"
DUPLICATE = "duplicate"
NAME_COLLISION = "name_collision"
REASONS = (
    DOES_NOT_PARSE,
    TRUNCATED,
    DOES_NOT_COMPILE,
    SIDE_EFFECT,
    STAR_IMPORT,
    RELATIVE_IMPORT,
    NOT_A_TEST,
    DUPLICATE,
    NAME_COLLISION,
)

PYTHON_FENCE_LANGUAGES = frozenset({"", "python", "py", "python3", "py3", "pytest", "ipython"})
FIXTURE_DECORATORS = frozenset({"pytest.fixture", "fixture", "pytest_asyncio.fixture"})
MODULE_HOOKS = frozenset({"setup_module", "teardown_module", "setup_function", "teardown_function"})
CLASS_HOOKS = frozenset(
    {
        "setup_method",
        "teardown_method",
        "setup_class",
        "teardown_class",
        "setup",
        "teardown",
        "setUp",
        "tearDown",
        "setUpClass",
        "tearDownClass",
    }
)
HARMFUL_CALLS = frozenset(
    {
        "exit",
        "quit",
        "eval",
        "exec",
        "compile",
        "open",
        "input",
        "breakpoint",
        "__import__",
        "sys.exit",
        "os._exit",
        "os.abort",
        "os.system",
        "os.popen",
        "os.kill",
        "os.killpg",
        "os.fork",
        "os.remove",
        "os.unlink",
        "os.rmdir",
        "os.removedirs",
        "os.rename",
        "os.chmod",
        "os.putenv",
        "os.setsid",
    }
)
HARMFUL_MODULES = frozenset(
    {"subprocess", "socket", "shutil", "ctypes", "signal", "urllib", "http", "requests", "pty"}
)

Kind = str  # "test", "test_class", "fixture", "setup", "constant"


@dataclass(frozen=True)
class Candidate:
    """A definition that passed validation; ``source`` includes its decorators."""

    name: str
    source: str
    kind: Kind


@dataclass(frozen=True)
class Rejected:
    """A piece of the answer that was dropped, and why (``reason`` is in ``REASONS``)."""

    name: str | None
    source: str
    reason: str
    message: str


@dataclass
class CandidateSet:
    """What an answer holds.

    ``fixtures`` is everything the tests may refer to by name and that must come first in
    the module: fixtures (kind ``fixture``), module xunit hooks (``setup``) and literal
    constants (``constant``), in the answer's order. ``imports`` are statements as code.
    """

    imports: list[str] = field(default_factory=list)
    fixtures: list[Candidate] = field(default_factory=list)
    tests: list[Candidate] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


# --- from answer to code blocks -----------------------------------------------------------

_FENCE = re.compile(r"^\s*(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")


@dataclass(frozen=True)
class _Block:
    """A run of code from the answer; ``closed`` is False when it may have been cut."""

    text: str
    closed: bool


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return stripped.startswith(fence) and set(stripped) == {fence[0]}


_CODE_STARTS = ("def ", "async def ", "class ", "import ", "from ", "@")


def code_blocks(answer: str) -> list[_Block]:
    """The Python fenced blocks of ``answer``, or the whole answer when it has no fence.

    Blocks tagged with another language (``bash``, ``text``...) are skipped. A block left
    open at the end of the answer, and an answer without fences, may have been cut short.
    """
    lines = answer.replace("\r\n", "\n").split("\n")
    blocks: list[_Block] = []
    saw_fence = False
    index = 0
    # An answer that starts as code and then closes a bare fence (a model continuing a
    # test file, then explaining itself in prose): the code before that fence is a block.
    first = next((i for i, line in enumerate(lines) if _FENCE.match(line)), None)
    head = "\n".join(lines[:first]).lstrip() if first is not None else ""
    if first is not None and not _FENCE.match(lines[first])["info"] and head.startswith(
        _CODE_STARTS
    ):
        blocks.append(_Block("\n".join(lines[:first]) + "\n", True))
        saw_fence = True
        index = first + 1
    while index < len(lines):
        match = _FENCE.match(lines[index])
        index += 1
        if not match:
            continue
        saw_fence = True
        fence, language = match["fence"], match["info"].lower()
        body: list[str] = []
        while index < len(lines) and not _closes(lines[index], fence):
            body.append(lines[index])
            index += 1
        closed = index < len(lines)
        index += 1
        if language in PYTHON_FENCE_LANGUAGES:
            blocks.append(_Block("\n".join(body) + "\n", closed))
    if not saw_fence:
        return [_Block(answer.replace("\r\n", "\n"), closed=False)]
    return blocks


# --- from a block to top-level units ------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """One top-level statement's text; ``node`` is None when it does not parse."""

    source: str
    module: cst.Module | None = None
    node: cst.BaseStatement | None = None


_CODE_START = re.compile(
    r"(@|(async\s+)?def\s|class\s|import\s|from\s+[\w.]+\s+import\b|if\s|for\s|while\s|with\s"
    r"|try\b|assert\s|return\b|raise\b|del\s|pass\b|[\w.]+\s*(\(|\[|=|\+=|-=|:\s*[\w.]+\s*=))"
)
_CONTINUATION = re.compile(r"([)\]}]|else\b|elif\b|except\b|finally\b)")


def _looks_like_code(text: str) -> bool:
    """Whether a piece that does not parse was meant as code (else it is prose)."""
    first = next((line for line in text.split("\n") if line.strip()), "")
    return bool(_CODE_START.match(first.strip()))


def _clean_source(text: str) -> str:
    """``text`` without blank lines around it, ending in one newline."""
    lines = text.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


def _starts_piece(lines: Sequence[str], index: int) -> bool:
    """Whether line ``index`` opens a new top-level piece (column 0, not a continuation).

    A column-0 comment opens one only when code at column 0 follows it, so that a comment
    inside a function body does not split the function.
    """
    line = lines[index]
    if not line.strip() or line[0].isspace() or _CONTINUATION.match(line):
        return False
    if not line.startswith("#"):
        return True
    following = next((later for later in lines[index + 1 :] if later.strip()), "")
    return bool(following) and not following[0].isspace()


def _pieces(text: str) -> list[str]:
    """``text`` cut before each column-0 statement; decorators and comments stay attached."""
    lines = text.split("\n")
    pieces: list[list[str]] = [[]]
    for index, line in enumerate(lines):
        current = pieces[-1]
        glued = all(not part.strip() or part.startswith(("@", "#")) for part in current)
        if current and not glued and _starts_piece(lines, index):
            pieces.append([])
        pieces[-1].append(line)
    return ["\n".join(piece) + "\n" for piece in pieces if any(part.strip() for part in piece)]


def _parse(text: str) -> cst.Module | None:
    try:
        return cst.parse_module(text)
    except (cst.ParserSyntaxError, RecursionError):
        return None


def _statements_of(module: cst.Module) -> list[_Unit]:
    return [_Unit(_clean_source(module.code_for_node(node)), module, node) for node in module.body]


MAX_JOINED_PIECES = 50


def _may_continue(piece: str) -> bool:
    """Whether a piece that does not parse may go on in the next one (cheap over-estimate).

    Only an open triple-quoted string or an open bracket lets code resume at column 0.
    """
    opened = sum(piece.count(bracket) for bracket in "([{")
    closed = sum(piece.count(bracket) for bracket in ")]}")
    return opened > closed or piece.count('"""') % 2 == 1 or piece.count("'''") % 2 == 1


def _parse_joined(pieces: Sequence[str], start: int) -> tuple[cst.Module | None, int]:
    """The module of ``pieces[start:end]`` for the first ``end`` that parses, and ``end``."""
    last = (
        min(len(pieces), start + MAX_JOINED_PIECES) if _may_continue(pieces[start]) else start + 1
    )
    for end in range(start + 1, last + 1):
        module = _parse("".join(pieces[start:end]))
        if module is not None:
            return module, end
    return None, start + 1


def _salvage(text: str) -> list[_Unit]:
    """Units of a block that does not parse as a whole: each piece on its own.

    A piece that fails is retried joined with the next ones when it may continue there (a
    multi-line string can hold column-0 lines); if no join parses it is a broken unit, or
    prose when it does not look like code, and the next piece starts over.
    """
    pieces = _pieces(text)
    units: list[_Unit] = []
    start = 0
    while start < len(pieces):
        module, end = _parse_joined(pieces, start)
        if module is not None:
            units.extend(_statements_of(module))
        elif _looks_like_code(pieces[start]):
            units.append(_Unit(_clean_source(pieces[start])))
        start = end
    return units


def split_units(block: str) -> list[_Unit]:
    """The top-level statements of a block of code, broken ones included."""
    text = textwrap.dedent(block)
    module = _parse(text)
    return _statements_of(module) if module is not None else _salvage(text)


# --- judging one unit ---------------------------------------------------------------------


def _dotted(node: ast.expr) -> str:
    """``a.b.c`` for a name or attribute chain (through calls), ``""`` otherwise."""
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(_dotted(decorator) in FIXTURE_DECORATORS for decorator in node.decorator_list)


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _constant_name(node: ast.stmt) -> str | None:
    """The name a ``NAME = <literal>`` statement binds, else None."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        target, value = node.target, node.value
    else:
        return None
    if isinstance(target, ast.Name) and _is_literal(value):
        return target.id
    return None


def _is_docstring_or_pass(node: ast.stmt) -> bool:
    if isinstance(node, ast.Pass):
        return True
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)


def _definition_time(node: ast.stmt) -> Iterator[ast.AST]:
    """The expressions Python evaluates when it runs the definition (not the body)."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        yield from node.decorator_list
        yield from node.args.defaults
        yield from (default for default in node.args.kw_defaults if default is not None)
        arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        arguments += [arg for arg in (node.args.vararg, node.args.kwarg) if arg is not None]
        yield from (arg.annotation for arg in arguments if arg.annotation is not None)
        if node.returns is not None:
            yield node.returns
    elif isinstance(node, ast.ClassDef):
        yield from node.decorator_list
        yield from node.bases
        yield from (keyword.value for keyword in node.keywords)
        for member in node.body:
            yield from _definition_time(member)
    else:
        yield node


def _harmful_call(node: ast.stmt) -> str | None:
    """The first deny-listed call evaluated when the definition runs, if any."""
    for expression in _definition_time(node):
        for inner in ast.walk(expression):
            if not isinstance(inner, ast.Call):
                continue
            name = _dotted(inner.func)
            if name in HARMFUL_CALLS or name.split(".")[0] in HARMFUL_MODULES:
                return name
    return None


def _describe(node: ast.stmt) -> str:
    """A few words naming a top-level statement that would run at import."""
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call | ast.Await):
        call = node.value.value if isinstance(node.value, ast.Await) else node.value
        return f"a call to {_dotted(call) or 'an expression'}()"
    if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
        return "an `if __name__ == '__main__'` block"
    if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
        return "an assignment of a computed value"
    if isinstance(node, ast.For | ast.AsyncFor | ast.While):
        return "a loop"
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return f"a definition of `{node.name}`"
    return f"a top-level `{type(node).__name__.lower()}` statement"


@dataclass(frozen=True)
class _Verdict:
    """What one unit turned out to be: imports, a definition, a rejection, or nothing."""

    imports: tuple[ImportedName, ...] = ()
    kind: Kind | None = None
    name: str | None = None
    reason: str | None = None
    message: str = ""


def _judge_imports(statements: Sequence[ast.stmt]) -> _Verdict:
    names: list[ImportedName] = []
    for statement in statements:
        assert isinstance(statement, ast.Import | ast.ImportFrom)
        names.extend(names_in_node(statement))
    if any(name.is_star for name in names):
        return _Verdict(reason=STAR_IMPORT, message="`import *` hides which names a test uses")
    if any(name.level for name in names):
        return _Verdict(
            reason=RELATIVE_IMPORT, message="a relative import breaks outside the package"
        )
    return _Verdict(imports=tuple(names))


def _class_member_problem(member: ast.stmt) -> tuple[str, str] | None:
    """Why a statement cannot be in a test class, as (reason, message), else None."""
    if _is_docstring_or_pass(member) or _constant_name(member) is not None:
        return None
    if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
        if member.name.startswith("test") or member.name in CLASS_HOOKS or _is_fixture(member):
            return None
        if member.name == "__init__":
            return NOT_A_TEST, "pytest does not collect a test class with `__init__`"
        return NOT_A_TEST, f"method `{member.name}` is not a test, fixture or setup hook"
    return SIDE_EFFECT, f"{_describe(member)} in the class body runs at import"


def _judge_class(node: ast.ClassDef) -> _Verdict:
    if not node.name.startswith("Test"):
        return _Verdict(
            name=node.name, reason=NOT_A_TEST, message=f"class `{node.name}` is not a Test* class"
        )
    for member in node.body:
        problem = _class_member_problem(member)
        if problem:
            return _Verdict(name=node.name, reason=problem[0], message=problem[1])
    tests = [
        member
        for member in node.body
        if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef)
        and member.name.startswith("test")
    ]
    if not tests:
        return _Verdict(name=node.name, reason=NOT_A_TEST, message="the class has no test method")
    return _Verdict(kind="test_class", name=node.name)


def _judge_function(node: ast.FunctionDef | ast.AsyncFunctionDef) -> _Verdict:
    if _is_fixture(node):
        return _Verdict(kind="fixture", name=node.name)
    if node.name.startswith("test"):
        return _Verdict(kind="test", name=node.name)
    if node.name in MODULE_HOOKS:
        return _Verdict(kind="setup", name=node.name)
    return _Verdict(
        name=node.name,
        reason=NOT_A_TEST,
        message=f"function `{node.name}` is neither a test nor a fixture",
    )


def _judge_definition(node: ast.stmt) -> _Verdict:
    """The verdict on one statement that is not an import."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        verdict = _judge_function(node)
    elif isinstance(node, ast.ClassDef):
        verdict = _judge_class(node)
    elif (name := _constant_name(node)) is not None:
        verdict = _Verdict(kind="constant", name=name)
    else:
        return _Verdict(reason=SIDE_EFFECT, message=f"{_describe(node)} runs at import")
    harmful = None if verdict.reason else _harmful_call(node)
    if harmful:
        return _Verdict(
            name=verdict.name,
            reason=SIDE_EFFECT,
            message=f"`{harmful}()` is called when the definition runs",
        )
    return verdict


def _compile_error(source: str) -> str | None:
    """Why ``source`` does not compile, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(source, "<candidate>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as error:
        line = getattr(error, "lineno", None)
        where = f" (line {line})" if line else ""
        return f"{getattr(error, 'msg', None) or error}{where}"
    return None


def judge(source: str) -> _Verdict:
    """The verdict on one parsed top-level unit."""
    error = _compile_error(source)
    if error:
        return _Verdict(reason=DOES_NOT_COMPILE, message=error)
    statements = ast.parse(source).body
    if all(isinstance(node, ast.Import | ast.ImportFrom) for node in statements):
        return _judge_imports(statements)
    if len(statements) == 1 and _is_docstring_or_pass(statements[0]):
        return _Verdict()
    if len(statements) != 1:
        return _Verdict(reason=SIDE_EFFECT, message="several statements on one line")
    return _judge_definition(statements[0])


# --- duplicates and names -----------------------------------------------------------------


def definition_key(node: ast.stmt) -> str:
    """The AST of a definition with its name normalised and its docstring removed."""
    clone = copy.deepcopy(node)
    if isinstance(clone, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        clone.name = "_"
        body = clone.body
        if (
            len(body) > 1
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            clone.body = body[1:]
    return ast.dump(clone, include_attributes=False)


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(
                name.alias or (name.name or name.module).split(".")[0]
                for name in names_in_node(node)
            )
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def _definition_name(node: ast.stmt) -> str | None:
    """The name a def, class or constant binds; None for other statements."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name
    return _constant_name(node)


@dataclass
class _Registry:
    """Names and definitions already taken: by the existing file, then by kept candidates."""

    names: set[str] = field(default_factory=set)
    keys: dict[str, str] = field(default_factory=dict)  # definition key -> owner, for messages
    definitions: set[tuple[str, str]] = field(default_factory=set)  # (name, definition key)

    @classmethod
    def of_file(cls, existing: str | None) -> _Registry:
        """The registry of an existing test file; one that does not parse counts as empty."""
        try:
            tree = ast.parse(existing or "")
        except SyntaxError:
            return cls()
        registry = cls(_top_level_names(tree))
        for node in tree.body:
            name = _definition_name(node)
            if name is not None:
                registry.claim(name, definition_key(node), f"existing `{name}`")
        return registry

    def free_name(self, name: str) -> str:
        """``name``, or ``name_2``, ``name_3``... whichever is not taken."""
        number = 2
        candidate = name
        while candidate in self.names:
            candidate = f"{name}_{number}"
            number += 1
        return candidate

    def claim(self, name: str, key: str, owner: str) -> None:
        self.names.add(name)
        self.keys.setdefault(key, owner)
        self.definitions.add((name, key))


_DEFINITION = re.compile(r"^(?:async\s+)?(?:def|class)\s+(\w+)", re.MULTILINE)


def _defined_name(source: str) -> str | None:
    """The name a (possibly broken) top-level definition was going to have."""
    match = _DEFINITION.search(source)
    return match[1] if match else None


def _renamed(unit: _Unit, new_name: str) -> str:
    """The unit's source with its function or class renamed (decorators, comments kept)."""
    assert unit.module is not None and isinstance(unit.node, cst.FunctionDef | cst.ClassDef)
    node = unit.node.with_changes(name=cst.Name(new_name))
    return _clean_source(unit.module.code_for_node(node))


# --- the whole answer ---------------------------------------------------------------------


@dataclass
class _Collector:
    """Accumulates the verdicts of an answer's units into a ``CandidateSet``."""

    registry: _Registry
    result: CandidateSet = field(default_factory=CandidateSet)
    import_names: list[ImportedName] = field(default_factory=list)

    def reject(self, unit: _Unit, reason: str, message: str, name: str | None = None) -> None:
        name = name or _defined_name(unit.source)
        self.result.rejected.append(Rejected(name, unit.source, reason, message))

    def add(self, unit: _Unit, verdict: _Verdict) -> None:
        if verdict.reason:
            self.reject(unit, verdict.reason, verdict.message, verdict.name)
        elif verdict.imports:
            self.import_names.extend(verdict.imports)
        elif verdict.kind in ("test", "test_class"):
            self._add_test(unit, verdict)
        elif verdict.kind:
            self._add_support(unit, verdict)

    def _add_test(self, unit: _Unit, verdict: _Verdict) -> None:
        name, source = str(verdict.name), unit.source
        key = definition_key(ast.parse(source).body[0])
        owner = self.registry.keys.get(key)
        if owner:
            self.reject(unit, DUPLICATE, f"same code as {owner}", name)
            return
        new_name = self.registry.free_name(name)
        if new_name != name:
            source = _renamed(unit, new_name)
        self.registry.claim(new_name, key, f"candidate `{new_name}`")
        self.result.tests.append(Candidate(new_name, source, str(verdict.kind)))

    def _add_support(self, unit: _Unit, verdict: _Verdict) -> None:
        name = str(verdict.name)
        key = definition_key(ast.parse(unit.source).body[0])
        if name in self.registry.names:
            if (name, key) in self.registry.definitions:
                self.reject(unit, DUPLICATE, f"`{name}` is already defined the same way", name)
            else:
                message = f"`{name}` is already defined differently; tests refer to it by name"
                self.reject(unit, NAME_COLLISION, message, name)
            return
        self.registry.claim(name, key, f"`{name}`")
        self.result.fixtures.append(Candidate(name, unit.source, str(verdict.kind)))

    def finish(self) -> CandidateSet:
        self.result.imports = render_imports(unique(self.import_names))
        return self.result


def _units_of(answer: str) -> list[tuple[_Unit, bool]]:
    """Every unit of the answer, with whether it closes a block that may have been cut."""
    found: list[tuple[_Unit, bool]] = []
    for block in code_blocks(answer):
        units = split_units(block.text)
        found.extend((unit, False) for unit in units[:-1])
        if units:
            found.append((units[-1], not block.closed))
    return found


def _cut_reason(unit: _Unit, open_end: bool, is_last: bool, truncated: bool | None) -> str | None:
    """``TRUNCATED`` for the answer's last unit when it was (or may have been) cut."""
    if not is_last or truncated is False:
        return None
    if truncated is True:
        return TRUNCATED
    return TRUNCATED if unit.node is None and open_end else None


def extract_candidates(
    answer: str, existing: str | None = None, *, truncated: bool | None = None
) -> CandidateSet:
    """The imports, fixtures and tests in a model's ``answer``, validated (module docstring).

    ``existing`` is the current test file, for duplicates and name clashes. ``truncated``
    says whether generation stopped at ``max_tokens``: True drops the last definition even
    if it parses (it may be cut after a complete line), False never blames truncation, None
    (unknown) blames it for a last definition that does not parse at the open end of the
    answer (an unclosed fence, or no fences at all).
    """
    collector = _Collector(_Registry.of_file(existing))
    units = _units_of(answer)
    for position, (unit, open_end) in enumerate(units):
        is_last = position == len(units) - 1
        cut = _cut_reason(unit, open_end, is_last, truncated)
        if cut:
            collector.reject(unit, cut, "the answer was cut off in this definition")
        elif unit.node is None:
            collector.reject(unit, DOES_NOT_PARSE, "this code does not parse")
        else:
            collector.add(unit, judge(unit.source))
    return collector.finish()


def build_test_module(
    imports: Sequence[str],
    fixtures: Sequence[Candidate | str],
    tests: Sequence[Candidate | str],
    module_import: str = "",
) -> str:
    """The text of a test file for the sandbox run.

    Imports are merged without duplicates (``__future__`` first), the import of the module
    under test follows them, then fixtures (and constants), then tests, two blank lines
    apart, one newline at the end.
    """
    under_test = parse_imports(module_import) if module_import.strip() else []
    names = [name for code in imports for name in parse_imports(code) if name not in under_test]
    blocks = [item.source if isinstance(item, Candidate) else item for item in (*fixtures, *tests)]
    return new_test_file(render_imports([*unique(names), *under_test]), blocks)
