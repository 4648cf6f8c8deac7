"""``GET jupyter-ds/v1/models`` and ``GET jupyter-ds/v1/health``.

Both read each engine's typed :class:`ds_engine.EngineInfo`: its fields (``state``,
``name``, ``error``) for decisions, ``to_dict()`` for the JSON shown. With
``JupyterDsApp.routes``, a task's engine is a pool of endpoints
(:class:`jupyter_ds.routing.pool.EnginePool`): its entry adds the route's name and each
endpoint's state, load and circuit breaker, so an operator sees which server is down.
"""

from __future__ import annotations

from typing import Any

from ds_engine import EngineState
from tornado import web

from jupyter_ds.handlers.base import DsApiHandler, authorized
from jupyter_ds.routing import TASKS, EnginePool


class ModelsHandler(DsApiHandler):
    """The models behind each task, with their load state and counters.

    ``models``: one entry per engine, the completion engine's first (its ``tasks``;
    a pool's ``route`` and ``endpoints``); ``routes``: task -> model name.
    """

    auth_resource = "jupyter_ds:admin"
    endpoint = "models"

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        engines = {task: self.ds.engine_for(task) for task in TASKS}
        models: list[dict[str, Any]] = []
        names: dict[int, str | None] = {}
        for engine in self.ds.distinct_engines():
            info = engine.info()
            names[id(engine)] = info.name
            entry = info.to_dict()
            entry["tasks"] = [t for t, e in engines.items() if e is engine]
            pool = getattr(engine, "wrapped", engine)  # under the metrics wrapper
            if isinstance(pool, EnginePool):
                entry["route"] = pool.name
                entry["endpoints"] = pool.endpoints()
            models.append(entry)
        self.ok({"models": models,
                 "routes": {task: names[id(e)] for task, e in engines.items()}})


class HealthHandler(DsApiHandler):
    """Liveness (the server answers) and readiness (the completion model can take
    requests: inline completion is what a user waits on); ``tasks`` gives every task's
    state, for routes whose other servers are down."""

    auth_resource = "jupyter_ds:status"
    endpoint = "health"

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        info = self.ds.engine.info()
        roles = self.ds.roles
        states = {id(e): e.state.value for e in self.ds.distinct_engines()}
        self.ok(
            {
                "live": True,
                "ready": info.state is EngineState.READY,
                "model_state": info.state.value,
                "model": info.name,
                "error": info.error,
                "tasks": {task: states[id(self.ds.engine_for(task))] for task in TASKS},
                "version": self.ds.version,
                # How generated tests are isolated; never a silent downgrade (issue 4).
                "sandbox": self.ds.testgen.sandbox.to_dict(),
                # The caller's identity as roles, limits and audit see it, e.g. the
                # ``token-...`` name of a token client, to put in ``roles``.
                "user": self.call.user_name,
                "roles": list(roles.roles_of(self.current_user)) if roles is not None else [],
            }
        )
