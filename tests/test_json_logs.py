"""Structured JSON logs: one object per line, the request id carried by contextvars."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from jupyter_ds import json_logs
from jupyter_ds.json_logs import JsonFormatter, bind_request, request_context, request_id_from

FIELDS = {"time", "level", "logger", "message", "request_id", "user", "endpoint"}


@pytest.fixture
def captured():
    """A private logger writing JSON into a buffer; yields (logger, lines())."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("jupyter_ds.test_json_logs")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)

    def lines() -> list[dict[str, Any]]:
        text = stream.getvalue()
        assert text.endswith("\n")
        raw = text.splitlines()
        return [json.loads(line) for line in raw]  # every line is one JSON object

    yield logger, lines
    logger.handlers = []
    logger.propagate = True


def test_each_record_is_one_json_line_with_the_fields(captured):
    logger, lines = captured
    logger.info("plain %s", "message")
    with request_context("req-1", user="alice", endpoint="complete"):
        logger.warning("two\nlines", extra={"tokens": 12, "model": "tiny", "tags": {"a"}})
    first, second = lines()
    assert set(first) >= FIELDS
    assert first["message"] == "plain message"
    assert first["level"] == "INFO"
    assert first["logger"] == "jupyter_ds.test_json_logs"
    assert first["request_id"] is None and first["user"] is None and first["endpoint"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert second["message"] == "two\nlines"  # escaped: still one line
    assert second["request_id"] == "req-1"
    assert second["user"] == "alice" and second["endpoint"] == "complete"
    assert second["tokens"] == 12 and second["model"] == "tiny"  # extra= fields
    assert second["tags"] == ["a"]  # not JSON by itself: converted, never an error
    assert "exception" not in second


def test_an_exception_is_one_string_field_on_the_same_line(captured):
    logger, lines = captured
    try:
        raise ValueError("bad value\nwith a newline")
    except ValueError:
        logger.exception("it failed")
    (line,) = lines()
    assert line["level"] == "ERROR" and line["message"] == "it failed"
    assert isinstance(line["exception"], str)
    assert line["exception"].startswith("Traceback (most recent call last)")
    assert "ValueError: bad value\nwith a newline" in line["exception"]


def test_odd_messages_never_break_the_line(captured):
    logger, lines = captured
    logger.info("surrogate \udcff and ü and \x00")
    (odd,) = lines()
    assert odd["message"] == "surrogate \udcff and ü and \x00"
    bad = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("not a number",), None)
    line = JsonFormatter().format(bad)  # bad %-args: the line is still written
    assert "not a number" in json.loads(line)["message"]


def test_a_record_field_wins_over_the_context(captured):
    logger, lines = captured
    with request_context("from-context", user="bob"):
        logger.info("x", extra={"request_id": "explicit"})
    (line,) = lines()
    assert line["request_id"] == "explicit" and line["user"] == "bob"


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        ("abc-123", True),
        ("0f8fad5b-d9cb-469f-a165-70867728950e", True),
        ("trace:span/1.2=x", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("   ", False),
        (None, False),
        ("has space", False),
        ('x"}\n{"level":"ERROR"', False),
        ("-starts-with-dash", False),
        ("ü", False),
    ],
)
def test_a_sane_client_request_id_is_kept_else_one_is_made(header, kept):
    rid = request_id_from(header)
    if kept:
        assert rid == header
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert request_id_from(" abc ") == "abc"


async def test_the_request_id_follows_the_async_call_chain(captured):
    logger, lines = captured

    async def deep(level: int) -> str | None:
        await asyncio.sleep(0)
        if level:
            return await deep(level - 1)
        logger.info("deep")
        return json_logs.current_request_id()

    def in_thread() -> str | None:
        logger.info("thread")
        return json_logs.current_request_id()

    async def handle(rid: str) -> list[str | None]:
        bind_request(rid, user=f"user-{rid}")  # as a handler's prepare() does
        await asyncio.sleep(0.01)
        child = asyncio.ensure_future(deep(3))  # a task started from the request
        seen = [await deep(5), await child, await asyncio.to_thread(in_thread)]
        return seen

    assert json_logs.current_request_id() is None
    one, two = await asyncio.gather(handle("r-1"), handle("r-2"))  # concurrent requests
    assert one == ["r-1"] * 3 and two == ["r-2"] * 3  # each keeps its own
    assert json_logs.current_request_id() is None  # the tasks' bindings stayed in them
    by_request: dict[str, set[str]] = {}
    for line in lines():
        by_request.setdefault(line["request_id"], set()).add(line["user"])
    assert by_request == {"r-1": {"user-r-1"}, "r-2": {"user-r-2"}}


def test_request_context_restores_the_previous_one():
    with request_context("outer"):
        with request_context("inner", endpoint="explain") as ctx:
            assert ctx.request_id == "inner"
            assert json_logs.current_request().endpoint == "explain"
        assert json_logs.current_request_id() == "outer"
    assert json_logs.current_request() is None
    token = bind_request(None)
    generated = json_logs.current_request_id()
    assert generated and re.fullmatch(r"[0-9a-f]{32}", generated)
    json_logs.reset_request(token)
    assert json_logs.current_request() is None


def test_install_and_undo(monkeypatch):
    logger = logging.getLogger("jupyter_ds.test_install")
    plain = logging.Formatter("%(message)s")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(plain)
    monkeypatch.setattr(logger, "handlers", [handler])
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # a server whose root logger has no handler

    undo = json_logs.install(logger)
    assert isinstance(handler.formatter, JsonFormatter)
    # loggers outside the server's tree (ds_engine's) get a JSON handler on the root
    assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter)
    undo()
    assert handler.formatter is plain
    assert root.handlers == []

    bare = logging.getLogger("jupyter_ds.test_install_bare")
    monkeypatch.setattr(bare, "handlers", [])
    undo = json_logs.install(bare, fallback_root=False)
    assert len(bare.handlers) == 1 and isinstance(bare.handlers[0].formatter, JsonFormatter)
    undo()
    assert bare.handlers == [] and root.handlers == []


def jupyter_ds_app(serverapp: Any) -> Any:
    return next(iter(serverapp.extension_manager.extension_apps["jupyter_ds"]))


@pytest.mark.parametrize("ds_config", [{"json_logs": True}])
async def test_the_server_installs_json_logs_when_configured(ds_config, jp_serverapp):
    # (pytest-jupyter strips the server log's handlers after start-up, so what a real
    # server writes is checked in a subprocess below.)
    app = jupyter_ds_app(jp_serverapp)
    try:
        assert app.json_logs is True and callable(app._undo_json_logs)
        assert isinstance(logging.getLogger(app.log.name).handlers[0].formatter, JsonFormatter)
    finally:
        app._undo_json_logs()  # JSON stays on to the process's end; tests share one
    assert not isinstance(app.log.handlers[0].formatter, JsonFormatter)


async def test_the_server_keeps_its_log_format_by_default(jp_serverapp):
    assert jupyter_ds_app(jp_serverapp)._undo_json_logs is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(120)
def test_a_real_server_writes_one_json_object_per_line(tmp_path):
    """``jupyter server --JupyterDsApp.json_logs=True``: from the extension's start on,
    every line on stderr is a JSON object, access log and errors included."""
    port = free_port()
    env = {
        **os.environ,
        **{
            var: str(tmp_path / var.lower())
            for var in ("HOME", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR")
        },
    }
    (tmp_path / "root").mkdir()
    cmd = [
        sys.executable, "-m", "jupyter_server", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", "--IdentityProvider.token=secret", "--allow-root",
        f"--ServerApp.root_dir={tmp_path / 'root'}",
        "--ServerApp.jpserver_extensions={'jupyter_ds': True}",
        "--JupyterDsApp.load_on_start=False", "--JupyterDsApp.json_logs=True",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "is running at" in line:
                break
        else:
            pytest.fail("server did not start:\n" + "".join(lines))
        url = f"http://127.0.0.1:{port}/api/status"
        for token in ("secret", "wrong"):
            request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
            for _ in range(300):  # "running at" comes just before the loop starts
                try:
                    urllib.request.urlopen(request, timeout=30).read()
                except urllib.error.HTTPError:
                    pass  # the 403 is logged too
                except urllib.error.URLError:
                    time.sleep(0.1)
                    continue
                break
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[1]
    lines += rest.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.startswith("{"))
    records = [json.loads(line) for line in lines[first:]]  # every line parses
    assert all(set(r) >= FIELDS for r in records)
    messages = " | ".join(r["message"] for r in records)
    assert "is running at" in messages
    assert "/api/status" in messages  # tornado's access log, as JSON too
