"""``jupyter-ds git VERB``: the API's git verbs from the command line.

    jupyter-ds git status [--path REPO]
    jupyter-ds git add --path REPO --files a.py b.py
    jupyter-ds git commit --path REPO --message "fix: ..."
    jupyter-ds git commit-message --path REPO [--model-path M]

The server root is ``--root`` (default: the current folder) and ``--path`` is relative
to it, exactly as over HTTP; the answer is the same envelope.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
from typing import Any

from jupyter_ds.cli_engine import add_engine_options, open_engine
from jupyter_ds.git.requests import READ_VERBS, WRITE_VERBS, parse_git, wire_name

VERBS = sorted({*READ_VERBS, *WRITE_VERBS})


def add_parser(sub: Any) -> None:
    p = sub.add_parser("git", help="git operations on a repository (the API's git verbs)")
    p.add_argument("verb", choices=VERBS)
    p.add_argument("--root", default=None, help="server root (default: current folder)")
    p.add_argument("--path", default=".", help="repository folder relative to the root")
    p.add_argument("--files", nargs="+", default=None)
    for name in ("file", "from", "to", "rev", "message", "name", "start", "remote",
                 "branch", "key", "value"):
        p.add_argument(f"--{name}", dest=name.replace("from", "from_"), default=None)
    for name in ("context", "skip", "limit", "max-tokens"):
        p.add_argument(f"--{name}", type=int, default=None)
    for name in ("staged", "amend", "force", "unset"):
        p.add_argument(f"--{name}", action="store_true", default=None)
    add_engine_options(p)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from jupyter_ds.git.service import GitService

    write = args.verb not in READ_VERBS or (
        args.verb == "config" and (args.value is not None or args.unset))
    cls = (WRITE_VERBS if write else READ_VERBS)[args.verb]
    body: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            body[wire_name(f.name)] = value
    if args.verb == "config" and write and args.unset:
        body["value"] = None
    req = parse_git(cls, body)
    engine = None
    if args.verb == "commit-message":
        engine = open_engine(args)
    service = GitService(args.root or os.getcwd(), engine)
    return await service.call(args.verb, req, write=write, user=getpass.getuser())
