"""``POST jupyter-ds/v1/complete``."""

from __future__ import annotations

from tornado import web

from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.handlers.base import DsApiHandler, authorized


class CompleteHandler(DsApiHandler):
    auth_resource = "jupyter_ds:completion"
    endpoint = "complete"

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        req = self.parse(CompleteRequest)
        data = await self.cancel_on_disconnect(self.ds.completion.complete(req))
        if data is not None:
            data["request_id"] = self.call.request_id  # telemetry names it by this
            self.ok(data)
