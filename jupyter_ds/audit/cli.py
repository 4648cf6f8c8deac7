"""``jupyter-ds audit``: usage reports from the audit log, and key generation.

    jupyter-ds audit report [--since 7d] [--until ISO] [--log PATH] [--key-file F] [--json]
    jupyter-ds audit keygen

The report is a text table by default; ``--json`` prints the API envelope like every other
subcommand. A key that is missing, wrong or malformed is a message naming the key id and
exit status 1, never a shorter report; a bad ``--since`` is a usage error (status 2).

With no ``--key-file`` and no key in the environment, the report uses the key the server
generated next to the log (``audit.key``), so the default, encrypted setup needs no flags.
With no ``--log`` and no ``$JUPYTER_DS_AUDIT_LOG``, it reads the one log in the default
folder; each server writes its own there, so when there are several it names them and asks
for ``--log`` rather than guess.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from jupyter_ds.audit.crypto import (
    GENERATED_KEY_NAME,
    KEY_ENV,
    OLD_KEYS_ENV,
    find_keyring,
    generate_key,
)
from jupyter_ds.audit.errors import AuditError, AuditLogMissingError, to_api_error
from jupyter_ds.audit.log import LOG_ENV, default_log_dir, default_logs
from jupyter_ds.audit.report import build_report, format_table, parse_when


def _when(text: str) -> Any:
    try:
        return parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: Any) -> None:
    p = sub.add_parser("audit", help="audit log: usage reports, key generation")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    rep = audit_sub.add_parser("report", help="usage per user, model and endpoint")
    rep.add_argument("--since", type=_when, default=None,
                     help="start: 7d, 24h, 30m, 2w ago or an ISO date/time (default: all)")
    rep.add_argument("--until", type=_when, default=None, help="end (exclusive), same forms")
    rep.add_argument("--log", default=None,
                     help="audit log file (default: $JUPYTER_DS_AUDIT_LOG, else the one log "
                          "in the Jupyter data dir's jupyter_ds/ folder, one per server); "
                          "rotated files are read too")
    rep.add_argument("--key-file", default=None,
                     help=f"key file: current key first, older keys after (default: "
                          f"${KEY_ENV} and ${OLD_KEYS_ENV}, else the generated "
                          f"{GENERATED_KEY_NAME} next to the log)")
    rep.add_argument("--key-env", default=KEY_ENV, help="env var holding the current key")
    rep.add_argument("--json", action="store_true", help="print the JSON envelope")
    audit_sub.add_parser("keygen", help="print a new random AES-256 key (base64)")


def main(args: argparse.Namespace) -> int:
    """Run ``jupyter-ds audit ...``; returns the exit status."""
    if args.audit_command == "keygen":
        print(generate_key())
        return 0
    from jupyter_ds.envelope import failure, success

    try:
        log_path = _log_path(args.log)
        keyring = find_keyring(log_path, args.key_file, args.key_env)
        report = build_report(log_path, keyring, args.since, args.until)
    except AuditError as exc:
        if args.json:
            print(json.dumps(failure(to_api_error(exc)), indent=2))
        else:
            print(f"jupyter-ds audit: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        msg = f"cannot read the audit log: {exc}"
        if args.json:
            from jupyter_ds.errors import ApiError

            print(json.dumps(failure(ApiError(500, "audit_error", msg)), indent=2))
        else:
            print(f"jupyter-ds audit: error: {msg}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(success(report), indent=2))
    else:
        sys.stdout.write(format_table(report, log_path))
    return 0


def _log_path(given: str | None) -> Path:
    """``--log``, else ``$JUPYTER_DS_AUDIT_LOG``, else the only log in the default folder."""
    if given:
        return Path(given).expanduser()
    env = os.environ.get(LOG_ENV)
    if env:
        return Path(env).expanduser()
    logs = default_logs()
    if len(logs) == 1:
        return logs[0]
    folder = default_log_dir()
    if not logs:
        raise AuditLogMissingError(f"no audit log in {folder} (pass --log)")
    names = ", ".join(p.name for p in logs)
    raise AuditLogMissingError(
        f"{len(logs)} audit logs in {folder}, one per server (root folder and port): "
        f"{names}; choose one with --log (the server names its log when it starts)"
    )
