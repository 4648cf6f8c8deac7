"""Integration tests: the project against third-party servers that ``make setup`` does
not install (llama-cpp-python's OpenAI-compatible server, built from source).

``make test-integration`` installs what they need, then runs
``pytest tests/integration -m integration``. Everywhere else they are skipped at once:
``make test`` collects ``tests/`` (``testpaths`` in ``pyproject.toml``), so without this
a machine where llama-cpp-python happens to be installed (``make bench`` installs it)
would start model servers in the normal suite. So a test here runs only when

* the run's ``-m`` expression names ``integration`` (it is asked for), and
* ``llama_cpp.server`` imports (only checked then: its import loads llama.cpp).

The marker is registered here because the project's markers live in ``pyproject.toml``,
which this folder leaves alone.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

HERE = Path(__file__).parent
MARKER = "integration"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}: needs a third-party model server (tests/integration; run with "
        f"`make test-integration`)",
    )


def _server_missing() -> str | None:
    """Why llama-cpp-python's server cannot run here, or None."""
    try:
        importlib.import_module("llama_cpp.server.app")
    except Exception as exc:  # not installed, or a build whose library does not load
        return f"llama_cpp.server does not import ({type(exc).__name__}: {exc})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in item.path.parents]
    if not mine:
        return
    if MARKER not in (config.option.markexpr or ""):
        reason = "integration test: run with `make test-integration`"
    else:
        reason = _server_missing()
        if reason is not None:
            reason += "; `make test-integration` builds it"
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in mine:
        item.add_marker(skip)
