"""Engine test fixtures: one tiny random Llama per session, and an engine serving it."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ds_engine.local import LocalEngine
from ds_engine.testing import make_tiny_model


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests on a fresh event loop (the engine needs no other plugin)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**args))
    return True


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own DEEPSEEK_MODEL_PATH / cache dir must not leak into tests."""
    monkeypatch.delenv("DEEPSEEK_MODEL_PATH", raising=False)
    monkeypatch.delenv("JUPYTER_DS_CACHE_DIR", raising=False)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("engine-tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_path: Path) -> Iterator[LocalEngine]:
    engine = LocalEngine(model_path=tiny_model_path, device="cpu", dtype="float32")
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def serial_engine(tiny_model_path: Path) -> Iterator[LocalEngine]:
    """The same model, one request at a time (``max_batch_size=1``)."""
    engine = LocalEngine(
        model_path=tiny_model_path, device="cpu", dtype="float32", max_batch_size=1
    )
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_loaded(tiny_engine: LocalEngine):
    return tiny_engine.loaded


async def _wait_idle(engine: LocalEngine, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while True:
        counters = engine.info().counters
        if counters.active_requests == 0 and counters.queued_requests == 0:
            return
        if time.monotonic() > end:
            raise AssertionError(f"engine still busy: {counters}")
        await asyncio.sleep(0.01)


@pytest.fixture
def wait_idle():
    """``await wait_idle(engine)``: until nothing is queued or running (engines are shared)."""
    return _wait_idle
