"""Rate limits: token-bucket math on a fake clock, configuration errors, and on a real
server a flood answered 429 with Retry-After that leaves other users alone, the WebSocket
counted against the same bucket, and generation slots freed on disconnects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from jupyter_server.utils import url_path_join
from traitlets import TraitError

from jupyter_ds.app import JupyterDsApp
from jupyter_ds.errors import ApiError
from jupyter_ds.ratelimit import (
    RateLimiter,
    TokenBucket,
    parse_limits,
    parse_rate,
    retry_after_seconds,
)
from tests.test_rbac import ROLE_CONFIG, as_user, server_config

DEV = as_user("tok-developer")  # dave: developer
OTHER = as_user("tok-group")  # gina: developer through her group


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- units: bucket math -------------------------------------------------------------------


def test_bucket_allows_a_burst_then_refills_at_the_rate():
    rate = parse_rate("2/s burst 4")
    assert (rate.per_second, rate.burst) == (2.0, 4.0)
    bucket = TokenBucket(rate, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert bucket.take(0.25) == pytest.approx(0.25)  # half a token there already
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)
    assert bucket.take(100.0) == 0.0  # refills, but never above the burst
    assert bucket.tokens == pytest.approx(3.0)
    assert bucket.full(101.0)


def test_default_burst_is_one_units_worth_and_slow_rates_wait_long():
    assert parse_rate("600/m").burst == 600
    assert parse_rate("0.5/s").burst == 1
    bucket = TokenBucket(parse_rate("3/h"), now=0.0)
    for _ in range(3):
        assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(1200.0)


def test_retry_after_is_whole_seconds_at_least_one():
    assert retry_after_seconds(0.001) == 1
    assert retry_after_seconds(1.0) == 1
    assert retry_after_seconds(1.2) == 2
    assert retry_after_seconds(1200.0) == 1200


def test_limiter_is_per_user_and_per_endpoint_with_retry_after():
    clock = Clock()
    limiter = RateLimiter({"complete": "1/s burst 2", "*": "10/m"}, clock=clock)
    limiter.check("dave", "complete")
    limiter.check("dave", "complete")
    with pytest.raises(ApiError) as info:
        limiter.check("dave", "complete")
    err = info.value
    assert (err.status, err.code, err.retry_after) == (429, "rate_limited", 1)
    assert "'complete'" in err.message and "1/s burst 2" in err.message
    limiter.check("gina", "complete")  # another user: a bucket of her own
    limiter.check("dave", "explain")  # another endpoint: its own bucket, from '*'
    with pytest.raises(ApiError):
        limiter.check("dave", "complete/stream")  # the socket shares the REST bucket
    clock.now += 1.0
    limiter.check("dave", "complete")  # refilled


def test_most_specific_key_wins_and_off_exempts():
    limiter = RateLimiter({"git/*": "5/s", "git/status": "off", "*": "1/m"})
    assert str(limiter.rate_for("git/push")) == "5/s"
    assert limiter.rate_for("git/status") is None
    assert str(limiter.rate_for("complete")) == "1/m"
    assert str(limiter.rate_for("complete/stream")) == "1/m"
    assert RateLimiter({}).rate_for("complete") is None
    for _ in range(100):
        limiter.check("dave", "git/status")


def test_idle_buckets_are_pruned():
    clock = Clock()
    limiter = RateLimiter({"*": "1/s"}, clock=clock)
    limiter.PRUNE_ABOVE = 10
    for i in range(20):
        limiter.check(f"user{i}", "complete")
    clock.now += 5  # every bucket full again
    limiter.check("late", "complete")
    assert len(limiter._buckets) <= 11


def test_generation_slots_per_user_and_release_once():
    limiter = RateLimiter({}, max_concurrent_per_user=2)
    a = limiter.acquire("dave")
    b = limiter.acquire("dave")
    with pytest.raises(ApiError) as info:
        limiter.acquire("dave")
    assert info.value.status == 429 and info.value.retry_after == 1
    assert "max_concurrent_per_user = 2" in info.value.message
    limiter.acquire("gina").release()
    a.release()
    a.release()  # twice is harmless: it frees one slot, not two
    assert limiter.running("dave") == 1
    with limiter.acquire("dave"):
        assert limiter.running("dave") == 2
    b.release()
    assert limiter.running("dave") == 0
    assert limiter.admit("dave", "health") is None  # not a generation: no slot
    unlimited = RateLimiter({}, max_concurrent_per_user=0)
    slots = [unlimited.acquire("dave") for _ in range(100)]
    assert unlimited.running("dave") == 0 and all(s.released for s in slots)


@pytest.mark.parametrize(
    "limits, fragment",
    [
        ({"complete": "fast"}, "rate_limits['complete']: 'fast' is not a rate"),
        ({"complete": "20/x"}, "is not a rate: write '<count>/<s|m|h|d>"),
        ({"complete": "0/s"}, "above 0"),
        ({"complete": "5/s burst 0"}, "burst must be at least 1"),
        ({"completion": "5/s"}, "unknown endpoint 'completion'"),
        ({"gti/*": "5/s"}, "unknown endpoint 'gti/*'"),
    ],
)
def test_bad_rate_limits_are_clear_errors_at_startup(limits, fragment):
    with pytest.raises(TraitError) as info:
        JupyterDsApp(rate_limits=limits)
    assert fragment in str(info.value), str(info.value)
    assert "JupyterDsApp.rate_limits" in str(info.value)


def test_good_rate_limits_and_concurrency_setting():
    app = JupyterDsApp(rate_limits={"complete": "20/s burst 40", "git/*": "2/s", "*": "off"},
                       max_concurrent_per_user=3)
    limiter = app.make_limiter()
    assert limiter.max_concurrent == 3 and str(limiter.rate_for("git/log")) == "2/s"
    assert parse_limits({" complete ": "1/s"}) == {"complete": parse_rate("1/s")}
    with pytest.raises(TraitError, match="max_concurrent_per_user"):
        JupyterDsApp(max_concurrent_per_user=-1)


# -- on a real server -----------------------------------------------------------------------


async def wait_ready(ds_client: Any, headers: dict[str, str], timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        code, env, _ = await ds_client.get("health", headers=headers)
        assert code == 200, env
        if env["data"]["ready"]:
            return
        assert env["data"]["model_state"] != "failed" and loop.time() < deadline, env
        await asyncio.sleep(0.05)


async def recv(conn: Any, timeout: float = 30.0) -> dict[str, Any]:
    message = await asyncio.wait_for(conn.read_message(), timeout)
    assert message is not None, "socket closed"
    return json.loads(message)


def services(jp_serverapp: Any) -> Any:
    return jp_serverapp.web_app.settings["jupyter_ds"]


def endless_stream(calls: dict[str, int]):
    """A service ``stream`` that never ends by itself: it stops only when closed."""

    async def stream(req: Any, request_id: str | None = None):
        calls["started"] = calls.get("started", 0) + 1
        try:
            n = 0
            while True:
                n += 1
                yield {"text": "x" * n, "done": False}
                await asyncio.sleep(0.02)
        finally:
            calls["closed"] = calls.get("closed", 0) + 1

    return stream


class TestFlood:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir):
        # 3 a minute: nothing refills during the test, so the counts are exact.
        return server_config(
            tiny_model_dir, {**ROLE_CONFIG, "rate_limits": {"complete": "3/m"},
                             "load_on_start": True}
        )

    async def test_a_flood_gets_429_with_retry_after_and_others_are_unaffected(
        self, ds_client, jp_ws_fetch
    ):
        await wait_ready(ds_client, DEV)
        codes = []
        for _ in range(8):
            code, env, headers = await ds_client.post("complete", {"prefix": 3}, headers=DEV)
            codes.append(code)
        assert codes == [400] * 3 + [429] * 5  # validated while in the limit, then refused
        assert env["error"]["code"] == "rate_limited"
        retry = int(headers["Retry-After"])
        assert 1 <= retry <= 20 and env["error"]["retry_after"] == retry
        assert headers["X-Request-Id"]
        # Another user: a bucket of their own, and a real answer.
        code, env, _ = await ds_client.post(
            "complete", {"prefix": "x = 1\n", "max_tokens": 2, "language": "text"},
            headers=OTHER,
        )
        assert code == 200, env
        # The same user on another endpoint: not limited.
        code, env, _ = await ds_client.post("explain", {"language": "python"}, headers=DEV)
        assert code == 400, env
        # The WebSocket counts against the same bucket: an error message, socket open.
        conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream", headers=DEV)
        conn.write_message(json.dumps({"number": 1, "prefix": "x", "stream": True}))
        reply = await recv(conn)
        assert reply["type"] == "error" and reply["reply_to"] == 1, reply
        assert reply["error"]["code"] == "rate_limited" and reply["error"]["retry_after"] >= 1
        conn.write_message(json.dumps({"number": 2, "prefix": 3}))
        reply = await recv(conn)  # still open, still answering
        assert reply["reply_to"] == 2 and reply["error"]["code"] == "rate_limited"
        conn.close()
        # ...and for the other user the socket still completes.
        conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream", headers=OTHER)
        conn.write_message(json.dumps({"number": 1, "prefix": "x = 1\n", "max_tokens": 2,
                                       "language": "text"}))
        reply = await recv(conn)
        assert reply["type"] == "inline_completion", reply
        conn.close()


class TestConcurrency:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir):
        return server_config(
            tiny_model_dir, {**ROLE_CONFIG, "max_concurrent_per_user": 1, "load_on_start": True}
        )

    async def _until_admitted(self, ds_client: Any, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            code, env, _ = await ds_client.post("complete", {"prefix": 3}, headers=DEV)
            if code != 429:
                assert code == 400, env  # admitted, then validated
                return
            assert loop.time() < deadline, "the generation slot was never released"
            await asyncio.sleep(0.05)

    async def test_websocket_slot_is_held_then_released_on_close(
        self, ds_client, jp_ws_fetch, jp_serverapp, monkeypatch
    ):
        await wait_ready(ds_client, DEV)
        calls: dict[str, int] = {}
        monkeypatch.setattr(services(jp_serverapp).completion, "stream", endless_stream(calls))
        conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream", headers=DEV)
        conn.write_message(json.dumps({"number": 1, "prefix": "a", "stream": True}))
        assert (await recv(conn))["type"] == "inline_completion"
        assert (await recv(conn))["type"] == "stream"  # generating: the slot is held
        code, env, headers = await ds_client.post("complete", {"prefix": "x"}, headers=DEV)
        assert code == 429 and env["error"]["code"] == "rate_limited", env
        assert "max_concurrent_per_user = 1" in env["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        code, env, _ = await ds_client.post("complete", {"prefix": 3}, headers=OTHER)
        assert code == 400, env  # another user has slots of their own
        # A newer request on the same socket supersedes the old one and takes its slot.
        conn.write_message(json.dumps({"number": 2, "prefix": "ab", "stream": True}))
        while True:
            reply = await recv(conn)
            if reply.get("reply_to") == 2:
                break
        assert reply["type"] == "inline_completion", reply
        conn.close()  # disconnect in the middle of the stream
        await self._until_admitted(ds_client)
        for _ in range(100):
            if calls.get("closed") == calls.get("started"):
                break
            await asyncio.sleep(0.02)
        assert calls["started"] == calls["closed"] == 2

    async def test_http_stream_slot_is_released_when_the_client_disconnects(
        self, ds_client, jp_serverapp, jp_http_port, jp_base_url, monkeypatch
    ):
        await wait_ready(ds_client, DEV)
        calls: dict[str, int] = {}
        monkeypatch.setattr(services(jp_serverapp).explain, "stream", endless_stream(calls))
        body = json.dumps({"code": "x = 1", "stream": True}).encode()
        path = url_path_join(jp_base_url, "jupyter-ds/v1/explain")
        reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: localhost:{jp_http_port}\r\n"
                f"Authorization: token tok-developer\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
        await writer.drain()
        seen = b""
        while b'"type": "stream"' not in seen:  # the first NDJSON line has come
            chunk = await asyncio.wait_for(reader.read(4096), 30)
            assert chunk, seen
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200")
        code, env, _ = await ds_client.post("complete", {"prefix": "x"}, headers=DEV)
        assert code == 429, env  # the explanation holds the only slot
        writer.close()  # the client goes away mid-stream
        await self._until_admitted(ds_client)
        assert calls["closed"] == 1  # ...and the generation was stopped, not left running

    async def test_slots_are_released_after_errors_and_answers(self, ds_client):
        await wait_ready(ds_client, DEV)
        for _ in range(3):  # each finished request gives its slot back
            code, env, _ = await ds_client.post("complete", {"prefix": 3}, headers=DEV)
            assert code == 400, env
            code, env, _ = await ds_client.post(
                "complete", {"prefix": "x = 1\n", "max_tokens": 2, "language": "text"},
                headers=DEV,
            )
            assert code == 200, env
