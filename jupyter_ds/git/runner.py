"""Finding a repository under the server root and running git in it, safely.

Every command is an argument list run through GitPython's command layer (never a shell),
with a timeout that kills the process, no terminal prompts, and repository discovery that
stops at the server root (``GIT_CEILING_DIRECTORIES``), so a folder in the root is never
taken as part of a repository that lives above it. git's failures become API errors:
404 for "not a repository", 409 for conflicts (with what to do), 400 for bad arguments,
504 for timeouts.

git never runs a program that a repository brings
-------------------------------------------------
A repository under the root may come from anywhere (an archive, a clone), and its
``.git/config``, ``.git/hooks`` and ``.gitattributes`` are its author's. git would run
programs named there on the most innocent command (``core.fsmonitor`` on ``status``, a
``clean`` filter on ``add``, a hook on ``commit``), so every command this runner starts
gets, in this one place:

* fixed options (:data:`SAFE_CONFIG` as ``-c``, which outranks every config file, plus
  :func:`git_env`): no fsmonitor, hooks looked up in ``/dev/null`` (so none), no pager,
  editors that do nothing, no ``ext::`` transport, no recursion into submodules;
* per repository, :func:`untrusted_overrides`: every key that names a program (filter
  ``clean``/``smudge``/``process`` drivers, ``textconv``, external diff and merge drivers,
  credential helpers, ``gpg``/``ssh``/``askpass`` programs, ``uploadpack``/
  ``receivepack`` commands, ``core.alternateRefsCommand``, ...) that is set in a scope the
  repository controls (``local``, ``worktree``, and files they include) is overridden
  through ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` by the value the
  server's own config (system, global, command line) gives it, or else by one that runs
  nothing (or, for a merge driver, ``git merge-file``: git's own text merge). Filter
  and diff driver names cannot be listed on the command line, so they are read first with
  ``git config --list --show-scope`` (reading config runs nothing); the environment
  rather than ``-c`` carries them because a driver's name may contain ``=``. Programs
  that the server's own config names (``git-lfs`` installed globally, a credential
  store) keep working.

Commands that look inside submodules run git there under the submodule's config:
``status`` and ``diff`` ignore submodules' working trees (``--ignore-submodules=dirty``),
``switch`` is quiet, and ``stash``, which cannot be told, first adds the overrides of
every checked-out submodule (:meth:`Runner.with_submodules`). A push to a repository on
this machine runs ``git-receive-pack`` there with git's environment cleared, so the same
rules travel inline in ``--receive-pack`` (:meth:`Runner.push_options`). Commit hooks run
only when the server's admin turns them on, in the test sandbox (``GitService``).
"""

from __future__ import annotations

import os
import re
import shlex
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from git.cmd import Git
from git.exc import GitCommandNotFound

from jupyter_ds.errors import ApiError, bad_request, timed_out
from jupyter_ds.paths import (
    DEFAULT_EXCLUDE,
    excluded_by,
    forbidden,
    is_within,
    normalise_relative,
    resolve_under_root,
)

# Config every command gets, above any config file: nothing a repository names runs.
SAFE_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.fsmonitor", "false"),  # a hook path, or git's daemon: neither
    ("core.hooksPath", os.devnull),  # hooks are looked up in /dev/null: there are none
    ("core.pager", "cat"),
    ("protocol.ext.allow", "never"),  # ext:: URLs run a command
    ("submodule.recurse", "false"),  # a submodule's git would use the submodule's config
    ("fetch.recurseSubmodules", "false"),
    ("push.recurseSubmodules", "no"),
)
# Options every command gets: unquoted UTF-8 paths, no colour, no pager, SAFE_CONFIG.
GLOBAL_OPTIONS = ("-c", "core.quotepath=off", "-c", "color.ui=false",
                  *(arg for key, value in SAFE_CONFIG for arg in ("-c", f"{key}={value}")),
                  "--no-pager")
# Config scopes the server's admin controls; any other (local, worktree) is the
# repository's, as are files that a repository's config includes.
TRUSTED_SCOPES = frozenset({"system", "global", "command"})
# git's own three-way text merge, in place of a merge driver a repository names.
MERGE_DRIVER = "git merge-file -L ours -L base -L theirs --marker-size=%L %A %O %B"
# Keys (as ``git config --list`` prints them: section and name in lower case) whose value
# is a program, and the value that runs nothing, or git's default program.
_PROGRAM_KEYS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.DOTALL), value) for pattern, value in (
        (r"filter\..+\.(clean|smudge|process)", ""),  # git skips an empty filter command
        (r"filter\..+\.required", "false"),  # ...and then must not refuse the file
        (r"diff\..+\.textconv", "cat"),  # the file as it is
        (r"diff\..+\.command", ""),  # external diff drivers: only with --ext-diff
        (r"diff\..+\.cachetextconv", "false"),
        (r"diff\.external", ""),
        (r"merge\..+\.driver", MERGE_DRIVER),
        # git takes the first value of these two (and complains of a second): they go
        # as --upload-pack / --receive-pack (Runner.fetch_options, push_options) instead.
        (r"remote\..+\.uploadpack", "git-upload-pack"),  # run by a local fetch
        (r"remote\..+\.receivepack", "git-receive-pack"),  # run by a local push
        (r"core\.sshcommand", "ssh -o BatchMode=yes"),
        (r"core\.askpass", ""),
        (r"core\.alternaterefscommand", "true"),  # no refs: only an optimisation
        (r"core\.editor|sequence\.editor", "true"),
        (r"gpg\.program|gpg\.openpgp\.program", "gpg"),
        (r"gpg\.x509\.program", "gpgsm"),
        (r"gpg\.ssh\.program", "ssh-keygen"),
        (r"gpg\.ssh\.defaultkeycommand", ""),
        (r"(commit|tag|push)\.gpgsign", "false"),  # no signing the repository asked for
        (r"log\.showsignature", "false"),  # ...nor verifying on every log
    ))
_AS_OPTIONS = re.compile(r"remote\..+\.(uploadpack|receivepack)", re.DOTALL)
_MULTI_VALUED = re.compile(r"credential\.(.+\.)?helper", re.DOTALL)  # each value runs
_VCS = re.compile(r"remote\..+\.vcs", re.DOTALL)
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.-]*")  # git-remote-<name> from PATH
_NETWORK_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*(::|://)")

# (fragment of git's message, status, what the user should do). First match wins.
_CONFLICTS = (
    ("Timeout:", 504, ""),
    ("would be overwritten", 409, "commit or stash your changes first"),
    ("non-fast-forward", 409, "pull (and resolve any conflicts) before pushing"),
    ("[rejected]", 409, "pull (and resolve any conflicts) before pushing"),
    ("fetch first", 409, "pull (and resolve any conflicts) before pushing"),
    ("divergent branches", 409,
     "set pull.rebase (POST git/config) to true or false, then pull again"),
    ("Not possible to fast-forward", 409, "merge or rebase by hand"),
    ("CONFLICT", 409, "resolve the conflicted files, add them, then commit"),
    ("unmerged files", 409, "resolve the conflicted files and add them first"),
    ("resolve your current index", 409, "resolve the conflicted files and add them first"),
    ("not fully merged", 409, "merge it first, or delete with force"),
    ("Cannot delete branch", 409, "switch to another branch first"),
    ("used by worktree", 409, "switch to another branch first"),
    ("already exists", 409, "choose another name"),
    ("nothing to commit", 409, "stage changes first (git add)"),
    ("nothing added to commit", 409, "stage changes first (git add)"),
    ("No stash entries", 409, "there is nothing to pop"),
    ("index.lock", 409, "another git process is running; retry in a moment"),
    ("no upstream", 409, "name the remote and branch"),
    ("does not appear to be a git repository", 409, "check the remote's URL"),
    ("Could not read from remote", 409, "check the remote and your credentials"),
    ("Authentication failed", 409, "check your credentials"),
    ("terminal prompts disabled", 409, "configure a credential helper or SSH key"),
    ("does not have any commits yet", 409, "commit something first"),
)
_BAD_ARGUMENT = (
    "unknown revision", "bad revision", "invalid reference", "not a valid object name",
    "Not a valid object name", "ambiguous argument", "did not match any", "no such path",
    "does not exist", "is not a valid branch name", "invalid object name", "no such ref",
    "not a commit", "is outside repository", "no such remote", "No such remote",
    "beyond a symbolic link", "is in submodule",
)


def git_env(root: Path) -> dict[str, str]:
    """The fixed environment: no prompts, and editors and pagers that run nothing (the
    variables outrank ``core.editor``, ``sequence.editor`` and ``core.pager``)."""
    env = {
        "GIT_CEILING_DIRECTORIES": str(root.parent),
        "GIT_TERMINAL_PROMPT": "0",  # never wait for a password nobody can type
        "GIT_EDITOR": "true",
        "GIT_SEQUENCE_EDITOR": "true",
        "GIT_PAGER": "cat",
        "GIT_MERGE_AUTOEDIT": "no",
    }
    if "GIT_SSH_COMMAND" not in os.environ:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


def untrusted_overrides(entries: Iterable[tuple[str, str, str | None]]
                        ) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Config pairs (and environment) that undo every program-valued key a repository sets.

    ``entries`` are ``(scope, key, value)`` in git's order (``git config --list
    --show-scope``). A key whose effective value comes from an untrusted scope gets the
    last value a trusted scope gave it, else a value that runs nothing. Every value of a
    credential helper runs, so those lists are reset (an empty value) and refilled with
    the trusted ones. ``core.gitProxy`` (first match wins, no reset) is switched off
    through ``GIT_PROXY_COMMAND``. ``remote.<name>.vcs`` names a helper found on PATH and
    is kept unless it could be a path.
    """
    trusted: dict[str, list[str]] = {}
    effective: dict[str, tuple[str, str]] = {}
    untrusted: dict[str, None] = {}  # keys with a value from an untrusted scope, in order
    for scope, key, value in entries:
        value = "true" if value is None else value  # ``[section] key`` alone means true
        if scope in TRUSTED_SCOPES:
            trusted.setdefault(key, []).append(value)
        else:
            untrusted[key] = None
        effective[key] = (scope, value)
    pairs: list[tuple[str, str]] = []
    env: dict[str, str] = {}
    for key in untrusted:
        scope, value = effective[key]
        if _MULTI_VALUED.fullmatch(key):
            pairs += [(key, ""), *((key, v) for v in trusted.get(key, []))]
        elif key == "core.gitproxy":
            env["GIT_PROXY_COMMAND"] = ""
        elif scope in TRUSTED_SCOPES:
            continue  # a trusted scope has the last word already
        elif _VCS.fullmatch(key):
            if not _HELPER_NAME.fullmatch(value):
                pairs.append((key, trusted.get(key, [""])[-1]))
        else:
            for pattern, neutral in _PROGRAM_KEYS:
                if pattern.fullmatch(key):
                    pairs.append((key, trusted.get(key, [neutral])[-1]))
                    break
    return pairs, env


def config_env(pairs: Sequence[tuple[str, str]], base: int | None = None) -> dict[str, str]:
    """``pairs`` as ``GIT_CONFIG_COUNT``/``KEY_n``/``VALUE_n``, after any the server has."""
    if not pairs:
        return {}
    if base is None:
        try:
            base = max(0, int(os.environ.get("GIT_CONFIG_COUNT") or 0))
        except ValueError:
            base = 0
    env = {"GIT_CONFIG_COUNT": str(base + len(pairs))}
    for i, (key, value) in enumerate(pairs, base):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def is_local_url(url: str) -> bool:
    """Whether git reaches ``url`` as a path on this machine (git's own rule, erring
    towards local): not ``<helper>::``, not ``<scheme>://`` other than ``file://``, not
    scp-like ``host:path``."""
    if url.startswith("file://"):
        return True
    if _NETWORK_URL.match(url):
        return False
    colon, slash = url.find(":"), url.find("/")
    return colon < 0 or 0 <= slash < colon


@dataclass(frozen=True)
class Repo:
    """A repository whose working tree is under the server root."""

    top: Path  # real path of the working tree's top level
    git_dir: Path
    rel: str  # ``top`` relative to the server root ("." for the root itself)
    # Config (and environment) that neutralise the programs its config names.
    overrides: tuple[tuple[str, str], ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()

    @property
    def config_overrides(self) -> list[tuple[str, str]]:
        """``overrides`` that git reads from the environment (not those passed as options)."""
        return [(k, v) for k, v in self.overrides if not _AS_OPTIONS.fullmatch(k)]


class Runner:
    """Resolves repositories and files under ``root_dir`` and runs git commands there."""

    def __init__(self, root_dir: str | os.PathLike[str], *, timeout_s: float = 60.0,
                 exclude: Sequence[str] = DEFAULT_EXCLUDE):
        self.root = Path(os.path.realpath(root_dir))
        self.timeout_s = timeout_s
        self.exclude = tuple(exclude)
        self.env = git_env(self.root)
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ------------------------------------------------------------------ paths

    def excluded(self, rel_to_root: str) -> str | None:
        """The exclusion pattern that ``rel_to_root`` matches, if any (shared with the
        test insertion, which honours the same setting)."""
        return excluded_by(rel_to_root, self.exclude)

    def repo(self, path: str) -> Repo:
        """The repository that contains the folder ``path`` (relative to the root)."""
        real = resolve_under_root(self.root, path, "path")
        rel = os.path.relpath(real, self.root)
        if rel != "." and (pattern := self.excluded(rel.replace(os.sep, "/"))):
            raise forbidden(f"field 'path': '{path}' is excluded from git operations "
                            f"(matches {pattern!r})", "path")
        if not real.is_dir():
            what = "is a file, not a folder" if real.exists() else "does not exist"
            raise ApiError(404, "not_found", f"field 'path': '{path}' {what}", field="path")
        status, out, _ = self._execute(
            real, ["rev-parse", "--show-toplevel", "--absolute-git-dir"])
        if status != 0:
            raise ApiError(404, "not_found",
                           f"field 'path': '{path or '.'}' is not in a git repository "
                           "(under the server root); run git init there first", field="path")
        top_s, git_dir = out.strip("\n").split("\n")[:2]
        top = Path(os.path.realpath(top_s))
        if not is_within(self.root, top):  # e.g. core.worktree pointing elsewhere
            raise forbidden("field 'path': the repository's working tree is outside the "
                            "server root", "path")
        rel_top = os.path.relpath(top, self.root).replace(os.sep, "/")
        pairs, extra = untrusted_overrides(self.config_entries(top))
        return Repo(top=top, git_dir=Path(git_dir), rel=rel_top, overrides=tuple(pairs),
                    extra_env=tuple(extra.items()))

    # ------------------------------------------------------------------ config

    def config_entries(self, cwd: Path) -> list[tuple[str, str, str | None]]:
        """``(scope, key, value)`` of every config entry git sees in ``cwd``, in its order.

        Reading config runs nothing. Read as bytes and decoded like file names, so that a
        driver name that is not UTF-8 is written back to git unchanged.
        """
        status, out, err = self._execute(
            cwd, ["config", "--list", "--show-scope", "-z"], binary=True)
        if status != 0:
            raise self.error(["config"], os.fsdecode(err or out or b""), None)
        fields = os.fsdecode(out).split("\0")
        entries: list[tuple[str, str, str | None]] = []
        for scope, item in zip(fields[::2], fields[1::2], strict=False):
            key, newline, value = item.partition("\n")
            entries.append((scope, key, value if newline else None))
        return entries

    def with_submodules(self, repo: Repo, *, depth: int = 4, limit: int = 64) -> Repo:
        """``repo`` with the overrides of every checked-out submodule added (nested too).

        ``stash`` runs ``git status`` inside each submodule's working tree, under that
        submodule's own config, and has no option against it. The fixed options reach
        that git through the environment, but the filter names a submodule defines are
        known only from its own config, read here. Any gitlink with a ``.git`` beside it
        counts (git looks there with or without ``.gitmodules``). Deeper than ``depth`` or
        more than ``limit`` submodules: a 409 rather than an unbounded scan.
        """
        pairs, env = list(repo.overrides), dict(repo.extra_env)
        pending, count = [(repo.top, 0)], 0
        while pending:
            top, level = pending.pop()
            status, out, _ = self._execute(top, ["ls-files", "-z", "--stage"])
            for record in out.split("\0") if status == 0 else ():
                meta, _, path = record.partition("\t")
                sub = top / path
                if not meta.startswith("160000 ") or not os.path.lexists(sub / ".git"):
                    continue
                count += 1
                if level >= depth or count > limit:
                    raise ApiError(409, "git_failed",
                                   f"git would look inside more than {limit} submodules, or "
                                   f"deeper than {depth} levels; not done through the API")
                more, extra = untrusted_overrides(self.config_entries(sub))
                pairs += more
                env.update(extra)
                pending.append((sub, level + 1))
        return replace(repo, overrides=tuple(pairs), extra_env=tuple(env.items()))

    def _override(self, repo: Repo, key: str) -> str | None:
        return next((v for k, v in reversed(repo.overrides) if k == key), None)

    def fetch_options(self, repo: Repo, remote: str | None) -> list[str]:
        """``--upload-pack`` when the repository names its own for the remote fetched
        from (git takes the first ``remote.<name>.uploadpack`` it reads, so the override
        in the environment would come too late)."""
        name = remote or self._branch_config(repo, "remote") or "origin"
        command = self._override(repo, f"remote.{name}.uploadpack")
        return [] if command is None else [f"--upload-pack={command}"]

    def push_options(self, repo: Repo, remote: str | None) -> list[str]:
        """``--receive-pack`` that keeps the rules for a push to a repository on this machine.

        git runs ``git-receive-pack`` in the receiving repository itself, through the
        shell, with the config this runner passes stripped from its environment (git
        clears it for local transports): that repository's hooks and programs would run.
        The same rules, with that repository's own overrides, go inline as shell
        assignments. A push over the network gets only the override of a
        ``remote.<name>.receivepack`` the repository sets (see :meth:`fetch_options`):
        the receiving server's hooks are its owner's business.
        """
        name = remote or self._push_remote(repo)
        urls = self.run(repo, "remote", "get-url", "--push", "--all", "--", name,
                        ok=(0, 2)).splitlines()
        if not urls:  # not a configured remote: git takes it as a URL or a path
            expanded = self.run(repo, "ls-remote", "--get-url", "--", name, ok=(0, 1, 2, 128))
            urls = [name, *([expanded.strip()] if expanded.strip() else [])]
        local = [u for u in urls if is_local_url(u)]
        if not local:
            command = self._override(repo, f"remote.{name}.receivepack")
            return [] if command is None else [f"--receive-pack={command}"]
        if len(local) != len(urls):
            raise ApiError(409, "git_failed", f"remote '{name}' pushes both to this machine "
                           "and over the network; push to each through its own remote")
        pairs: list[tuple[str, str]] = list(SAFE_CONFIG)
        for url in local:
            path = Path(url[len("file://"):] if url.startswith("file://") else url)
            target = repo.top / path  # a relative path is relative to the working tree
            for candidate in (target, Path(f"{target}.git")):
                if candidate.is_dir():
                    theirs = untrusted_overrides(self.config_entries(candidate))[0]
                    pairs += [p for p in theirs if not _AS_OPTIONS.fullmatch(p[0])]
                    break
        assignments = " ".join(f"{key}={shlex.quote(value)}"
                               for key, value in config_env(pairs, base=0).items())
        return [f"--receive-pack={assignments} git-receive-pack"]

    def _branch_config(self, repo: Repo, name: str) -> str | None:
        """``branch.<current branch>.<name>``; None when unset or HEAD is detached."""
        branch = self.run(repo, "symbolic-ref", "-q", "--short", "HEAD", ok=(0, 1)).strip()
        if not branch:
            return None
        return self.run(repo, "config", "--get", f"branch.{branch}.{name}",
                        ok=(0, 1)).strip() or None

    def _push_remote(self, repo: Repo) -> str:
        """The remote a plain ``git push`` would use (git's order of settings)."""
        default = self.run(repo, "config", "--get", "remote.pushDefault", ok=(0, 1)).strip()
        return (self._branch_config(repo, "pushRemote") or default
                or self._branch_config(repo, "remote") or "origin")

    def file(self, repo: Repo, path: str, field: str = "files") -> str:
        """``path`` (relative to the repository's top level), checked; 403 if it escapes."""
        normal = normalise_relative(path, field, allow_root=True, status=403)
        if ".git" in normal.split("/"):
            raise forbidden(f"field '{field}': '{path}' is inside the .git folder", field)
        full = repo.top / normal
        # git never follows a symlink that is the path itself, but does follow its parents.
        target = full.parent if full.is_symlink() else full
        if not is_within(repo.top, Path(os.path.realpath(target))):
            raise forbidden(f"field '{field}': '{path}' resolves outside the repository",
                            field)
        rel_root = os.path.relpath(full, self.root).replace(os.sep, "/")
        if pattern := self.excluded(rel_root):
            raise forbidden(f"field '{field}': '{path}' is excluded from git operations "
                            f"(matches {pattern!r})", field)
        return normal

    def pathspecs(self, repo: Repo, files: Iterable[str] = ()) -> list[str]:
        """Literal pathspecs for ``files`` (all of the tree if none) minus the exclusions."""
        specs = [f":(literal){f}" for f in files] or ["."]
        for pattern in self.exclude:
            if "/" not in pattern:
                specs += [f":(exclude,glob)**/{pattern}", f":(exclude,glob)**/{pattern}/**"]
            elif repo.rel == ".":
                specs.append(f":(exclude,glob){pattern.strip('/')}")
            elif pattern.startswith(repo.rel + "/"):
                specs.append(f":(exclude,glob){pattern[len(repo.rel) + 1:]}")
        return specs

    def changed_files(self, repo: Repo, files: Iterable[str]) -> list[str]:
        """The changed or untracked (not ignored) files under ``files``, minus exclusions.

        ``git add`` is given this explicit list rather than ``:(exclude)`` pathspecs:
        git 2.39 silently adds nothing when an exclude pathspec meets a file in an
        untracked folder.
        """
        out = self.run(repo, "ls-files", "-z", "--others", "--modified", "--deleted",
                       "--exclude-standard", "--", *(f":(literal){f}" for f in files))
        prefix = "" if repo.rel == "." else repo.rel + "/"
        return [f for f in dict.fromkeys(out.split("\0"))
                if f and not self.excluded(prefix + f)]

    # ------------------------------------------------------------------ running

    def lock(self, repo: Repo) -> threading.Lock:
        """One lock per repository: writes to it are serialised."""
        with self._locks_guard:
            return self._locks.setdefault(repo.git_dir, threading.Lock())

    def _env(self, repo: Repo, env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a command in ``repo``: its overrides, then the caller's."""
        extra = {k: v for k, v in repo.extra_env if k not in os.environ}
        return {**config_env(repo.config_overrides), **extra, **(env or {})}

    def _execute(self, cwd: Path, args: Sequence[str], *, env: dict[str, str] | None = None,
                 binary: bool = False, timeout: float | None = None, stdin: Any = None):
        """Every git process starts here: ``GLOBAL_OPTIONS`` and the fixed environment."""
        try:
            return Git(str(cwd)).execute(
                ["git", *GLOBAL_OPTIONS, *args], istream=stdin,
                with_extended_output=True, with_exceptions=False,
                kill_after_timeout=timeout or self.timeout_s,
                env={**self.env, **(env or {})},
                strip_newline_in_stdout=False, stdout_as_string=not binary,
            )
        except GitCommandNotFound:
            raise ApiError(500, "git_missing", "git is not installed on the server") from None

    def run(self, repo: Repo, *args: str, field: str | None = None, ok: Sequence[int] = (0,),
            env: dict[str, str] | None = None, timeout: float | None = None,
            stdin: Any = None) -> str:
        """stdout of ``git args`` in ``repo``, or the API error its failure means."""
        status, out, err = self._execute(repo.top, args, env=self._env(repo, env),
                                         timeout=timeout, stdin=stdin)
        if status not in ok:
            raise self.error(args, f"{err}\n{out}".strip(), field)
        return out

    def run_full(self, repo: Repo, *args: str, field: str | None = None,
                 env: dict[str, str] | None = None) -> str:
        """stdout and stderr together (progress of fetch/pull/push), or the API error."""
        status, out, err = self._execute(repo.top, args, env=self._env(repo, env))
        text = "\n".join(x.strip("\n") for x in (out, err) if x.strip())
        if status != 0:
            raise self.error(args, text, field)
        return text

    def blob(self, repo: Repo, spec: str) -> bytes | None:
        """The bytes of ``rev:path`` (or ``:path`` for the index); None if absent."""
        status, out, _ = self._execute(repo.top, ["cat-file", "blob", spec],
                                       env=self._env(repo), binary=True)
        return out if status == 0 else None

    def error(self, args: Sequence[str], text: str, field: str | None) -> ApiError:
        text = text.replace(str(self.root) + os.sep, "").replace(str(self.root), ".")
        short = "\n".join(text.splitlines()[-6:])[:2000] or "no message"
        verb = args[0] if args else "git"
        for fragment, status, hint in _CONFLICTS:
            if fragment in text:
                if status == 504:
                    return timed_out(f"git {verb} took longer than {self.timeout_s:g} s")
                return ApiError(409, "conflict", f"git {verb}: {short}\n-> {hint}")
        if any(f in text for f in _BAD_ARGUMENT):
            prefix = f"field '{field}': " if field else ""
            return bad_request(f"{prefix}git {verb}: {short}", field)
        return ApiError(409, "git_failed", f"git {verb} failed: {short}")
