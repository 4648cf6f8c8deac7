"""REST API of the server extension on a real Jupyter server with a tiny random model."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import pytest
from jupyter_server.auth.authorizer import Authorizer

from jupyter_ds.handlers import ROUTES

CODE = "def mean(xs):\n    return "


def assert_success(code: int, env: dict[str, Any]) -> dict[str, Any]:
    assert code == 200, env
    assert env["status"] == "success"
    assert isinstance(env["timestamp"], int)
    return env["data"]


def assert_error(code: int, env: dict[str, Any], status: int, err: str, field: str | None = None):
    assert code == status, env
    assert env["status"] == "error", env
    assert env["error"]["code"] == err, env
    if field is not None:
        assert env["error"].get("field") == field, env
        assert field in env["error"]["message"], env
    assert "Traceback" not in json.dumps(env)


async def test_complete_answers_in_the_envelope(ds_ready):
    code, env, _ = await ds_ready.post("complete", {"prefix": CODE, "language": "python"})
    data = assert_success(code, env)
    assert set(data) >= {"output", "token_count", "confidence", "model", "latency_ms", "items"}
    assert data["token_count"] > 0  # the model really generated
    assert 0.0 <= data["confidence"] <= 1.0
    assert data["latency_ms"] > 0
    assert data["model"]
    for item in data["items"]:
        assert item["insertText"].strip()
        compile(CODE + item["insertText"], "<item>", "exec")  # every item parses in context
        assert item["low_confidence"] == (item["confidence"] < 0.7)
    assert data["output"] == (data["items"][0]["insertText"] if data["items"] else "")


async def test_complete_honours_max_tokens(ds_ready):
    code, env, _ = await ds_ready.post(
        "complete", {"prefix": "x = 1\n", "language": "text", "max_tokens": 3}
    )
    data = assert_success(code, env)
    assert 1 <= data["token_count"] <= 3


async def test_explain_answers_markdown(ds_ready):
    code, env, _ = await ds_ready.post("explain", {"code": "print(sum([1, 2, 3]))"})
    data = assert_success(code, env)
    assert data["format"] == "markdown"
    assert isinstance(data["output"], str)
    assert data["token_count"] > 0


async def test_explain_streams_ndjson_with_a_final_envelope(ds_ready):
    response = await ds_ready.fetch(
        "jupyter-ds", "v1", "explain", method="POST",
        body=json.dumps({"code": "x = [i * i for i in range(3)]", "stream": True,
                         "max_tokens": 12}),
    )
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.body.decode().splitlines() if line]
    assert len(lines) >= 2
    *chunks, final = lines
    assert all(c["type"] == "stream" and not c["done"] for c in chunks)
    texts = [c["text"] for c in chunks]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    assert final["status"] == "success" and final["data"]["done"] is True
    assert 1 <= final["data"]["token_count"] <= 12


async def test_multipart_file_part_fills_the_code_field(ds_ready):
    boundary = uuid.uuid4().hex
    payload = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"max_tokens\"\r\n\r\n4\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.py\"\r\n"
        f"Content-Type: text/x-python\r\n\r\n{CODE}\r\n--{boundary}--\r\n"
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    code, env, _ = await ds_ready.post("complete", raw=payload, headers=headers)
    data = assert_success(code, env)
    assert 1 <= data["token_count"] <= 4
    code, env, _ = await ds_ready.post("explain", raw=payload, headers=headers)
    assert_success(code, env)


async def test_models_and_health_report_state(ds_ready):
    code, env, _ = await ds_ready.get("models")
    data = assert_success(code, env)
    model = data["models"][0]
    assert model["state"] == "ready"
    assert model["template"] == "prefix-only"  # the tiny model has no FIM sentinels
    assert data["routes"]["completion"] == model["name"]
    code, env, _ = await ds_ready.get("health")
    health = assert_success(code, env)
    assert health["live"] and health["ready"] and health["model_state"] == "ready"


@pytest.mark.parametrize(
    "payload, status, err, field",
    [
        ({}, 400, "invalid_request", "prefix"),
        ({"prefix": 3}, 400, "invalid_request", "prefix"),
        ({"prefix": None}, 400, "invalid_request", "prefix"),
        ({"prefix": ["x"]}, 400, "invalid_request", "prefix"),
        ({"prefix": "x", "suffix": {"a": 1}}, 400, "invalid_request", "suffix"),
        ({"prefix": "x", "max_tokens": "10"}, 400, "invalid_request", "max_tokens"),
        ({"prefix": "x", "max_tokens": 0}, 400, "invalid_request", "max_tokens"),
        ({"prefix": "x", "max_tokens": 100000}, 400, "invalid_request", "max_tokens"),
        ({"prefix": "x", "max_tokens": 2.5}, 400, "invalid_request", "max_tokens"),
        ({"prefix": "x", "temperature": 9}, 400, "invalid_request", "temperature"),
        ({"prefix": "x", "temperature": "hot"}, 400, "invalid_request", "temperature"),
        ({"prefix": "x", "n": True}, 400, "invalid_request", "n"),
        ({"prefix": "x", "n": 50}, 400, "invalid_request", "n"),
        ({"prefix": "x\x00y"}, 400, "invalid_request", "prefix"),
        ({"prefix": "x" * 5000}, 413, "payload_too_large", "prefix"),
        ({"prefix": "x", "path": "p" * 3000}, 413, "payload_too_large", "path"),
    ],
    ids=lambda v: repr(v)[:40],
)
async def test_bad_completion_requests_name_the_field(ds_ready, payload, status, err, field):
    code, env, _ = await ds_ready.post("complete", payload)
    assert_error(code, env, status, err, field)


@pytest.fixture
def ds_config() -> dict[str, Any]:
    return {"max_input_chars": 4000, "max_body_bytes": 20_000}


@pytest.mark.parametrize(
    "raw, status, fragment",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        (b'"just a string"', 400, "JSON object"),
        (b'{"prefix": "\xff\xfe"}', 400, "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, 413, "over the limit"),
        (json.dumps({"prefix": "x", "junk": "y" * 30_000}).encode(), 413, "over the limit"),
    ],
    ids=["malformed", "empty", "array", "string", "invalid-utf8", "deep-nesting", "too-big"],
)
async def test_malformed_bodies_are_clear_errors(ds_ready, raw, status, fragment):
    code, env, _ = await ds_ready.post("complete", raw=raw)
    assert code == status, env
    assert env["status"] == "error" and fragment in env["error"]["message"]
    # ...and the server is still up and serving.
    code, env, _ = await ds_ready.post("complete", {"prefix": CODE, "max_tokens": 2})
    assert_success(code, env)


async def test_nested_json_within_the_size_limit_is_refused_cleanly(ds_ready):
    raw = b'{"prefix": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    code, env, _ = await ds_ready.post("complete", raw=raw)
    assert code == 400 and env["status"] == "error", env


async def test_explain_validation(ds_ready):
    code, env, _ = await ds_ready.post("explain", {"language": "python"})
    assert_error(code, env, 400, "invalid_request", "code")
    code, env, _ = await ds_ready.post("explain", {"code": "x", "stream": "yes"})
    assert_error(code, env, 400, "invalid_request", "stream")


# -- authentication and authorization ----------------------------------------------------


def _routes() -> list[tuple[str, str]]:
    out = []
    for path, cls in ROUTES:
        url = "adapters/some-adapter" if "(" in path else path  # a pattern: one name
        for method in ("get", "post", "put", "delete", "patch"):
            if method in vars(cls):
                out.append((url, method.upper()))
    return out


@pytest.mark.parametrize("path, method", _routes())
@pytest.mark.parametrize("token", ["", "token not-the-token"], ids=["no-token", "wrong-token"])
async def test_every_route_refuses_unauthenticated_requests(ds_client, path, method, token):
    headers = {"Authorization": token}
    if path.endswith("stream"):
        from tornado.httpclient import HTTPClientError

        with pytest.raises(HTTPClientError) as info:
            await ds_client.fetch("jupyter-ds", "v1", *path.split("/"), headers=headers,
                                  method="GET")
        assert info.value.code in (401, 403)
        return
    code, env, _ = await ds_client.call(method, path, {"prefix": "x", "code": "x"},
                                        headers=headers)
    assert_error(code, env, 401, "unauthorized")
    assert "Authorization: token" in env["error"]["message"]


def test_every_handler_method_has_auth_decorators():
    """Each HTTP verb of each handler is wrapped by @authorized and an authentication check."""
    import inspect

    for path, cls in ROUTES:
        for method in ("get", "post", "put", "delete", "patch"):
            fn = vars(cls).get(method)
            if fn is None:
                continue
            source = inspect.getsource(fn)
            assert "@authorized" in source, f"{cls.__name__}.{method} lacks @authorized"
            assert "@web.authenticated" in source or "@ws_authenticated" in source, (
                f"{cls.__name__}.{method} ({path}) lacks an authentication decorator"
            )
            assert cls.auth_resource.startswith("jupyter_ds:"), cls


class DenyJupyterDs(Authorizer):
    """Allows everything except the jupyter_ds resources (a user with no role there)."""

    def is_authorized(self, handler, user, action, resource) -> bool:
        return not resource.startswith("jupyter_ds:")


class TestAuthorization:
    @pytest.fixture
    def server_app_config(self):
        return {"authorizer_class": DenyJupyterDs}

    @pytest.fixture
    def ds_config(self):
        return {}

    @pytest.mark.parametrize("path, method", [r for r in _routes() if "stream" not in r[0]])
    async def test_authenticated_but_unauthorized_user_gets_403(self, ds_client, path, method):
        code, env, _ = await ds_client.call(method, path, {"prefix": "x", "code": "x"})
        assert_error(code, env, 403, "forbidden")
        assert "jupyter_ds:" in env["error"]["message"]

    async def test_websocket_refused(self, ds_client):
        from tornado.httpclient import HTTPClientError

        from jupyter_ds.handlers import API_PREFIX

        with pytest.raises(HTTPClientError) as info:
            await ds_client.fetch(*API_PREFIX.split("/"), "complete", "stream", method="GET")
        assert info.value.code == 403


# -- model state ----------------------------------------------------------------------


class TestLazyLoad:
    @pytest.fixture
    def ds_config(self):
        return {"load_on_start": False}

    async def test_503_with_retry_after_until_the_model_is_ready(self, ds_client):
        code, env, headers = await ds_client.post("complete", {"prefix": CODE})
        assert_error(code, env, 503, "model_not_ready")
        assert int(headers["Retry-After"]) > 0
        await ds_client.wait_ready()
        code, env, _ = await ds_client.post("complete", {"prefix": CODE, "max_tokens": 2})
        assert_success(code, env)


class TestFailedModel:
    @pytest.fixture
    def ds_config(self, tmp_path):
        return {"model_path": str(tmp_path / "no-such-model")}

    async def test_failed_load_is_reported_not_hidden(self, ds_client):
        import asyncio

        for _ in range(200):
            code, env, _ = await ds_client.get("health")
            if env["data"]["model_state"] == "failed":
                break
            await asyncio.sleep(0.05)
        assert env["data"]["ready"] is False
        assert "no-such-model" in env["data"]["error"]
        code, env, headers = await ds_client.post("complete", {"prefix": CODE})
        assert_error(code, env, 503, "model_failed")
        assert "no-such-model" in env["error"]["message"]
        assert "Retry-After" in headers
