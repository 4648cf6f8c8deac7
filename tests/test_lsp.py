"""``jupyter-ds lsp`` driven by a real LSP client (pytest-lsp) over stdio.

The language server runs as its own process, as an editor starts it, and talks to a real
Jupyter server (pytest-jupyter, on a real port) with the tiny random-weight model, or
with ``SlowEngine`` (``tests/lsp_engine.py``) where a test needs a known answer or time to
cancel. What the editor gets is compared with what the REST API answers for the same
request. Malformed JSON-RPC is sent as raw bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types as t
from prometheus_client.parser import text_string_to_metric_families
from pytest_lsp import LanguageClient, client_capabilities, make_test_lsp_client

pytestmark = pytest.mark.timeout(120)

JUPYTER_DS = shutil.which("jupyter-ds", path=str(Path(sys.executable).parent)) or "jupyter-ds"
SLOW = "lsp_engine.SlowEngine"
TESTS_DIR = str(Path(__file__).resolve().parent)


def capabilities() -> t.ClientCapabilities:
    """Neovim 0.11's capabilities, plus inline completion, notebooks and progress."""
    caps = client_capabilities("neovim")
    caps.text_document.inline_completion = t.InlineCompletionClientCapabilities()
    caps.notebook_document = t.NotebookDocumentClientCapabilities(
        synchronization=t.NotebookDocumentSyncClientCapabilities())
    caps.window = t.WindowClientCapabilities(work_done_progress=True, show_message=None)
    return caps


def server_env(jp_serverapp: Any, jp_http_port: int, jp_base_url: str,
               token: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["JUPYTER_DS_URL"] = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    env["JUPYTER_DS_TOKEN"] = jp_serverapp.identity_provider.token if token is None else token
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, env.get("PYTHONPATH", "")])
    return env


@asynccontextmanager
async def session(env: dict[str, str], *args: str, root: Path | None = None
                  ) -> AsyncIterator[LanguageClient]:
    """A started and initialized ``jupyter-ds lsp``; shut down (or killed) after."""
    client = make_test_lsp_client()
    await client.start_io(JUPYTER_DS, "lsp", *args, env=env,
                          cwd=str(root) if root else None)
    try:
        client.init_result = await asyncio.wait_for(  # type: ignore[attr-defined]
            client.initialize_session(t.InitializeParams(
                capabilities=capabilities(), root_uri=root.as_uri() if root else None,
                process_id=os.getpid())), 30)
        yield client
        await asyncio.wait_for(client.shutdown_session(), 10)
    finally:
        # stop() waits for the process to exit, which it does only after exit: after a
        # failure, give it a moment, then kill it.
        process = client._server
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), 3)
            except asyncio.TimeoutError:
                process.kill()
        await client.stop()


def open_doc(client: LanguageClient, uri: str, text: str, language: str = "python") -> None:
    client.text_document_did_open(t.DidOpenTextDocumentParams(
        t.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))


def edit(client: LanguageClient, uri: str, version: int, start: tuple[int, int],
         end: tuple[int, int], text: str) -> None:
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        t.VersionedTextDocumentIdentifier(uri=uri, version=version),
        [t.TextDocumentContentChangePartial(
            range=t.Range(t.Position(*start), t.Position(*end)), text=text)]))


async def inline(client: LanguageClient, uri: str, line: int, character: int):
    return await asyncio.wait_for(client.text_document_inline_completion_async(
        t.InlineCompletionParams(
            context=t.InlineCompletionContext(t.InlineCompletionTriggerKind.Invoked),
            text_document=t.TextDocumentIdentifier(uri), position=t.Position(line, character))),
        60)


async def complete(client: LanguageClient, uri: str, line: int, character: int):
    return await asyncio.wait_for(client.text_document_completion_async(t.CompletionParams(
        t.TextDocumentIdentifier(uri), t.Position(line, character))), 60)


async def code_actions(client: LanguageClient, uri: str, line: int, character: int
                       ) -> list[dict[str, Any]]:
    """The code actions as JSON: pygls' client would read each ``CodeAction`` (which
    holds a ``Command``) as a ``Command`` of the union the method returns."""
    protocol = client.protocol
    typed = protocol.get_result_type
    protocol.get_result_type = lambda method: None  # type: ignore[method-assign]
    try:
        params = t.CodeActionParams(t.TextDocumentIdentifier(uri),
                                    t.Range(t.Position(line, character),
                                            t.Position(line, character)),
                                    t.CodeActionContext(diagnostics=[]))
        return await asyncio.wait_for(
            protocol.send_request_async(t.TEXT_DOCUMENT_CODE_ACTION, params), 10)
    finally:
        protocol.get_result_type = typed  # type: ignore[method-assign]


def apply(text: str, line: int, start: int, end: int, new: str) -> str:
    """``text`` with columns start..end of ``line`` replaced (ASCII test documents)."""
    lines = text.split("\n")
    lines[line] = lines[line][:start] + new + lines[line][end:]
    return "\n".join(lines)


# -- against the tiny model -----------------------------------------------------------------


async def test_initialize_advertises_what_editors_need(ds_ready, jp_serverapp, jp_http_port,
                                                       jp_base_url, jp_root_dir):
    env = server_env(jp_serverapp, jp_http_port, jp_base_url)
    async with session(env, root=jp_root_dir) as client:
        caps = client.init_result.capabilities  # type: ignore[attr-defined]
        assert caps.inline_completion_provider is not None
        assert caps.completion_provider is not None
        assert caps.code_action_provider is not None
        assert set(caps.execute_command_provider.commands) >= {
            "jupyter-ds.explain", "jupyter-ds.generateTests", "jupyter-ds.draftCommitMessage"}
        assert caps.text_document_sync.change is t.TextDocumentSyncKind.Incremental
        assert caps.notebook_document_sync is not None
        assert client.init_result.server_info.name == "jupyter-ds"  # type: ignore[attr-defined]


async def test_inline_and_fallback_completion_give_the_apis_answer(
        ds_ready, jp_serverapp, jp_http_port, jp_base_url, jp_root_dir):
    env = server_env(jp_serverapp, jp_http_port, jp_base_url)
    uri = (jp_root_dir / "calc.py").as_uri()
    text = "def f(x):\n    return \n"
    async with session(env, "--max-tokens", "6", root=jp_root_dir) as client:
        open_doc(client, uri, text)
        # Incremental edits: the server's copy must follow them.
        edit(client, uri, 2, (1, 11), (1, 11), "x + ma")
        text = "def f(x):\n    return x + ma\n"
        result = await inline(client, uri, 1, 17)
        code, env_, _ = await ds_ready.post("complete", {
            "prefix": "def f(x):\n    return x + ma", "suffix": "\n", "path": "calc.py",
            "max_tokens": 6})
        assert code == 200, env_
        expected = env_["data"]["output"]
        assert result is not None and result.items, "no inline item"
        inline_text = result.items[0].insert_text
        assert inline_text == expected
        assert result.items[0].range == t.Range(t.Position(1, 17), t.Position(1, 17))

        listed = await complete(client, uri, 1, 17)
        ours = [i for i in listed.items if i.detail == "jupyter-ds"]
        assert len(ours) == 1
        item = ours[0]
        edit_ = item.text_edit
        # The fallback replaces the typed word with word + suggestion: the same document.
        assert (edit_.range.start.character, edit_.range.end.character) == (15, 17)
        assert edit_.new_text == "ma" + inline_text == item.filter_text
        assert apply(text, 1, 15, 17, edit_.new_text) == apply(text, 1, 17, 17, inline_text)


async def test_commands_answer_as_the_api_does(ds_ready, jp_serverapp, jp_http_port,
                                               jp_base_url, jp_root_dir):
    env = server_env(jp_serverapp, jp_http_port, jp_base_url)
    uri = (jp_root_dir / "calc.py").as_uri()
    source = "def add(a, b):\n    return a + b\n"
    async with session(env, root=jp_root_dir) as client:
        open_doc(client, uri, source)
        explained = await asyncio.wait_for(client.workspace_execute_command_async(
            t.ExecuteCommandParams("jupyter-ds.explain", [{
                "uri": uri, "range": {"start": {"line": 0, "character": 0},
                                      "end": {"line": 2, "character": 0}}}])), 60)
        code, env_, _ = await ds_ready.post("explain", {"code": source, "language": "python"})
        assert code == 200 and explained["markdown"] == env_["data"]["output"]
        # Long commands report progress: begin and end.
        kinds = [type(v).__name__ for values in client.progress_reports.values()
                 for v in values]
        assert "WorkDoneProgressBegin" in kinds and "WorkDoneProgressEnd" in kinds

        actions = await code_actions(client, uri, 1, 4)
        titles = {a["title"]: a for a in actions}
        assert set(titles) == {"Explain with jupyter-ds", "Generate tests with jupyter-ds"}
        command = titles["Generate tests with jupyter-ds"]["command"]
        assert command["command"] == "jupyter-ds.generateTests"
        assert command["arguments"][0]["position"] == {"line": 1, "character": 4}

        # Not a function: a clear InvalidParams, and the server carries on.
        with pytest.raises(Exception, match="no function around line 3"):
            await client.workspace_execute_command_async(t.ExecuteCommandParams(
                "jupyter-ds.generateTests", [{"uri": uri, "position": {"line": 2,
                                                                       "character": 0}}]))
        with pytest.raises(Exception, match="one object argument"):
            await client.workspace_execute_command_async(t.ExecuteCommandParams(
                "jupyter-ds.explain", ["x", "y"]))


async def test_a_wrong_token_is_a_message_and_the_server_stays_up(
        ds_ready, jp_serverapp, jp_http_port, jp_base_url, jp_root_dir):
    env = server_env(jp_serverapp, jp_http_port, jp_base_url, token="not-the-token")
    uri = (jp_root_dir / "a.py").as_uri()
    async with session(env, root=jp_root_dir) as client:
        open_doc(client, uri, "x = ")
        assert (await inline(client, uri, 0, 4)) is None
        listed = await complete(client, uri, 0, 4)
        assert not listed.items
        shown = [m.message for m in client.messages]
        assert any("refused" in m and "JUPYTER_DS_TOKEN" in m for m in shown), shown
        assert sum("refused" in m for m in shown) == 1  # once, not at every keystroke
        assert "not-the-token" not in " ".join(shown)
        # Still serving.
        actions = await code_actions(client, uri, 0, 0)
        assert actions and actions[0]["title"] == "Explain with jupyter-ds"


# -- with SlowEngine: known answers, prompts and time to cancel ----------------------------


class TestWithAKnownEngine:
    @pytest.fixture
    def ds_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"engine_class": SLOW, "engine_options": {"answer": "x + 1", "delay_s": 0.05},
                "audit_log_path": str(tmp_path / "audit.log")}

    @pytest.fixture(autouse=True)
    def importable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.syspath_prepend(TESTS_DIR)

    async def test_notebook_cells_above_go_with_the_request(
            self, ds_ready, jp_serverapp, jp_http_port, jp_base_url, jp_root_dir):
        from lsp_engine import SlowEngine

        env = server_env(jp_serverapp, jp_http_port, jp_base_url)
        nb = (jp_root_dir / "analysis.ipynb").as_uri()
        cells = [("import pandas as pd\n", t.NotebookCellKind.Code),
                 ("# Load the data", t.NotebookCellKind.Markup),
                 ("df = pd.read_csv('data.csv')\n", t.NotebookCellKind.Code),
                 ("df.", t.NotebookCellKind.Code),
                 ("print('after')\n", t.NotebookCellKind.Code)]
        uris = [f"vscode-notebook-cell:/analysis.ipynb#c{i}" for i in range(len(cells))]
        async with session(env, root=jp_root_dir) as client:
            client.notebook_document_did_open(t.DidOpenNotebookDocumentParams(
                notebook_document=t.NotebookDocument(
                    uri=nb, notebook_type="jupyter-notebook", version=1,
                    cells=[t.NotebookCell(kind=k, document=u)
                           for (_, k), u in zip(cells, uris, strict=True)]),
                cell_text_documents=[t.TextDocumentItem(uri=u, language_id="python",
                                                        version=1, text=src)
                                     for (src, _), u in zip(cells, uris, strict=True)]))
            result = await inline(client, uris[3], 0, 3)
            assert result is not None and result.items[0].insert_text == "x + 1"
        prompt = SlowEngine.instances[-1].prompts[-1]
        assert "import pandas as pd" in prompt and "df = pd.read_csv('data.csv')" in prompt
        assert prompt.index("import pandas") < prompt.index("read_csv") < prompt.index("df.")
        assert "print('after')" not in prompt  # cells below are not context

    async def test_cancel_stops_the_generation_on_the_server(
            self, ds_ready, jp_serverapp, jp_http_port, jp_base_url, jp_root_dir):
        from lsp_engine import SlowEngine

        engine = SlowEngine.instances[-1]
        engine.answer = " ".join(["word"] * 400)  # 20 s at 0.05 s a word
        env = server_env(jp_serverapp, jp_http_port, jp_base_url)
        uri = (jp_root_dir / "a.py").as_uri()
        async with session(env, "--max-tokens", "512", root=jp_root_dir) as client:
            open_doc(client, uri, "x = ")
            pending = asyncio.ensure_future(client.protocol.send_request_async(
                t.TEXT_DOCUMENT_COMPLETION,
                t.CompletionParams(t.TextDocumentIdentifier(uri), t.Position(0, 4)),
                msg_id="to-cancel"))
            for _ in range(200):  # until the generation runs
                if engine.prompts:
                    break
                await asyncio.sleep(0.02)
            assert engine.prompts, "the request never reached the engine"
            client.protocol.notify(t.CANCEL_REQUEST, t.CancelParams(id="to-cancel"))
            with pytest.raises(Exception, match="cancel"):  # RequestCancelled (-32800)
                await asyncio.wait_for(pending, 10)
            for _ in range(200):
                if engine.cancelled:
                    break
                await asyncio.sleep(0.02)
            assert engine.cancelled, "the server kept generating after $/cancelRequest"
            # The language server answers the next request at once.
            engine.answer = "x + 1"
            listed = await complete(client, uri, 0, 4)
            assert listed.items[0].text_edit.new_text == "x + 1"

    async def test_telemetry_reaches_metrics(self, ds_ready, jp_serverapp, jp_http_port,
                                             jp_base_url, jp_root_dir, jp_fetch):
        env = server_env(jp_serverapp, jp_http_port, jp_base_url)
        uri = (jp_root_dir / "a.py").as_uri()

        async def counts() -> dict[str, float]:
            response = await jp_fetch("metrics")
            out: dict[str, float] = {}
            for family in text_string_to_metric_families(response.body.decode()):
                if family.name.startswith("jupyter_ds_completions_"):
                    for sample in family.samples:
                        if sample.labels.get("model") == "slow" and not sample.name.endswith(
                                "_created"):
                            out[sample.name] = out.get(sample.name, 0) + sample.value
            return out

        before = await counts()
        async with session(env, root=jp_root_dir) as client:
            open_doc(client, uri, "x = ")
            shown = []
            for _ in range(3):
                result = await inline(client, uri, 0, 4)
                shown.append(result.items[0])
            accept = shown[0].command
            assert accept.command == "jupyter-ds.accepted"
            await client.workspace_execute_command_async(
                t.ExecuteCommandParams(accept.command, accept.arguments))
            partial = shown[1].command.arguments[0]["requestId"]
            dismissed = shown[2].command.arguments[0]["requestId"]
            client.protocol.notify("jupyter-ds/telemetry", {"events": [
                {"event": "partially_accepted", "requestId": partial, "acceptedChars": 2},
                {"event": "dismissed", "requestId": dismissed},
                {"event": "dismissed", "requestId": "not-a-request"},
                {"event": "bogus", "requestId": dismissed}]})
            after: dict[str, float] = {}
            for _ in range(100):
                after = await counts()
                delta = {k: v - before.get(k, 0) for k, v in after.items()}
                if delta.get("jupyter_ds_completions_dismissed_total"):
                    break
                await asyncio.sleep(0.05)
        delta = {k: v - before.get(k, 0) for k, v in after.items()}
        rate = delta.pop("jupyter_ds_completions_acceptance_rate", None)
        assert delta == {"jupyter_ds_completions_shown_total": 3,
                         "jupyter_ds_completions_accepted_total": 1,
                         "jupyter_ds_completions_partially_accepted_total": 1,
                         "jupyter_ds_completions_dismissed_total": 1}, delta
        # The rate since the start, as /metrics shows it: accepted over shown.
        assert after["jupyter_ds_completions_acceptance_rate"] == pytest.approx(
            after["jupyter_ds_completions_accepted_total"]
            / after["jupyter_ds_completions_shown_total"])
        assert rate is not None


# -- bad input, with no Jupyter server ------------------------------------------------------


def local_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([TESTS_DIR, env.get("PYTHONPATH", "")])
    env.pop("JUPYTER_DS_URL", None)
    env.pop("JUPYTER_DS_TOKEN", None)
    return env


LOCAL = ("--local", "--engine-class", SLOW, "--engine-option", "answer=x + 1")


async def test_local_mode_and_bad_positions_and_sizes(tmp_path: Path):
    uri = (tmp_path / "a.py").as_uri()
    big = (tmp_path / "big.py").as_uri()
    async with session(local_env(), *LOCAL, "--max-document-chars", "500",
                       root=tmp_path) as client:
        open_doc(client, uri, "def f(x):\n    return \n")
        result = await inline(client, uri, 1, 11)
        assert result.items[0].insert_text == "x + 1"
        for line, character in ((1, 12), (5, 0), (2, 1)):
            with pytest.raises(Exception, match="outside the document"):
                await inline(client, uri, line, character)
        with pytest.raises(Exception, match="is not open"):
            await inline(client, (tmp_path / "never.py").as_uri(), 0, 0)
        open_doc(client, big, "x = 1\n" * 200)
        with pytest.raises(Exception, match="over the limit of 500"):
            await complete(client, big, 0, 0)
        assert any("over the limit of 500" in m.message for m in client.messages)
        # Unknown method: MethodNotFound, and the server goes on.
        with pytest.raises(Exception, match=r"-32601|not found|Method Not Found"):
            await asyncio.wait_for(client.protocol.send_request_async("jupyter-ds/nope", {}), 10)
        assert (await inline(client, uri, 1, 11)).items[0].insert_text == "x + 1"


async def test_an_unreachable_server_is_retried_then_a_message(tmp_path: Path):
    env = local_env()
    env["JUPYTER_DS_URL"] = "http://127.0.0.1:9/"  # discard port: nothing listens
    env["JUPYTER_DS_TOKEN"] = "x"
    uri = (tmp_path / "a.py").as_uri()
    async with session(env, "--retries", "2", root=tmp_path) as client:
        open_doc(client, uri, "x = ")
        assert not (await complete(client, uri, 0, 4)).items
        shown = " ".join(m.message for m in client.messages)
        assert "does not answer (3 attempts)" in shown and "127.0.0.1:9" in shown


class RawLsp:
    """``jupyter-ds lsp`` over raw stdio: bytes in, JSON-RPC messages out."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, *args: str) -> RawLsp:
        process = await asyncio.create_subprocess_exec(
            JUPYTER_DS, "lsp", *args, env=local_env(), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        return cls(process)

    def send_bytes(self, body: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def send(self, message: dict[str, Any]) -> None:
        self.send_bytes(json.dumps(message).encode())

    async def receive(self) -> dict[str, Any]:
        """The next response (notifications from the server are skipped)."""
        assert self.process.stdout is not None
        while True:
            length = 0
            while True:
                line = await asyncio.wait_for(self.process.stdout.readline(), 20)
                assert line, "the language server closed its output"
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                if line in (b"\r\n", b"\n"):
                    break
            message = json.loads(await self.process.stdout.readexactly(length))
            if "id" in message and "method" not in message:
                return message

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


async def test_malformed_json_rpc_gets_its_error_and_the_server_stays_up(tmp_path: Path):
    lsp = await RawLsp.start(*LOCAL)
    try:
        lsp.send({"jsonrpc": "2.0", "id": 1, "method": "textDocument/completion",
                  "params": {"textDocument": {"uri": "file:///a.py"},
                             "position": {"line": 0, "character": 0}}})
        answer = await lsp.receive()
        assert answer["id"] == 1 and answer["error"]["code"] == -32002  # not initialized

        lsp.send({"jsonrpc": "2.0", "id": 2, "method": "initialize",
                  "params": {"processId": None, "rootUri": tmp_path.as_uri(),
                             "capabilities": {}}})
        assert "capabilities" in (await lsp.receive())["result"]
        lsp.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})

        lsp.send_bytes(b"{this is not json")
        answer = await lsp.receive()
        assert answer["error"]["code"] == -32700 and answer.get("id") is None

        lsp.send_bytes(b"[1, 2, 3]")
        answer = await lsp.receive()
        assert answer["error"]["code"] == -32600 and answer.get("id") is None

        lsp.send({"jsonrpc": "2.0", "id": 3, "method": "textDocument/completion",
                  "params": {"textDocument": {"uri": "file:///a.py"},
                             "position": {"line": -1, "character": "x"}}})
        answer = await lsp.receive()
        assert answer["id"] == 3 and answer["error"]["code"] == -32602

        lsp.send({"jsonrpc": "2.0", "id": 4, "method": "no/such/method", "params": {}})
        answer = await lsp.receive()
        assert answer["id"] == 4 and answer["error"]["code"] == -32601

        # Still up: a normal request is answered.
        lsp.send({"jsonrpc": "2.0", "id": 5, "method": "shutdown"})
        assert (await lsp.receive()) == {"jsonrpc": "2.0", "id": 5, "result": None}
        lsp.send({"jsonrpc": "2.0", "method": "exit"})
        assert await asyncio.wait_for(lsp.process.wait(), 10) == 0
    finally:
        await lsp.close()


# -- finding the server, and TCP --------------------------------------------------------------


def test_the_server_is_found_from_arguments_environment_or_runtime_files(tmp_path: Path):
    from jupyter_ds.lsp.backends import CallError, discover

    work = tmp_path / "proj" / "sub"
    work.mkdir(parents=True)
    outer = {"url": "http://localhost:8888/", "token": "t-outer", "root_dir": str(tmp_path),
             "file": str(tmp_path / "a.json")}
    inner = {"url": "http://localhost:9999/lab/", "token": "t-inner",
             "root_dir": str(tmp_path / "proj"), "file": str(tmp_path / "b.json")}
    other = {"url": "http://localhost:7777/", "token": "t-other",
             "root_dir": "/somewhere/else", "file": str(tmp_path / "c.json")}

    def servers() -> list[dict[str, Any]]:
        return [outer, inner, other]

    # The deepest running server whose root holds the workspace.
    found = discover(None, None, None, str(work), environ={}, servers=servers)
    assert (found.url, found.token, found.root) == (
        "http://localhost:9999/lab/", "t-inner", str(tmp_path / "proj"))
    # The environment wins over runtime files; the root of that very server is kept.
    found = discover(None, None, None, str(work), servers=servers, environ={
        "JUPYTER_DS_URL": "http://localhost:8888", "JUPYTER_DS_TOKEN": "t-env"})
    assert (found.url, found.token, found.root) == ("http://localhost:8888/", "t-env",
                                                    str(tmp_path))
    # Arguments win over the environment; JUPYTER_TOKEN is the last resort for the token.
    found = discover("http://h:1/x", None, "/r", str(work), servers=servers,
                     environ={"JUPYTER_DS_URL": "http://no/", "JUPYTER_TOKEN": "t-jt"})
    assert (found.url, found.token, found.root) == ("http://h:1/x/", "t-jt", "/r")
    # None running, none given: a message that says what to do.
    with pytest.raises(CallError, match=r"--url and --token.*--local"):
        discover(None, None, None, str(work), environ={}, servers=list)


async def test_tcp_mode_serves_the_same(tmp_path: Path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        JUPYTER_DS, "lsp", *LOCAL, "--tcp", str(port), env=local_env(),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    client = make_test_lsp_client()
    try:
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), 20)
        assert f"listening on 127.0.0.1:{port}".encode() in line
        for _ in range(100):
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.wait_for(client.initialize_session(t.InitializeParams(
            capabilities=capabilities(), root_uri=tmp_path.as_uri())), 20)
        uri = (tmp_path / "a.py").as_uri()
        open_doc(client, uri, "x = ")
        assert (await inline(client, uri, 0, 4)).items[0].insert_text == "x + 1"
    finally:
        process.kill()
        await process.wait()


def test_runtime_files_are_read_without_importing_the_server_app(tmp_path: Path):
    from jupyter_ds.lsp.backends import running_servers

    alive = {"url": "http://localhost:8888/", "token": "t", "root_dir": "/r",
             "pid": os.getpid()}
    (tmp_path / "jpserver-1.json").write_text(json.dumps(alive))
    (tmp_path / "jpserver-2.json").write_text(json.dumps({**alive, "pid": 2 ** 22 + 7}))
    (tmp_path / "jpserver-3.json").write_text("{half written")
    (tmp_path / "other.json").write_text(json.dumps(alive))
    found = running_servers(str(tmp_path))
    assert [(s["url"], s["file"]) for s in found] == [
        ("http://localhost:8888/", str(tmp_path / "jpserver-1.json"))]
