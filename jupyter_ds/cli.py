"""``jupyter-ds`` command line: the same services as the server, the same JSON envelope.

    jupyter-ds complete FILE|- [--cursor LINE:COL] [--language python] [--max-tokens N]
    jupyter-ds explain FILE|- [--question TEXT]
    jupyter-ds tests generate PATH[::FUNCTION] [--rounds N]
    jupyter-ds tests run TESTFILE --source PATH [--runs N]
    jupyter-ds git VERB [--path REPO] [--files ...] [--message ...]  (see jupyter_ds/git/cli.py)
    jupyter-ds audit report [--since 7d] [--log PATH] [--key-file F] [--json]  (audit/cli.py)
    jupyter-ds finetune PATH --out DIR --max-minutes M [--resume]  (finetune/cli.py)
    jupyter-ds lsp [--url URL | --local] [--tcp PORT]  (the language server, lsp/cli.py)

Code comes from a file or standard input; the answer is printed as one JSON envelope.
The exit status is 0 on success, 1 when the envelope is an error, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from jupyter_ds.cli_engine import add_engine_options, open_engine
from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.envelope import failure, success
from jupyter_ds.errors import ApiError, bad_request
from jupyter_ds.explain.requests import ExplainRequest
from jupyter_ds.requests import parse_request


def _read_source(source: str) -> tuple[str, str | None]:
    if source == "-":
        return sys.stdin.read(), None
    path = Path(source)
    if not path.is_file():
        raise ApiError(404, "not_found", f"no such file: {source}", field="file")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError:
        raise bad_request(f"{source} is not UTF-8 text", "file") from None


def split_at_cursor(text: str, cursor: str | None) -> tuple[str, str]:
    """Split ``text`` at ``LINE:COL`` (1-based line, 0-based column); None: at the end."""
    if cursor is None:
        return text, ""
    try:
        line_s, col_s = cursor.split(":")
        line, col = int(line_s), int(col_s)
    except ValueError:
        raise bad_request(f"--cursor must be LINE:COL, got {cursor!r}", "cursor") from None
    lines = text.splitlines(keepends=True) or [""]
    if not 1 <= line <= len(lines) or not 0 <= col <= len(lines[line - 1].rstrip("\r\n")):
        raise bad_request(f"--cursor {cursor} is outside the file", "cursor")
    offset = sum(len(x) for x in lines[: line - 1]) + col
    return text[:offset], text[offset:]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from jupyter_ds.completion.service import CompletionService
    from jupyter_ds.explain.service import ExplainService

    if args.command == "tests":
        return await _run_tests(args)
    if args.command == "git":
        from jupyter_ds.git import cli as git_cli

        return await git_cli.run(args)
    text, path = _read_source(args.source)
    if args.command == "complete":
        prefix, suffix = split_at_cursor(text, args.cursor)
        body: dict[str, Any] = {"prefix": prefix, "suffix": suffix, "language": args.language}
        if path:
            body["path"] = path
        if args.max_tokens is not None:
            body["max_tokens"] = args.max_tokens
        req = parse_request(CompleteRequest, body)
        return await CompletionService(open_engine(args)).complete(req)
    body = {"code": text, "language": args.language}
    if args.question:
        body["question"] = args.question
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    req_e = parse_request(ExplainRequest, body)
    return await ExplainService(open_engine(args)).explain(req_e)


async def _run_tests(args: argparse.Namespace) -> dict[str, Any]:
    """``tests generate PATH[::FUNCTION]`` and ``tests run TESTFILE --source PATH``."""
    import os

    from jupyter_ds.testgen.requests import TestsRequest, TestsRunRequest
    from jupyter_ds.testgen.service import TestgenService, TestgenSettings

    settings = TestgenSettings(root_dir=os.getcwd())
    if args.tests_command == "run":
        tests, _ = _read_source(args.testfile)
        source, path = _read_source(args.source_path)
        req = parse_request(TestsRunRequest, {"tests": tests, "source": source,
                                              "path": path, "runs": args.runs})
        # Running given tests needs no model.
        return await TestgenService(None, settings).run_tests(req)  # type: ignore[arg-type]
    target_path, _, function = args.target.partition("::")
    source, path = _read_source(target_path)
    rel = os.path.relpath(path, os.getcwd()) if path else None
    body: dict[str, Any] = {"source": source, "path": rel, "rounds": args.rounds}
    if function:
        body["target"] = function
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    req_g = parse_request(TestsRequest, body)
    return await TestgenService(open_engine(args), settings).generate(req_g)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jupyter-ds", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("complete", "complete code at the cursor (default: end of the input)"),
        ("explain", "explain code in markdown"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("source", nargs="?", default="-", help="a file, or - for stdin")
        p.add_argument("--language", default="python")
        p.add_argument("--max-tokens", type=int, default=None)
        add_engine_options(p)
        if name == "complete":
            p.add_argument("--cursor", default=None, help="LINE:COL, 1-based line")
        else:
            p.add_argument("--question", default=None)
    tests = sub.add_parser("tests", help="generate verified tests, or run tests, in the sandbox")
    tests_sub = tests.add_subparsers(dest="tests_command", required=True)
    gen = tests_sub.add_parser("generate", help="generate tests for PATH[::FUNCTION]")
    gen.add_argument("target", help="a .py file, optionally ::FUNCTION (default: first public)")
    gen.add_argument("--rounds", type=int, default=2)
    gen.add_argument("--max-tokens", type=int, default=None)
    add_engine_options(gen)
    run = tests_sub.add_parser("run", help="run TESTFILE against --source PATH")
    run.add_argument("testfile")
    run.add_argument("--source", dest="source_path", required=True)
    run.add_argument("--runs", type=int, default=1)
    from jupyter_ds.git.cli import add_parser as add_git_parser

    add_git_parser(sub)
    from jupyter_ds.audit.cli import add_parser as add_audit_parser

    add_audit_parser(sub)
    from jupyter_ds.finetune.cli import add_parser as add_finetune_parser

    add_finetune_parser(sub)
    from jupyter_ds.lsp.cli import add_parser as add_lsp_parser

    add_lsp_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "audit":  # text table by default; its own exit statuses
        from jupyter_ds.audit.cli import main as audit_main

        return audit_main(args)
    if args.command == "lsp":  # the protocol on stdout, until the editor exits
        from jupyter_ds.lsp.cli import main as lsp_main

        return lsp_main(args)
    if args.command == "finetune":  # progress on stderr, its own exit statuses
        from jupyter_ds.finetune.cli import main as finetune_main

        return finetune_main(args)
    try:
        envelope = success(asyncio.run(_run(args)))
        code = 0
    except ApiError as exc:
        envelope, code = failure(exc), 1
    print(json.dumps(envelope, indent=2))
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
