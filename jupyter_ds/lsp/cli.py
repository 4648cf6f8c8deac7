"""``jupyter-ds lsp``: start the language server on stdio (or ``--tcp PORT``).

    jupyter-ds lsp                         # client mode: the running jupyter-ds server
    jupyter-ds lsp --url URL               # ... at URL, token from JUPYTER_DS_TOKEN
    jupyter-ds lsp --local [--model-path M] [--engine-class C] [--engine-option K=V]

Standard output carries the protocol only: logs go to standard error or ``--log-file``.
The token is best given through ``JUPYTER_DS_TOKEN`` (arguments show in ``ps``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from jupyter_ds.cli_engine import add_engine_options


def add_parser(sub: Any) -> None:
    p = sub.add_parser("lsp", help="the language server for editors (stdio, or --tcp)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--tcp", type=int, default=None, metavar="PORT",
                   help="listen on PORT (TCP) instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="address for --tcp (127.0.0.1)")
    p.add_argument("--url", default=None,
                   help="the Jupyter server's URL (default: JUPYTER_DS_URL, else the "
                   "running server found in Jupyter's runtime files)")
    p.add_argument("--token", default=None,
                   help="its token (default: JUPYTER_DS_TOKEN, JUPYTER_TOKEN, or the "
                   "runtime file's)")
    p.add_argument("--root", default=None,
                   help="the folder the server resolves paths against (default: its "
                   "runtime file's root_dir; with --local, the current folder)")
    p.add_argument("--local", action="store_true",
                   help="run the engine in this process instead of calling a server")
    p.add_argument("--engine-option", action="append", default=[], metavar="K=V",
                   help="--local: an engine option (JSON value where it parses)")
    p.add_argument("--max-document-chars", type=int, default=1_000_000,
                   help="documents over this size get no suggestions (1,000,000)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="tokens per completion (default: the server's)")
    p.add_argument("--adapter", default=None, help="a LoRA adapter the server serves")
    p.add_argument("--retries", type=int, default=3,
                   help="attempts repeated while the server does not answer (3)")
    p.add_argument("--log-file", default=None, help="log here instead of standard error")
    p.add_argument("--log-level", default="WARNING")
    add_engine_options(p)


def _engine_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"jupyter-ds lsp: --engine-option must be KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _local_engine(args: argparse.Namespace) -> Any:
    """The engine, loading in the background: the editor is served (a 503 "loading"
    while it loads) rather than kept waiting for the model."""
    from ds_engine import EngineConfig
    from ds_engine.factory import make_engine

    config = EngineConfig(model_path=args.model_path, device=args.device, dtype=args.dtype,
                          quantization="auto", options=_engine_options(args.engine_option))
    try:
        engine = make_engine(args.engine_class, config)
    except ValueError as exc:
        raise SystemExit(f"jupyter-ds lsp: --engine-class: {exc}") from None
    engine.start_loading()
    return engine


def build_backend(args: argparse.Namespace) -> Any:
    from jupyter_ds.lsp.backends import HttpBackend, LocalBackend, discover

    if args.local:
        return LocalBackend(_local_engine(args), args.root or os.getcwd())
    workspace = os.getcwd()
    return HttpBackend(lambda: discover(args.url, args.token, args.root, workspace),
                       retries=args.retries)


def main(args: argparse.Namespace) -> int:
    from jupyter_ds.lsp.server import LspSettings, build_server

    target: dict[str, Any] = ({"filename": args.log_file} if args.log_file
                              else {"stream": sys.stderr})
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", **target)
    from jupyter_ds.lsp.protocol import quiet_expected_errors

    quiet_expected_errors()
    if args.max_document_chars < 1:
        raise SystemExit("jupyter-ds lsp: --max-document-chars must be at least 1")
    settings = LspSettings(max_document_chars=args.max_document_chars,
                           max_tokens=args.max_tokens, adapter=args.adapter)
    server = build_server(build_backend(args), settings)
    if args.tcp is not None:
        print(f"jupyter-ds lsp: listening on {args.host}:{args.tcp}", file=sys.stderr,
              flush=True)
        server.start_tcp(args.host, args.tcp)
    else:
        server.start_io()
    return 0
