"""``POST jupyter-ds/v1/explain``: JSON answer, or NDJSON events when ``stream`` is true."""

from __future__ import annotations

from tornado import web

from jupyter_ds.envelope import success
from jupyter_ds.explain.requests import ExplainRequest
from jupyter_ds.handlers.base import DsApiHandler, authorized


class ExplainHandler(DsApiHandler):
    auth_resource = "jupyter_ds:explain"
    endpoint = "explain"

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        req = self.parse(ExplainRequest)
        if not req.stream:
            data = await self.cancel_on_disconnect(self.ds.explain.explain(req))
            if data is not None:
                self.ok(data)
            return
        # Streaming: one JSON object per line, each with the cumulative markdown; the
        # last one is the usual success envelope.
        await self.stream_ndjson(
            self.ds.explain.stream(req),
            lambda e: success({**e, "output": e["text"]})
            if e["done"]
            else {"type": "stream", "text": e["text"], "done": False},
        )
