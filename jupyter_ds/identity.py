"""A stable identity for every authenticated caller.

Jupyter's default identity provider knows no users: a request that brings the server's
token but no login cookie (curl, scripts, SDKs, editors) is given a *new random* user
each time (``IdentityProvider.generate_anonymous_user``), and so is every cookie-less
request when authentication is off. Per-user rate limits, concurrency caps, name-based
roles and the audit log would then see a stranger on every request, and a flood would
never be held back.

So, once Jupyter has authenticated a request, :func:`stable_user` names the caller after
what it proved rather than after the random draw:

* the token: ``token-<16 hex>``, a keyed hash (HMAC-SHA256 under the server's cookie
  secret, which Jupyter keeps across restarts) of the token, never the token itself. One
  token is one user for as long as it stays the same, whether or not the client keeps the
  cookies Jupyter hands out (a client cannot mint identities by collecting cookies either:
  an explicit token always wins, as it does in Jupyter);
* with authentication off, the remote address: ``anonymous-<16 hex>``, keyed the same way.

Users that come from a login cookie keep Jupyter's name, and identity providers that name
users themselves (JupyterHub's, which gives the hub user behind the token or cookie, or
any custom one that overrides ``get_user``) are left alone: their names are already
stable. ``GET jupyter-ds/v1/health`` tells each caller the name it has, to put in
``JupyterDsApp.roles``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the pipeline needs user_name without tornado
    from jupyter_server.auth.identity import User

TOKEN_PREFIX = "token-"
ANONYMOUS_PREFIX = "anonymous-"
_DIGITS = 16  # 64 bits: no two tokens of one server meet by chance


def user_name(user: Any) -> str | None:
    """The one stable name of a caller: ``User.username``, else ``User.name``, else a bare
    string user; None for no user (a request refused before authentication).

    Everything that tells callers apart uses it, so they all agree on who is who: role
    mappings (:mod:`jupyter_ds.roles`), rate limits and generation slots, the JSON logs'
    ``user``, audit records and sandbox caps (:mod:`jupyter_ds.pipeline`), the name
    ``GET health`` reports, and the author of a ``git/commit`` in a repository without
    ``user.name`` (:mod:`jupyter_ds.handlers.git`). ``display_name`` is never used: it is
    free text that many users may share.
    """
    if isinstance(user, str):
        return user or None
    for attr in ("username", "name"):
        value = getattr(user, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def keyed_name(prefix: str, secret: bytes, value: str) -> str:
    """``prefix`` + the first hex digits of HMAC-SHA256(``secret``, ``value``)."""
    digest = hmac.new(secret, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return prefix + digest.hexdigest()[:_DIGITS]


def draws_anonymous_users(idp: Any) -> bool:
    """Whether ``idp`` is Jupyter's own token/cookie provider, which draws random users."""
    from jupyter_server.auth.identity import IdentityProvider

    cls = type(idp)
    return (
        isinstance(idp, IdentityProvider)
        and cls.get_user is IdentityProvider.get_user
        and cls.get_user_token is IdentityProvider.get_user_token
    )


def _secret(handler: Any) -> bytes:
    secret = handler.settings.get("cookie_secret") or b""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    # Jupyter always has one; a handler without it still gets a consistent (weaker) key.
    return secret or b"jupyter-ds"


def stable_user(handler: Any) -> User | None:
    """The identity that stands for ``handler``'s authenticated caller, or None to keep
    the one Jupyter gave (see the module's docstring for when each applies)."""
    from jupyter_server.auth.identity import User

    idp = handler.settings.get("identity_provider")
    if idp is None or not draws_anonymous_users(idp) or not handler.current_user:
        return None
    if idp.token:  # authentication on: only an explicit token is renamed
        given = idp.get_token(handler)
        if not given or not hmac.compare_digest(str(given), str(idp.token)):
            return None  # a login cookie: Jupyter's name for that session stands
        name = keyed_name(TOKEN_PREFIX, _secret(handler), str(given))
        display = f"token client {name[len(TOKEN_PREFIX):][:8]}"
    elif idp.auth_enabled:
        return None  # a password login without a token: the cookie names the session
    else:
        address = str(handler.request.remote_ip or "")
        name = keyed_name(ANONYMOUS_PREFIX, _secret(handler), address)
        display = f"anonymous {name[len(ANONYMOUS_PREFIX):][:8]}"
    return User(username=name, name=name, display_name=display)


def settle_identity(handler: Any) -> None:
    """Replace ``handler``'s random anonymous user by its stable identity (if it has one).

    Called right after Jupyter authenticates, before roles, limits, logs or audit see the
    user.
    """
    user = stable_user(handler)
    if user is not None:
        handler.current_user = handler._jupyter_current_user = user
