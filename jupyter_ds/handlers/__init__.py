"""Tornado handlers of the jupyter-ds REST and WebSocket API."""

from __future__ import annotations

from jupyter_server.utils import url_path_join

from jupyter_ds.handlers.adapters import ADAPTER_ROUTES
from jupyter_ds.handlers.audit import AuditReportHandler
from jupyter_ds.handlers.complete import CompleteHandler
from jupyter_ds.handlers.explain import ExplainHandler
from jupyter_ds.handlers.git import GIT_ROUTES
from jupyter_ds.handlers.status import HealthHandler, ModelsHandler
from jupyter_ds.handlers.stream import CompletionStreamHandler
from jupyter_ds.handlers.telemetry import TelemetryHandler
from jupyter_ds.handlers.tests import TestsHandler, TestsInsertHandler, TestsRunHandler

API_PREFIX = "jupyter-ds/v1"

ROUTES = [
    ("complete", CompleteHandler),
    ("complete/stream", CompletionStreamHandler),
    ("telemetry", TelemetryHandler),
    ("explain", ExplainHandler),
    ("tests", TestsHandler),
    ("tests/run", TestsRunHandler),
    ("tests/insert", TestsInsertHandler),
    ("models", ModelsHandler),
    ("health", HealthHandler),
    ("audit/report", AuditReportHandler),
    *ADAPTER_ROUTES,
    *GIT_ROUTES,
]


def endpoint_of(path: str, cls: type) -> str:
    """A route's name (rate limits, metrics, audit): the handler's fixed ``endpoint``
    where the path holds a pattern (``adapters/<name>`` is ``adapters/name``)."""
    fixed = vars(cls).get("endpoint")
    return fixed if isinstance(fixed, str) and "(" in path else path


def handlers(base_url: str = "/") -> list[tuple[str, type]]:
    return [(url_path_join(base_url, API_PREFIX, path), cls) for path, cls in ROUTES]
