"""Fixtures: a real Jupyter server (pytest-jupyter) with jupyter-ds on a tiny random model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from ds_engine.loader import default_cache_dir
from ds_engine.testing import make_tiny_model

# pytest-jupyter points HOME at a temporary folder for each test; the converted embedded
# model is cached under the real one, captured here before any fixture runs.
MODEL_CACHE_DIR = default_cache_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    return MODEL_CACHE_DIR


@pytest.fixture
def ds_config() -> dict[str, Any]:
    """Extra ``JupyterDsApp`` settings a test module may override."""
    return {}


@pytest.fixture
def server_app_config() -> dict[str, Any]:
    """Extra ``ServerApp`` settings a test class may override (authorizer, pings)."""
    return {}


@pytest.fixture
def jp_server_config(
    tiny_model_dir: Path, ds_config: dict[str, Any], server_app_config: dict[str, Any]
) -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ds": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
            **server_app_config,
        },
        "JupyterDsApp": {"model_path": str(tiny_model_dir), **ds_config},
    }


class DsClient:
    """Calls the jupyter-ds API of the test server; returns (status, envelope, headers)."""

    def __init__(self, jp_fetch: Any):
        self.fetch = jp_fetch

    async def call(
        self,
        method: str,
        path: str,
        payload: Any = None,
        *,
        raw: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], Any]:
        # Real-model answers on 2 busy cores can take a while; tests bound tokens instead.
        kwargs: dict[str, Any] = {"method": method, "raise_error": False, "request_timeout": 120}
        if method not in ("GET", "DELETE"):  # tornado refuses a body on those
            kwargs["body"] = raw if raw is not None else json.dumps(payload)
        response = await self.fetch("jupyter-ds", "v1", *path.split("/"), headers=headers, **kwargs)
        text = response.body.decode("utf-8") if response.body else ""
        try:
            envelope = json.loads(text)
        except ValueError:
            envelope = {"_raw": text}
        return response.code, envelope, response.headers

    async def post(self, path: str, payload: Any = None, **kw: Any):
        return await self.call("POST", path, payload, **kw)

    async def get(self, path: str, **kw: Any):
        return await self.call("GET", path, **kw)

    async def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Poll health until the model is ready (or fail with its state)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            code, env, _ = await self.get("health")
            assert code == 200, env
            data = env["data"]
            if data["ready"]:
                return data
            if data["model_state"] == "failed" or loop.time() > deadline:
                raise AssertionError(f"model did not become ready: {data}")
            await asyncio.sleep(0.05)


@pytest.fixture
def ds_client(jp_fetch: Any) -> DsClient:
    return DsClient(jp_fetch)


@pytest.fixture
def ds_ready(ds_client: DsClient, jp_asyncio_loop: asyncio.AbstractEventLoop) -> DsClient:
    """A started server whose model is loaded."""
    jp_asyncio_loop.run_until_complete(ds_client.wait_ready())
    return ds_client
