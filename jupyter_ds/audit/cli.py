"""``jupyter-ds audit``: usage reports from the audit log, and key generation.

    jupyter-ds audit report [--since 7d] [--until ISO] [--log PATH] [--key-file F] [--json]
    jupyter-ds audit keygen

The report is a text table by default; ``--json`` prints the API envelope like every other
subcommand. A key that is missing, wrong or malformed is a message naming the key id and
exit status 1, never a shorter report; a bad ``--since`` is a usage error (status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jupyter_ds.audit.crypto import KEY_ENV, OLD_KEYS_ENV, generate_key, load_keyring
from jupyter_ds.audit.errors import AuditError, to_api_error
from jupyter_ds.audit.log import default_log_path
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
                     help="audit log file (default: $JUPYTER_DS_AUDIT_LOG or the Jupyter "
                          "data dir's jupyter_ds/audit.log); rotated files are read too")
    rep.add_argument("--key-file", default=None,
                     help=f"key file: current key first, older keys after "
                          f"(default: ${KEY_ENV} and ${OLD_KEYS_ENV})")
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
        keyring = load_keyring(args.key_file, args.key_env)
        report = build_report(args.log or default_log_path(), keyring, args.since, args.until)
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
        sys.stdout.write(format_table(report))
    return 0
