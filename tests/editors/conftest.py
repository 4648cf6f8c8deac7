"""Editor-test fixtures: a real Jupyter server with jupyter-ds that an editor's language
server, a separate process, reaches over HTTP.

The server is pytest-jupyter's (``jp_serverapp``): it listens on a real port of 127.0.0.1
and runs on the test's event loop, which keeps serving while a test awaits the editor.
Its base URL is a JupyterHub-like ``/user/alice/`` so the language server is seen to keep
it. The model is ``ds_engine.testing.ScriptedEngine`` with one answer: the real pipeline
runs (auth, post-processing, validation, metrics, audit), and the suggestion is the same
for every request, so what the editor shows can be compared with the REST API's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# What the scripted model writes at the cursor of the test file.
ANSWER = "sum(values) / len(values)"


@pytest.fixture
def ds_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "engine_class": "ds_engine.testing.ScriptedEngine",
        "engine_options": {"answers": [ANSWER]},
        "audit_log_path": str(tmp_path / "audit.log"),
    }


@pytest.fixture
def jp_base_url() -> str:
    return "/user/alice/"


@dataclass
class DsServer:
    url: str  # base URL, ends with "/"
    token: str
    client: Any  # tests/conftest.py's DsClient

    async def complete(self, prefix: str, suffix: str) -> str:
        """The suggestion the REST API gives for this cursor."""
        code, env, _ = await self.client.post(
            "complete", {"prefix": prefix, "suffix": suffix, "language": "python"}
        )
        assert code == 200, env
        return env["data"]["output"]


@pytest.fixture
def ds_server(ds_ready: Any, jp_serverapp: Any, jp_http_port: int, jp_base_url: str) -> DsServer:
    return DsServer(
        url=f"http://127.0.0.1:{jp_http_port}{jp_base_url}",
        token=jp_serverapp.identity_provider.token,
        client=ds_ready,
    )
