"""Root pytest configuration: pytest-jupyter's server fixtures and its coroutine runner.

Registered here (top level) so that ``tests/`` and ``engine/tests/`` share one way of
running ``async def`` tests: pytest-jupyter's event loop, which the Jupyter server under
test also runs on.
"""

pytest_plugins = ["pytest_jupyter.jupyter_server"]
