"""``POST jupyter-ds/v1/explain``: JSON answer, or NDJSON events when ``stream`` is true."""

from __future__ import annotations

import json

from jupyter_server.auth.decorator import authorized
from tornado import iostream, web

from jupyter_ds.envelope import failure, success
from jupyter_ds.errors import ApiError
from jupyter_ds.handlers.base import DsApiHandler
from jupyter_ds.requests import ExplainRequest


class ExplainHandler(DsApiHandler):
    auth_resource = "jupyter_ds:explain"
    endpoint = "explain"

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        req = self.parse(ExplainRequest)
        if not req.stream:
            self.ok(await self.ds.explain.explain(req))
            return
        # Streaming: one JSON object per line; each carries the cumulative markdown, the
        # last one is the usual success envelope. Errors before the first line are normal
        # HTTP errors; later ones end the stream with an error envelope line.
        events = self.ds.explain.stream(req)
        started = False
        try:
            async for event in events:
                if not started:
                    self.set_header("Content-Type", "application/x-ndjson")
                    self.set_header("Cache-Control", "no-cache")
                    started = True
                line = success({**event, "output": event["text"]}) if event["done"] else {
                    "type": "stream", "text": event["text"], "done": False}
                self.write(json.dumps(line) + "\n")
                await self.flush()
        except iostream.StreamClosedError:
            await events.aclose()  # the client left: stop generating
            return
        except ApiError as exc:
            if not started:
                raise
            self.write(json.dumps(failure(exc)) + "\n")
        self.finish()
