"""WebSocket inline-completion protocol: streaming, cancel, supersede, disconnect."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest

LONG = 1000  # tokens: long enough that a cancelled request visibly stops early
# "text" has no indentation rules, so the tiny random model is not stopped by them.
STREAM_REQ = {"prefix": "notes:\n", "suffix": "", "language": "text", "mime": "text/plain",
              "path": "notes.txt", "cell_id": None, "stream": True, "max_tokens": LONG}


@pytest.fixture
def ws(ds_ready, jp_ws_fetch, jp_asyncio_loop):
    conn = jp_asyncio_loop.run_until_complete(
        jp_ws_fetch("jupyter-ds", "v1", "complete", "stream")
    )
    yield conn
    conn.close()


async def recv(conn: Any, timeout: float = 30.0) -> dict[str, Any]:
    message = await asyncio.wait_for(conn.read_message(), timeout)
    assert message is not None, "socket closed"
    return json.loads(message)


async def recv_until_done(conn: Any, number: int) -> tuple[list[dict], dict]:
    seen = []
    while True:
        msg = await recv(conn)
        if msg.get("reply_to") != number:
            continue
        seen.append(msg)
        if (msg["type"] == "stream" and msg["done"]) or msg["type"] == "error":
            return seen, msg


async def engine_counters(ds_ready) -> dict[str, Any]:
    _, env, _ = await ds_ready.get("models")
    return env["data"]["models"][0]


async def assert_engine_idle(ds_ready) -> int:
    """Active requests drop to zero and the token counter stops moving."""
    for _ in range(100):
        info = await engine_counters(ds_ready)
        if info["active_requests"] == 0 and info["queued_requests"] == 0:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"engine still busy: {info}")
    before = info["tokens_generated_total"]
    await asyncio.sleep(0.4)
    after = (await engine_counters(ds_ready))["tokens_generated_total"]
    assert after == before, "tokens are still being generated after cancel"
    return after


async def test_plain_request_gets_one_inline_completion_reply(ws):
    ws.write_message(json.dumps({"number": 1, "prefix": "def f(x):\n    return ", "suffix": "",
                                 "language": "python", "max_tokens": 8, "stream": False}))
    msg = await recv(ws)
    assert msg["type"] == "inline_completion" and msg["reply_to"] == 1
    for item in msg["list"]["items"]:
        assert item["isIncomplete"] is False
        compile("def f(x):\n    return " + item["insertText"], "<item>", "exec")


async def test_stream_sends_cumulative_chunks_then_done(ws):
    ws.write_message(json.dumps({**STREAM_REQ, "number": 7, "max_tokens": 20}))
    first = await recv(ws)
    request_id = first.pop("request_id")  # telemetry names the suggestion by it
    assert first == {"type": "inline_completion", "reply_to": 7,
                     "list": {"items": [{"insertText": "", "isIncomplete": True,
                                         "token": "jds-7"}]}}
    seen, done = await recv_until_done(ws, 7)
    assert done["request_id"] == request_id and isinstance(request_id, str)
    chunks = [m for m in seen if not m["done"]]
    assert chunks, "no intermediate chunks were streamed"
    texts = [m["response"]["insertText"] for m in chunks]
    assert all(b.startswith(a.rstrip()) for a, b in itertools.pairwise(texts))
    assert done["done"] is True and done["cancelled"] is False
    assert done["token_count"] == 20 and done["finish_reason"] == "length"
    assert all(m["response"]["token"] == "jds-7" for m in seen)


async def test_cancel_stops_generation_in_the_engine(ws, ds_ready):
    ws.write_message(json.dumps({**STREAM_REQ, "number": 3}))
    assert (await recv(ws))["type"] == "inline_completion"
    chunk = await recv(ws)
    assert chunk["type"] == "stream" and not chunk["done"]
    ws.write_message(json.dumps({"type": "cancel", "number": 3}))
    _, done = await recv_until_done(ws, 3)
    assert done["cancelled"] is True and done["finish_reason"] == "cancelled"
    assert done["token_count"] < LONG
    await assert_engine_idle(ds_ready)


async def test_newer_number_supersedes_older_requests(ws, ds_ready):
    ws.write_message(json.dumps({**STREAM_REQ, "number": 10}))
    assert (await recv(ws))["reply_to"] == 10
    ws.write_message(json.dumps({**STREAM_REQ, "number": 11, "max_tokens": 5}))
    results: dict[int, dict] = {}
    while len(results) < 2:
        msg = await recv(ws)
        if msg["type"] == "stream" and msg["done"]:
            results[msg["reply_to"]] = msg
    assert results[10]["cancelled"] is True and results[10]["token_count"] < LONG
    assert results[11]["cancelled"] is False and results[11]["token_count"] == 5
    await assert_engine_idle(ds_ready)


async def test_disconnect_mid_stream_cancels_generation(ds_ready, jp_ws_fetch):
    conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream")
    start = (await engine_counters(ds_ready))["tokens_generated_total"]
    conn.write_message(json.dumps({**STREAM_REQ, "number": 1}))
    await recv(conn)
    await recv(conn)  # generation is running
    conn.close()
    total = await assert_engine_idle(ds_ready)
    assert total - start < LONG


async def test_bad_messages_get_error_replies_and_the_socket_stays_usable(ws):
    ws.write_message("{oops")
    msg = await recv(ws)
    assert msg["type"] == "error" and msg["error"]["code"] == "invalid_request"
    ws.write_message(json.dumps({"number": "one", "prefix": "x"}))
    msg = await recv(ws)
    assert msg["error"]["field"] == "number"
    # Numbers a JavaScript client cannot hold exactly, and negative ones, are refused
    # (the reply does not echo them back).
    for number in ("1" + "0" * 400, "-3", str(2**53)):
        ws.write_message('{"number": ' + number + ', "prefix": "x"}')
        msg = await recv(ws)
        assert msg["type"] == "error" and msg["error"]["field"] == "number", msg
        assert msg["reply_to"] is None
    ws.write_message(json.dumps({"number": 2, "prefix": 5}))
    msg = await recv(ws)
    assert msg["reply_to"] == 2 and msg["error"]["field"] == "prefix"
    ws.write_message(json.dumps({"number": 4, "prefix": "x = ", "max_tokens": 3}))
    msg = await recv(ws)
    assert msg["type"] == "inline_completion" and msg["reply_to"] == 4


async def test_unauthenticated_websocket_is_refused(ds_ready, jp_ws_fetch, jp_fetch):
    from tornado.httpclient import HTTPClientError

    with pytest.raises(HTTPClientError) as info:
        await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream",
                          headers={"Authorization": "token wrong"})
    assert info.value.code in (401, 403)
    # The refused upgrade is answered in the JSON envelope, not Jupyter's HTML page.
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": "token wrong"}
    response = await jp_fetch("jupyter-ds", "v1", "complete", "stream", headers=upgrade,
                              raise_error=False)
    assert response.code == 401
    assert response.headers["Content-Type"].startswith("application/json")
    envelope = json.loads(response.body)
    assert envelope["status"] == "error" and envelope["error"]["code"] == "unauthorized"
