"""``POST jupyter-ds/v1/tests``, ``tests/run`` and ``tests/insert``."""

from __future__ import annotations

from tornado import web

from jupyter_ds.envelope import success
from jupyter_ds.handlers.base import DsApiHandler, authorized
from jupyter_ds.testgen.requests import TestsInsertRequest, TestsRequest, TestsRunRequest


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
        # The caller's name: the sandbox caps calls per user (429 above it).
        user = self.call.user_name
        if not req.stream:
            self.ok(await self.ds.testgen.generate(req, user))
            return
        await self.stream_ndjson(
            self.ds.testgen.events(req, user),
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
        # A client that leaves cancels the call, and the cancel kills its sandbox run;
        # the sandbox caps calls per user and runs overall (429 / 503 above them).
        report = await self.cancel_on_disconnect(
            self.ds.testgen.run_tests(
                self.parse(TestsRunRequest), self.call.user_name
            )
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
        req = self.parse(TestsInsertRequest)
        # Jupyter's own hidden-file rule (ContentsManager.allow_hidden) applies.
        allow_hidden = bool(getattr(self.contents_manager, "allow_hidden", False))
        self.ok(self.ds.testgen.insert(req, allow_hidden=allow_hidden))
