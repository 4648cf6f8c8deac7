"""Audit errors: each names what is wrong and where, so an operator can act on it.

Reading the log never skips a line it cannot read: it raises one of these instead, because
a report that silently leaves out requests is worse than no report.
"""

from __future__ import annotations

from jupyter_ds.errors import ApiError


class AuditError(Exception):
    """Base class: anything the audit log cannot do, with a message meant for a human.

    ``status`` and ``code`` are what the API answers with (see :func:`to_api_error`).
    """

    status = 500
    code = "audit_error"


class AuditLogMissingError(AuditError):
    """No log file at the configured path (a wrong path, or nothing audited yet)."""

    status = 404
    code = "audit_log_missing"


class AuditKeyConfigError(AuditError):
    """A configured key is malformed (bad encoding, wrong length, unreadable file).

    Raised when the key is loaded, i.e. at server start or CLI start, never per request.
    """

    code = "audit_key_invalid"


class AuditKeyMissingError(AuditError):
    """A line was encrypted with a key id the keyring does not hold (lost or not loaded)."""

    code = "audit_key_missing"

    def __init__(self, message: str, kid: str):
        super().__init__(message)
        self.kid = kid


class AuditIntegrityError(AuditError):
    """A line failed authentication: altered, truncated or corrupted since it was written."""

    code = "audit_integrity"

    def __init__(self, message: str, kid: str | None = None):
        super().__init__(message)
        self.kid = kid


class AuditFormatError(AuditError):
    """A line is not a record this version can read (not JSON, unknown format version)."""

    code = "audit_format"


def to_api_error(exc: AuditError) -> ApiError:
    """The envelope error for an audit failure (the message names no secret, no traceback)."""
    return ApiError(exc.status, exc.code, str(exc))
