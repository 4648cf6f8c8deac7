"""Roles (RBAC): the role matrix (every endpoint x every role) on a real server, role
configuration, and how the role authorizer composes with the server's own authorizer."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from jupyter_server.auth.authorizer import AllowAllAuthorizer, Authorizer
from jupyter_server.auth.identity import IdentityProvider, User
from prometheus_client import REGISTRY
from tornado.httpclient import HTTPClientError
from traitlets import TraitError

from jupyter_ds.app import JupyterDsApp
from jupyter_ds.handlers import ROUTES, endpoint_of
from jupyter_ds.roles import ROLE_GRANTS, RoleAuthorizer, RolePolicy, user_groups

# -- a server that serves several users -------------------------------------------------


@dataclass
class GroupUser(User):
    """A user with groups, as an identity provider (JupyterHub, LDAP...) may give them."""

    groups: list[str] = field(default_factory=list)


USERS = {  # token -> (user name, groups)
    "tok-admin": ("alice", []),
    "tok-developer": ("dave", []),
    "tok-auditor": ("audrey", []),
    "tok-none": ("nobody", []),
    "tok-group": ("gina", ["data-science"]),
}
ROLE_CONFIG = {
    "roles": {"alice": ["admin"], "dave": ["developer"], "audrey": ["auditor"]},
    "group_roles": {"data-science": ["developer"]},
}
TOKEN_OF = {"admin": "tok-admin", "developer": "tok-developer", "auditor": "tok-auditor",
            "none": "tok-none"}


class TokenUsers(IdentityProvider):
    """Maps ``Authorization: token <t>`` to one of :data:`USERS` (no cookies, no login)."""

    def get_user(self, handler):
        header = handler.request.headers.get("Authorization", "")
        token = header.split(" ", 1)[1] if " " in header else ""
        if token not in USERS:
            return None
        handler._token_authenticated = True  # token requests need no XSRF cookie
        name, groups = USERS[token]
        return GroupUser(username=name, groups=list(groups))


def as_user(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def server_config(tiny_model_dir, ds: dict[str, Any], **serverapp: Any) -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ds": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
            "identity_provider_class": TokenUsers,
            **serverapp,
        },
        # No model work is needed: allowed requests stop at validation (400) or answer
        # status; load_on_start off keeps the server start cheap.
        "JupyterDsApp": {"model_path": str(tiny_model_dir), "load_on_start": False, **ds},
    }


# -- the role matrix ----------------------------------------------------------------------

# The expected resource of each endpoint, written out rather than read from the handlers.
RESOURCE_OF = {
    "complete": "jupyter_ds:completion",
    "complete/stream": "jupyter_ds:completion",
    "telemetry": "jupyter_ds:completion",
    "explain": "jupyter_ds:explain",
    "tests": "jupyter_ds:tests",
    "tests/run": "jupyter_ds:tests",
    "tests/insert": "jupyter_ds:tests",
    "models": "jupyter_ds:admin",
    "health": "jupyter_ds:status",
    "audit/report": "jupyter_ds:audit",
    "adapters": "jupyter_ds:completion",
    "adapters/name": "jupyter_ds:admin",
    "finetune": "jupyter_ds:admin",
}
# Who may use each resource (with every action its routes use), written out too.
ALLOWED = {
    "jupyter_ds:completion": {"developer"},
    "jupyter_ds:explain": {"developer"},
    "jupyter_ds:tests": {"developer"},
    "jupyter_ds:git": {"developer"},
    "jupyter_ds:admin": {"admin"},
    "jupyter_ds:audit": {"admin", "auditor"},
    "jupyter_ds:status": {"admin", "developer", "auditor"},
}


def resource_of(path: str) -> str:
    return "jupyter_ds:git" if path.startswith("git/") else RESOURCE_OF[path]


def http_routes() -> list[tuple[str, str]]:
    """(endpoint name, method); a route with a pattern is named by its handler."""
    return [
        (endpoint_of(path, cls), method.upper())
        for path, cls in ROUTES
        if not path.endswith("stream")
        for method in ("get", "post", "put", "delete", "patch")
        if method in vars(cls)
    ]


def url_of(endpoint: str) -> str:
    """A concrete URL path for an endpoint name (``adapters/name`` -> an adapter name)."""
    return "adapters/some-adapter" if endpoint == "adapters/name" else endpoint


def requests_total(endpoint: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name != "jupyter_ds_requests":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("endpoint") == endpoint:
                total += sample.value
    return total


def test_the_matrix_covers_every_route_and_the_code_table_agrees():
    for path, cls in ROUTES:
        assert cls.auth_resource == resource_of(endpoint_of(path, cls)), path
    for resource, roles in ALLOWED.items():
        granted = {r for r, grants in ROLE_GRANTS.items() if resource in grants}
        assert granted == roles, resource
    assert set(ROLE_GRANTS) == {"admin", "developer", "auditor"}


class TestRoleMatrix:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir):
        return server_config(tiny_model_dir, ROLE_CONFIG)

    @pytest.mark.parametrize("role", ["admin", "developer", "auditor", "none"])
    async def test_every_endpoint_for_every_role(self, ds_client, jp_ws_fetch, role):
        headers = as_user(TOKEN_OF[role])
        wrong = []
        for path, method in http_routes():
            allowed = role in ALLOWED[resource_of(path)]
            before = requests_total(path)
            code, env, _ = await ds_client.call(method, url_of(path), {}, headers=headers)
            got = "allowed" if code != 403 else "denied"
            if code in (401, 500) or got != ("allowed" if allowed else "denied"):
                wrong.append((path, method, code, env.get("error")))
                continue
            if not allowed:
                assert env["error"]["code"] == "forbidden", env
                message = env["error"]["message"]
                needed = sorted(ALLOWED[resource_of(path)])
                assert any(repr(r) in message for r in needed), message
                assert resource_of(path) in message, message
            # Every handler names its route: the metrics count it under that name.
            assert requests_total(path) == before + 1, path
        assert not wrong, "\n".join(map(str, wrong))

        # The WebSocket: connecting is the authorization.
        if role in ALLOWED["jupyter_ds:completion"]:
            conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream", headers=headers)
            conn.write_message(json.dumps({"number": 1, "prefix": 3}))
            reply = json.loads(await asyncio.wait_for(conn.read_message(), 30))
            assert reply["error"]["code"] == "invalid_request"  # in, and validated
            conn.close()
        else:
            with pytest.raises(HTTPClientError) as info:
                await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream", headers=headers)
            assert info.value.code == 403

    async def test_groups_from_the_identity_provider_give_roles(self, ds_client):
        code, env, _ = await ds_client.post("complete", {}, headers=as_user("tok-group"))
        assert code == 400 and env["error"]["field"] == "prefix"  # allowed: validation
        code, env, _ = await ds_client.get("models", headers=as_user("tok-group"))
        assert code == 403 and "'admin'" in env["error"]["message"]

    async def test_unknown_token_is_401_not_403(self, ds_client):
        code, env, _ = await ds_client.get("health", headers=as_user("tok-stranger"))
        assert code == 401 and env["error"]["code"] == "unauthorized"

    async def test_jupyter_resources_are_left_to_the_server_authorizer(self, jp_fetch):
        # "nobody" has no role: jupyter_ds is closed to them, Jupyter's own API is not.
        response = await jp_fetch("api", "contents", headers=as_user("tok-none"))
        assert response.code == 200

    async def test_api_me_reports_role_permissions(self, jp_fetch):
        """JupyterLab asks /api/me which actions a user may take: roles show there."""
        asked = {"jupyter_ds:completion": ["execute"], "jupyter_ds:audit": ["read"],
                 "contents": ["read"]}
        answers = {}
        for role in ("developer", "auditor", "none"):
            response = await jp_fetch("api", "me", headers=as_user(TOKEN_OF[role]),
                                      params={"permissions": json.dumps(asked)})
            permissions = json.loads(response.body)["permissions"]
            answers[role] = {k: permissions[k] for k in asked}
        assert answers["developer"] == {"jupyter_ds:completion": ["execute"],
                                        "jupyter_ds:audit": [], "contents": ["read"]}
        assert answers["auditor"] == {"jupyter_ds:completion": [],
                                      "jupyter_ds:audit": ["read"], "contents": ["read"]}
        assert answers["none"] == {"jupyter_ds:completion": [], "jupyter_ds:audit": [],
                                   "contents": ["read"]}


class TestDefaultRoles:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir):
        return server_config(tiny_model_dir, {**ROLE_CONFIG, "default_roles": ["auditor"]})

    async def test_an_unnamed_user_gets_the_default_roles(self, ds_client):
        headers = as_user("tok-none")  # "nobody" is in no mapping
        code, _, _ = await ds_client.get("audit/report", headers=headers)
        assert code != 403
        code, env, _ = await ds_client.post("complete", {}, headers=headers)
        assert code == 403 and "'developer'" in env["error"]["message"]
        assert "auditor" in env["error"]["message"]  # their roles are named too


class TestNoRoleConfiguration:
    """No roles configured: the server's owner keeps full access, as before roles."""

    @pytest.fixture
    def ds_config(self):
        return {"load_on_start": False}

    async def test_the_token_owner_can_use_every_endpoint(self, ds_client):
        for path, method in http_routes():
            code, env, _ = await ds_client.call(method, url_of(path), {})
            assert code not in (401, 403), (path, env)

    async def test_the_server_authorizer_is_wrapped_once(self, jp_serverapp):
        authorizer = jp_serverapp.web_app.settings["authorizer"]
        assert isinstance(authorizer, RoleAuthorizer)
        assert isinstance(authorizer.wrapped, AllowAllAuthorizer)
        assert jp_serverapp.authorizer is authorizer


class DenyWrites(Authorizer):
    """A custom server policy: nobody writes anything (stands in for hub scopes)."""

    def is_authorized(self, handler, user, action, resource):
        return action != "write"


class TestComposition:
    @pytest.fixture
    def jp_server_config(self, tiny_model_dir):
        return server_config(tiny_model_dir, ROLE_CONFIG, authorizer_class=DenyWrites)

    async def test_the_wrapped_authorizer_keeps_its_veto(self, ds_client):
        dev = as_user("tok-developer")
        code, env, _ = await ds_client.post("complete", {}, headers=dev)  # execute: both yes
        assert code == 400, env
        code, env, _ = await ds_client.post("tests/insert", {}, headers=dev)  # write: vetoed
        assert code == 403 and env["error"]["code"] == "forbidden", env

    async def test_non_jupyter_ds_resources_are_the_wrapped_authorizers_alone(self, jp_fetch):
        with pytest.raises(HTTPClientError) as info:  # write on contents: the custom policy
            await jp_fetch("api", "contents", "x.txt", method="PUT",
                           body=json.dumps({"type": "file", "format": "text", "content": "x"}),
                           headers=as_user("tok-developer"))
        assert info.value.code == 403
        response = await jp_fetch("api", "contents", headers=as_user("tok-none"))
        assert response.code == 200  # read: allowed, roles play no part


# -- units ------------------------------------------------------------------------------


class HubLikeAuthorizer(Authorizer):
    """Mimics ``jupyterhub.singleuser``'s authorizer: access comes from the hub's scopes."""

    def is_authorized(self, handler, user, action, resource):
        return "access:servers!server=owner/" in user.hub_user.get("scopes", [])


class AsyncAuthorizer(Authorizer):
    async def is_authorized(self, handler, user, action, resource):
        await asyncio.sleep(0)
        return resource != "jupyter_ds:git"


class HubUser(User):
    def __init__(self, hub_user: dict[str, Any]):
        self.hub_user = hub_user
        super().__init__(username=hub_user["name"])


def test_under_jupyterhub_scopes_still_decide_and_hub_groups_give_roles():
    policy = RolePolicy.from_config(group_roles={"ds": ["developer"]})
    authz = RoleAuthorizer(wrapped=HubLikeAuthorizer(), policy=policy)
    member = HubUser({"name": "ann", "groups": ["ds"],
                      "scopes": ["access:servers!server=owner/"]})
    outsider = HubUser({"name": "bob", "groups": ["ds"], "scopes": []})
    other = HubUser({"name": "cy", "groups": ["other"],
                     "scopes": ["access:servers!server=owner/"]})
    assert user_groups(member) == ["ds"]
    assert authz.is_authorized(None, member, "execute", "jupyter_ds:completion") is True
    assert authz.is_authorized(None, outsider, "execute", "jupyter_ds:completion") is False
    assert authz.is_authorized(None, other, "execute", "jupyter_ds:completion") is False
    # Jupyter's own resources: the hub authorizer alone, roles play no part.
    assert authz.is_authorized(None, other, "write", "contents") is True
    assert authz.is_authorized(None, outsider, "read", "contents") is False


async def test_an_asynchronous_wrapped_authorizer_is_awaited():
    authz = RoleAuthorizer(wrapped=AsyncAuthorizer(), policy=RolePolicy())
    owner = User(username="me")
    assert await authz.is_authorized(None, owner, "execute", "jupyter_ds:completion") is True
    assert await authz.is_authorized(None, owner, "read", "jupyter_ds:git") is False
    assert await authz.is_authorized(None, owner, "read", "kernels") is True


def test_policy_defaults_and_denial_message():
    assert RolePolicy().roles_of(User(username="owner")) == ("developer", "admin")
    configured = RolePolicy.from_config(roles={"a": ["auditor"]})
    assert configured.roles_of(User(username="b")) == ()
    assert configured.roles_of(User(username="a")) == ("auditor",)
    explicit = RolePolicy.from_config(roles={"a": ["auditor"]}, default_roles=["developer"])
    assert explicit.roles_of(User(username="b")) == ("developer",)
    closed = RolePolicy.from_config(default_roles=[])
    assert closed.roles_of(User(username="owner")) == ()
    message = configured.denial(User(username="b"), "execute", "jupyter_ds:completion")
    assert "'developer'" in message and "none" in message and "'b'" in message
    message = configured.denial(User(username="a"), "read", "jupyter_ds:audit")
    assert "'admin' or 'auditor'" in message


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"roles": {"alice": ["root"]}}, "unknown role 'root'"),
        ({"group_roles": {"g": ["developer", "boss"]}}, "unknown role 'boss'"),
        ({"default_roles": ["superuser"]}, "unknown role 'superuser'"),
    ],
)
def test_bad_role_configuration_is_a_clear_error(config, fragment):
    with pytest.raises(TraitError) as info:
        JupyterDsApp(**config)
    assert fragment in str(info.value) and "developer, admin, auditor" in str(info.value)
