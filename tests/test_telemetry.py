"""Acceptance telemetry: completions carry their request id, the server remembers them,
``POST telemetry`` counts each user's own events once per kind into Prometheus and the
audit log, and the usage report shows the acceptance rate per model and adapter.

The server tests run a real Jupyter server with several users (the token identity
provider of ``tests/test_rbac.py``) and a scripted engine that serves one adapter, so
every completion offers known text and the model and adapter labels are known."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
from typing import Any

import pytest
from ds_engine.testing import ScriptedEngine
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from jupyter_ds.audit import AuditLog
from jupyter_ds.audit.cli import main as audit_cli
from jupyter_ds.audit.report import aggregate, format_table
from jupyter_ds.errors import ApiError
from jupyter_ds.pipeline import Pipeline
from jupyter_ds.services import Services
from jupyter_ds.telemetry import (
    MAX_EVENTS,
    AnsweredCompletions,
    TelemetryEvent,
    count_events,
    parse_events,
)
from tests.test_audit_api import records
from tests.test_rbac import ROLE_CONFIG, as_user, server_config

MODEL = "scripted-telemetry"
ADAPTER = "fim-a"
PREFIX = "def f():\n    "
ANSWER = "return 1"
DAVE = as_user("tok-developer")  # dave: developer
GINA = as_user("tok-group")  # gina: developer through her group
ALICE = as_user("tok-admin")  # alice: admin (reads the audit report)
AUDREY = as_user("tok-auditor")  # audrey: auditor (may not complete, nor report)


class OneAdapterEngine(ScriptedEngine):
    """A scripted engine that also serves the adapter :data:`ADAPTER` (same answers)."""

    def template_for(self, adapter):
        if adapter not in (None, ADAPTER):
            return super().template_for(adapter)  # 404 naming it
        return self.template


def counter(kind: str, adapter: str = "", model: str = MODEL) -> float:
    return REGISTRY.get_sample_value(
        f"jupyter_ds_completions_{kind}_total", {"model": model, "adapter": adapter}
    ) or 0.0


# -- units: the memory ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_memory_counts_each_kind_once_per_users_own_completion():
    memory = AnsweredCompletions()
    memory.remember("r1", "ann", "m", None, 1, 8)
    assert memory.claim("bob", "r1", "shown") is None  # another user's id
    assert memory.claim("ann", "nope", "shown") is None  # unknown id
    entry = memory.claim("ann", "r1", "shown")
    assert entry is not None and (entry.model, entry.adapter, entry.shown_chars) == ("m", None, 8)
    assert memory.claim("ann", "r1", "shown") is None  # counted once
    assert memory.claim("ann", "r1", "accepted") is not None  # another kind counts
    # The same id chosen by another user (X-Request-Id) is their own entry, not ann's.
    memory.remember("r1", "bob", "m2", "a", 2, 3)
    assert memory.claim("ann", "r1", "dismissed") is not None
    assert memory.claim("bob", "r1", "accepted").model == "m2"  # type: ignore[union-attr]


def test_the_memory_is_bounded_by_size_and_age():
    clock = Clock()
    memory = AnsweredCompletions(max_entries=3, ttl_s=60, clock=clock)
    for i in range(5):
        memory.remember(f"r{i}", "ann", "m", None, 1, 1)
    assert len(memory) == 3
    assert memory.claim("ann", "r0", "shown") is None  # the least recently used went
    assert memory.claim("ann", "r1", "shown") is None
    assert memory.claim("ann", "r2", "shown") is not None
    clock.now += 61
    assert memory.claim("ann", "r3", "shown") is None  # expired
    memory.remember("r5", "ann", "m", None, 1, 1)  # expired entries are dropped
    assert len(memory) == 1


def test_only_answers_that_offered_text_are_remembered():
    memory = AnsweredCompletions()
    offered = {"model": "m", "adapter": "a", "output": "x = 1", "items": [{}, {}]}
    assert memory.remember_answer("r1", "ann", offered)
    entry = memory.claim("ann", "r1", "shown")
    assert entry is not None and entry.items == 2 and entry.shown_chars == 5
    assert entry.adapter == "a"
    assert not memory.remember_answer("r2", "ann", {"model": "m", "output": "", "items": []})
    stream_done = {"model": "m", "text": "y", "output": "y", "cancelled": False}
    assert memory.remember_answer("r3", "ann", stream_done)
    # A stream stopped after it showed text: the user may have taken it.
    assert memory.remember_answer("r4", "ann", {**stream_done, "cancelled": True})
    cut_short = {**stream_done, "text": "", "output": "", "cancelled": True}
    assert not memory.remember_answer("r5", "ann", cut_short)
    assert not memory.remember_answer("r6", None, offered)  # nobody to credit
    assert len(memory) == 3


# -- units: the body ----------------------------------------------------------------------


def refused(body: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_events(body)
    assert info.value.status == 400 and info.value.code == "invalid_request"
    return info.value


def ev(event: str = "shown", request_id: str = "r1", **more: Any) -> dict[str, Any]:
    return {"event": event, "request_id": request_id, **more}


def test_events_are_parsed_strictly_and_errors_name_the_field():
    parsed = parse_events({"events": [ev(), ev("partially_accepted", accepted_chars=3,
                                                 client="lsp")]})
    assert parsed == [TelemetryEvent("shown", "r1"),
                      TelemetryEvent("partially_accepted", "r1", 3, "lsp")]
    assert parse_events({"events": []}) == []
    assert len(parse_events({"events": [ev()] * MAX_EVENTS})) == MAX_EVENTS
    assert refused({"events": [ev()] * (MAX_EVENTS + 1)}).field == "events"
    bad = [ev(), ev(), ev(), ev("liked")]
    error = refused({"events": bad})
    assert error.field == "events[3].event" and "events[3]" in error.message
    assert refused({"events": [ev(code="print(secret)")]}).field == "events[0].code"
    assert refused({"events": [], "code": "x"}).field == "code"
    assert refused({}).field == "events"
    assert refused({"events": "shown"}).field == "events"
    assert refused({"events": ["shown"]}).field == "events[0]"
    assert refused({"events": [{"event": "shown"}]}).field == "events[0].request_id"
    assert refused({"events": [ev(request_id="has space")]}).field == "events[0].request_id"
    assert refused({"events": [ev(accepted_chars=-1)]}).field == "events[0].accepted_chars"
    assert refused({"events": [ev(accepted_chars=True)]}).field == "events[0].accepted_chars"
    assert refused({"events": [ev(client="x" * 40)]}).field == "events[0].client"
    assert refused([ev()]).field is None


def test_counting_labels_from_the_memory_and_clamps_partial_chars():
    memory = AnsweredCompletions()
    memory.remember("r1", "ann", "count-model", "ad", 1, 4)
    before = counter("partially_accepted", "ad", "count-model")
    events = parse_events({"events": [
        ev("partially_accepted", accepted_chars=99, client="lsp"),
        ev("partially_accepted", accepted_chars=2),  # a second time: ignored
        ev("shown", "unknown"),
    ]})
    tally = count_events(memory, "ann", events)
    assert tally.data() == {"counted": 1, "ignored": 2}
    assert counter("partially_accepted", "ad", "count-model") == before + 1
    fields = tally.audit_fields()
    assert fields["clients"] == ["lsp"] and fields["telemetry_ignored"] == 2
    (group,) = fields["telemetry"]
    assert group["model"] == "count-model" and group["adapter"] == "ad"
    assert group["partially_accepted"] == 1 and group["accepted_chars"] == 4  # clamped
    assert count_events(None, "ann", events).data() == {"counted": 0, "ignored": 3}


def test_the_pipeline_remembers_answered_completions_only(tmp_path):
    services = Services(
        engine=None,  # type: ignore[arg-type]
        completion=None,  # type: ignore[arg-type]
        explain=None,  # type: ignore[arg-type]
        testgen=None,  # type: ignore[arg-type]
        limits={},
        max_body_bytes=10_000,
        audit=AuditLog(tmp_path / "audit.log"),
        answered=AnsweredCompletions(),
    )
    pipeline = Pipeline(services)
    answer = {"model": "m", "adapter": None, "output": "x", "items": [{}]}
    for endpoint, status, request_id in [("complete", 200, "ok-rest"),
                                         ("complete/stream", 200, "ok-ws"),
                                         ("complete", 504, "timed-out"),
                                         ("explain", 200, "not-a-completion")]:
        call = pipeline.begin(endpoint, "POST", "ann", request_id)
        pipeline.finish(call, status, answer=dict(answer))
    memory = services.answered
    assert memory is not None and len(memory) == 2
    assert memory.claim("ann", "ok-rest", "shown") and memory.claim("ann", "ok-ws", "shown")
    # A call's audit extras reach its record.
    call = pipeline.begin("telemetry", "POST", "ann")
    call.audit_extra = {"telemetry": [{"model": "m", "shown": 1}]}
    pipeline.finish(call, 200, answer={"counted": 1, "ignored": 0})
    rec = records(tmp_path / "audit.log")[-1]
    assert rec["endpoint"] == "telemetry" and rec["telemetry"] == [{"model": "m", "shown": 1}]


def test_the_report_computes_the_acceptance_rate_per_model_and_adapter():
    def rec(second: int, *groups: dict[str, Any]) -> dict[str, Any]:
        return {"time": f"2024-01-01T00:00:{second:02d}.000Z", "endpoint": "telemetry",
                "status": 200, "telemetry": list(groups)}

    report = aggregate([
        rec(1, {"model": "m", "adapter": None, "shown": 3, "accepted": 1, "dismissed": 2}),
        rec(2, {"model": "m", "adapter": None, "shown": 1, "partially_accepted": 1,
                "accepted_chars": 5},
            {"model": "m", "adapter": "a", "shown": 2, "accepted": 2}),
        rec(3, {"model": "m", "adapter": "a", "shown": "lots"}, "not a group"),  # leniency
        {"time": "2024-01-01T00:00:04.000Z", "endpoint": "complete", "status": 200},
    ])
    acceptance = report["acceptance"]
    rows = {(r["model"], r["adapter"]): r for r in acceptance["by_model_adapter"]}
    assert rows[("m", None)] == {
        "model": "m", "adapter": None, "shown": 4, "accepted": 1, "partially_accepted": 1,
        "dismissed": 2, "accepted_chars": 5, "acceptance_rate": 0.25}
    assert rows[("m", "a")]["acceptance_rate"] == 1.0
    assert acceptance["total"]["shown"] == 6 and acceptance["total"]["acceptance_rate"] == 0.5
    table = format_table(report)
    assert "Completion acceptance" in table and "25.0%" in table and "50.0%" in table
    assert aggregate([])["acceptance"]["total"]["acceptance_rate"] is None
    assert "Completion acceptance" not in format_table(aggregate([]))


# -- a real server ------------------------------------------------------------------------


@pytest.fixture
def jp_server_config(tiny_model_dir, tmp_path):
    return server_config(tiny_model_dir, {
        **ROLE_CONFIG,
        "engine_class": f"{__name__}.OneAdapterEngine",
        "engine_options": {"answers": [ANSWER], "name": MODEL},
        "audit_log_path": str(tmp_path / "audit.log"),
        "audit_encrypt": False,
    })


async def complete(client: Any, headers: dict[str, str], **more: Any) -> str:
    """One REST completion; its request id (the answer's, which is the header's)."""
    code, env, response_headers = await client.post(
        "complete", {"prefix": PREFIX, **more}, headers=headers)
    assert code == 200, env
    data = env["data"]
    assert data["output"] == ANSWER and data["model"] == MODEL
    assert data["request_id"] == response_headers["X-Request-Id"]
    return data["request_id"]


async def report(client: Any, events: list[dict[str, Any]],
                 headers: dict[str, str] = DAVE) -> tuple[int, dict[str, Any]]:
    code, env, _ = await client.post("telemetry", {"events": events}, headers=headers)
    return code, env


async def ws_completion(jp_ws_fetch: Any, number: int, stream: bool) -> dict[str, Any]:
    """The final message of one completion over the WebSocket, as dave."""
    conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream", headers=DAVE)
    try:
        conn.write_message(json.dumps({"number": number, "prefix": PREFIX, "stream": stream}))
        first = None
        while True:
            msg = json.loads(await asyncio.wait_for(conn.read_message(), 30))
            assert msg.get("type") != "error", msg
            first = first or msg
            if msg["type"] == "stream" and msg["done"]:
                # The placeholder named the request already (reports may come mid-stream).
                assert first["type"] == "inline_completion", first
                assert first["request_id"] == msg["request_id"], (first, msg)
                return msg
            if msg["type"] == "inline_completion" and not stream:
                return msg
    finally:
        conn.close()


def scrape(text: str) -> dict[tuple[str, str, str], float]:
    """(sample name, model, adapter) -> value of the completions counters of ``/metrics``."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("jupyter_ds_completions_"):
            for s in family.samples:
                if s.name.endswith("_total"):
                    out[(s.name, s.labels["model"], s.labels["adapter"])] = s.value
    return out


async def test_a_scripted_run_reaches_metrics_and_the_report(ds_client, jp_ws_fetch, tmp_path):
    names = [f"jupyter_ds_completions_{k}_total"
             for k in ("shown", "accepted", "partially_accepted", "dismissed")]
    response = await ds_client.fetch("metrics", headers=ALICE)
    before = scrape(response.body.decode())
    # Completions: three over REST, one with the adapter, two over the WebSocket.
    r1 = await complete(ds_client, DAVE)
    r2 = await complete(ds_client, DAVE)
    r3 = await complete(ds_client, DAVE)
    r4 = await complete(ds_client, DAVE, adapter=ADAPTER)
    done = await ws_completion(jp_ws_fetch, 1, stream=True)
    assert done["response"]["insertText"] == ANSWER and done["model"] == MODEL
    w1 = done["request_id"]
    whole = await ws_completion(jp_ws_fetch, 2, stream=False)
    assert whole["list"]["items"][0]["insertText"] == ANSWER
    w2 = whole["request_id"]
    assert len({r1, r2, r3, r4, w1, w2}) == 6

    code, env = await report(ds_client, [
        *(ev("shown", r, client="jupyterlab") for r in (r1, r2, r3, r4, w1, w2)),
        ev("accepted", r1), ev("accepted", w1), ev("accepted", r4, client="lsp"),
        ev("partially_accepted", r2, accepted_chars=3), ev("dismissed", r3),
        ev("dismissed", w2),
    ])
    assert code == 200 and env["data"] == {"counted": 12, "ignored": 0}, env

    response = await ds_client.fetch("metrics", headers=ALICE)
    after = scrape(response.body.decode())
    expected = {
        ("shown", ""): 5, ("shown", ADAPTER): 1,
        ("accepted", ""): 2, ("accepted", ADAPTER): 1,
        ("partially_accepted", ""): 1, ("partially_accepted", ADAPTER): 0,
        ("dismissed", ""): 2, ("dismissed", ADAPTER): 0,
    }
    for (kind, adapter), n in expected.items():
        key = (f"jupyter_ds_completions_{kind}_total", MODEL, adapter)
        assert after.get(key, 0.0) - before.get(key, 0.0) == n, (key, after.get(key))
    assert {name for name, _, _ in after} >= set(names[:2])

    code, env, _ = await ds_client.get("audit/report", headers=ALICE)
    assert code == 200, env
    rows = {(r["model"], r["adapter"]): r for r in env["data"]["acceptance"]["by_model_adapter"]}
    plain, adapted = rows[(MODEL, None)], rows[(MODEL, ADAPTER)]
    assert (plain["shown"], plain["accepted"], plain["partially_accepted"],
            plain["dismissed"], plain["accepted_chars"]) == (5, 2, 1, 2, 3)
    assert plain["acceptance_rate"] == 0.4 and adapted["acceptance_rate"] == 1.0
    code, env, _ = await ds_client.get("audit/report", headers=AUDREY)  # auditors read it
    assert code == 200 and env["data"]["acceptance"]["total"]["shown"] == 6, env

    # The telemetry call's audit record: counts per model and adapter, clients, no code.
    path = tmp_path / "audit.log"
    rec = [r for r in records(path) if r["endpoint"] == "telemetry"][-1]
    assert rec["user"] == "dave" and rec["status"] == 200 and rec["clients"] == [
        "jupyterlab", "lsp"]
    assert {(g["model"], g["adapter"], g["shown"]) for g in rec["telemetry"]} == {
        (MODEL, None, 5), (MODEL, ADAPTER, 1)}
    raw = path.read_text()
    assert ANSWER not in raw and "def f()" not in raw  # no code text, anywhere in the log

    # The CLI prints the same rates.
    args = argparse.Namespace(audit_command="report", log=str(path), key_file=None,
                              key_env="JUPYTER_DS_TEST_NO_KEY", since=None, until=None,
                              json=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert audit_cli(args) == 0
    table = out.getvalue().split("Completion acceptance", 1)[1]
    line = next(s for s in table.splitlines() if s.startswith(MODEL) and ADAPTER not in s)
    assert line.split()[-5:] == ["5", "2", "1", "2", "40.0%"], line


async def test_other_users_unknown_and_repeated_ids_are_ignored(ds_client):
    mine = await complete(ds_client, DAVE)
    # gina picks dave's id as her own X-Request-Id: her completion is hers, not his.
    code, env, headers = await ds_client.post(
        "complete", {"prefix": PREFIX}, headers={**GINA, "X-Request-Id": mine})
    assert code == 200 and headers["X-Request-Id"] == mine, env
    shown, accepted = counter("shown"), counter("accepted")

    code, env = await report(ds_client, [ev("accepted", mine)], headers=GINA)
    assert code == 200 and env["data"] == {"counted": 1, "ignored": 0}, env  # her own
    code, env = await report(ds_client, [ev("dismissed", mine)], headers=GINA)
    assert env["data"] == {"counted": 1, "ignored": 0}
    code, env = await report(ds_client, [
        ev("shown", mine), ev("shown", mine),  # repeated in one batch
        ev("shown", "never-answered"), ev("shown", "r" * 128),
    ])
    assert code == 200 and env["data"] == {"counted": 1, "ignored": 3}, env
    code, env = await report(ds_client, [ev("shown", mine), ev("accepted", mine),
                                         ev("accepted", mine)])
    assert env["data"] == {"counted": 1, "ignored": 2}, env  # shown before; accepted once
    assert counter("shown") == shown + 1
    assert counter("accepted") == accepted + 2  # gina's one and dave's one
    # An id of a request that was no completion (or failed) is unknown too.
    code, env, headers = await ds_client.post("complete", {"prefix": 3}, headers=DAVE)
    assert code == 400
    code, env = await report(ds_client, [ev("shown", headers["X-Request-Id"])])
    assert env["data"] == {"counted": 0, "ignored": 1}


async def test_bad_bodies_are_400_naming_the_field_and_the_server_stays_up(ds_client):
    rid = await complete(ds_client, DAVE)
    shown = counter("shown")
    code, env = await report(ds_client, [ev("shown", rid)] * (MAX_EVENTS + 1))
    assert code == 400 and env["error"]["field"] == "events", env
    code, env = await report(ds_client, [ev("shown", rid)] * 3 + [ev("liked", rid)])
    assert code == 400 and env["error"]["field"] == "events[3].event", env
    assert env["error"]["code"] == "invalid_request"
    code, env = await report(ds_client, [ev("shown", rid, text=ANSWER)])
    assert code == 400 and env["error"]["field"] == "events[0].text", env
    code, env, _ = await ds_client.post(
        "telemetry", {"events": [], "prefix": PREFIX}, headers=DAVE)
    assert code == 400 and env["error"]["field"] == "prefix", env
    code, env = await report(ds_client, [ev("partially_accepted", rid, accepted_chars="3")])
    assert code == 400 and env["error"]["field"] == "events[0].accepted_chars", env
    code, env, _ = await ds_client.post("telemetry", raw="{not json", headers=DAVE)
    assert code == 400, env
    assert counter("shown") == shown  # a refused batch counts nothing, not even its valid part
    # Roles: an auditor may not report (nor complete).
    code, env = await report(ds_client, [ev("shown", rid)], headers=AUDREY)
    assert code == 403 and env["error"]["code"] == "forbidden", env
    # Still up: 100 events is the limit, not over it; completions go on.
    code, env = await report(ds_client, [ev("shown", rid)] * MAX_EVENTS)
    assert code == 200 and env["data"] == {"counted": 1, "ignored": MAX_EVENTS - 1}, env
    await complete(ds_client, DAVE)
