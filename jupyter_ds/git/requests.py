"""Request dataclasses of ``jupyter-ds/v1/git/<verb>``, shared by the handlers and the CLI.

``path`` is the repository folder relative to the server root ("" or "." for the root);
file paths are relative to the repository's top level, as ``status`` reports them.
GET verbs take their fields from the query string: :func:`query_body` converts the
strings by each field's type before the usual :func:`parse_request` checks.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from jupyter_ds.errors import ApiError, bad_request
from jupyter_ds.requests import parse_request, wire_field

T = TypeVar("T")
NAME = "max_name_chars"
ALIASES = {"from_": "from"}  # ``from`` is a Python keyword


@dataclass
class GitPathRequest:
    """status, branches, stash-pop: just the repository."""

    path: str = wire_field(".", max_chars=NAME)


@dataclass
class GitDiffRequest:
    path: str = wire_field(".", max_chars=NAME)
    staged: bool = wire_field(False)
    from_: str | None = wire_field(None, max_chars=NAME)
    to: str | None = wire_field(None, max_chars=NAME)
    file: str | None = wire_field(None, max_chars=NAME)
    context: int = wire_field(3, min=0, max=1000)


@dataclass
class GitLogRequest:
    path: str = wire_field(".", max_chars=NAME)
    skip: int = wire_field(0, min=0, max=10_000_000)
    limit: int = wire_field(50, min=1, max=500)
    file: str | None = wire_field(None, max_chars=NAME)
    rev: str | None = wire_field(None, max_chars=NAME)


@dataclass
class GitShowRequest:
    path: str = wire_field(".", max_chars=NAME)
    rev: str = wire_field("HEAD", max_chars=NAME)


@dataclass
class GitBlameRequest:
    file: str = wire_field(max_chars=NAME)
    path: str = wire_field(".", max_chars=NAME)
    rev: str | None = wire_field(None, max_chars=NAME)


@dataclass
class GitConfigQuery:
    path: str = wire_field(".", max_chars=NAME)
    key: str | None = wire_field(None, max_chars=NAME)


@dataclass
class GitConfigRequest:
    path: str = wire_field(max_chars=NAME)
    key: str = wire_field(max_chars=NAME)
    value: str | None = wire_field(max_chars=NAME)


@dataclass
class GitFilesRequest:
    """add, restore, unstage."""

    path: str = wire_field(max_chars=NAME)
    files: list[str] = wire_field(max_items=1000)  # noqa: RUF009 - a dataclasses.field


@dataclass
class GitCommitRequest:
    path: str = wire_field(max_chars=NAME)
    message: str | None = wire_field(None, max_chars="max_input_chars")
    amend: bool = wire_field(False)


@dataclass
class GitBranchRequest:
    path: str = wire_field(max_chars=NAME)
    name: str = wire_field(max_chars=NAME)
    start: str | None = wire_field(None, max_chars=NAME)


@dataclass
class GitSwitchRequest:
    path: str = wire_field(max_chars=NAME)
    name: str = wire_field(max_chars=NAME)


@dataclass
class GitBranchDeleteRequest:
    path: str = wire_field(max_chars=NAME)
    name: str = wire_field(max_chars=NAME)
    force: bool = wire_field(False)


@dataclass
class GitStashRequest:
    path: str = wire_field(max_chars=NAME)
    message: str | None = wire_field(None, max_chars=NAME)


@dataclass
class GitRemoteRequest:
    """fetch, pull, push."""

    path: str = wire_field(max_chars=NAME)
    remote: str | None = wire_field(None, max_chars=NAME)
    branch: str | None = wire_field(None, max_chars=NAME)


@dataclass
class GitCommitMessageRequest:
    path: str = wire_field(max_chars=NAME)
    max_tokens: int | None = wire_field(None, min=8, max_setting="max_tokens_limit")


READ_VERBS: dict[str, type] = {
    "status": GitPathRequest, "diff": GitDiffRequest, "log": GitLogRequest,
    "show": GitShowRequest, "branches": GitPathRequest, "blame": GitBlameRequest,
    "config": GitConfigQuery,
}
WRITE_VERBS: dict[str, type] = {
    "add": GitFilesRequest, "restore": GitFilesRequest, "unstage": GitFilesRequest,
    "commit": GitCommitRequest, "branch": GitBranchRequest, "switch": GitSwitchRequest,
    "branch-delete": GitBranchDeleteRequest, "stash": GitStashRequest,
    "stash-pop": GitPathRequest, "fetch": GitRemoteRequest, "pull": GitRemoteRequest,
    "push": GitRemoteRequest, "config": GitConfigRequest,
    "commit-message": GitCommitMessageRequest,
}
GIT_REQUESTS = tuple(dict.fromkeys([*READ_VERBS.values(), *WRITE_VERBS.values()]))


def wire_name(name: str) -> str:
    return ALIASES.get(name, name)


def query_body(cls: type, args: dict[str, str]) -> dict[str, Any]:
    """Query-string values converted to the field types of ``cls``, keyed by wire name."""
    hints = typing.get_type_hints(cls)
    body: dict[str, Any] = {}
    for f in fields(cls):
        name = wire_name(f.name)
        if name not in args:
            continue
        value = args[name]
        types = typing.get_args(hints[f.name]) or (hints[f.name],)
        if bool in types:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise bad_request(f"field '{name}' must be true or false", name)
            body[name] = value.lower() in ("true", "1", "yes")
        elif int in types:
            try:
                body[name] = int(value)
            except ValueError:
                raise bad_request(f"field '{name}' must be an integer", name) from None
        else:
            body[name] = value
    return body


def parse_git(cls: type[T], body: Any, limits: dict[str, int] | None = None) -> T:
    """:func:`parse_request` with the wire names (``from``) in bodies and errors."""
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ALIASES}  # no ``from_`` alias
        for attr, wire in ALIASES.items():
            if wire in body:
                body[attr] = body.pop(wire)
    try:
        return parse_request(cls, body, limits)
    except ApiError as exc:
        if exc.field in ALIASES:
            wire = ALIASES[exc.field]
            exc.message = exc.message.replace(f"'{exc.field}'", f"'{wire}'")
            exc.field = wire
            exc.args = (exc.message,)
        raise
