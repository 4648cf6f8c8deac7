"""Which engine serves: the ``engine_class`` setting, resolved and checked once.

An engine class is anything that implements :class:`ds_engine.interface.Engine` and has
a ``from_config(EngineConfig)`` classmethod: the in-process :class:`ds_engine.local.
LocalEngine` by default, a remote client, or a test's fake. The server and both CLIs
build their engine here, so adding an engine is adding its module and naming it.
"""

from __future__ import annotations

import importlib
from typing import Any

from ds_engine.interface import Engine, EngineConfig

DEFAULT_ENGINE_CLASS = "ds_engine.local.LocalEngine"

# What the routing tier calls on every engine (the Engine protocol's members).
REQUIRED = (
    "state", "template", "start_loading", "wait_ready", "count_tokens", "check_admission",
    "context_window", "generate", "stream", "cancel", "info", "template_for", "adapters",
    "load_adapter", "unload_adapter",
)


def engine_class(spec: str | type) -> type:
    """The class named by ``spec`` (a dotted path ``package.module.Class``, or a class).

    Raises ValueError naming the problem: a path that does not import, or a class that
    lacks ``from_config`` or a member of the Engine interface.
    """
    cls: Any = spec
    if isinstance(spec, str):
        module_name, _, name = spec.strip().rpartition(".")
        if not module_name or not name:
            raise ValueError(f"engine_class {spec!r} is not a dotted path 'package.module.Class'")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"engine_class {spec!r} cannot be imported: {exc}") from None
    if not isinstance(cls, type):
        raise ValueError(f"engine_class {spec!r} is not a class")
    missing = [m for m in ("from_config", *REQUIRED) if not hasattr(cls, m)]
    if missing:
        raise ValueError(
            f"engine_class {cls.__module__}.{cls.__qualname__} does not implement the "
            f"engine interface: missing {', '.join(missing)}"
        )
    return cls


def make_engine(spec: str | type, config: EngineConfig) -> Engine:
    """An engine of class ``spec`` built from ``config`` (not loaded yet)."""
    return engine_class(spec).from_config(config)
