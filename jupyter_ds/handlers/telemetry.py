"""``POST jupyter-ds/v1/telemetry``: clients report what became of their completions.

Resource ``jupyter_ds:completion`` (action ``execute``): whoever may ask for completions
may report on them, and only on their own (:mod:`jupyter_ds.telemetry`). The request goes
through the one pipeline like every route (rate limit bucket ``telemetry``, metrics, an
audit record holding the counted events per model and adapter, never text). It takes no
generation slot: it runs no model.
"""

from __future__ import annotations

from tornado import web

from jupyter_ds.handlers.base import DsApiHandler, authorized
from jupyter_ds.telemetry import count_events, parse_events


class TelemetryHandler(DsApiHandler):
    auth_resource = "jupyter_ds:completion"
    endpoint = "telemetry"

    @web.authenticated
    @authorized("execute")
    async def post(self) -> None:
        events = parse_events(self.body(), self.ds.limits)
        tally = count_events(self.ds.answered, self.call.user_name, events)
        self.call.audit_extra = tally.audit_fields()
        self.ok(tally.data())
