"""The audit log on a real server: one record per request (HTTP and WebSocket messages),
samples redacted when captured, encryption with a configured key, and the report API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from jupyter_ds.app import JupyterDsApp
from jupyter_ds.audit import AuditKeyConfigError, generate_key
from jupyter_ds.audit.report import read_records


def records(path: Path, key_file: Path | None = None) -> list[dict[str, Any]]:
    """The log's records, decrypted with ``key_file`` or the key generated next to the log."""
    from jupyter_ds.audit import find_keyring

    return list(read_records(path, find_keyring(path, key_file, environ={})))


class TestRecords:
    @pytest.fixture
    def ds_config(self, tmp_path):
        return {"audit_log_path": str(tmp_path / "audit.log")}

    async def test_one_record_per_request_with_its_fields(self, ds_ready, tmp_path, jp_ws_fetch):
        path = tmp_path / "audit.log"
        start = len(records(path)) if path.exists() else 0
        code, env, headers = await ds_ready.post(
            "complete", {"prefix": "x = 1\n", "max_tokens": 3, "language": "text"},
            headers={"X-Request-Id": "trace-42"},
        )
        assert code == 200, env
        answer = env["data"]
        assert headers["X-Request-Id"] == "trace-42"
        code, env, bad_headers = await ds_ready.post("complete", {"prefix": 3})
        assert code == 400
        await ds_ready.get("health")  # liveness polls are not audited
        conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream")
        conn.write_message(json.dumps({"number": 7, "prefix": "y = 2\n", "max_tokens": 2,
                                       "language": "text", "stream": True}))
        while True:
            msg = json.loads(await asyncio.wait_for(conn.read_message(), 30))
            if msg.get("type") == "stream" and msg["done"]:
                break
        conn.close()

        recs = records(path)[start:]
        assert [r["endpoint"] for r in recs] == ["complete", "complete", "complete/stream"]
        ok, bad, ws = recs
        assert ok["request_id"] == "trace-42"
        assert ok["user"] and ok["role"] == "developer,admin"  # the owner's default roles
        assert ok["status"] == 200 and ok["error_code"] is None and ok["method"] == "POST"
        assert ok["model"] == answer["model"]
        assert ok["tokens_in"] > 0 and 1 <= ok["tokens_out"] <= 3
        assert ok["latency_ms"] > 0 and ok["time"].endswith("Z")
        assert "input_sample" not in ok  # samples are off by default
        assert bad["status"] == 400 and bad["error_code"] == "invalid_request"
        assert bad["request_id"] == bad_headers["X-Request-Id"]
        assert ws["method"] == "WS" and ws["status"] == 200 and 1 <= ws["tokens_out"] <= 2
        assert ws["request_id"] and ws["request_id"] != ok["request_id"]

    async def test_the_report_api(self, ds_ready):
        await ds_ready.post("complete", {"prefix": 3})
        code, env, _ = await ds_ready.get("audit/report")
        assert code == 200, env
        data = env["data"]
        assert data["by_endpoint"]["complete"]["requests"] >= 1
        assert data["by_endpoint"]["complete"]["errors"] >= 1
        assert set(data) >= {"total", "by_user", "by_model", "by_endpoint", "lines"}
        code, env = await report(ds_ready, since="yesterday-ish")
        assert code == 400 and env["error"]["field"] == "since", env
        code, env = await report(ds_ready, since="1h", until="2099-01-01")
        assert code == 200 and env["data"]["total"]["requests"] >= 1, env
        code, env = await report(ds_ready, until="2000-01-01")
        assert code == 200 and env["data"]["total"]["requests"] == 0, env


async def report(client: Any, **params: str) -> tuple[int, dict[str, Any]]:
    response = await client.fetch("jupyter-ds", "v1", "audit", "report", params=params,
                                  raise_error=False)
    return response.code, json.loads(response.body)


class TestSamplesAndEncryption:
    @pytest.fixture
    def key_file(self, tmp_path):
        path = tmp_path / "audit.key"
        path.write_text(generate_key() + "\n")
        path.chmod(0o600)
        return path

    @pytest.fixture
    def ds_config(self, tmp_path, key_file):
        return {
            "audit_log_path": str(tmp_path / "audit.log"),
            "audit_capture_samples": True,
            "audit_key_file": str(key_file),
        }

    async def test_samples_are_redacted_and_lines_encrypted(self, ds_ready, tmp_path, key_file):
        code, env, _ = await ds_ready.post(
            "explain",
            {"code": "send('alice@example.com', password='hunter2hunter2')", "max_tokens": 3},
        )
        assert code == 200, env
        raw = (tmp_path / "audit.log").read_text()
        assert "alice@example.com" not in raw and "explain" not in raw  # ciphertext only
        recs = records(tmp_path / "audit.log", key_file)
        rec = [r for r in recs if r["endpoint"] == "explain"][-1]
        assert "alice@example.com" not in rec["input_sample"]
        assert "[REDACTED:email]" in rec["input_sample"]
        assert rec["output_sample"] is not None and "redactions" in rec
        code, env, _ = await ds_ready.get("audit/report")  # the server holds the key
        assert code == 200 and env["data"]["lines"]["encrypted"] >= 1, env


class TestAuditOff:
    @pytest.fixture
    def ds_config(self):
        return {"audit_log": False}

    async def test_report_says_the_log_is_off(self, ds_client):
        code, env, _ = await ds_client.get("audit/report")
        assert code == 501 and env["error"]["code"] == "audit_disabled", env


def test_a_malformed_key_stops_the_start(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("not-a-key\n")
    app = JupyterDsApp(audit_log_path=str(tmp_path / "a.log"), audit_key_file=str(bad))
    with pytest.raises(AuditKeyConfigError):
        app.open_audit()
    assert JupyterDsApp(audit_log=False).open_audit() is None
