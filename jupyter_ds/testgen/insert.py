"""Write kept tests into the user's test file without disturbing what is already there.

The user owns the test file, so an insertion may only *add* lines: every existing line
stays byte for byte and in order (CRLF, a missing final newline and odd spacing included).
What is added:

* missing imports, as new lines: ``__future__`` imports right after the docstring and the
  existing ``__future__`` imports; the others right after the last import of the file's
  header (before its first def or class), or after the docstring when there is none.
  This is libcst's ``AddImportsVisitor`` minus one thing it does: it extends an existing
  ``from x import a`` into ``from x import a, b``, which would change a user's line, so a
  missing ``b`` gets its own ``from x import b`` instead;
* the tests, at the end of the file, or before a final ``if __name__ == "__main__":``
  block (and the comments directly above it), separated by the number of blank lines the
  file already puts between its top-level definitions (2 when it has none to go by), and
  the file ends with a single newline after them.

libcst finds the top-level statements and their lines (decorators included); the edit
itself is made on the text, by line, which is what makes "unchanged" easy to guarantee.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path, PurePosixPath

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from jupyter_ds.errors import ApiError
from jupyter_ds.paths import excluded_by, forbidden, hidden_part, locate, resolve_under_root

from .imports import ImportedName, parse_imports, render_imports, top_level_imports, unique

PEP8_BLANK_LINES = 2


# --- where the test file is ---------------------------------------------------------------


def module_name_of(source_path: str) -> str:
    """The module name a test file is named after: ``pkg/mod.py`` -> ``mod``.

    A package's ``__init__.py`` is named after the package; characters that cannot be in an
    identifier become ``_`` so that ``my-script.py`` gets ``test_my_script.py``.
    """
    path = PurePosixPath(source_path.replace("\\", "/"))
    stem = path.parent.name if path.stem == "__init__" and path.parent.name else path.stem
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in stem) or "module"


def test_file_candidates(source_path: str) -> list[str]:
    """Where a test file for ``source_path`` may already be, most specific first.

    For ``pkg/sub/mod.py``: ``pkg/sub/test_mod.py`` (next to it),
    ``pkg/sub/tests/test_mod.py``, ``tests/pkg/sub/test_mod.py`` (a mirrored tree, with a
    leading ``src/`` dropped) and ``tests/test_mod.py`` (the flat default, least specific
    because another ``mod.py`` elsewhere would claim it too). Paths are POSIX, relative to
    the same root as ``source_path``.
    """
    path = PurePosixPath(source_path.replace("\\", "/").removeprefix("./"))
    name = f"test_{module_name_of(source_path)}.py"
    parent = path.parent
    mirrored = PurePosixPath(*parent.parts[1:]) if parent.parts[:1] == ("src",) else parent
    found = [
        parent / name,
        parent / "tests" / name,
        "tests" / mirrored / name,
        PurePosixPath("tests", name),
    ]
    return list(dict.fromkeys(str(candidate) for candidate in found))


def test_path_for(source_path: str, existing: Iterable[str] = ()) -> str:
    """The test file to write the tests for ``source_path`` into.

    ``existing`` lists test files the caller knows exist (POSIX paths relative to the
    same root); the first of ``test_file_candidates`` among them wins. Otherwise the answer
    is ``tests/test_<module>.py``, the file the issue says to create.
    """
    known = {str(PurePosixPath(path.replace("\\", "/").removeprefix("./"))) for path in existing}
    candidates = test_file_candidates(source_path)
    return next((path for path in candidates if path in known), candidates[-1])


def find_test_file(source_path: str, root: str | os.PathLike[str]) -> str | None:
    """The existing test file for ``source_path`` under ``root``, or ``None``.

    A candidate that is not confined to the root (a ``..`` in ``source_path``, a symlink
    out of the root) is passed over: it is no file of this root.
    """
    for path in test_file_candidates(source_path):
        try:
            where = locate(root, path, allow_root=False)
            if where.inside and where.real.is_file():
                return path
        except (ApiError, OSError):  # a name too long for the file system, a loop of links
            continue
    return None


# --- which files may be written -----------------------------------------------------------

TEST_FILE_NAMES = ("test_*.py", "*_test.py")  # pytest's default python_files


def is_test_file_name(name: str) -> bool:
    """Whether a file called ``name`` is a test file by pytest's default naming."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TEST_FILE_NAMES)


def check_test_file(
    root: str | os.PathLike[str],
    test_path: str,
    field: str = "test_path",
    *,
    allow_hidden: bool = False,
    exclude: Iterable[str] = (),
) -> Path:
    """The real path that insertion may write for ``test_path``; else a 403 naming ``field``.

    Insertion writes code that runs later (pytest imports the file), so the file must be
    one whose purpose is exactly that: a ``test_*.py`` or ``*_test.py`` file under the
    root, in no hidden folder (unless the contents manager allows hidden files) and not
    matched by ``git_exclude``. Otherwise ``test_path`` could name an IPython startup
    file, a Jupyter config file, a git hook or a module of the user's, all of which run
    code unasked or would be rewritten. The rule holds for the path as sent and for where
    its symlinks lead: a ``tests/test_x.py`` link to ``.ssh/x`` is no test file. Malformed
    strings (empty, NUL, too long, absolute, ``..`` above the root) stay a 400.
    """
    where = locate(root, test_path, field, allow_root=False)
    if not where.inside:
        raise forbidden(f"field '{field}': {test_path!r} resolves outside the server root "
                        "(a symlink?)", field)
    exclude = tuple(exclude)
    for relative in dict.fromkeys((where.normal, where.real_relative)):
        shown = repr(test_path) if relative == where.normal else (
            f"{test_path!r} (a link to {relative!r})")
        name = relative.rsplit("/", 1)[-1]
        if not is_test_file_name(name):
            raise forbidden(f"field '{field}': {shown} is not a test file; tests are only "
                            f"written to files named {' or '.join(TEST_FILE_NAMES)}", field)
        if not allow_hidden and (hidden := hidden_part(relative)):
            raise forbidden(f"field '{field}': {shown} is in the hidden {hidden!r}; tests are "
                            "not written to hidden files or folders", field)
        if pattern := excluded_by(relative, exclude):
            raise forbidden(f"field '{field}': {shown} is excluded (matches {pattern!r} of "
                            "git_exclude)", field)
    return where.real


def insertion_target(
    root: str | os.PathLike[str],
    source_path: str,
    test_path: str | None = None,
    *,
    allow_hidden: bool = False,
    exclude: Iterable[str] = (),
) -> str:
    """The test file (relative to ``root``) that tests for ``source_path`` may go into.

    ``test_path`` when given, else the matching existing file or the default one (as
    :func:`test_path_for`); either way checked by :func:`check_test_file`, whose errors
    name the field the file came from. ``source_path`` must resolve under the root too:
    it says which module the tests are for, and a link out of the root is none of its.
    """
    resolve_under_root(root, source_path, "path", allow_root=False, status=400)
    if test_path:
        check_test_file(root, test_path, "test_path", allow_hidden=allow_hidden,
                        exclude=exclude)
        return test_path
    derived = find_test_file(source_path, root) or test_path_for(source_path)
    check_test_file(root, derived, "path", allow_hidden=allow_hidden, exclude=exclude)
    return derived


# --- text by lines ------------------------------------------------------------------------


def _split_lines(text: str) -> list[str]:
    """Lines with their terminators, split on ``\\n`` only (as Python's tokenizer does).

    ``str.splitlines`` would also split on form feeds and ``\\u2028`` inside strings.
    """
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    return [*lines, parts[-1]] if parts[-1] else lines


def _newline_of(text: str) -> str:
    """The file's line terminator, judged by its first line."""
    first = text.find("\n")
    return "\r\n" if first > 0 and text[first - 1] == "\r" else "\n"


def _is_blank(line: str) -> bool:
    return not line.strip()


def _is_comment(line: str) -> bool:
    """A comment line at column 0, which belongs to the statement right below it."""
    return line.startswith("#")


def block_lines(source: str) -> list[str]:
    """A test's source as lines without terminators: dedented, no blank lines around."""
    lines = textwrap.dedent(source.replace("\r\n", "\n")).split("\n")
    while lines and _is_blank(lines[0]):
        lines.pop(0)
    while lines and _is_blank(lines[-1]):
        lines.pop()
    return lines


def _blank_run(count: int) -> list[str]:
    return [""] * max(0, count)


# --- a new file ---------------------------------------------------------------------------


def new_test_file(import_lines: Sequence[str], blocks: Sequence[str]) -> str:
    """The text of a fresh test file: imports (``__future__`` apart), then the blocks.

    Top-level blocks are separated by two blank lines (PEP 8); one newline at the end.
    """
    future = [line for line in import_lines if line.startswith("from __future__ ")]
    others = [line for line in import_lines if line not in future]
    sections = ["\n".join(group) for group in (future, others) if group]
    header = "\n\n".join(sections)
    separator = "\n" * (PEP8_BLANK_LINES + 1)
    body = separator.join("\n".join(block_lines(block)) for block in blocks if block.strip())
    text = separator.join(part for part in (header, body) if part)
    return text + "\n" if text else ""


# --- the existing file's layout -----------------------------------------------------------


@dataclass(frozen=True)
class _Statement:
    """A top-level statement: its kind and its 0-based first and last lines."""

    kind: str  # "docstring", "future", "import", "def", "main", "other"
    first: int
    last: int


def _is_main_guard(module: cst.Module, node: cst.If) -> bool:
    """``if __name__ == "__main__":`` in either operand order."""
    try:
        test = ast.parse(module.code_for_node(node.test).strip(), mode="eval").body
    except SyntaxError:
        return False
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    operands = [test.left, *test.comparators]
    names = {operand.id for operand in operands if isinstance(operand, ast.Name)}
    values = {operand.value for operand in operands if isinstance(operand, ast.Constant)}
    return isinstance(test.ops[0], ast.Eq) and names == {"__name__"} and values == {"__main__"}


def _simple_kind(node: cst.SimpleStatementLine, index: int) -> str:
    """The kind of a one-line statement: docstring, import, future import or other."""
    body = node.body
    if index == 0 and len(body) == 1 and isinstance(body[0], cst.Expr):
        if isinstance(body[0].value, cst.SimpleString | cst.ConcatenatedString):
            return "docstring"
    if not all(isinstance(small, cst.Import | cst.ImportFrom) for small in body):
        return "other"
    if all(
        isinstance(small, cst.ImportFrom)
        and isinstance(small.module, cst.Name)
        and small.module.value == "__future__"
        for small in body
    ):
        return "future"
    return "import"


def _kind_of(module: cst.Module, node: cst.CSTNode, index: int) -> str:
    if isinstance(node, cst.SimpleStatementLine):
        return _simple_kind(node, index)
    if isinstance(node, cst.FunctionDef | cst.ClassDef):
        return "def"
    if isinstance(node, cst.If) and _is_main_guard(module, node):
        return "main"
    return "other"


def _statements(text: str) -> list[_Statement]:
    """The file's top-level statements with their lines (decorators included)."""
    try:
        wrapper = MetadataWrapper(cst.parse_module(text))
    except cst.ParserSyntaxError as error:
        raise ValueError(f"the existing test file does not parse: {error.message}") from error
    positions = wrapper.resolve(PositionProvider)
    module = wrapper.module
    found = []
    for index, node in enumerate(module.body):
        first = positions[node].start.line
        if isinstance(node, cst.FunctionDef | cst.ClassDef) and node.decorators:
            first = min(positions[decorator].start.line for decorator in node.decorators)
        kind = _kind_of(module, node, index)
        found.append(_Statement(kind, first - 1, positions[node].end.line - 1))
    return found


def _blank_lines_between_defs(lines: Sequence[str], statements: Sequence[_Statement]) -> int:
    """How many blank lines the file puts before a top-level def or class (1 or 2)."""
    gaps = Counter(
        sum(_is_blank(line) for line in lines[before.last + 1 : after.first])
        for before, after in pairwise(statements)
        if after.kind == "def"
    )
    usual = [count for count, _ in gaps.most_common() if count in (1, 2)]
    if not usual or (len(usual) == 2 and gaps[1] == gaps[2]):
        return PEP8_BLANK_LINES
    return usual[0]


def _comments_above(lines: Sequence[str], index: int) -> int:
    """The first line of the column-0 comments directly above line ``index``."""
    while index > 0 and _is_comment(lines[index - 1]):
        index -= 1
    return index


def _blanks_from(lines: Sequence[str], index: int) -> int:
    """How many blank lines start at ``index``."""
    count = 0
    while index + count < len(lines) and _is_blank(lines[index + count]):
        count += 1
    return count


def _blanks_before(lines: Sequence[str], index: int) -> int:
    """How many blank lines end right above ``index``."""
    count = 0
    while index - count > 0 and _is_blank(lines[index - count - 1]):
        count += 1
    return count


# --- where additions go -------------------------------------------------------------------


def _next_statement(statements: Sequence[_Statement], index: int) -> _Statement | None:
    return next((statement for statement in statements if statement.first >= index), None)


def _header(statements: Sequence[_Statement]) -> list[_Statement]:
    """The statements before the first def, class or main guard."""
    header = []
    for statement in statements:
        if statement.kind in ("def", "main"):
            break
        header.append(statement)
    return header


def _top_of_file(lines: Sequence[str], statements: Sequence[_Statement]) -> int:
    """Where the first statement's own text (with its comments) begins, or the end."""
    if not statements:
        return len(lines)
    return _comments_above(lines, statements[0].first)


def _future_anchor(lines: Sequence[str], statements: Sequence[_Statement]) -> int:
    """Line index for new ``__future__`` imports: after the docstring and existing ones."""
    anchor = None
    for statement in statements:
        if statement.kind not in ("docstring", "future"):
            break
        anchor = statement.last + 1
    return _top_of_file(lines, statements) if anchor is None else anchor


def _import_anchor(lines: Sequence[str], statements: Sequence[_Statement]) -> tuple[int, bool]:
    """Line index for new imports, and whether it continues an existing import block."""
    header = _header(statements)
    imports = [s for s in header if s.kind == "import"]
    if imports:
        return imports[-1].last + 1, True
    return _future_anchor(lines, statements), False


def _standalone_block(
    lines: Sequence[str],
    statements: Sequence[_Statement],
    index: int,
    content: list[str],
    blank_lines: int,
) -> list[str]:
    """``content`` padded with blank lines to sit on its own at ``index``."""
    before = [""] if index > 0 and not _is_blank(lines[index - 1]) else []
    following = _next_statement(statements, index)
    wanted = 0
    if following is not None:
        wanted = blank_lines if following.kind in ("def", "main") else 1
    return [*before, *content, *_blank_run(wanted - _blanks_from(lines, index))]


def _import_insertions(
    lines: Sequence[str],
    statements: Sequence[_Statement],
    missing: Sequence[ImportedName],
    blank_lines: int,
) -> dict[int, list[str]]:
    """New import lines by the line index they go before."""
    future = render_imports(name for name in missing if name.is_future)
    others = render_imports(name for name in missing if not name.is_future)
    future_at = _future_anchor(lines, statements)
    others_at, continues = _import_anchor(lines, statements)
    insertions: dict[int, list[str]] = {}
    if future and others and future_at == others_at:
        content = [*future, "", *others]
        insertions[future_at] = _standalone_block(
            lines, statements, future_at, content, blank_lines
        )
        return insertions
    if future:
        insertions[future_at] = _standalone_block(lines, statements, future_at, future, blank_lines)
    if others and continues:
        insertions.setdefault(others_at, []).extend(others)
    elif others:
        block = _standalone_block(lines, statements, others_at, others, blank_lines)
        insertions.setdefault(others_at, []).extend(block)
    return insertions


def _tests_anchor(lines: Sequence[str], statements: Sequence[_Statement]) -> int:
    """Before a final main guard (and its comments), else the end of the file."""
    if statements and statements[-1].kind == "main":
        return _comments_above(lines, statements[-1].first)
    return len(lines)


def _tests_block(
    lines: Sequence[str], index: int, tests: Sequence[str], blank_lines: int
) -> list[str]:
    """The tests as lines, with the blank lines that set them apart."""
    blocks = [block_lines(test) for test in tests if test.strip()]
    if not blocks:
        return []
    content: list[str] = []
    for block in blocks:
        content.extend([*(_blank_run(blank_lines) if content else []), *block])
    has_text_above = any(not _is_blank(line) for line in lines[:index])
    before = _blank_run(blank_lines - _blanks_before(lines, index)) if has_text_above else []
    after = _blank_run(blank_lines) if index < len(lines) else []
    return [*before, *content, *after]


def _apply(lines: Sequence[str], insertions: dict[int, list[str]], newline: str) -> str:
    """The lines with new ones inserted; an unterminated last line gets a newline first."""
    out: list[str] = []
    for index in range(len(lines) + 1):
        added = insertions.get(index)
        if added:
            if out and not out[-1].endswith("\n"):
                out[-1] += newline
            out.extend(line + newline for line in added)
        if index < len(lines):
            out.append(lines[index])
    return "".join(out)


def _missing_imports(tree: ast.Module, imports: Iterable[str]) -> list[ImportedName]:
    present = top_level_imports(tree)
    wanted = unique(name for code in imports for name in parse_imports(code))
    return [name for name in wanted if name not in present]


def insert_tests(existing: str | None, imports: Sequence[str], tests: Sequence[str]) -> str:
    """``existing`` with ``tests`` appended and the ``imports`` it lacks merged in.

    ``None`` or a blank file gives a new file. Every line of ``existing`` is kept as it
    is, in order; only import lines, blank separators and the tests are added (see the
    module docstring for where). Raises ``ValueError`` when ``existing``, an import or the
    result does not parse: a file we cannot read is not one to write into.
    """
    if existing is None or not existing.strip():
        names = unique(name for code in imports for name in parse_imports(code))
        result = new_test_file(render_imports(names), tests)
        _check_parses(result)
        return result
    try:
        tree = ast.parse(existing)
    except SyntaxError as error:
        raise ValueError(f"the existing test file does not parse: {error.msg}") from error
    lines = _split_lines(existing)
    statements = _statements(existing)
    blank_lines = _blank_lines_between_defs(lines, statements)
    insertions = _import_insertions(lines, statements, _missing_imports(tree, imports), blank_lines)
    tests_at = _tests_anchor(lines, statements)
    insertions.setdefault(tests_at, []).extend(_tests_block(lines, tests_at, tests, blank_lines))
    result = _apply(lines, insertions, _newline_of(existing))
    _check_parses(result)
    return result


def _check_parses(text: str) -> None:
    try:
        ast.parse(text)
    except SyntaxError as error:
        raise ValueError(
            f"the tests do not fit the file: {error.msg} (line {error.lineno})"
        ) from error
