"""Roles (RBAC) over the ``jupyter_ds:*`` authorization resources, on Jupyter's authorizer.

Three roles, each a set of resources and the actions it may take on them
(:data:`ROLE_GRANTS`, the one table of who may do what):

============  =====================================================================
role          grants
============  =====================================================================
developer     ``jupyter_ds:completion``, ``jupyter_ds:explain``, ``jupyter_ds:tests``,
              ``jupyter_ds:git`` (read, write, execute); ``jupyter_ds:status`` (read)
admin         ``jupyter_ds:admin`` (read, write, execute: models, adapters, settings);
              ``jupyter_ds:audit`` (read: users' audit reports); ``jupyter_ds:status``
auditor       ``jupyter_ds:audit`` (read); ``jupyter_ds:status`` (read)
============  =====================================================================

A user's roles come from ``JupyterDsApp.roles`` (user name -> roles), plus
``JupyterDsApp.group_roles`` (group -> roles) for each group the identity provider gives
the user (``user.groups``, or under JupyterHub ``user.hub_user["groups"]``). A user that
neither gives any role gets ``default_roles``; when that is not set it is
``["developer", "admin"]`` if no mapping is configured at all (the single-user server of
today: its owner keeps full access) and ``[]`` as soon as one is (a user nobody named gets
nothing: 403 naming the role that would be needed).

How it composes with Jupyter's own authorization: the extension wraps the server's
configured authorizer (``ServerApp.authorizer_class``: ``AllowAllAuthorizer`` by default,
``JupyterHubAuthorizer`` under ``jupyterhub-singleuser``, or any custom one) in a
:class:`RoleAuthorizer`. For every resource outside ``jupyter_ds:`` the wrapped authorizer
alone decides, unchanged. For ``jupyter_ds:*`` both must agree: the wrapped authorizer
(JupyterHub's ``access:servers`` scopes, a custom policy) and then the user's roles. So
under JupyterHub nothing changes for the hub's scopes: a user the hub does not let into
the server is still refused before roles are looked at, and hub groups map to roles with
``group_roles`` (the hub puts ``groups`` in the user model when the server's OAuth token
may read them, i.e. has the ``read:users:groups`` scope; without it, map user names with
``roles``). Nothing needs configuring on the hub for roles to work by user name.

The extension installs the wrapper itself when it loads (``enforce_roles``, default on);
the same class can also be named as ``ServerApp.authorizer_class`` when it should exist
before the extension loads, in which case the extension only gives it the role policy and
it wraps nothing (everything outside ``jupyter_ds:`` is then allowed, as
``AllowAllAuthorizer`` does).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from traitlets import Instance

from jupyter_ds.identity import user_name

PREFIX = "jupyter_ds:"
ACTIONS = frozenset({"read", "write", "execute"})
READ = frozenset({"read"})

COMPLETION = "jupyter_ds:completion"
EXPLAIN = "jupyter_ds:explain"
TESTS = "jupyter_ds:tests"
GIT = "jupyter_ds:git"
ADMIN = "jupyter_ds:admin"
AUDIT = "jupyter_ds:audit"
STATUS = "jupyter_ds:status"
RESOURCES = (COMPLETION, EXPLAIN, TESTS, GIT, ADMIN, AUDIT, STATUS)

#: role -> resource -> actions it may take there. The one table of who may do what.
ROLE_GRANTS: dict[str, dict[str, frozenset[str]]] = {
    "developer": {
        COMPLETION: ACTIONS,
        EXPLAIN: ACTIONS,
        TESTS: ACTIONS,
        GIT: ACTIONS,
        STATUS: READ,
    },
    "admin": {ADMIN: ACTIONS, AUDIT: READ, STATUS: READ},
    "auditor": {AUDIT: READ, STATUS: READ},
}
ROLES = tuple(ROLE_GRANTS)
#: What a server without any role configuration gives every user it lets in.
OWNER_ROLES = ("developer", "admin")


def _role_list(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"{where}: expected a list of roles, got {value!r}")
    out = []
    for role in value:
        if role not in ROLE_GRANTS:
            raise ValueError(
                f"{where}: unknown role {role!r}; the roles are {', '.join(ROLES)}"
            )
        if role not in out:
            out.append(role)
    return tuple(out)


def parse_mapping(name: str, mapping: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Validate a ``roles`` / ``group_roles`` setting; ValueError naming the bad entry."""
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{name}: expected a dict of name -> list of roles")
    out = {}
    for key, roles in mapping.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{name}: {key!r} is not a user or group name")
        out[key] = _role_list(f"{name}[{key!r}]", roles)
    return out


def user_groups(user: Any) -> list[str]:
    """Groups the identity provider gives ``user``: ``user.groups``, or JupyterHub's."""
    groups = getattr(user, "groups", None)
    if groups is None:
        hub_user = getattr(user, "hub_user", None)
        if isinstance(hub_user, Mapping):
            groups = hub_user.get("groups")
    if isinstance(groups, str):
        return [groups]
    if isinstance(groups, Iterable):
        return [g for g in groups if isinstance(g, str)]
    return []


@dataclass(frozen=True)
class RolePolicy:
    """User and group role mappings, and what a user that neither names gets."""

    users: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default: tuple[str, ...] | None = None

    @classmethod
    def from_config(
        cls,
        roles: Mapping[str, Any] | None = None,
        group_roles: Mapping[str, Any] | None = None,
        default_roles: Iterable[str] | None = None,
    ) -> RolePolicy:
        """Validated: an unknown role or a malformed entry is a ValueError naming it."""
        users = parse_mapping("roles", roles or {})
        groups = parse_mapping("group_roles", group_roles or {})
        default = (
            None if default_roles is None else _role_list("default_roles", list(default_roles))
        )
        return cls(users, groups, default)

    @property
    def configured(self) -> bool:
        return bool(self.users or self.groups)

    @property
    def default_roles(self) -> tuple[str, ...]:
        if self.default is not None:
            return self.default
        return () if self.configured else OWNER_ROLES

    def roles_of(self, user: Any) -> tuple[str, ...]:
        roles: list[str] = []
        name = user_name(user)
        if name is not None:
            roles += self.users.get(name, ())
        for group in user_groups(user):
            roles += self.groups.get(group, ())
        if not roles:
            roles = list(self.default_roles)
        return tuple(dict.fromkeys(roles))

    @staticmethod
    def grants(roles: Iterable[str], action: str, resource: str) -> bool:
        return any(action in ROLE_GRANTS.get(r, {}).get(resource, ()) for r in roles)

    @staticmethod
    def roles_granting(action: str, resource: str) -> list[str]:
        return [r for r, grants in ROLE_GRANTS.items() if action in grants.get(resource, ())]

    def denial(self, user: Any, action: str, resource: str) -> str:
        """The 403 message: who, what, the roles that would allow it, and theirs."""
        needed = self.roles_granting(action, resource)
        have = self.roles_of(user)
        need = (
            f"it needs the role {' or '.join(repr(r) for r in needed)}"
            if needed
            else "no role grants it"
        )
        return (
            f"user {user_name(user) or '?'!r} may not {action} on {resource}: {need} "
            f"(their roles: {', '.join(have) if have else 'none'}); "
            "see JupyterDsApp.roles, group_roles and default_roles"
        )


class RoleAuthorizer(Authorizer):
    """Roles for ``jupyter_ds:*`` resources on top of the server's own authorizer.

    ``wrapped`` decides everything outside ``jupyter_ds:`` on its own and has a veto on
    ``jupyter_ds:*`` (see the module docstring). Returns a bool when ``wrapped`` does, an
    awaitable when it is asynchronous, as ``Authorizer.is_authorized`` may.
    """

    wrapped = Instance(Authorizer, allow_none=True, help="The authorizer roles are added to.")
    policy = Instance(RolePolicy, args=(), help="Who has which roles.")

    #: Set on the handler when roles refused it: the 403 message names the role needed.
    MESSAGE_ATTR = "_jupyter_ds_forbidden"

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> Any:
        base: Any = (
            True
            if self.wrapped is None
            else self.wrapped.is_authorized(handler, user, action, resource)
        )
        if not resource.startswith(PREFIX):
            return base
        if inspect.isawaitable(base):
            return self._after(base, handler, user, action, resource)
        return self._decide(bool(base), handler, user, action, resource)

    async def _after(self, base: Any, handler: Any, user: Any, action: str, resource: str):
        return self._decide(bool(await base), handler, user, action, resource)

    def _decide(self, base: bool, handler: Any, user: Any, action: str, resource: str) -> bool:
        if not base:
            return False
        if self.policy.grants(self.policy.roles_of(user), action, resource):
            return True
        message = self.policy.denial(user, action, resource)
        self.log.info("jupyter-ds: %s", message)
        if handler is not None:
            try:
                setattr(handler, self.MESSAGE_ATTR, message)
            except Exception:  # a handler that takes no attributes: keep the default text
                pass
        return False


def install(serverapp: Any, policy: RolePolicy, settings: dict[str, Any]) -> RoleAuthorizer:
    """Put a :class:`RoleAuthorizer` around the server's authorizer (once); returns it.

    ``settings`` is the web application's settings (or an extension's copy that is merged
    into them), where handlers find ``authorizer``.
    """
    current = settings.get("authorizer") or getattr(serverapp, "authorizer", None)
    if isinstance(current, RoleAuthorizer):
        current.policy = policy
        return current
    kwargs: dict[str, Any] = {"wrapped": current, "policy": policy}
    identity = getattr(current, "identity_provider", None) or getattr(
        serverapp, "identity_provider", None
    )
    if identity is not None:
        kwargs["identity_provider"] = identity
    authorizer = RoleAuthorizer(parent=serverapp, **kwargs)
    settings["authorizer"] = authorizer
    if serverapp is not None:
        serverapp.authorizer = authorizer
    return authorizer
