"""Where the language server's calls go: a jupyter-ds server, or the services in-process.

Both take the REST API's request bodies and give its ``data`` (or raise
:class:`CallError` with the envelope's status, code and message), so the LSP features are
written once. Client mode (:class:`HttpBackend`) is the default because every call then
goes through the server's one request pipeline: its auth, roles, rate limits, metrics and
audit apply to editors exactly as to JupyterLab. Local mode (:class:`LocalBackend`) is for
editor users without Jupyter.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)

API_PREFIX = "jupyter-ds/v1"
# Connecting is quick or the server is not there; an answer may take long (test
# generation runs the sandbox), and a cancelled request closes its connection anyway.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 900.0


class CallError(Exception):
    """A call that failed: the API's ``status``, ``code`` and ``message`` (0 and
    ``unreachable`` when no server answered)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class Backend(Protocol):
    """What the language server calls. ``root`` is the folder the server resolves request
    paths against (None when unknown)."""

    label: str
    root: str | None

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...


# ------------------------------------------------------------------------ discovery


@dataclass(frozen=True)
class ServerAddress:
    url: str  # ends with "/"
    token: str | None
    root: str | None
    source: str  # where it came from, for messages


NO_SERVER = (
    "no running Jupyter server found: start one with the jupyter-ds extension (`make run`, "
    "`jupyter lab`), pass --url and --token (or set JUPYTER_DS_URL and JUPYTER_DS_TOKEN), "
    "or run `jupyter-ds lsp --local`"
)


def running_servers(runtime_dir: str | None = None) -> list[dict[str, Any]]:
    """The Jupyter servers whose runtime files (``jpserver-*.json``) ``jupyter server
    list`` reads, those whose process is alive. Read directly: importing
    ``jupyter_server.serverapp`` for its helper takes seconds, on the first keystroke."""
    from jupyter_core.paths import jupyter_runtime_dir

    folder = Path(runtime_dir or jupyter_runtime_dir())
    found = []
    for path in sorted(folder.glob("jpserver-*.json")):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            pid = int(info.get("pid", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # half written, or not a runtime file
        if pid <= 0 or not _alive(pid) or not isinstance(info.get("url"), str):
            continue
        info["file"] = str(path)
        found.append(info)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


def _contains(root: str, path: str) -> bool:
    root, path = os.path.realpath(root), os.path.realpath(path)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def discover(url: str | None, token: str | None, root: str | None, workspace: str | None,
             *, environ: dict[str, str] | None = None,
             servers: Callable[[], list[dict[str, Any]]] = running_servers) -> ServerAddress:
    """The server to talk to: ``url``/``token`` given, else ``JUPYTER_DS_URL`` /
    ``JUPYTER_DS_TOKEN`` (or ``JUPYTER_TOKEN``), else the running server whose root holds
    the workspace (the deepest), else the newest one. Its root, when not given, comes from
    its runtime file. :class:`CallError` when there is none."""
    env = os.environ if environ is None else environ
    source = "arguments" if url else "environment"
    url = url or env.get("JUPYTER_DS_URL")
    token = token or env.get("JUPYTER_DS_TOKEN") or env.get("JUPYTER_TOKEN")
    found = servers()
    if url:
        url = url.rstrip("/") + "/"
        if root is None:  # the runtime file of that very server knows its root
            same = [s for s in found if str(s.get("url", "")).rstrip("/") + "/" == url]
            root = same[0].get("root_dir") if same else None
        return ServerAddress(url, token, root, source)
    if not found:
        raise CallError(0, "unreachable", NO_SERVER)
    holding = [s for s in found if workspace and s.get("root_dir")
               and _contains(s["root_dir"], workspace)]
    if holding:
        best = max(holding, key=lambda s: len(os.path.realpath(s["root_dir"])))
    else:
        best = max(found, key=lambda s: os.path.getmtime(s["file"]) if s.get("file") and
                   os.path.exists(s["file"]) else 0)
    return ServerAddress(str(best["url"]).rstrip("/") + "/", token or best.get("token"),
                         root or best.get("root_dir"), f"runtime file {best.get('file', '')}")


# ------------------------------------------------------------------------ client mode


class HttpBackend:
    """A running jupyter-ds server, over its REST API with its token.

    The address is found again after a failure to connect (a server started, or
    restarted on another port, after the editor), and a call that cannot connect is
    retried with backoff (``retries`` times) before it fails with a message.
    """

    def __init__(self, locate: Callable[[], ServerAddress], *, retries: int = 3,
                 backoff_s: float = 0.25) -> None:
        self._locate = locate
        self._address: ServerAddress | None = None
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self._client: httpx.AsyncClient | None = None

    @property
    def label(self) -> str:
        return self._address.url if self._address else "jupyter-ds server (not found yet)"

    @property
    def root(self) -> str | None:
        try:
            return self.address().root
        except CallError:
            return None

    def address(self) -> ServerAddress:
        if self._address is None:
            self._address = self._locate()
        return self._address

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                headers={"User-Agent": "jupyter-ds-lsp"})
        return self._client

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                address = self.address()
            except CallError:
                if attempt >= self.retries:
                    raise
            else:
                headers = {"Authorization": f"token {address.token}"} if address.token else {}
                try:
                    response = await self._http().post(
                        f"{address.url}{API_PREFIX}/{route}", json=body, headers=headers)
                except httpx.TransportError as exc:
                    self._address = None  # look again: it may have moved
                    if attempt >= self.retries:
                        raise CallError(0, "unreachable", (
                            f"the jupyter-ds server at {address.url} does not answer "
                            f"({attempt + 1} attempts): {type(exc).__name__}: {exc}"
                            )) from None
                else:
                    return self._data(response, address)
            attempt += 1
            await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))

    @staticmethod
    def _data(response: httpx.Response, address: ServerAddress) -> dict[str, Any]:
        try:
            envelope = response.json()
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict) or envelope.get("status") not in ("success",
                                                                             "error"):
            raise CallError(response.status_code, "bad_response", (
                f"{address.url} did not answer as a jupyter-ds server (HTTP "
                f"{response.status_code}): is the jupyter-ds extension enabled there?"))
        if envelope["status"] == "success":
            data = envelope.get("data")
            return data if isinstance(data, dict) else {"value": data}
        error = envelope.get("error") or {}
        message = str(error.get("message") or f"HTTP {response.status_code}")
        if response.status_code in (401, 403):
            hint = ("check --token or JUPYTER_DS_TOKEN" if response.status_code == 401
                    else "ask for a role that grants it")
            message = f"the jupyter-ds server at {address.url} refused: {message} ({hint})"
        return HttpBackend._raise(response.status_code, str(error.get("code") or "error"),
                                  message, error.get("field"))

    @staticmethod
    def _raise(status: int, code: str, message: str, field: Any) -> dict[str, Any]:
        raise CallError(status, code, message, field if isinstance(field, str) else None)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


# ------------------------------------------------------------------------ local mode


class LocalBackend:
    """The services in this process, over an engine loading in the background.

    The same request parsing and services as the server, without its HTTP layer: the
    request bodies are the REST API's, errors the same ApiErrors (a 503 while the model
    loads). Telemetry has no server to count it and is only logged.
    """

    def __init__(self, engine: Any, root: str) -> None:
        from jupyter_ds.completion.service import CompletionService
        from jupyter_ds.explain.service import ExplainService
        from jupyter_ds.git.service import GitService
        from jupyter_ds.testgen.service import TestgenService, TestgenSettings

        self.engine = engine
        self.root = str(Path(root).resolve())
        self.label = "local engine"
        self._completion = CompletionService(engine)
        self._explain = ExplainService(engine)
        self._testgen = TestgenService(engine, TestgenSettings(root_dir=self.root))
        self._git = GitService(self.root, engine)

    async def call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        from jupyter_ds.errors import ApiError

        try:
            return await self._call(route, body)
        except ApiError as exc:
            raise CallError(exc.status, exc.code, exc.message, exc.field) from None

    async def _call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        from jupyter_ds.completion.requests import CompleteRequest
        from jupyter_ds.explain.requests import ExplainRequest
        from jupyter_ds.git.requests import GitCommitMessageRequest, parse_git
        from jupyter_ds.requests import parse_request
        from jupyter_ds.testgen.requests import TestsRequest

        if route == "complete":
            return dict(await self._completion.complete(parse_request(CompleteRequest, body)))
        if route == "explain":
            return dict(await self._explain.explain(parse_request(ExplainRequest, body)))
        if route == "tests":
            return dict(await self._testgen.generate(parse_request(TestsRequest, body)))
        if route == "git/commit-message":
            req = parse_git(GitCommitMessageRequest, body)
            return await self._git.call("commit-message", req, write=True,
                                        user=getpass.getuser())
        if route == "telemetry":
            events = body.get("events") if isinstance(body, dict) else None
            log.info("jupyter-ds lsp (local): telemetry %s", json.dumps(events)[:500])
            return {"counted": 0, "ignored": len(events or [])}
        raise CallError(404, "not_found", f"no such call: {route}")

    async def close(self) -> None:
        self._testgen.close()
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()
