"""``GET jupyter-ds/v1/models`` and ``GET jupyter-ds/v1/health``."""

from __future__ import annotations

from ds_engine import EngineState
from tornado import web

from jupyter_ds.handlers.base import DsApiHandler, authorized
from jupyter_ds.roles import user_name


class ModelsHandler(DsApiHandler):
    """The models behind each task, with their load state and counters."""

    auth_resource = "jupyter_ds:admin"
    endpoint = "models"

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        info = self.ds.engine.info()
        self.ok({"models": [info], "routes": {"completion": info["name"], "explain": info["name"]}})


class HealthHandler(DsApiHandler):
    """Liveness (the server answers) and readiness (the model can take requests)."""

    auth_resource = "jupyter_ds:status"
    endpoint = "health"

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        info = self.ds.engine.info()
        ready = info["state"] == EngineState.READY.value
        self.ok(
            {
                "live": True,
                "ready": ready,
                "model_state": info["state"],
                "model": info["name"],
                "error": info.get("error"),
                "version": self.ds.version,
                # How generated tests are isolated; never a silent downgrade (issue 4).
                "sandbox": self.ds.testgen.sandbox.to_dict(),
                # The caller's identity as roles, limits and audit see it, e.g. the
                # ``token-...`` name of a token client, to put in ``roles``.
                "user": user_name(self.current_user),
                "roles": list(self.ds.roles.roles_of(self.current_user))
                if getattr(self.ds, "roles", None) is not None
                else [],
            }
        )
