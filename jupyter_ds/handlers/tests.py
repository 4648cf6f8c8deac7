"""``POST jupyter-ds/v1/tests``, ``tests/run`` and ``tests/insert``."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from tornado import iostream, web

from jupyter_ds.envelope import failure, success
from jupyter_ds.errors import ApiError
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
        req = self.parse(TestsRequest)
        if not req.stream:
            self.ok(await self.ds.testgen.generate(req))
            return
        events = self.ds.testgen.events(req)
        started = False
        try:
            async for event in events:
                if not started:
                    self.set_header("Content-Type", "application/x-ndjson")
                    self.set_header("Cache-Control", "no-cache")
                    started = True
                if event["type"] == "done":
                    event = success({k: v for k, v in event.items() if k != "type"})
                self.write(json.dumps(event) + "\n")
                await self.flush()
        except iostream.StreamClosedError:
            await events.aclose()
            return
        except ApiError as exc:
            if not started:
                raise
            self.write(json.dumps(failure(exc)) + "\n")
        self.finish()


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
