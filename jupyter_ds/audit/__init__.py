"""Audit log: one JSON line per request, samples redacted, optionally encrypted at rest.

- :mod:`.redact`: PII and secret redaction rules applied to samples before writing.
- :mod:`.crypto`: AES-256-GCM per line, key ids, a keyring for rotation, the generated key.
- :mod:`.log`: :class:`AuditLog`, the thread-safe writer that never fails a request.
- :mod:`.report`: usage per user, model and endpoint (``jupyter-ds audit report``).
"""

from jupyter_ds.audit.crypto import (
    Keyring,
    ensure_key_file,
    find_keyring,
    generate_key,
    generated_key_path,
    load_keyring,
)
from jupyter_ds.audit.errors import (
    AuditError,
    AuditFormatError,
    AuditIntegrityError,
    AuditKeyConfigError,
    AuditKeyMissingError,
    AuditLogMissingError,
    to_api_error,
)
from jupyter_ds.audit.log import (
    AuditEvent,
    AuditLog,
    default_log_dir,
    default_log_path,
    open_audit_log,
    server_id,
)
from jupyter_ds.audit.redact import redact
from jupyter_ds.audit.report import MAX_LOOKBACK_DAYS, build_report, parse_when

__all__ = [
    "MAX_LOOKBACK_DAYS",
    "AuditError",
    "AuditEvent",
    "AuditFormatError",
    "AuditIntegrityError",
    "AuditKeyConfigError",
    "AuditKeyMissingError",
    "AuditLog",
    "AuditLogMissingError",
    "Keyring",
    "build_report",
    "default_log_dir",
    "default_log_path",
    "ensure_key_file",
    "find_keyring",
    "generate_key",
    "generated_key_path",
    "load_keyring",
    "open_audit_log",
    "parse_when",
    "redact",
    "server_id",
    "to_api_error",
]
