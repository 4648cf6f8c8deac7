"""An identity provider for benchmarks that simulate several people on one server.

Jupyter's own provider knows one token, hence one user per token client (see
``jupyter_ds/identity.py``). A benchmark of "8 users" must be 8 identities to the rate
limits, fair shares and audit log, so the load benchmarks start their server with
``--ServerApp.identity_provider_class=bench_identity.NamedTokenUsers`` (this folder on
``PYTHONPATH``): ``Authorization: token <server token>:<name>`` is the user ``<name>``,
the token alone (health polls, warm-up) the user ``bench``.
Never for a real server: anyone with the token may claim any name.
"""

from __future__ import annotations

import hmac
from typing import Any

from jupyter_server.auth.identity import IdentityProvider, User


class NamedTokenUsers(IdentityProvider):
    """``token <server token>[:<name>]`` -> ``User(name or "bench")``; else not let in."""

    def get_user(self, handler: Any) -> User | None:
        match = self.auth_header_pat.match(handler.request.headers.get("Authorization", ""))
        if match is None or not self.token:
            return None
        token, _, name = match.group(2).partition(":")
        if not hmac.compare_digest(token.encode(), str(self.token).encode()):
            return None
        name = name or "bench"
        handler._token_authenticated = True  # an API client: no XSRF cookie
        return User(username=name, name=name, display_name=name)
