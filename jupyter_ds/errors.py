"""API errors: one exception type that carries the status code, error code and field.

The REST handlers, the WebSocket and the CLI all turn an :class:`ApiError` into the same
error envelope (``jupyter_ds/pipeline.py`` maps every other exception to one), so a client
always sees one of the codes listed in ``docs/openapi.yaml`` and the field that was wrong.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error the client caused or must wait out; never carries a traceback."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def to_dict(self) -> dict:
        err: dict = {"code": self.code, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        if self.retry_after is not None:
            err["retry_after"] = self.retry_after
        return err


def bad_request(message: str, field: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, field=field)


def too_large(message: str, field: str | None = None) -> ApiError:
    return ApiError(413, "payload_too_large", message, field=field)


def not_ready(message: str, retry_after: int = 5) -> ApiError:
    return ApiError(503, "model_not_ready", message, retry_after=retry_after)


def overloaded(message: str, retry_after: int = 1, *, over_share: bool = False) -> ApiError:
    """A request shed under load: 503 (busy for everyone) or, for a user over their fair
    share of the queue, 429; both with ``Retry-After``, both code ``overloaded`` so that
    metrics and alerts can tell shedding from failures."""
    return ApiError(429 if over_share else 503, "overloaded", message, retry_after=retry_after)


def engine_error(exc: Exception) -> ApiError:
    """An engine's "not now" (``ds_engine.EngineNotReady``, or its ``EngineOverloaded``
    kind when the request was shed) as the API's error."""
    retry_after = int(getattr(exc, "retry_after", 5) or 1)
    if hasattr(exc, "over_share"):  # EngineOverloaded
        return overloaded(str(exc), retry_after, over_share=bool(exc.over_share))
    return not_ready(str(exc), retry_after=retry_after)


def backend_error(exc: Exception) -> ApiError:
    """A remote model server's failure (``ds_engine.BackendError``) as the API's 502: the
    message names the backend and the cause, never a credential."""
    return ApiError(502, "bad_gateway", str(exc))


def timed_out(message: str) -> ApiError:
    return ApiError(504, "timeout", message)


def adapter_error(exc: object) -> ApiError:
    """An engine's :class:`ds_engine.adapters.AdapterError` as the API's error: 404 for an
    unknown adapter, 409 for a conflict (a merged default), 422 for a folder that cannot
    be served (corrupt, incompatible, wrong base model)."""
    status = getattr(exc, "status", 422)
    message = getattr(exc, "message", str(exc))
    code = {404: "unknown_adapter", 409: "conflict"}.get(status, "invalid_adapter")
    return ApiError(status, code, message, field="adapter")
