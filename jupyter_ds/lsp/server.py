"""The language server: small pygls features over one backend.

* ``textDocument/inlineCompletion`` (LSP 3.18): the suggestion as ghost text; each item's
  ``command`` (``jupyter-ds.accepted``) is run by the client when the user accepts it,
  which counts the acceptance.
* ``textDocument/completion``: the same suggestion for clients without inline completion
  (Neovim before 0.12, Helix, Zed): one item whose ``textEdit`` replaces the word being
  typed with that word plus the suggestion, so that clients that filter items by the
  typed word keep it, and the document ends up exactly as with the inline item.
* ``workspace/executeCommand``: ``jupyter-ds.explain``, ``jupyter-ds.generateTests``,
  ``jupyter-ds.draftCommitMessage`` (with ``$/progress``), and the code actions
  "Explain" and "Generate tests" that run them.
* Incremental text sync and notebook sync: in a notebook, the cells above the cursor's
  cell go with the request (``CompleteRequest.cells``), as JupyterLab's context does.
* ``jupyter-ds/telemetry``: clients report shown, accepted, partially accepted and
  dismissed suggestions (by the ``requestId`` that each item's ``data`` carries); the
  server forwards them to ``POST jupyter-ds/v1/telemetry``. No code text is sent.

``$/cancelRequest`` cancels the handler's task: in client mode that closes its HTTP
request, and the jupyter-ds server stops the generation (as it does for any client that
goes away). Failures reach the user through ``window/showMessage`` with the envelope's
message, at most once a minute for the same kind (typing must not raise a storm of them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer

from jupyter_ds.lsp.backends import Backend, CallError
from jupyter_ds.lsp.documents import (
    INVALID_PARAMS,
    REQUEST_FAILED,
    Cursor,
    DocumentError,
    cells_above,
    check_size,
    cursor_at,
    display_name,
    enclosing_function,
    relative_path,
    uri_path,
)
from jupyter_ds.lsp.protocol import HardenedProtocol, report_bad_message

log = logging.getLogger(__name__)

T = TypeVar("T")

EXPLAIN = "jupyter-ds.explain"
GENERATE_TESTS = "jupyter-ds.generateTests"
DRAFT_COMMIT_MESSAGE = "jupyter-ds.draftCommitMessage"
ACCEPTED = "jupyter-ds.accepted"
TELEMETRY = "jupyter-ds/telemetry"
TELEMETRY_EVENTS = ("shown", "accepted", "partially_accepted", "dismissed")
SOURCE = "jupyter-ds"
# The cells above the cursor sent with a notebook completion: the nearest ones, this much
# text at most (the server fits them into the model's token budget anyway).
MAX_CONTEXT_CELLS = 200
MAX_CONTEXT_CHARS = 100_000
MESSAGE_INTERVAL_S = 60.0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jupyter-ds")
    except PackageNotFoundError:
        return "0"


@dataclass
class LspSettings:
    """What ``jupyter-ds lsp``'s options set."""

    max_document_chars: int = 1_000_000
    max_tokens: int | None = None  # the server's default
    adapter: str | None = None


class DsLanguageServer(LanguageServer):
    """pygls' server with the backend, the settings and rate-limited messages."""

    def __init__(self, backend: Backend, settings: LspSettings | None = None) -> None:
        super().__init__(
            "jupyter-ds", _version(), protocol_cls=HardenedProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
            notebook_document_sync=types.NotebookDocumentSyncOptions(
                notebook_selector=[types.NotebookDocumentFilterWithCells(
                    notebook="*", cells=[types.NotebookCellLanguage(language="python")])]),
        )
        self.backend = backend
        self.settings = settings or LspSettings()
        self._told: dict[str, float] = {}
        self._tasks: dict[Any, asyncio.Future[Any]] = {}  # command tasks by request id
        self._background: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------ messages

    def report_server_error(self, error: Exception, source: Any) -> None:
        protocol = self.protocol
        if isinstance(protocol, HardenedProtocol) and report_bad_message(protocol, error):
            return
        super().report_server_error(error, source)

    def tell(self, message: str, kind: types.MessageType = types.MessageType.Error,
             key: str | None = None) -> None:
        """``window/showMessage``, at most once a minute per ``key`` (default: message)."""
        key = key or message
        now = time.monotonic()
        if now - self._told.get(key, -MESSAGE_INTERVAL_S) < MESSAGE_INTERVAL_S:
            self.window_log_message(types.LogMessageParams(kind, message))
            return
        self._told[key] = now
        self.window_show_message(types.ShowMessageParams(kind, message))

    def failed(self, exc: CallError) -> None:
        """Tell the user about a failed call; a busy or loading model only in the log."""
        if exc.status in (429, 503):
            self.window_log_message(types.LogMessageParams(
                types.MessageType.Info, f"jupyter-ds: {exc.message}"))
            return
        self.tell(f"jupyter-ds: {exc.message}", key=f"{exc.status}:{exc.code}")

    # ------------------------------------------------------------------ documents

    @property
    def root(self) -> str | None:
        """The folder request paths are relative to: the server's root when known (its
        runtime file, ``--root``), else the editor's workspace folder (the usual case of
        ``jupyter lab`` started in the project)."""
        return self.backend.root or self.workspace.root_path or None

    def document(self, uri: str) -> Any:
        """An open document (one never opened is not read from disk)."""
        document = self.workspace.text_documents.get(uri)
        if document is None:
            raise DocumentError(INVALID_PARAMS, f"{uri} is not open: send "
                                "textDocument/didOpen first")
        return document

    def completion_body(self, uri: str, position: types.Position) -> tuple[dict[str, Any],
                                                                             Cursor, Any]:
        """The ``POST complete`` body for a cursor, the cursor, and the document."""
        document = self.document(uri)
        cursor = cursor_at(document.source, position, document.position_codec, uri,
                           self.settings.max_document_chars)
        root = self.root
        body: dict[str, Any] = {"prefix": cursor.prefix, "suffix": cursor.suffix,
                                "language": document.language_id or "python"}
        notebook = self.workspace.get_notebook_document(cell_uri=uri)
        if notebook is not None:
            cells = cells_above(notebook, uri, self.workspace.text_documents)
            if cells is not None:
                body["cells"] = nearest(cells)
            path = relative_path(notebook.uri, root)
        else:
            path = relative_path(uri, root)
        if path:
            body["path"] = path
        if self.settings.max_tokens is not None:
            body["max_tokens"] = self.settings.max_tokens
        if self.settings.adapter:
            body["adapter"] = self.settings.adapter
        return body, cursor, document

    async def suggest(self, uri: str, position: types.Position
                      ) -> tuple[dict[str, Any], Cursor, Any] | None:
        """The completion's ``data`` at a cursor; None when there is none to show (the
        reason told to the user, or logged)."""
        try:
            body, cursor, document = self.completion_body(uri, position)
        except DocumentError as exc:
            if exc.code == REQUEST_FAILED:
                self.tell(exc.message, types.MessageType.Warning, key=f"size:{uri}")
            raise
        try:
            data = await self.backend.call("complete", body)
        except CallError as exc:
            self.failed(exc)
            return None
        return data, cursor, document

    # ------------------------------------------------------------------ commands

    async def run_command(self, title: str, work: Awaitable[T]) -> T:
        """Run a long command: cancellable by its request id, with ``$/progress`` when
        the client supports it, its failure shown with the envelope's message."""
        msg_id = self.protocol.msg_id
        task = asyncio.ensure_future(work)
        if msg_id is not None:
            self._tasks[msg_id] = task
        token = await self._begin_progress(title)
        try:
            return await task
        except CallError as exc:
            self.tell(f"jupyter-ds: {exc.message}", key=f"{exc.status}:{exc.code}")
            raise JsonRpcException(exc.message, REQUEST_FAILED) from None
        finally:
            if msg_id is not None:
                self._tasks.pop(msg_id, None)
            if token is not None:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd())

    def cancel_command(self, msg_id: Any) -> None:
        task = self._tasks.pop(msg_id, None)
        if task is not None:
            task.cancel()

    async def _begin_progress(self, title: str) -> str | None:
        window = self.client_capabilities.window
        if window is None or not window.work_done_progress:
            return None
        token = f"jupyter-ds-{uuid.uuid4().hex[:12]}"
        try:
            await asyncio.wait_for(self.work_done_progress.create_async(token), 5.0)
        except Exception:  # a client that does not answer: no progress, the work runs
            return None
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
            title=f"jupyter-ds: {title}", cancellable=False))
        return token

    def background(self, work: Awaitable[Any]) -> None:
        """Run ``work`` without awaiting it (held here until done: not collected)."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def report(self, events: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Forward telemetry events; failures are logged, never shown (not the user's)."""
        try:
            return await self.backend.call("telemetry", {"events": events})
        except CallError as exc:
            log.info("jupyter-ds lsp: telemetry not counted: %s", exc.message)
            return None


def nearest(cells: list[dict[str, str]]) -> list[dict[str, str]]:
    """The cells nearest the cursor within the context bounds, in notebook order."""
    kept: list[dict[str, str]] = []
    total = 0
    for cell in reversed(cells):
        total += len(cell["source"])
        if total > MAX_CONTEXT_CHARS or len(kept) >= MAX_CONTEXT_CELLS:
            break
        kept.append(cell)
    return kept[::-1]


def _accept(request_id: str | None) -> types.Command | None:
    """The command a client runs when the user accepts an item: counts the acceptance."""
    if request_id is None:
        return None
    return types.Command(title="Accept the jupyter-ds suggestion", command=ACCEPTED,
                         arguments=[{"requestId": request_id}])


def _request_id(data: dict[str, Any]) -> str | None:
    value = data.get("request_id")
    return value if isinstance(value, str) else None


def _argument(args: tuple[Any, ...], command: str) -> dict[str, Any]:
    """The one object argument of a command (missing: empty)."""
    if not args:
        return {}
    if len(args) != 1 or not isinstance(args[0], dict):
        raise JsonRpcException(f"{command} takes one object argument, e.g. "
                               '{"uri": ..., "range": ...}', INVALID_PARAMS)
    return args[0]


def _position(value: Any, name: str) -> types.Position:
    if not (isinstance(value, dict) and isinstance(value.get("line"), int)
            and isinstance(value.get("character"), int)
            and value["line"] >= 0 and value["character"] >= 0):
        raise JsonRpcException(f"'{name}' must be a position {{line, character}}",
                               INVALID_PARAMS)
    return types.Position(value["line"], value["character"])


def build_server(backend: Backend, settings: LspSettings | None = None) -> DsLanguageServer:
    """The language server with every feature registered."""
    server = DsLanguageServer(backend, settings)

    # -------------------------------------------------------------- completion

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: DsLanguageServer, params: types.InlineCompletionParams
                                ) -> types.InlineCompletionList | None:
        found = await ls.suggest(params.text_document.uri, params.position)
        if found is None:
            return None
        data, _cursor, _document = found
        request_id = _request_id(data)
        items = []
        for item in data.get("items") or []:
            text = item.get("insertText") or ""
            if not text:
                continue
            items.append(types.InlineCompletionItem(
                insert_text=text,
                range=types.Range(params.position, params.position),
                command=_accept(request_id),
            ))
        if items and request_id:  # an inline item is on screen as soon as it is returned
            ls.background(ls.report([{"event": "shown", "request_id": request_id,
                                      "client": "lsp"}]))
        return types.InlineCompletionList(items=items)

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(
        trigger_characters=[".", "(", "[", ",", " ", "="]))
    async def completion(ls: DsLanguageServer, params: types.CompletionParams
                         ) -> types.CompletionList:
        found = await ls.suggest(params.text_document.uri, params.position)
        if found is None:
            return types.CompletionList(is_incomplete=True, items=[])
        data, cursor, document = found
        request_id = _request_id(data)
        codec = document.position_codec
        start = types.Position(params.position.line,
                               params.position.character - codec.client_num_units(cursor.word))
        items = []
        for rank, item in enumerate(data.get("items") or []):
            text = item.get("insertText") or ""
            if not text:
                continue
            new_text = cursor.word + text
            label = new_text.split("\n", 1)[0].strip() or new_text.strip()
            items.append(types.CompletionItem(
                label=label[:80] + ("…" if len(label) > 80 or "\n" in new_text.strip() else ""),
                kind=types.CompletionItemKind.Snippet if "\n" in text
                else types.CompletionItemKind.Text,
                detail=SOURCE,
                documentation=types.MarkupContent(types.MarkupKind.Markdown,
                                                  f"```{document.language_id or 'python'}\n"
                                                  f"{new_text}\n```"),
                filter_text=new_text,
                sort_text=f"0{rank}",  # first: the model's best
                insert_text=new_text,
                insert_text_format=types.InsertTextFormat.PlainText,
                text_edit=types.TextEdit(types.Range(start, params.position), new_text),
                command=_accept(request_id),
                data={"requestId": request_id, "source": SOURCE},
            ))
        # Incomplete: ask again as the user types on (the suggestion depends on the text).
        return types.CompletionList(is_incomplete=True, items=items)

    # -------------------------------------------------------------- commands

    @server.command(EXPLAIN)
    async def explain(ls: DsLanguageServer, *args: Any) -> dict[str, Any]:
        """``{"uri", "range"}`` (the selection; absent: the whole document) or
        ``{"code"}``; optional ``question``. Returns ``{"markdown": ...}``."""
        arg = _argument(args, EXPLAIN)
        code = arg.get("code") if isinstance(arg.get("code"), str) else None
        language = "python"
        if code is None:
            uri = arg.get("uri")
            if not isinstance(uri, str):
                raise JsonRpcException(f"{EXPLAIN} needs 'uri' (with 'range') or 'code'",
                                       INVALID_PARAMS)
            document = ls.document(uri)
            code = _selected(ls, document, uri, arg.get("range"))
            language = document.language_id or language
        if not code.strip():
            raise JsonRpcException("nothing to explain: the selection is empty",
                                   INVALID_PARAMS)
        body: dict[str, Any] = {"code": code, "language": language}
        if isinstance(arg.get("question"), str):
            body["question"] = arg["question"]
        data = await ls.run_command("explaining", ls.backend.call("explain", body))
        return {"markdown": data.get("output", ""), "data": data}

    @server.command(GENERATE_TESTS)
    async def generate_tests(ls: DsLanguageServer, *args: Any) -> dict[str, Any]:
        """``{"uri", "position"}``: tests for the function around the position (absent:
        the first public one). Returns ``{"tests": code, "data": the API's data}``."""
        arg = _argument(args, GENERATE_TESTS)
        uri = arg.get("uri")
        if not isinstance(uri, str):
            raise JsonRpcException(f"{GENERATE_TESTS} needs 'uri'", INVALID_PARAMS)
        document = ls.document(uri)
        check_size(document.source, uri, ls.settings.max_document_chars)
        body: dict[str, Any] = {"source": document.source}
        path = relative_path(uri, ls.root)
        if path:
            body["path"] = path
        if "position" in arg:
            position = _position(arg["position"], "position")
            target = enclosing_function(document.source, position.line)
            if target is None:
                raise JsonRpcException(
                    f"no function around line {position.line + 1} of {display_name(uri)} "
                    "(or the file does not parse)", INVALID_PARAMS)
            body["target"] = target
        data = await ls.run_command("generating tests", ls.backend.call("tests", body))
        tests = data.get("tests") if isinstance(data.get("tests"), str) else None
        kept = data.get("kept") if isinstance(data.get("kept"), int) else None
        ls.tell(f"jupyter-ds: {kept if kept is not None else 'the'} verified test(s) for "
                f"{data.get('target') or body.get('target') or display_name(uri)}",
                types.MessageType.Info, key=f"tests:{uuid.uuid4()}")
        return {"tests": tests or data.get("output") or "", "data": data}

    @server.command(DRAFT_COMMIT_MESSAGE)
    async def draft_commit_message(ls: DsLanguageServer, *args: Any) -> dict[str, Any]:
        """``{"path"}``: the repository, relative to the server's root (absent: the
        workspace folder). Returns ``{"message": ...}`` for the staged changes."""
        arg = _argument(args, DRAFT_COMMIT_MESSAGE)
        path = arg.get("path")
        if path is None:
            path = _workspace_repo(ls)
        if not isinstance(path, str):
            raise JsonRpcException("'path' must be a string", INVALID_PARAMS)
        data = await ls.run_command("drafting a commit message",
                                    ls.backend.call("git/commit-message", {"path": path}))
        return {"message": data.get("message") or data.get("output") or "", "data": data}

    @server.command(ACCEPTED)
    async def accepted(ls: DsLanguageServer, *args: Any) -> None:
        arg = _argument(args, ACCEPTED)
        request_id = arg.get("requestId")
        if isinstance(request_id, str):
            await ls.report([{"event": "accepted", "request_id": request_id,
                              "client": "lsp"}])

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=[types.CodeActionKind.Source, types.CodeActionKind.RefactorRewrite]))
    def code_actions(ls: DsLanguageServer, params: types.CodeActionParams
                     ) -> list[types.CodeAction]:
        uri = params.text_document.uri
        if uri not in ls.workspace.text_documents:
            return []
        selection = params.range
        where = {"uri": uri, "range": ls.protocol._converter.unstructure(selection)}
        actions = [types.CodeAction(
            title="Explain with jupyter-ds", kind=types.CodeActionKind.Source,
            command=types.Command(title="Explain with jupyter-ds", command=EXPLAIN,
                                  arguments=[where]))]
        document = ls.workspace.text_documents[uri]
        if (document.language_id or "python") == "python" and enclosing_function(
                document.source, selection.start.line):
            at = {"uri": uri, "position": {"line": selection.start.line,
                                           "character": selection.start.character}}
            actions.append(types.CodeAction(
                title="Generate tests with jupyter-ds", kind=types.CodeActionKind.Source,
                command=types.Command(title="Generate tests with jupyter-ds",
                                      command=GENERATE_TESTS, arguments=[at])))
        return actions

    # -------------------------------------------------------------- telemetry, sync

    @server.feature(TELEMETRY)
    async def telemetry(ls: DsLanguageServer, params: Any) -> None:
        events = _telemetry_events(params)
        if events:
            await ls.report(events)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DsLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        _warn_size(ls, params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DsLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
        _warn_size(ls, params.text_document.uri)

    return server


def _warn_size(ls: DsLanguageServer, uri: str) -> None:
    document = ls.workspace.text_documents.get(uri)
    if document is None:
        return
    try:
        check_size(document.source, uri, ls.settings.max_document_chars)
    except DocumentError as exc:
        ls.tell(exc.message, types.MessageType.Warning, key=f"size:{uri}")


def _selected(ls: DsLanguageServer, document: Any, uri: str, where: Any) -> str:
    check_size(document.source, uri, ls.settings.max_document_chars)
    if where is None:
        return document.source
    if not isinstance(where, dict):
        raise JsonRpcException("'range' must be {start, end}", INVALID_PARAMS)
    start, end = _position(where.get("start"), "range.start"), _position(
        where.get("end"), "range.end")
    a = cursor_at(document.source, start, document.position_codec, uri,
                  ls.settings.max_document_chars)
    b = cursor_at(document.source, end, document.position_codec, uri,
                  ls.settings.max_document_chars)
    lo, hi = sorted((len(a.prefix), len(b.prefix)))
    if lo == hi:  # an empty selection: the line it is on
        lines = document.source.splitlines()
        return lines[start.line] if start.line < len(lines) else ""
    return document.source[lo:hi]


def _workspace_repo(ls: DsLanguageServer) -> str:
    """The workspace folder as the server's root names it ("." when they are the same)."""
    folder = uri_path(ls.workspace.root_uri or "")
    root = ls.root
    if folder is None or root is None:
        return "."
    rel = os.path.relpath(os.path.realpath(folder), os.path.realpath(root))
    if rel == ".." or rel.startswith(".." + os.sep):
        raise JsonRpcException(f"the workspace folder {folder} is outside the jupyter-ds "
                               f"server's root {root}: pass {{\"path\": ...}} relative to "
                               "that root", INVALID_PARAMS)
    return rel.replace(os.sep, "/")


def _plain(value: Any) -> Any:
    """JSON as plain dicts and lists: pygls hands a notification it has no type for as
    named tuples (``_dict_to_object``)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _telemetry_events(params: Any) -> list[dict[str, Any]]:
    """``{"event", "requestId"|"request_id", "acceptedChars"?}`` or ``{"events": [...]}``,
    as the API's telemetry events; malformed ones are dropped (a notification has no
    answer to carry an error)."""
    raw = _plain(params)
    raw = raw if isinstance(raw, dict) else {}
    items = raw["events"] if isinstance(raw.get("events"), list) else [raw]
    out = []
    for item in items[:100]:
        if not isinstance(item, dict):
            item = {}
        event = item.get("event")
        request_id = item.get("requestId", item.get("request_id"))
        if event not in TELEMETRY_EVENTS or not isinstance(request_id, str):
            log.info("jupyter-ds lsp: a malformed telemetry event was dropped")
            continue
        entry: dict[str, Any] = {"event": event, "request_id": request_id, "client": "lsp"}
        chars = item.get("acceptedChars", item.get("accepted_chars"))
        if isinstance(chars, int) and not isinstance(chars, bool) and chars >= 0:
            entry["accepted_chars"] = chars
        out.append(entry)
    return out
