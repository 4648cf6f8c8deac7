"""Task routing: which model servers answer each task, and the pool that spreads
requests over a route's replicas (affinity, failover, circuit breakers, health).

:mod:`jupyter_ds.routing.routes` reads ``JupyterDsApp.routes``;
:mod:`jupyter_ds.routing.pool` is the :class:`~ds_engine.interface.Engine` over a route's
endpoints that the services are given in place of a single engine.
"""

from jupyter_ds.routing.pool import EnginePool
from jupyter_ds.routing.routes import TASKS, RouteConfig, build_pool, parse_routes, route_of_task

__all__ = ["TASKS", "EnginePool", "RouteConfig", "build_pool", "parse_routes", "route_of_task"]
