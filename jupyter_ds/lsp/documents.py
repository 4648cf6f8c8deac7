"""From what the editor holds to API request bodies: cursors, words, paths, notebook cells.

Positions arrive in the client's units (UTF-16 code units unless it negotiated another
encoding); a position outside the document is an error here, never clamped silently (pygls
clamps, which would complete at a place the user is not). Documents over the size limit
are refused with a clear message instead of being sent whole to the model.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.workspace.position_codec import PositionCodec

# JSON-RPC's InvalidParams: the request names a place that does not exist.
INVALID_PARAMS = types.ErrorCodes.InvalidParams
# LSP's RequestFailed: the request is well formed, but cannot be served (too large...).
REQUEST_FAILED = types.LSPErrorCodes.RequestFailed

MAX_DOCUMENT_CHARS = 1_000_000


class DocumentError(JsonRpcException):
    """A request about a document that cannot be served: raised from a feature, pygls
    answers it as the JSON-RPC error ``code`` with ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, int(code))


@dataclass(frozen=True)
class Cursor:
    """The text around a position: ``prefix`` before it, ``suffix`` after it, and the
    identifier being typed (``word``, the end of ``prefix``), which completion-list
    clients filter their items by."""

    prefix: str
    suffix: str
    word: str
    line: int
    character: int  # in the client's units, as it sent it


def check_size(source: str, uri: str, limit: int = MAX_DOCUMENT_CHARS) -> None:
    if len(source) > limit:
        raise DocumentError(
            REQUEST_FAILED,
            f"jupyter-ds: {display_name(uri)} has {len(source):,} characters, over the limit "
            f"of {limit:,} (jupyter-ds lsp --max-document-chars); no suggestions for it")


def cursor_at(source: str, position: types.Position, codec: PositionCodec,
              uri: str = "", limit: int = MAX_DOCUMENT_CHARS) -> Cursor:
    """The cursor at ``position``, or a :class:`DocumentError` naming what is wrong."""
    check_size(source, uri, limit)
    lines = source.splitlines(keepends=True)
    line, character = position.line, position.character
    if line == len(lines) and (not lines or lines[-1].endswith(("\n", "\r"))):
        text = ""  # the empty line after a final newline
    elif line >= len(lines):
        raise DocumentError(INVALID_PARAMS, f"position {line}:{character} is outside the "
                            f"document ({len(lines)} lines)")
    else:
        text = lines[line].rstrip("\r\n")
    units = codec.client_num_units(text)
    if character > units:
        raise DocumentError(INVALID_PARAMS, f"position {line}:{character} is outside the "
                            f"document (line {line} has {units} characters)")
    column = 0
    if text:
        column = codec.position_from_client_units(
            [text], types.Position(line=0, character=character)).character
    offset = sum(len(x) for x in lines[:line]) + column
    prefix = source[:offset]
    return Cursor(prefix, source[offset:], word_before(prefix), line, character)


def word_before(prefix: str) -> str:
    """The identifier characters just before the cursor (``pri`` in ``x = pri``)."""
    end = len(prefix)
    start = end
    while start > 0 and (prefix[start - 1].isalnum() or prefix[start - 1] == "_"):
        start -= 1
    return prefix[start:end]


def uri_path(uri: str) -> str | None:
    """The local file a ``file:`` URI names (None for other schemes: untitled buffers)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return os.path.normpath(unquote(parsed.path))


def display_name(uri: str) -> str:
    path = uri_path(uri)
    return os.path.basename(path) if path else uri[:80]


def relative_path(uri: str, root: str | None) -> str | None:
    """The document's path as the jupyter-ds server names files: relative to its root.

    A file outside the root (or an untitled buffer) is sent by its name alone, which the
    prompt still uses; the server refuses absolute paths and paths that leave its root.
    """
    path = uri_path(uri)
    if path is None:
        return None
    if root:
        rel = os.path.relpath(path, os.path.realpath(root)) if os.path.isabs(path) else path
        if not rel.startswith(".."):
            return rel.replace(os.sep, "/")
    return os.path.basename(path)


def enclosing_function(source: str, line: int) -> str | None:
    """The name of the innermost function (or method) around 0-based ``line``; None
    when the line is in none, or the source does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    best: tuple[int, str] | None = None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
            last = (node.end_lineno or node.lineno) - 1
            if first <= line <= last and (best is None or first >= best[0]):
                best = (first, node.name)
    return best[1] if best else None


def cells_above(notebook: types.NotebookDocument, cell_uri: str,
                texts: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """The cells above ``cell_uri`` in notebook order, as ``CompleteRequest.cells`` takes
    them; None when the cell is not in the notebook."""
    cells = list(notebook.cells)
    index = next((i for i, c in enumerate(cells) if c.document == cell_uri), None)
    if index is None:
        return None
    out = []
    for cell in cells[:index]:
        document = texts.get(cell.document)
        if document is None:
            continue
        kind = "markdown" if cell.kind == types.NotebookCellKind.Markup else "code"
        out.append({"source": document.source, "cell_type": kind})
    return out
