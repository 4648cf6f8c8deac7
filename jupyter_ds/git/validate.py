"""Validation of what requests hand to git: refs, revisions, remotes, config keys.

Nothing from a request reaches a shell, and nothing reaches git's argument list without
passing one of these checks first, so a value can never be read as an option (``-x``,
``--upload-pack=...``) or as revision syntax that git would expand (``@{-1}``, ``a..b``).
Each failure is a 400 that names the field.
"""

from __future__ import annotations

import re

from jupyter_ds.errors import bad_request

MAX_REF_CHARS = 255
_SHA = re.compile(r"[0-9a-fA-F]{4,64}")
# A revision is a ref name, then any of ~N, ^N suffixes (``HEAD~2``, ``main^``, ``v1^2``).
_SUFFIXES = re.compile(r"((?:[~^]\d*)*)$")

# Keys that may be read and written through the API, with the values each accepts
# (None: free text). Anything else (core.hooksPath, core.pager, remote.*.url, ...) could
# make git run a program or talk to another host, so it is never settable.
CONFIG_KEYS: dict[str, tuple[str, ...] | None] = {
    "user.name": None,
    "user.email": None,
    "pull.rebase": ("true", "false", "merges"),
    "pull.ff": ("true", "false", "only"),
    "push.default": ("nothing", "current", "upstream", "simple", "matching"),
    "push.autoSetupRemote": ("true", "false"),
    "fetch.prune": ("true", "false"),
    "merge.ff": ("true", "false", "only"),
    "rebase.autoStash": ("true", "false"),
    "core.autocrlf": ("true", "false", "input"),
}


def ref_format_error(name: str, *, allow_onelevel: bool = True) -> str | None:
    """Why ``name`` breaks the rules of ``git check-ref-format``, or None when it is valid."""
    if not name:
        return "is empty"
    if len(name) > MAX_REF_CHARS:
        return f"is longer than {MAX_REF_CHARS} characters"
    if name.startswith("-"):
        return "must not start with '-'"
    if name == "@":
        return "must not be '@'"
    if ".." in name:
        return "must not contain '..'"
    if "@{" in name:
        return "must not contain '@{'"
    bad = [c for c in name if ord(c) < 0x20 or ord(c) == 0x7F or c in " ~^:?*[\\"]
    if bad:
        return f"must not contain {bad[0]!r}"
    if name.startswith("/") or name.endswith("/") or "//" in name:
        return "must not start or end with '/' or contain '//'"
    if name.endswith("."):
        return "must not end with '.'"
    for part in name.split("/"):
        if part.startswith("."):
            return "must not have a component starting with '.'"
        if part.endswith(".lock"):
            return "must not have a component ending with '.lock'"
    if not allow_onelevel and "/" not in name:
        return "must contain a '/'"
    return None


def check_ref(value: str, field: str) -> str:
    """A branch, tag or remote name: the ``check-ref-format`` rules; else a 400."""
    why = ref_format_error(value)
    if why:
        raise bad_request(f"field '{field}' is not a valid name: it {why}", field)
    if value == "HEAD":
        raise bad_request(f"field '{field}' must not be 'HEAD'", field)
    return value


def check_rev(value: str, field: str) -> str:
    """A revision: a ref name or (abbreviated) sha, with optional ``~N``/``^N`` suffixes."""
    base = _SUFFIXES.sub("", value)
    if base and (_SHA.fullmatch(base) or ref_format_error(base) is None):
        return value
    why = ref_format_error(base) or "is not a ref name or commit id"
    raise bad_request(f"field '{field}' is not a valid revision: it {why}", field)


def check_config(key: str, value: str | None = None) -> str:
    """A whitelisted config key (and, when given, an acceptable value for it)."""
    canonical = {k.lower(): k for k in CONFIG_KEYS}.get(key.lower())
    if canonical is None:
        allowed = ", ".join(CONFIG_KEYS)
        raise bad_request(f"field 'key': '{key}' is not one of the allowed keys: {allowed}",
                          "key")
    if value is not None:
        choices = CONFIG_KEYS[canonical]
        if choices is not None and value.lower() not in choices:
            raise bad_request(f"field 'value' for {canonical} must be one of "
                              f"{', '.join(choices)}", "value")
        if any(c in value for c in "\n\r\x00") or len(value) > 500:
            raise bad_request("field 'value' must be one line of at most 500 characters",
                              "value")
    return canonical
