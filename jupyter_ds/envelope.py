"""The one JSON envelope every answer uses, whatever the transport (REST, NDJSON lines,
WebSocket error messages), so a client parses one shape: ``docs/openapi.yaml``
(``components/schemas``, ``Success`` and ``Error``)."""

from __future__ import annotations

import time
from typing import Any

from jupyter_ds.errors import ApiError


def success(data: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": data, "timestamp": int(time.time())}


def failure(error: ApiError) -> dict[str, Any]:
    return {"status": "error", "error": error.to_dict(), "timestamp": int(time.time())}
