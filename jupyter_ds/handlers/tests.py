"""``POST jupyter-ds/v1/tests``, ``tests/run`` and ``tests/insert``."""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import authorized
from tornado import web

from jupyter_ds.envelope import success
from jupyter_ds.handlers.base import DsApiHandler
from jupyter_ds.requests import TestsInsertRequest, TestsRequest, TestsRunRequest


class TestsHandler(DsApiHandler):
    """Generate verified tests; with ``stream`` the progress comes as NDJSON events."""

    __test__ = False
    auth_resource = "jupyter_ds:tests"
    endpoint = "tests"

    _work: asyncio.Future | None = None
    _client_gone = False

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        req = self.parse(TestsRequest)
        # A generation round runs for many seconds without writing anything: when the
        # client goes away meanwhile, on_connection_close cancels this work (and with it
        # the model's generation) instead of letting the round and its sandbox runs finish
        # for nobody.
        self._work = asyncio.ensure_future(self._serve(req))
        try:
            await self._work
        except asyncio.CancelledError:
            if not self._client_gone:
                raise

    async def _serve(self, req: TestsRequest) -> None:
        if not req.stream:
            self.ok(await self.ds.testgen.generate(req))
            return
        await self.stream_ndjson(
            self.ds.testgen.events(req),
            lambda e: success({k: v for k, v in e.items() if k != "type"})
            if e["type"] == "done"
            else e,
        )

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._client_gone = True
        if self._work is not None and not self._work.done():
            self._work.cancel()


class TestsRunHandler(DsApiHandler):
    """Run given tests against given source in the sandbox."""

    __test__ = False
    auth_resource = "jupyter_ds:tests"
    endpoint = "tests/run"

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        self.ok(await self.ds.testgen.run_tests(self.parse(TestsRunRequest)))


class TestsInsertHandler(DsApiHandler):
    """Write kept tests into the test file that matches a source file under the root."""

    __test__ = False
    auth_resource = "jupyter_ds:tests"
    endpoint = "tests/insert"

    @web.authenticated
    @authorized("write")
    async def post(self) -> None:
        self.ok(self.ds.testgen.insert(self.parse(TestsInsertRequest)))
