"""``GET jupyter-ds/v1/audit/report``: usage per user, model and endpoint from the audit log.

Resource ``jupyter_ds:audit`` (read): the ``admin`` and ``auditor`` roles. The same report
as ``jupyter-ds audit report --json``, kept to this server's records; a line the server
cannot read (a lost key, an altered line) is an error naming it, never a shorter report.

Auditors get no file-system paths, in answers or errors: the log is named by its file name
only (an auditor reads usage, not the layout of the server's disk). ``since``/``until``
that cannot be parsed or reach too far back are a 400 naming the field, never a 500.
"""

from __future__ import annotations

import asyncio

from tornado import web

from jupyter_ds.errors import ApiError, bad_request
from jupyter_ds.handlers.base import DsApiHandler, authorized


class AuditReportHandler(DsApiHandler):
    auth_resource = "jupyter_ds:audit"
    endpoint = "audit/report"

    @web.authenticated
    @authorized("read")
    async def get(self) -> None:
        from jupyter_ds.audit import AuditError, build_report, parse_when, to_api_error

        audit = self.ds.audit
        if audit is None:
            raise ApiError(
                501,
                "audit_disabled",
                "the audit log is off on this server (JupyterDsApp.audit_log = False)",
            )
        bounds = {}
        for name in ("since", "until"):
            text = self.get_argument(name, "", strip=True)
            if not text:
                bounds[name] = None
                continue
            try:
                bounds[name] = parse_when(text)
            except (ValueError, OverflowError) as exc:
                raise bad_request(f"field '{name}': {exc}", name) from None
        path = audit.path
        try:
            report = await asyncio.to_thread(
                build_report, path, audit.keyring, bounds["since"], bounds["until"],
                audit.server, False,
            )
        except AuditError as exc:
            raise to_api_error(exc) from None
        except OSError as exc:  # str(exc) would name the absolute path: say it ourselves
            reason = exc.strerror or type(exc).__name__
            raise ApiError(
                500, "audit_error", f"cannot read the audit log {path.name}: {reason}"
            ) from None
        self.ok(report)
