"""Routes per task: which model servers answer completion, explanations, tests and
commit messages (``JupyterDsApp.routes``).

A small FIM model on many cheap replicas serves inline completion, where latency is
everything; a larger chat model serves explanations, tests and commit messages. Each
route names its engine class (``ds_engine.remote.RemoteEngine`` by default), its
endpoints (one engine per URL, pooled by :class:`jupyter_ds.routing.pool.EnginePool`)
and the options every endpoint's engine gets::

    c.JupyterDsApp.routes = {
        "completion": {
            "endpoints": ["http://fim-0:8000/v1", "http://fim-1:8000/v1"],
            "options": {"model": "qwen-coder-1.5b", "fim": "qwen2.5-coder",
                        "api_key_env": "DS_ENGINE_API_KEY"},
        },
        "chat": {"endpoints": ["http://chat-0:8000/v1"], "options": {...}},
    }

Tasks are ``completion``, ``explain``, ``tests`` and ``commit_message``; ``chat`` names
the three chat-template tasks at once, and a task's own route wins over it. A task with
no route is served by the engine of ``engine_class``, as when there are no routes.

Everything is checked when the setting is read (:func:`parse_routes`, called by the
application's ``@validate``), so a mistake stops the start with a message naming it:
``JupyterDsApp.routes['completion'].endpoints[1]: ...``. Building the engines
(:func:`build_pool`) connects to nothing: an endpoint that does not answer is a replica
that is not ready, never a server that does not start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ds_engine import Engine, EngineConfig
from ds_engine.factory import engine_class, make_engine

from jupyter_ds.routing.pool import (
    AFFINITY_SLACK,
    COOLDOWN_S,
    FAILURE_THRESHOLD,
    HEALTH_INTERVAL_S,
    MAX_ATTEMPTS,
    MAX_COOLDOWN_S,
    STALL_GRACE_S,
    EnginePool,
)

#: The tasks a route may serve, in the order ``GET models`` lists them.
TASKS = ("completion", "explain", "tests", "commit_message")
#: Route names that stand for several tasks; a task's own route wins over them.
ALIASES = {"chat": ("explain", "tests", "commit_message")}
DEFAULT_ROUTE_ENGINE = "ds_engine.remote.RemoteEngine"

# Pool settings a route may set: name -> (default, kind, least value).
POOL_SETTINGS: dict[str, tuple[float, type, float]] = {
    "affinity_slack": (AFFINITY_SLACK, int, 0),
    "failure_threshold": (FAILURE_THRESHOLD, int, 1),
    "cooldown_s": (COOLDOWN_S, float, 0),
    "max_cooldown_s": (MAX_COOLDOWN_S, float, 0),
    "max_attempts": (MAX_ATTEMPTS, int, 1),
    "health_interval_s": (HEALTH_INTERVAL_S, float, 0),
    "stall_grace_s": (STALL_GRACE_S, float, 0),
}
ROUTE_KEYS = ("engine_class", "endpoints", "options", *POOL_SETTINGS)


@dataclass(frozen=True)
class RouteConfig:
    """One route, checked: its engine class, endpoint URLs, options and pool settings."""

    name: str
    engine_class: str
    endpoints: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict)


def _check_url(where: str, url: Any) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"{where}: an endpoint must be a URL string, got {url!r}")
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(
            c.isspace() for c in url):
        raise ValueError(f"{where}: {url!r} is not an http(s) URL such as "
                         f"'http://fim-0:8000/v1'")
    if parts.username or parts.password:
        # The URL is shown in GET models, logs and 502 messages: no secret may be in it.
        raise ValueError(f"{where}: {url!r} carries credentials; name the key's "
                         f"environment variable in options (api_key_env) instead")
    try:
        parts.port  # noqa: B018 - a bad port raises here
    except ValueError:
        raise ValueError(f"{where}: {url!r} has an invalid port") from None
    return url


def _check_route(name: str, spec: Any) -> RouteConfig:
    where = f"routes[{name!r}]"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a dict with 'endpoints' (and 'engine_class', "
                         f"'options'), got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(ROUTE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(ROUTE_KEYS)}")
    cls = spec.get("engine_class", DEFAULT_ROUTE_ENGINE)
    if not isinstance(cls, str):
        raise ValueError(f"{where}.engine_class must be a dotted path string")
    try:
        engine_class(cls)
    except ValueError as exc:
        raise ValueError(f"{where}.{exc}") from None
    endpoints = spec.get("endpoints")
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not isinstance(endpoints, list | tuple) or not endpoints:
        raise ValueError(f"{where}.endpoints must be a non-empty list of URLs, "
                         f"got {endpoints!r}")
    urls = tuple(_check_url(f"{where}.endpoints[{i}]", u) for i, u in enumerate(endpoints))
    if len(set(urls)) != len(urls):
        raise ValueError(f"{where}.endpoints lists an endpoint twice: {list(urls)}")
    options = spec.get("options", {})
    if not isinstance(options, Mapping):
        raise ValueError(f"{where}.options must be a dict, got {type(options).__name__}")
    if "url" in options:
        raise ValueError(f"{where}.options: 'url' comes from each endpoint; list the URLs "
                         f"in endpoints")
    pool: dict[str, Any] = {}
    for key, (_, kind, least) in POOL_SETTINGS.items():
        if key not in spec:
            continue
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                kind is int and not isinstance(value, int)) or value < least:
            raise ValueError(f"{where}.{key} must be a{'n integer' if kind is int else ' number'}"
                             f" of at least {least:g}, got {value!r}")
        pool[key] = kind(value)
    cooldown = pool.get("cooldown_s", COOLDOWN_S)
    if pool.get("max_cooldown_s", max(cooldown, MAX_COOLDOWN_S)) < cooldown:
        raise ValueError(f"{where}.max_cooldown_s must be at least cooldown_s ({cooldown:g})")
    return RouteConfig(name, cls, urls, dict(options), pool)


def parse_routes(value: Mapping[str, Any] | None) -> dict[str, RouteConfig]:
    """The ``routes`` setting, checked; raises ValueError naming the entry at fault
    (``routes['explain'].endpoints[0]: ...``; the application adds ``JupyterDsApp.``)."""
    routes: dict[str, RouteConfig] = {}
    for name, spec in (value or {}).items():
        if name not in TASKS and name not in ALIASES:
            raise ValueError(f"routes[{name!r}]: unknown task; routes are "
                             f"{', '.join(TASKS)} or {', '.join(ALIASES)} (for "
                             f"{', '.join(ALIASES['chat'])})")
        routes[name] = _check_route(name, spec)
    return routes


def route_of_task(routes: Mapping[str, RouteConfig]) -> dict[str, str]:
    """task -> the name of the route that serves it (a task's own route, else its alias);
    tasks that no route serves are left out."""
    out: dict[str, str] = {}
    for alias, tasks in ALIASES.items():
        if alias in routes:
            out.update(dict.fromkeys(tasks, alias))
    out.update({task: task for task in TASKS if task in routes})
    return {task: out[task] for task in TASKS if task in out}


def build_pool(route: RouteConfig,
               make: Callable[[str, EngineConfig], Engine] = make_engine) -> EnginePool:
    """The route's pool: one engine per endpoint, built (not started) with
    ``EngineConfig(options={**options, "url": endpoint})``. An engine class that refuses
    its options raises ValueError naming the route and endpoint."""
    replicas = []
    for url in route.endpoints:
        try:
            engine = make(route.engine_class, EngineConfig(options={**route.options,
                                                                    "url": url}))
        except Exception as exc:
            raise ValueError(f"routes[{route.name!r}]: the engine for {url} could not be "
                             f"built: {type(exc).__name__}: {exc}") from exc
        replicas.append((url, engine))
    return EnginePool(replicas, name=route.name, **route.pool)
