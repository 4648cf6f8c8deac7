"""``GET jupyter-ds/v1/models`` and ``GET jupyter-ds/v1/health``.

Both read the engine's typed :class:`ds_engine.EngineInfo`: its fields (``state``,
``name``, ``error``) for decisions, ``to_dict()`` for the JSON shown.
"""

from __future__ import annotations

from ds_engine import EngineState
from tornado import web

from jupyter_ds.handlers.base import DsApiHandler, authorized


class ModelsHandler(DsApiHandler):
    """The models behind each task, with their load state and counters."""

    auth_resource = "jupyter_ds:admin"
    endpoint = "models"

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        info = self.ds.engine.info()
        self.ok({"models": [info.to_dict()],
                 "routes": {"completion": info.name, "explain": info.name}})


class HealthHandler(DsApiHandler):
    """Liveness (the server answers) and readiness (the model can take requests)."""

    auth_resource = "jupyter_ds:status"
    endpoint = "health"

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        info = self.ds.engine.info()
        roles = self.ds.roles
        self.ok(
            {
                "live": True,
                "ready": info.state is EngineState.READY,
                "model_state": info.state.value,
                "model": info.name,
                "error": info.error,
                "version": self.ds.version,
                # How generated tests are isolated; never a silent downgrade (issue 4).
                "sandbox": self.ds.testgen.sandbox.to_dict(),
                # The caller's identity as roles, limits and audit see it, e.g. the
                # ``token-...`` name of a token client, to put in ``roles``.
                "user": self.call.user_name,
                "roles": list(roles.roles_of(self.current_user)) if roles is not None else [],
            }
        )
