"""The audit log's defaults on a real server (issue 15, findings 7 and 8a).

With nothing configured: lines are encrypted with a key generated next to the log (0600),
the log is per server (root folder and port), the report names no absolute path and keeps
to this server's records, and ``since``/``until`` out of bounds are a 400 naming the field.

New names (``server_id``, ``find_keyring``) are imported inside the tests that need them, so
that each test fails on its own behaviour against code without them, not at collection.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from jupyter_ds.app import JupyterDsApp
from jupyter_ds.audit.report import read_records

MARKER = "zebra_quokka_7731"  # a prompt that must never reach the disk in plaintext
AUDIT_ENV = ("JUPYTER_DS_AUDIT_LOG", "JUPYTER_DS_AUDIT_KEY", "JUPYTER_DS_AUDIT_OLD_KEYS")


@pytest.fixture
def clean_audit_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key and no log path from the environment: the defaults are under test."""
    for name in AUDIT_ENV:
        monkeypatch.delenv(name, raising=False)


def ds_app(serverapp: Any) -> JupyterDsApp:
    return serverapp.extension_manager.extension_points["jupyter_ds"].app


def audit_folder(data_dir: Path) -> Path:
    return data_dir / "jupyter_ds"


async def report(client: Any, **params: str) -> tuple[int, dict[str, Any]]:
    response = await client.fetch("jupyter-ds", "v1", "audit", "report", params=params,
                                  raise_error=False)
    return response.code, json.loads(response.body)


def strings(value: Any) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def assert_no_path(envelope: dict[str, Any], *folders: Path) -> None:
    for text in strings(envelope):
        for folder in folders:
            assert str(folder) not in text, (text, folder)
        assert not text.startswith(("/", "~")), text


class TestDefaults:
    @pytest.fixture
    def ds_config(self, clean_audit_env: None) -> dict[str, Any]:
        return {"audit_capture_samples": True}  # no path, no key: the defaults

    async def test_plaintext_is_never_written_and_the_key_is_0600(
        self, ds_ready, jp_serverapp, jp_data_dir, capsys
    ):
        code, env, _ = await ds_ready.post(
            "explain", {"code": f"print('{MARKER}')", "max_tokens": 3}
        )
        assert code == 200, env
        folder = audit_folder(jp_data_dir)
        files = sorted(p for p in folder.iterdir() if p.is_file())
        assert files, "no audit log written"
        for path in files:
            raw = path.read_bytes()
            assert MARKER.encode() not in raw, f"{path.name} holds the prompt in plaintext"
            assert b"explain" not in raw, f"{path.name} holds a record in plaintext"

        key = folder / "audit.key"
        assert key.is_file(), "no key generated next to the log"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

        log = ds_app(jp_serverapp).settings["jupyter_ds"].audit.path
        assert log.parent == folder
        recs = [r for r in records_with_generated_key(log) if r["endpoint"] == "explain"]
        assert MARKER in recs[-1]["input_sample"]  # captured, and readable with the key

        from jupyter_ds.cli import main  # the CLI finds the only log and its generated key

        capsys.readouterr()
        assert main(["audit", "report", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)["data"]
        assert data["by_endpoint"]["explain"]["requests"] >= 1
        assert data["lines"]["plain"] == 0 and data["lines"]["encrypted"] >= 1

    async def test_the_key_is_reused_and_a_loose_one_refused(self, ds_ready, jp_serverapp,
                                                             jp_data_dir):
        from jupyter_ds.audit import AuditKeyConfigError

        await ds_ready.post("complete", {"prefix": 3})
        key = audit_folder(jp_data_dir) / "audit.key"
        before = key.read_bytes()
        app = ds_app(jp_serverapp)
        again = app.open_audit()  # the next start of the same server
        assert key.read_bytes() == before
        assert again.keyring.current.kid == app.settings["jupyter_ds"].audit.keyring.current.kid
        key.chmod(0o644)
        with pytest.raises(AuditKeyConfigError, match="chmod 600"):
            app.open_audit()

    async def test_the_report_names_no_absolute_path(self, ds_ready, jp_serverapp, jp_data_dir,
                                                     jp_root_dir, tmp_path):
        await ds_ready.post("complete", {"prefix": 3})
        log = ds_app(jp_serverapp).settings["jupyter_ds"].audit.path
        code, env = await report(ds_ready)
        assert code == 200, env
        assert env["data"]["log"] == log.name
        assert_no_path(env, tmp_path, jp_data_dir, jp_root_dir, log.parent)

        # Errors too: an unreadable line is named by file name and line, not by path.
        with log.open("a") as fh:
            fh.write('{"cut off\n')
        code, env = await report(ds_ready)
        assert code == 500 and env["error"]["code"] == "audit_format", env
        assert log.name in env["error"]["message"]
        assert_no_path(env, tmp_path, jp_data_dir, jp_root_dir, log.parent)

    async def test_since_and_until_out_of_bounds_are_400_naming_the_field(self, ds_ready):
        await ds_ready.post("complete", {"prefix": 3})
        for bad in ("99999999999d", "999999999999999999999999s", "3000000d", "3651d",
                    "522w", "-1d", "7y", "1e3d", "9" * 400 + "s", "0001-01-01T00:00+01:00"):
            for name in ("since", "until"):
                code, env = await report(ds_ready, **{name: bad})
                assert code == 400, (name, bad, env)
                assert env["error"]["code"] == "invalid_request", env
                assert env["error"]["field"] == name, env
        code, env = await report(ds_ready, since="3650d")  # the documented maximum
        assert code == 200 and env["data"]["total"]["requests"] >= 1, env

    async def test_the_log_is_per_server(self, ds_ready, jp_serverapp, jp_data_dir, tmp_path):
        root, port = jp_serverapp.root_dir, jp_serverapp.port
        app = ds_app(jp_serverapp)
        audit = app.settings["jupyter_ds"].audit

        # Other servers of the same user: another port, another root, get other files.
        other_root = tmp_path / "other-root"
        other_root.mkdir()
        paths = [
            JupyterDsApp(serverapp=SimpleNamespace(root_dir=r, port=p, sock="")).open_audit().path
            for r, p in [(root, port), (root, port + 1), (str(other_root), port)]
        ]
        assert len(set(paths)) == 3, paths
        assert paths[0] == audit.path and all(p.parent == audit.path.parent for p in paths)

        from jupyter_ds.audit import server_id

        own = server_id(root, port)
        assert audit.path == audit_folder(jp_data_dir) / f"audit-{own}.log"
        await ds_ready.post("complete", {"prefix": 3})
        assert {r.get("server") for r in records_with_generated_key(audit.path)} == {own}
        link = tmp_path / "root-link"
        link.symlink_to(root)
        assert server_id(link, port) == own  # the real path, however the root was spelled

        # port_retries moved the port after the extension loaded: the log follows it.
        jp_serverapp.port = port + 7
        try:
            await app._start_jupyter_server_extension(jp_serverapp)
            assert audit.path.name == f"audit-{server_id(root, port + 7)}.log"
        finally:
            jp_serverapp.port = port
            await app._start_jupyter_server_extension(jp_serverapp)
        assert audit.path.name == f"audit-{own}.log"


def records_with_generated_key(path: Path) -> list[dict[str, Any]]:
    from jupyter_ds.audit import find_keyring

    return list(read_records(path, find_keyring(path, environ={})))


class TestSharedLog:
    """Several servers pointed at one log: the report keeps to this server's lines."""

    @pytest.fixture
    def ds_config(self, clean_audit_env: None, tmp_path: Path) -> dict[str, Any]:
        return {"audit_log_path": str(tmp_path / "shared" / "audit.log")}

    async def test_report_filters_to_this_server(self, ds_ready, jp_serverapp, tmp_path):
        from jupyter_ds.audit import AuditLog

        path = tmp_path / "shared" / "audit.log"
        await ds_ready.post("complete", {"prefix": 3})
        # another server writing to the same file (same folder, so the same generated key)
        other = AuditLog(path, keyring=ds_app(jp_serverapp).settings["jupyter_ds"].audit.keyring)
        assert other.log_request(endpoint="explain", user="mallory", status=200,
                                 extra={"server": "0123456789ab"})

        code, env = await report(ds_ready)
        assert code == 200, env
        data = env["data"]
        assert "mallory" not in data["by_user"] and "explain" not in data["by_endpoint"]
        assert data["other_server_lines"] == 1
        assert data["server"] == ds_app(jp_serverapp).audit_server_id()
        assert data["log"] == "audit.log"
        assert (path.parent / "audit.key").is_file()
        assert stat.S_IMODE((path.parent / "audit.key").stat().st_mode) == 0o600


class TestPlaintextOptOut:
    @pytest.fixture
    def ds_config(self, clean_audit_env: None, tmp_path: Path) -> dict[str, Any]:
        return {"audit_log_path": str(tmp_path / "audit.log"), "audit_encrypt": False}

    async def test_plain_json_only_when_asked(self, ds_ready, tmp_path):
        await ds_ready.post("complete", {"prefix": 3})
        line = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
        assert line["endpoint"] == "complete"
        assert not (tmp_path / "audit.key").exists()
        assert os.environ.get("JUPYTER_DS_AUDIT_KEY") is None
