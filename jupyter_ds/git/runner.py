"""Finding a repository under the server root and running git in it, safely.

Every command is an argument list run through GitPython's command layer (never a shell),
with a timeout that kills the process, no terminal prompts, and repository discovery that
stops at the server root (``GIT_CEILING_DIRECTORIES``), so a folder in the root is never
taken as part of a repository that lives above it. git's failures become API errors:
404 for "not a repository", 409 for conflicts (with what to do), 400 for bad arguments,
504 for timeouts.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from git.cmd import Git
from git.exc import GitCommandNotFound

from jupyter_ds.errors import ApiError, bad_request, timed_out
from jupyter_ds.paths import forbidden, is_within, normalise_relative, resolve_under_root

DEFAULT_EXCLUDE = (
    ".ssh", ".gnupg", ".git-credentials", ".netrc", ".aws", ".azure", ".kube", ".docker",
    ".pypirc", ".npmrc", "id_rsa*", "id_ed25519*", "*.pem", "*.key",
)
# Options every command gets: unquoted UTF-8 paths, no colour, no pager.
GLOBAL_OPTIONS = ("-c", "core.quotepath=off", "-c", "color.ui=false", "--no-pager")

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
    env = {
        "GIT_CEILING_DIRECTORIES": str(root.parent),
        "GIT_TERMINAL_PROMPT": "0",  # never wait for a password nobody can type
        "GIT_EDITOR": "true",
        "GIT_MERGE_AUTOEDIT": "no",
    }
    if "GIT_SSH_COMMAND" not in os.environ:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


@dataclass(frozen=True)
class Repo:
    """A repository whose working tree is under the server root."""

    top: Path  # real path of the working tree's top level
    git_dir: Path
    rel: str  # ``top`` relative to the server root ("." for the root itself)


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
        """The exclusion pattern that ``rel_to_root`` matches, if any."""
        parts = rel_to_root.split("/")
        for pattern in self.exclude:
            if "/" in pattern:
                if fnmatch.fnmatchcase(rel_to_root, pattern.strip("/")):
                    return pattern
            elif any(fnmatch.fnmatchcase(p, pattern) for p in parts):
                return pattern
        return None

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
        return Repo(top=top, git_dir=Path(git_dir), rel=rel_top)

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

    def _execute(self, cwd: Path, args: Sequence[str], *, env: dict[str, str] | None = None,
                 binary: bool = False, timeout: float | None = None, stdin: Any = None):
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
        status, out, err = self._execute(repo.top, args, env=env, timeout=timeout,
                                         stdin=stdin)
        if status not in ok:
            raise self.error(args, f"{err}\n{out}".strip(), field)
        return out

    def run_full(self, repo: Repo, *args: str, field: str | None = None,
                 env: dict[str, str] | None = None) -> str:
        """stdout and stderr together (progress of fetch/pull/push), or the API error."""
        status, out, err = self._execute(repo.top, args, env=env)
        text = "\n".join(x.strip("\n") for x in (out, err) if x.strip())
        if status != 0:
            raise self.error(args, text, field)
        return text

    def blob(self, repo: Repo, spec: str) -> bytes | None:
        """The bytes of ``rev:path`` (or ``:path`` for the index); None if absent."""
        status, out, _ = self._execute(repo.top, ["cat-file", "blob", spec], binary=True)
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
