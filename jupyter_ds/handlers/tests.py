"""``POST jupyter-ds/v1/tests``, ``tests/run`` and ``tests/insert``."""

from __future__ import annotations

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

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        # A round and its sandbox runs must not go on for a client that left.
        await self.cancel_on_disconnect(self._serve(self.parse(TestsRequest)))

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



class TestsRunHandler(DsApiHandler):
    """Run given tests against given source in the sandbox."""

    __test__ = False
    auth_resource = "jupyter_ds:tests"
    endpoint = "tests/run"

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        report = await self.cancel_on_disconnect(
            self.ds.testgen.run_tests(self.parse(TestsRunRequest))
        )
        if report is not None:
            self.ok(report)


class TestsInsertHandler(DsApiHandler):
    """Write kept tests into the test file that matches a source file under the root."""

    __test__ = False
    auth_resource = "jupyter_ds:tests"
    endpoint = "tests/insert"

    @web.authenticated
    @authorized("write")
    async def post(self) -> None:
        self.ok(self.ds.testgen.insert(self.parse(TestsInsertRequest)))
