"""A stable identity for token clients, and the order authentication, role, rate limit.

On a real server with Jupyter's own identity provider, which draws a random user for every
cookie-less token request: rate limits, concurrency caps, name-based roles and the audit
log must all see one caller per token (issue 15, finding 1).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider

from jupyter_ds.identity import ANONYMOUS_PREFIX, TOKEN_PREFIX, draws_anonymous_users, keyed_name
from tests.test_audit_api import records
from tests.test_rbac import ROLE_CONFIG, TokenUsers, as_user, server_config

SECRET = b"jupyter-ds-test-cookie-secret-0123456789"
TOKEN = "a-token-of-this-test-server"


def token_server(tiny_model_dir: Any, ds: dict[str, Any]) -> dict[str, Any]:
    """Jupyter's default identity provider with a known token and cookie secret."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ds": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
            "cookie_secret": SECRET,
        },
        "IdentityProvider": {"token": TOKEN},
        "JupyterDsApp": {"model_path": str(tiny_model_dir), **ds},
    }


TOKEN_HEADER = {"Authorization": f"token {TOKEN}"}
TOKEN_USER = keyed_name(TOKEN_PREFIX, SECRET, TOKEN)


def test_keyed_names_are_stable_distinct_and_never_the_token():
    assert keyed_name(TOKEN_PREFIX, SECRET, TOKEN) == TOKEN_USER
    assert TOKEN_USER.startswith("token-") and len(TOKEN_USER) == len("token-") + 16
    assert TOKEN not in TOKEN_USER
    assert keyed_name(TOKEN_PREFIX, SECRET, TOKEN + "x") != TOKEN_USER
    assert keyed_name(TOKEN_PREFIX, b"another server", TOKEN) != TOKEN_USER


def test_only_jupyters_own_provider_is_renamed():
    assert draws_anonymous_users(IdentityProvider())
    assert draws_anonymous_users(PasswordIdentityProvider())
    # A provider that names users itself (JupyterHub's, a custom one) is left alone.
    assert not draws_anonymous_users(TokenUsers())
    assert not draws_anonymous_users(object())


class TestTokenClient:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir, tmp_path):
        return token_server(
            tiny_model_dir, {"rate_limits": {"*": "1/m"}, "load_on_start": False,
                             "audit_log_path": str(tmp_path / "audit.log")}
        )

    async def test_one_token_is_one_user_for_limits_health_and_audit(self, ds_client, tmp_path):
        codes = []
        for _ in range(10):
            code, env, headers = await ds_client.get("models", headers=TOKEN_HEADER)
            codes.append(code)
        # Before: a new random user per request, so all ten got 200.
        assert codes == [200] + [429] * 9
        assert env["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
        users = set()
        for _ in range(3):  # health is exempt from nothing here but answers who one is
            code, env, _ = await ds_client.get("health", headers=TOKEN_HEADER)
            if code == 200:
                users.add(env["data"]["user"])
        assert users <= {TOKEN_USER}
        # Before: the audit log showed another random user on every request.
        audited = {r["user"] for r in records(tmp_path / "audit.log")
                   if r.get("endpoint") == "models"}
        assert audited == {TOKEN_USER}

    async def test_cookies_handed_out_do_not_mint_new_identities(self, ds_client):
        code, env, headers = await ds_client.get("models", headers=TOKEN_HEADER)
        assert code == 200, env
        cookie = headers.get("Set-Cookie", "").split(";", 1)[0]
        assert cookie, "Jupyter hands a login cookie to the token client"
        # The same token with that cookie is still the same (limited) caller.
        code, env, _ = await ds_client.get("models", headers={**TOKEN_HEADER, "Cookie": cookie})
        assert code == 429, env


class TestRolesByTokenName:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir):
        return token_server(
            tiny_model_dir, {"roles": {TOKEN_USER: ["auditor"]}, "load_on_start": False}
        )

    async def test_roles_name_the_token_client(self, ds_client):
        code, env, _ = await ds_client.get("health", headers=TOKEN_HEADER)
        assert code == 200, env
        assert env["data"]["user"] == TOKEN_USER and env["data"]["roles"] == ["auditor"]
        code, env, _ = await ds_client.post("complete", {"prefix": "x"}, headers=TOKEN_HEADER)
        assert code == 403, env  # an auditor may not complete
        assert "developer" in env["error"]["message"]


class TestConcurrencyOfTokenClients:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir):
        return token_server(tiny_model_dir, {"max_concurrent_per_user": 1})

    async def test_the_cap_holds_across_sockets_of_one_token(self, ds_client, jp_ws_fetch):
        await ds_client.wait_ready()
        first = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream",
                                  headers=TOKEN_HEADER)
        second = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream",
                                   headers=TOKEN_HEADER)
        try:
            first.write_message(json.dumps({
                "number": 1, "prefix": "notes:\n", "language": "text", "stream": True,
                "max_tokens": 1000,
            }))
            reply = json.loads(await asyncio.wait_for(first.read_message(), 30))
            assert reply["type"] == "inline_completion", reply  # running: holds the slot
            second.write_message(json.dumps({"number": 1, "prefix": "y = ", "max_tokens": 2}))
            reply = json.loads(await asyncio.wait_for(second.read_message(), 30))
            # Before: the second socket was another random user and was served.
            assert reply["type"] == "error", reply
            assert reply["error"]["code"] == "rate_limited"
        finally:
            first.close()
            second.close()


class TestAuthenticationOff:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir):
        config = token_server(
            tiny_model_dir, {"rate_limits": {"*": "1/m"}, "load_on_start": False}
        )
        del config["IdentityProvider"]
        config["ServerApp"]["token"] = ""  # (IdentityProvider.token "" is overridden)
        config["ServerApp"]["allow_unauthenticated_access"] = True
        return config

    async def test_cookie_less_callers_are_one_user_per_address(self, ds_client):
        no_auth = {"Authorization": ""}
        code, env, _ = await ds_client.get("health", headers=no_auth)
        assert code == 200, env
        assert env["data"]["user"] == keyed_name(ANONYMOUS_PREFIX, SECRET, "127.0.0.1")
        codes = [(await ds_client.get("models", headers=no_auth))[0] for _ in range(3)]
        assert codes == [200, 429, 429]


class TestOrder:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir):
        return server_config(
            tiny_model_dir, {**ROLE_CONFIG, "rate_limits": {"*": "1/m"}}
        )

    async def test_a_caller_without_the_role_gets_403_never_429(self, ds_client):
        nobody = as_user("tok-none")
        codes = [(await ds_client.get("models", headers=nobody))[0] for _ in range(4)]
        # Before: the limiter ran first, so the second request was 429.
        assert codes == [403] * 4
        # ...and a refused caller spent no one's budget: the admin still gets in once.
        admin = as_user("tok-admin")
        codes = [(await ds_client.get("models", headers=admin))[0] for _ in range(2)]
        assert codes == [200, 429]
