"""Browser-test fixtures: a real ``jupyter lab`` on the tiny test model, driven by Chromium.

* ``lab`` (package: once for tests/browser): starts ``.venv/bin/jupyter lab`` as a
  subprocess on a free port of 127.0.0.1 with a known token, a temporary root dir and its
  own temporary HOME and Jupyter dirs, waits until ``GET jupyter-ds/v1/health`` reports
  the model ready, and stops it after the last browser test (SIGTERM, then SIGKILL).
* ``browser`` (package): Debian's Chromium (``/usr/bin/chromium``, installed by
  ``make setup``) launched by Playwright through its executable path; Playwright's own
  browser download is never used.
* ``page`` (function): a fresh browser context and page; every console message and page
  error of the test is collected in ``console``; on failure its screenshot and console
  log go to test-artifacts/. The server log is copied there at the end.

Run them alone with ``.venv/bin/python -m pytest tests/browser -m browser``;
``JUPYTER_DS_BROWSER_MODEL=embedded`` runs them on the embedded SmolLM2 instead.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .lab_ui import ARTIFACTS_DIR, BROWSER_MODEL

CHROMIUM = os.environ.get("JUPYTER_DS_CHROMIUM", "/usr/bin/chromium")
# What Chromium needs on these machines: no sandbox (root), no GPU, and none of the
# background connections that a closed network refuses. Playwright starts it with a new,
# empty --user-data-dir of its own (it refuses one in args for launch()).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAB_START_TIMEOUT_S = 90.0 if BROWSER_MODEL == "tiny" else 300.0


def _venv_bin(name: str) -> Path:
    """A console script next to the interpreter running the tests (the project's venv)."""
    return Path(sys.executable).parent / name


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabServer:
    """A running ``jupyter lab`` subprocess."""

    url: str  # base URL, ends with "/"
    token: str
    root_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def lab_url(self, path: str = "lab") -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.url}{path}{sep}token={self.token}"

    def api(
        self, method: str, path: str, payload: Any = None, timeout: float = 60.0
    ) -> tuple[int, Any]:
        """Calls the server (e.g. ``jupyter-ds/v1/complete``); returns (status, JSON body)."""
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            self.url + path,
            data=body,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, text = response.status, response.read().decode("utf-8")
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode("utf-8")
        try:
            return status, json.loads(text) if text else {}
        except ValueError:
            return status, {"_raw": text}

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _lab_environment(base: Path) -> dict[str, str]:
    """A clean environment for the lab subprocess.

    pytest-jupyter's fixtures point HOME and the JUPYTER_* variables at per-test folders
    that vanish after each test; none of that (nor a developer's own Jupyter settings,
    workspaces or model path) may leak into a server that lives for the whole session.
    The venv's share/jupyter (labextensions, kernels) and etc/jupyter (the jupyter_ds
    server-extension switch) are still found through sys.prefix.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JUPYTER", "IPYTHON", "DEEPSEEK_", "PYTHONPATH"))
    }
    dirs = {
        "HOME": base / "home",
        "JUPYTER_CONFIG_DIR": base / "home" / ".jupyter",
        "JUPYTER_DATA_DIR": base / "data",
        "JUPYTER_RUNTIME_DIR": base / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": base / "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": base / "lab-workspaces",
        "IPYTHONDIR": base / "home" / ".ipython",
        "JUPYTER_DS_CACHE_DIR": base / "ds-cache",
    }
    for key, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[key] = str(path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    # jupyter shuts down cleanly (kernels included) on SIGTERM/SIGINT; kill if it hangs.
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _model_args(request: pytest.FixtureRequest) -> list[str]:
    # These tests are about the UI, not the model's quality: no suggestion may be held
    # back as low-confidence (the random model is never confident).
    args = ["--JupyterDsApp.confidence_threshold=0.0"]
    if BROWSER_MODEL == "embedded":
        # The converted weights are cached under the real HOME, not the lab's temporary one.
        cache_dir = request.getfixturevalue("model_cache_dir")
        return [*args, f"--JupyterDsApp.cache_dir={cache_dir}"]
    if BROWSER_MODEL != "tiny":
        return [*args, f"--JupyterDsApp.model_path={BROWSER_MODEL}"]
    tiny = request.getfixturevalue("tiny_model_dir")  # tests/conftest.py, built once
    # Its explanations are gibberish anyway: keep them short.
    return [*args, f"--JupyterDsApp.model_path={tiny}", "--JupyterDsApp.explain_max_tokens=48"]


@pytest.fixture(scope="package")
def lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabServer]:
    """A real ``jupyter lab`` with jupyter-ds (tiny random model by default), ready."""
    jupyter = _venv_bin("jupyter")
    if not jupyter.exists():
        pytest.fail(f"{jupyter} is missing: run `make setup`")
    base = tmp_path_factory.mktemp("lab")
    root_dir = base / "root"
    root_dir.mkdir()
    env = _lab_environment(base)
    # Config file rather than flags for the dict-valued and None settings.
    config = {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ds": True},
            "allow_unauthenticated_access": False,
        },
        # No network here: no news feed, no update check (and no toast asking about them).
        "LabApp": {
            "news_url": None,
            "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        },
    }
    (Path(env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json").write_text(json.dumps(config))
    # User settings: no "Would you like to get notified about official Jupyter news?"
    # toast over the notebook.
    notification = Path(env["JUPYTERLAB_SETTINGS_DIR"]) / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false"})
    )
    token = "browser-test-" + secrets.token_hex(12)
    log_path = base / "jupyter-lab.log"
    server = None
    try:
        # A free port can be taken between our probe and the server's bind: try another.
        for _attempt in range(3):
            server = _start_lab(jupyter, env, root_dir, token, _model_args(request), log_path)
            if _wait_ready(server):
                break
            _stop(server.process)
        else:
            pytest.fail(f"jupyter lab found no free port:\n{server.log_tail()}")
        yield server
    finally:
        if server is not None:
            _stop(server.process)
        # Keep the server log with the other artifacts: the first place to look on failure.
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        if log_path.exists():
            (ARTIFACTS_DIR / "jupyter-lab.log").write_text(log_path.read_text(errors="replace"))


def _start_lab(
    jupyter: Path,
    env: dict[str, str],
    root_dir: Path,
    token: str,
    model_args: list[str],
    log_path: Path,
) -> LabServer:
    port = _free_port()
    args = [
        str(jupyter),
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        *model_args,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--allow-root")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            args,
            cwd=root_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return LabServer(f"http://127.0.0.1:{port}/", token, root_dir, log_path, process)


def _wait_ready(server: LabServer) -> bool:
    """True once the model is ready; False if the port was taken; fails otherwise."""
    deadline = time.monotonic() + LAB_START_TIMEOUT_S
    last: Any = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            if "already in use" in server.log_tail():
                return False
            pytest.fail(
                f"jupyter lab exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            status, body = server.api("GET", "jupyter-ds/v1/health", timeout=5)
        except OSError as err:  # not listening yet
            last = err
        else:
            last = (status, body)
            data = body.get("data") or {}
            if status == 200 and data.get("ready"):
                return True
            if data.get("model_state") == "failed":
                break
        time.sleep(0.25)
    pytest.fail(f"jupyter-ds never became ready (last: {last}):\n{server.log_tail()}")


# Playwright's sync API runs its own asyncio loop on the test thread, marked as running
# while it is live. pytest-jupyter's autouse fixtures would take that loop for theirs and
# try to run and close it after each test; the browser tests use no in-process server,
# so here they do nothing.
@pytest.fixture
def jp_asyncio_loop() -> None:
    return None


@pytest.fixture
def jp_server_cleanup() -> None:
    return None


# Package scope (tests/browser), not session: while Playwright is live its loop is this
# thread's running loop, which would break every asyncio test run after the browser tests.
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make setup` (scripts/ensure-chromium.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class ConsoleLog:
    """Console messages and uncaught page errors seen during one test."""

    messages: list[tuple[str, str, str]] = field(default_factory=list)  # (type, text, url)
    page_errors: list[str] = field(default_factory=list)

    def dump(self) -> str:
        lines = [f"[{kind}] {text} ({url})" for kind, text, url in self.messages]
        lines += [f"[pageerror] {err}" for err in self.page_errors]
        return "\n".join(lines)


@pytest.fixture
def console() -> ConsoleLog:
    return ConsoleLog()


@pytest.fixture
def workspace(request: pytest.FixtureRequest) -> str:
    """A JupyterLab workspace name of this test's own (see lab_ui.open_lab)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name).strip("-")[:60]


@pytest.fixture
def page(
    lab: LabServer, browser: Any, console: ConsoleLog, request: pytest.FixtureRequest
) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()

    def on_console(message: Any) -> None:
        location = message.location or {}
        console.messages.append((message.type, message.text, location.get("url", "")))

    page.on("console", on_console)
    page.on("pageerror", lambda error: console.page_errors.append(str(error)))
    try:
        yield page
    finally:
        # On failure, keep what the browser showed and said for the investigation.
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            ARTIFACTS_DIR.mkdir(exist_ok=True)
            name = request.node.name.replace("/", "_")
            try:
                page.screenshot(path=str(ARTIFACTS_DIR / f"failed-{name}.png"))
            except Exception:  # the page may be gone; the log below still helps
                pass
            (ARTIFACTS_DIR / f"failed-{name}.console.txt").write_text(console.dump())
        context.close()
        _shut_down_kernels(lab)


def _shut_down_kernels(lab: LabServer) -> None:
    """Kernels outlive their page; on two cores an idle one still costs the next test."""
    status, kernels = lab.api("GET", "api/kernels")
    if status != 200 or not isinstance(kernels, list):
        return
    for kernel in kernels:
        lab.api("DELETE", f"api/kernels/{kernel['id']}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
