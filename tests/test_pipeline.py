"""The request pipeline (``jupyter_ds/pipeline.py``): its steps on their own, and on a
real server the same call made over REST and over the WebSocket, rate-limited, counted
in the metrics and audited alike."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from ds_engine import EngineNotReady, EngineOverloaded, EngineState
from prometheus_client import REGISTRY

from jupyter_ds import json_logs
from jupyter_ds.audit import AuditLog
from jupyter_ds.audit.report import read_records
from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.errors import ApiError, bad_request
from jupyter_ds.pipeline import UNAUTHORIZED_MESSAGE, Pipeline
from jupyter_ds.ratelimit import RateLimiter
from jupyter_ds.roles import RolePolicy
from jupyter_ds.services import Services
from tests.test_audit_api import records
from tests.test_rbac import ROLE_CONFIG, as_user, server_config

DEV = as_user("tok-developer")  # dave: developer


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_services(tmp_path: Path, *, samples: bool = False, **limiter: Any) -> Services:
    """Services with only what the pipeline reads: limits, a limiter, an audit log."""
    return Services(
        engine=None,  # type: ignore[arg-type]
        completion=None,  # type: ignore[arg-type]
        explain=None,  # type: ignore[arg-type]
        testgen=None,  # type: ignore[arg-type]
        limits={"max_input_chars": 1000, "max_tokens_limit": 64},
        max_body_bytes=10_000,
        limiter=RateLimiter(limiter.get("limits", {}), limiter.get("concurrent", 0)),
        audit=AuditLog(tmp_path / "audit.log", capture_samples=samples),
        roles=RolePolicy.from_config({"ann": ["developer"]}),
    )


def audit_records(path: Path) -> list[dict[str, Any]]:
    return list(read_records(path)) if path.exists() else []


# -- units: no server -------------------------------------------------------------------


def test_a_call_binds_the_log_context_until_it_finishes(tmp_path):
    pipeline = Pipeline(make_services(tmp_path))
    call = pipeline.begin("complete", "post", "ann", "trace-7")
    assert call.method == "POST" and call.user_name == "ann" and call.request_id == "trace-7"
    ctx = json_logs.current_request()
    assert ctx is not None
    assert (ctx.request_id, ctx.user, ctx.endpoint) == ("trace-7", "ann", "complete")
    pipeline.finish(call, 200)
    assert json_logs.current_request() is None
    # A request id a client may not choose is replaced; an unbound call binds nothing.
    call = pipeline.begin("complete", "WS", "ann", "bad id\n", bind=False)
    assert call.request_id != "bad id\n" and json_logs.current_request() is None


def test_admission_is_rate_limit_then_slot_and_finish_releases(tmp_path):
    services = make_services(tmp_path, limits={"complete": "2/m"}, concurrent=1)
    pipeline, limiter = Pipeline(services), services.limiter
    assert limiter is not None
    first = pipeline.begin("complete", "POST", "ann")
    pipeline.admit(first)
    pipeline.admit(first)  # once per call: not counted twice, no second slot
    assert first.slot is not None and limiter.running("ann") == 1
    second = pipeline.begin("complete/stream", "WS", "ann")
    pipeline.rate_limit(second)  # the WebSocket's bucket is complete's
    with pytest.raises(ApiError) as info:
        pipeline.acquire(second)  # ...and the one slot is taken
    assert info.value.status == 429 and "max_concurrent_per_user" in info.value.message
    pipeline.finish(second, 429, info.value.code)
    pipeline.finish(first, 200)
    assert limiter.running("ann") == 0
    third = pipeline.begin("complete", "POST", "ann")
    with pytest.raises(ApiError) as info:
        pipeline.admit(third)
    assert info.value.code == "rate_limited" and info.value.retry_after >= 1
    assert third.slot is None
    pipeline.finish(third, 429, "rate_limited")
    # Not a model endpoint: no slot; no user (refused before authentication): no limits.
    other = pipeline.begin("models", "GET", "ann")
    pipeline.admit(other)
    assert other.slot is None
    anonymous = pipeline.begin("complete", "POST", None)
    for _ in range(5):
        pipeline.admit(anonymous)
    pipeline.finish(anonymous, 401, "unauthorized")  # bindings nest: the last begun first
    pipeline.finish(other, 200)


def test_release_frees_the_slot_early_and_finish_happens_once(tmp_path):
    services = make_services(tmp_path, concurrent=1)
    pipeline = Pipeline(services)
    call = pipeline.begin("explain", "POST", "ann")
    pipeline.admit(call)
    pipeline.release(call)  # superseded or cancelled: the slot is free at once
    assert services.limiter is not None and services.limiter.running("ann") == 0
    pipeline.finish(call, 200)
    pipeline.finish(call, 500, "internal_error")  # a second finish records nothing
    recs = audit_records(tmp_path / "audit.log")
    assert [(r["status"], r["error_code"]) for r in recs] == [(200, None)]


def test_parse_applies_the_limits_and_keeps_a_sample_only_when_captured(tmp_path):
    pipeline = Pipeline(make_services(tmp_path))
    call = pipeline.begin("complete", "POST", "ann")
    req = pipeline.parse(call, CompleteRequest, {"prefix": "x = 1\n"})
    assert req.prefix == "x = 1\n" and call.sample is None
    with pytest.raises(ApiError) as info:
        pipeline.parse(call, CompleteRequest, {"prefix": "x" * 1001})
    assert info.value.field == "prefix"
    pipeline.finish(call, 413, info.value.code)
    sampled = Pipeline(make_services(tmp_path / "s", samples=True))
    call = sampled.begin("complete", "POST", "ann")
    sampled.parse(call, CompleteRequest, {"prefix": "x = 1\n"})
    assert call.sample == "x = 1\n"
    sampled.finish(call, 200)


def test_errors_map_to_the_envelope_codes():
    error = Pipeline.error
    assert error(500, bad_request("no", "f")).field == "f"  # ApiError passes
    not_ready = error(500, EngineNotReady(EngineState.LOADING))
    assert (not_ready.status, not_ready.code, not_ready.retry_after) == (503, "model_not_ready", 5)
    shed = error(500, EngineOverloaded("busy", over_share=True))
    assert (shed.status, shed.code) == (429, "overloaded")
    refused = error(403, None, authenticated=False, message="'_xsrf' missing")
    assert (refused.status, refused.code, refused.message) == (
        401, "unauthorized", UNAUTHORIZED_MESSAGE)
    denied = error(403, None, message="Forbidden", role_message="needs 'developer'")
    assert (denied.status, denied.code, denied.message) == (403, "forbidden", "needs 'developer'")
    missing = error(404, None, message="no such page")
    assert (missing.code, missing.message) == ("not_found", "no such page")
    assert error(405).message == "Method Not Allowed"
    bare = error(500, ValueError("secret detail"))
    assert bare.code == "internal_error" and "secret" not in bare.message


def test_finish_records_metrics_and_one_audit_record(tmp_path):
    pipeline = Pipeline(make_services(tmp_path))
    before = metric("jupyter_ds_requests_total", endpoint="explain", status="200")
    errors = metric("jupyter_ds_request_errors_total", endpoint="explain", code="timeout")
    call = pipeline.begin("explain", "POST", "ann", "r-1")
    call.answer = {"model": "m", "prompt_tokens": 7, "token_count": 3, "output": "hi"}
    pipeline.finish(call, 200)
    failed = pipeline.begin("explain", "POST", "ann", "r-2")
    pipeline.finish(failed, 504, "timeout")
    health = pipeline.begin("health", "GET", "ann")
    pipeline.finish(health, 200)  # liveness polls are counted, not audited
    assert metric("jupyter_ds_requests_total", endpoint="explain", status="200") == before + 1
    assert metric("jupyter_ds_request_errors_total", endpoint="explain", code="timeout") == (
        errors + 1)
    ok, bad = audit_records(tmp_path / "audit.log")
    assert (ok["endpoint"], ok["user"], ok["role"], ok["request_id"]) == (
        "explain", "ann", "developer", "r-1")
    assert (ok["model"], ok["tokens_in"], ok["tokens_out"], ok["method"]) == ("m", 7, 3, "POST")
    assert "output_sample" not in ok  # samples are not captured
    assert (bad["status"], bad["error_code"], bad["request_id"]) == (504, "timeout", "r-2")


def test_finish_never_raises(tmp_path, caplog):
    class BrokenAudit:
        capture_samples = False

        def write(self, event: Any) -> None:
            raise OSError("disk gone")

    services = make_services(tmp_path)
    services.audit = BrokenAudit()  # type: ignore[assignment]
    pipeline = Pipeline(services)
    call = pipeline.begin("complete", "POST", "ann")
    call.answer = "not a dict"  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, "jupyter_ds.pipeline"):
        pipeline.finish(call, 200)
    assert "could not build the audit record" in caplog.text
    assert json_logs.current_request() is None


def test_the_pipeline_needs_no_web_server():
    import subprocess
    import sys

    code = ("import sys, jupyter_ds.pipeline, jupyter_ds.services; "
            "sys.exit(any(m.split('.')[0] in ('tornado', 'jupyter_server') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- on a real server: one call, two transports -------------------------------------------


async def recv(conn: Any, timeout: float = 30.0) -> dict[str, Any]:
    message = await asyncio.wait_for(conn.read_message(), timeout)
    assert message is not None, "socket closed"
    return json.loads(message)


COMPLETE = {"prefix": "x = 1\n", "max_tokens": 2, "language": "text"}


class TestOneCallTwoTransports:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir, tmp_path):
        return server_config(
            tiny_model_dir,
            {**ROLE_CONFIG, "rate_limits": {"complete": "2/m"}, "load_on_start": True,
             "audit_log_path": str(tmp_path / "audit.log")},
        )

    async def test_rate_limited_counted_and_audited_alike(
        self, ds_client, jp_ws_fetch, jp_serverapp, tmp_path, monkeypatch
    ):
        from tests.test_ratelimit import wait_ready

        await wait_ready(ds_client, DEV)
        counts = {
            (endpoint, status): metric(
                "jupyter_ds_requests_total", endpoint=endpoint, status=status)
            for endpoint in ("complete", "complete/stream") for status in ("200", "429")
        }
        limited = {endpoint: metric("jupyter_ds_request_errors_total", endpoint=endpoint,
                                    code="rate_limited")
                   for endpoint in ("complete", "complete/stream")}
        path = tmp_path / "audit.log"
        start = len(records(path)) if path.exists() else 0  # encrypted: the server's key

        # One REST request and one WebSocket message spend the one 'complete' bucket...
        code, env, _ = await ds_client.post("complete", COMPLETE, headers=DEV)
        assert code == 200, env
        conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream", headers=DEV)
        conn.write_message(json.dumps({"number": 1, **COMPLETE}))
        reply = await recv(conn)
        assert reply["type"] == "inline_completion", reply
        # ...so the next of each is refused the same way.
        code, env, headers = await ds_client.post("complete", COMPLETE, headers=DEV)
        assert code == 429 and env["error"]["code"] == "rate_limited", env
        assert int(headers["Retry-After"]) >= 1
        conn.write_message(json.dumps({"number": 2, **COMPLETE}))
        reply = await recv(conn)
        assert reply["type"] == "error" and reply["reply_to"] == 2, reply
        assert reply["error"]["code"] == "rate_limited" and reply["error"]["retry_after"] >= 1
        conn.close()

        for endpoint in ("complete", "complete/stream"):
            for status in ("200", "429"):
                got = metric("jupyter_ds_requests_total", endpoint=endpoint, status=status)
                assert got == counts[(endpoint, status)] + 1, (endpoint, status)
            got = metric("jupyter_ds_request_errors_total", endpoint=endpoint,
                         code="rate_limited")
            assert got == limited[endpoint] + 1, endpoint

        recs = records(path)[start:]
        assert [(r["endpoint"], r["method"], r["status"], r["error_code"]) for r in recs] == [
            ("complete", "POST", 200, None),
            ("complete/stream", "WS", 200, None),
            ("complete", "POST", 429, "rate_limited"),
            ("complete/stream", "WS", 429, "rate_limited"),
        ]
        assert {(r["user"], r["role"]) for r in recs} == {("dave", "developer")}
        assert len({r["request_id"] for r in recs}) == 4
        served = recs[:2]
        assert served[0]["model"] == served[1]["model"] and served[0]["model"]
        assert all(1 <= r["tokens_out"] <= 2 and r["tokens_in"] > 0 for r in served)


class TestWebSocketCancel:
    async def test_cancel_goes_through_the_completion_service(
        self, ds_ready, jp_ws_fetch, jp_serverapp, monkeypatch
    ):
        completion = jp_serverapp.web_app.settings["jupyter_ds"].completion
        asked: list[str] = []
        real_cancel = completion.cancel

        def cancel(request_id: str) -> bool:
            asked.append(request_id)
            return real_cancel(request_id)

        monkeypatch.setattr(completion, "cancel", cancel)
        conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream")
        conn.write_message(json.dumps({"number": 5, "prefix": "notes:\n", "language": "text",
                                       "stream": True, "max_tokens": 1000}))
        assert (await recv(conn))["type"] == "inline_completion"
        assert (await recv(conn))["type"] == "stream"
        conn.write_message(json.dumps({"type": "cancel", "number": 5}))
        while True:
            msg = await recv(conn)
            if msg.get("type") == "stream" and msg["done"]:
                break
        conn.close()
        assert msg["cancelled"] is True and len(asked) == 1
