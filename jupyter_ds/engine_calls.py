"""How services reach the engine: readiness first, and engine failures as API errors.

Every service (completion, explain, testgen, git's commit messages, adapters) calls the
engine the same way: :func:`ensure_ready` before any work, so a model that is loading or
failed is a 503 with ``Retry-After`` at once, and the calls inside :func:`engine_errors`,
so a shed request (503/429), an engine that stopped, an unknown adapter (404/422) or a
failed remote model server (502) leave as the envelope's error and never as a 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ds_engine import BackendError, Engine, EngineNotReady, EngineState
from ds_engine.adapters import AdapterError

from jupyter_ds.errors import ApiError, adapter_error, backend_error, engine_error, not_ready


def ensure_ready(engine: Engine) -> None:
    """Raise 503 (``docs/openapi.yaml``) unless the engine can take requests now.

    An engine that was never started starts loading here: the first request of a server
    started with ``load_on_start=False`` is what loads the model.
    """
    state = engine.state
    if state is EngineState.READY:
        return
    if state is EngineState.UNLOADED:
        engine.start_loading()
        state = EngineState.LOADING
    if state is EngineState.FAILED:
        error = engine.info().error or "unknown error"
        raise ApiError(503, "model_failed", f"model failed to load: {error}", retry_after=60)
    raise not_ready("model is loading; retry shortly", retry_after=5)


@contextmanager
def engine_errors() -> Iterator[None]:
    """Turn the engine's refusals, raised inside the block, into API errors."""
    try:
        yield
    except EngineNotReady as exc:
        raise engine_error(exc) from None
    except AdapterError as exc:
        raise adapter_error(exc) from None
    except BackendError as exc:
        raise backend_error(exc) from None
