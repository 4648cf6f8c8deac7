"""The git service: every verb of ``jupyter-ds/v1/git/<verb>`` as plain Python.

One class serves the handlers and the CLI. Each verb takes its request dataclass and
returns the ``data`` of the envelope. Repositories are named by a folder relative to the
server root and resolved by :class:`~jupyter_ds.git.runner.Runner`, which also confines
file paths, applies the exclusion list and maps git's failures to API errors. Writes to
one repository are serialised by its lock; :meth:`GitService.call` runs a verb off the
event loop with an overall timeout.

git never runs a program that a repository brings (see :mod:`jupyter_ds.git.runner`),
hooks included. A repository's ``pre-commit`` and ``commit-msg`` hooks run only when the
server's admin turns ``GitSettings.commit_hooks`` on, and then in the test sandbox
(:meth:`GitService._commit_hooks`).
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ds_engine import Engine, FinishReason, GenerationRequest, Priority

from jupyter_ds.errors import ApiError, bad_request, timed_out
from jupyter_ds.git import message as msg
from jupyter_ds.git import parse
from jupyter_ds.git.nbdiff import notebook_diff
from jupyter_ds.git.requests import READ_VERBS, WRITE_VERBS
from jupyter_ds.git.runner import (
    DEFAULT_EXCLUDE,
    SAFE_CONFIG,
    TRUSTED_SCOPES,
    Repo,
    Runner,
    config_env,
)
from jupyter_ds.git.validate import CONFIG_KEYS, check_config, check_ref, check_rev
from jupyter_ds.paths import is_within
from jupyter_ds.testgen import sandbox

# No external diff or textconv program; submodules' working trees are not looked into
# (that would run git there under the submodule's own config).
DIFF_OPTIONS = ("--no-ext-diff", "--no-textconv", "--ignore-submodules=dirty", "-M")
# The hooks that may refuse a commit: the ones run, sandboxed, when commit_hooks is on.
COMMIT_HOOKS = ("pre-commit", "commit-msg")
HOOK_MAX_BYTES = 1024 * 1024
# The pytest file the sandbox runs: it starts one hook and fails with its output.
_HOOK_TEST = """\
import os
import subprocess

import pytest

NAME = {name!r}
ARGS = {args!r}
CWD = {cwd!r}
ENV = {env!r}
TIMEOUT = {timeout!r}


def test_hook():
    here = os.getcwd()
    hook = os.path.join(here, "hook", NAME)
    os.chmod(hook, 0o755)
    try:
        proc = subprocess.run(
            [hook, *(os.path.join(here, a) for a in ARGS)], cwd=CWD,
            env={{**os.environ, **ENV}}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"it ran longer than {{TIMEOUT}} s", pytrace=False)
    except OSError as exc:
        pytest.fail(f"it could not be started: {{exc}}", pytrace=False)
    if proc.returncode != 0:
        out = proc.stdout.decode("utf-8", "replace").strip()[-3000:]
        pytest.fail(f"exit {{proc.returncode}}" + (":\\n" + out if out else ""),
                    pytrace=False)
"""
STATE_FILES = (("MERGE_HEAD", "merging"), ("rebase-merge", "rebasing"),
               ("rebase-apply", "rebasing"), ("CHERRY_PICK_HEAD", "cherry-picking"),
               ("REVERT_HEAD", "reverting"), ("BISECT_LOG", "bisecting"))


@dataclass
class GitSettings:
    timeout_s: float = 60.0
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    max_diff_chars: int = 500_000
    max_blame_lines: int = 20_000
    message_max_tokens: int = 96
    message_diff_tokens: int = 1200
    message_timeout_s: float = 120.0
    # Run the repository's pre-commit and commit-msg hooks, in the test sandbox.
    commit_hooks: bool = False


class GitService:
    """Git operations on repositories under ``root_dir``; ``engine`` drafts messages."""

    def __init__(self, root_dir: str, engine: Engine | None = None,
                 settings: GitSettings | None = None, sandbox_capacity: Any = None):
        """``sandbox_capacity``: the test sandbox's :class:`SandboxCapacity`
        (``jupyter_ds.testgen.service``), through which commit hooks run, so that they
        count against its global cap like every other sandbox run; None: run directly."""
        self.settings = settings or GitSettings()
        self.engine = engine
        self.sandbox_capacity = sandbox_capacity
        self._loop: asyncio.AbstractEventLoop | None = None
        self.git = Runner(root_dir, timeout_s=self.settings.timeout_s,
                          exclude=self.settings.exclude)

    # ------------------------------------------------------------------ dispatch

    async def call(self, verb: str, req: Any, *, write: bool, user: str | None = None
                   ) -> dict[str, Any]:
        """Run ``verb`` off the event loop; a 504 when it outlives the timeout."""
        if verb not in (WRITE_VERBS if write else READ_VERBS):
            raise ApiError(404, "not_found", f"unknown git verb '{verb}'")
        if verb == "commit-message":
            return await self.commit_message(req)
        name = verb.replace("-", "_")
        if verb == "config" and write:
            name = "set_config"
        fn = getattr(self, name)
        kwargs = {"user": user} if verb == "commit" else {}
        self._loop = asyncio.get_running_loop()  # where the sandbox's capacity lives
        limit = self.settings.timeout_s * 3 + 5  # a verb runs a few commands
        if verb == "commit" and self.settings.commit_hooks:
            limit += len(COMMIT_HOOKS) * (self.settings.timeout_s + 30)  # sandboxed hooks
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, req, **kwargs), limit)
        except asyncio.TimeoutError:
            raise timed_out(f"git {verb} took longer than {limit:g} s") from None

    def _write(self, repo: Repo):
        lock = self.git.lock(repo)
        if not lock.acquire(timeout=self.settings.timeout_s):
            raise ApiError(409, "conflict", "another git operation is running on this "
                           "repository; retry when it has finished")
        return _Held(lock)

    # ------------------------------------------------------------------ reads

    def _has_head(self, repo: Repo) -> bool:
        return bool(self.git.run(repo, "rev-parse", "-q", "--verify", "HEAD", ok=(0, 1)))

    def status(self, req: Any) -> dict[str, Any]:
        return self._status(self.git.repo(req.path))

    def _status(self, repo: Repo) -> dict[str, Any]:
        out = self.git.run(repo, "status", "--porcelain=v2", "--branch", "-z",
                           "--untracked-files=normal", "--ignore-submodules=dirty",
                           env={"GIT_OPTIONAL_LOCKS": "0"})
        result = parse.parse_status(out)
        state = next((name for f, name in STATE_FILES if (repo.git_dir / f).exists()),
                     "clean")
        return {"repo": repo.rel, "state": state, **result}

    def diff(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        if req.to and not req.from_:
            raise bad_request("field 'to' needs 'from' as well", "to")
        if req.staged and req.to:
            raise bad_request("field 'to' cannot be used with staged=true", "to")
        revs = [check_rev(r, f) for r, f in ((req.from_, "from"), (req.to, "to")) if r]
        files = [self.git.file(repo, req.file, "file")] if req.file else []
        return self._diff(repo, staged=req.staged, revs=revs, files=files,
                          context=req.context)

    def _diff(self, repo: Repo, *, staged: bool, revs: list[str], files: list[str],
              context: int = 3) -> dict[str, Any]:
        base = ["diff", *DIFF_OPTIONS, *(["--cached"] if staged else []), *revs]
        specs = self.git.pathspecs(repo, files)
        field = "from" if revs else None
        numstat = parse.parse_numstat(self.git.run(repo, *base, "--numstat", "-z", "--",
                                                   *specs, field=field))
        names = parse.parse_name_status(self.git.run(repo, *base, "--name-status", "-z",
                                                     "--", *specs, field=field))
        text = self.git.run(repo, *base, f"-U{context}", "--", *specs,
                            ":(exclude,glob)**/*.ipynb", field=field)
        out_files = []
        for f in numstat:
            status, old = names.get(f["path"], ("M", f["old_path"]))
            item = {**f, "status": status, "old_path": old,
                    "notebook": f["path"].lower().endswith(".ipynb")}
            if item["notebook"]:
                nb = self._notebook(repo, item, staged, revs, context)
                if nb is None:  # not valid notebook JSON: git's own diff of the file
                    text += self.git.run(repo, *base, f"-U{context}", "--",
                                         f":(literal){f['path']}")
                else:
                    text += nb[0]
                    item["additions"], item["deletions"] = nb[1], nb[2]
            out_files.append(item)
        limit = self.settings.max_diff_chars
        truncated = len(text) > limit
        if truncated:
            text = text[:limit].rsplit("\n", 1)[0] + "\n"
        return {"files": out_files, "text": text, "truncated": truncated}

    def _notebook(self, repo: Repo, f: dict[str, Any], staged: bool, revs: list[str],
                  context: int) -> tuple[str, int, int] | None:
        path, old_path = f["path"], f["old_path"] or f["path"]
        if staged:
            old_rev = revs[0] if revs else ("HEAD" if self._has_head(repo) else None)
            old = self.git.blob(repo, f"{old_rev}:{old_path}") if old_rev else None
            new = self.git.blob(repo, f":{path}")
        elif revs:
            old = self.git.blob(repo, f"{revs[0]}:{old_path}")
            new = self.git.blob(repo, f"{revs[1]}:{path}") if len(revs) > 1 else \
                self._worktree(repo, path)
        else:
            old = self.git.blob(repo, f":{old_path}")
            new = self._worktree(repo, path)
        if f["status"] == "A":
            old = None
        if f["status"] == "D":
            new = None
        return notebook_diff(old, new, old_path, path, context)

    def _worktree(self, repo: Repo, path: str) -> bytes | None:
        try:
            self.git.file(repo, path, "file")
            return (repo.top / path).read_bytes()
        except (OSError, ApiError):
            return None

    def log(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        rev = [check_rev(req.rev, "rev")] if req.rev else []
        files = [":(literal)" + self.git.file(repo, req.file, "file")] if req.file else []
        if not rev and not self._has_head(repo):
            return {"commits": [], "has_more": False}
        out = self.git.run(repo, "log", f"--format={parse.LOG_FORMAT}", f"--skip={req.skip}",
                           f"-n{req.limit + 1}", *rev, "--", *files, field="rev")
        commits = parse.parse_log(out)
        return {"commits": commits[: req.limit], "has_more": len(commits) > req.limit}

    def show(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        rev = check_rev(req.rev, "rev")
        out = self.git.run(repo, "show", "-s", f"--format={parse.SHOW_FORMAT}",
                           f"{rev}^{{commit}}", "--", field="rev")
        commit = parse.parse_show(out)
        parent = commit["parents"][0] if commit["parents"] else self._empty_tree(repo)
        diff = self._diff(repo, staged=False, revs=[parent, commit["sha"]], files=[])
        return {"commit": commit, "files": diff["files"], "text": diff["text"],
                "truncated": diff["truncated"]}

    def _empty_tree(self, repo: Repo) -> str:
        return self.git.run(repo, "hash-object", "-t", "tree", "/dev/null").strip()

    def branches(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        current = self.git.run(repo, "symbolic-ref", "-q", "--short", "HEAD",
                               ok=(0, 1)).strip() or None
        out = self.git.run(repo, "for-each-ref", "--format=%(refname)%00%(objectname)%00"
                           "%(upstream:short)", "refs/heads", "refs/remotes")
        local, remote = [], []
        for line in out.splitlines():
            ref, sha, upstream = line.split("\0")
            if ref.startswith("refs/heads/"):
                local.append({"name": ref[11:], "sha": sha, "upstream": upstream or None})
            elif not ref.endswith("/HEAD"):
                remote.append({"name": ref[13:], "sha": sha})
        return {"current": current, "detached": current is None, "local": local,
                "remote": remote}

    def blame(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        path = self.git.file(repo, req.file, "file")
        rev = [check_rev(req.rev, "rev")] if req.rev else []
        out = self.git.run(repo, "blame", "--porcelain", "--no-textconv", *rev, "--", path,
                           field="file")
        lines, truncated = parse.parse_blame(out, self.settings.max_blame_lines)
        return {"file": path, "lines": lines, "truncated": truncated}

    def config(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        keys = [check_config(req.key)] if req.key else list(CONFIG_KEYS)
        values = {k: self._config_value(repo, k) for k in keys}
        out: dict[str, Any] = {"values": values}
        if req.key:
            out.update(key=keys[0], value=values[keys[0]])
        return out

    def _config_value(self, repo: Repo, key: str) -> str | None:
        return self.git.run(repo, "config", "--get", key, ok=(0, 1)).strip() or None

    # ------------------------------------------------------------------ writes

    def _files(self, repo: Repo, files: list[str]) -> list[str]:
        if not files:
            raise bad_request("field 'files' must name at least one file", "files")
        return [self.git.file(repo, f, "files") for f in files]

    def add(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        files = self._files(repo, req.files)
        with self._write(repo):
            changed = self.git.changed_files(repo, files)
            if changed:
                with tempfile.TemporaryFile() as specs:
                    specs.write(b"\0".join(f":(literal){f}".encode() for f in changed))
                    specs.seek(0)
                    self.git.run(repo, "add", "-A", "--pathspec-from-file=-",
                                 "--pathspec-file-nul", stdin=specs, field="files")
            elif missing := [f for f in files if not os.path.lexists(repo.top / f)]:
                # Nothing changed there: let git say that the named file does not exist.
                self.git.run(repo, "add", "-A", "--", *(f":(literal){f}" for f in missing),
                             field="files")
            return {"status": self._status(repo)}

    def restore(self, req: Any) -> dict[str, Any]:
        """Discard working-tree changes of tracked files (back to the index)."""
        repo = self.git.repo(req.path)
        files = self._files(repo, req.files)
        with self._write(repo):
            self.git.run(repo, "restore", "--worktree", "--",
                         *(f":(literal){f}" for f in files), field="files")
            return {"status": self._status(repo)}

    def unstage(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        files = self._files(repo, req.files)
        specs = [f":(literal){f}" for f in files]
        with self._write(repo):
            if self._has_head(repo):
                self.git.run(repo, "restore", "--staged", "--", *specs, field="files")
            else:  # no commit yet: nothing to restore from, take them out of the index
                self.git.run(repo, "rm", "--cached", "-r", "-q", "--", *specs,
                             field="files")
            return {"status": self._status(repo)}

    def commit(self, req: Any, user: str | None = None) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        message = (req.message or "").strip()
        if not message and not req.amend:
            raise bad_request("field 'message' is empty", "message")
        env = self._identity(repo, user)
        args = ["commit", "--no-edit" if not message else f"--message={message}",
                *(["--amend"] if req.amend else [])]
        with self._write(repo):
            if self.settings.commit_hooks:
                self._commit_hooks(repo, message)
            self.git.run(repo, *args, env=env)
            out = self.git.run(repo, "log", "-1", "--format=%H%x00%h%x00%s").rstrip("\n")
            sha, short, summary = out.split("\0", 2)
        return {"sha": sha, "short": short, "summary": summary}

    def _identity(self, repo: Repo, user: str | None) -> dict[str, str]:
        """Author and committer: git config first, else the Jupyter user, else a 400."""
        name = self._config_value(repo, "user.name")
        email = self._config_value(repo, "user.email")
        env: dict[str, str] = {}
        if not name:
            if not user:
                raise bad_request("no commit author: set 'user.name' and 'user.email' "
                                  "(POST git/config) first", "user.name")
            env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = user
        if not email:
            login = re.sub(r"[^A-Za-z0-9._-]+", "-", user or name or "jupyter").strip("-")
            env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = \
                f"{login or 'jupyter'}@localhost"
        return env

    # ------------------------------------------------------------------ commit hooks

    def _commit_hooks(self, repo: Repo, message: str) -> None:
        """The repository's ``pre-commit`` then ``commit-msg`` hook, each in the sandbox.

        git itself never runs a hook here (``core.hooksPath`` is ``/dev/null``): its
        hooks would run with the server's rights. When the admin turns ``commit_hooks``
        on, the two hooks that decide whether a commit may happen run in the test
        sandbox (:func:`jupyter_ds.testgen.sandbox.run_pytest`, with a one-test pytest
        file that starts the hook): no network, the server's files out of sight, and the
        repository **read-only** (bound read-only as the run's project). A hook can read
        the working tree, the index and history (``git diff --cached`` works) but cannot
        change them: one that formats files and stages them fails instead, and
        ``commit-msg`` sees a copy of the message whose edits are ignored. The hook's own
        script is copied into the run, so one outside the repository (``core.hooksPath``)
        is read once, here. The others (``prepare-commit-msg``, ``post-commit``, ...)
        never run. Without bubblewrap the sandbox could not hide the server's files, so
        a repository with such a hook cannot commit through the API: a 409 says why,
        rather than the hook running unsandboxed. A hook that fails refuses the commit
        (409 ``git_failed``, with its output); nothing is committed.
        """
        hooks = self._hooks(repo)
        if not hooks:
            return
        info = sandbox.detect_sandbox()
        if info.mode != "bwrap":
            raise ApiError(409, "git_failed", (
                f"git commit: this repository has a {' and a '.join(hooks)} hook and commit "
                "hooks are on (JupyterDsApp.git_commit_hooks), but they run only in the "
                f"bubblewrap sandbox, which is not available here ({info.reason}). Install "
                "bubblewrap, or turn git_commit_hooks off (the hooks are then not run)"))
        if not message:  # --amend --no-edit: the message kept
            message = self.git.run(repo, "log", "-1", "--format=%B")
        for name, path in hooks.items():
            self._run_hook(repo, name, path, message)

    def _hooks(self, repo: Repo) -> dict[str, str]:
        """``COMMIT_HOOKS`` that exist and are executable: name -> script path.

        Where git would look: ``core.hooksPath`` (relative to the working tree), else the
        ``hooks`` folder of the git directory. A hook that the repository's own config
        points to must lie under the server root: its text is copied into the sandbox,
        and a repository must not make the server read a file elsewhere (a 409).
        """
        configured = [(scope, value) for scope, key, value
                      in self.git.config_entries(repo.top)
                      if key == "core.hookspath" and scope != "command" and value]
        if configured:
            scope, value = configured[-1]
            folder = repo.top / os.path.expanduser(value)
        else:
            scope = "local"
            common = self.git.run(repo, "rev-parse", "--path-format=absolute",
                                  "--git-common-dir").strip()
            folder = repo.top / common / "hooks"
        hooks = {name: str(folder / name) for name in COMMIT_HOOKS
                 if os.path.isfile(folder / name) and os.access(folder / name, os.X_OK)}
        for name, path in hooks.items():
            if scope not in TRUSTED_SCOPES and not is_within(self.git.root,
                                                             Path(os.path.realpath(path))):
                raise ApiError(409, "git_failed", f"git commit: the repository's {name} "
                               "hook lies outside the server root, so it is not run; "
                               "move it into the repository (core.hooksPath)")
        return hooks

    def _run_hook(self, repo: Repo, name: str, path: str, message: str) -> None:
        """Run one hook in the sandbox; a 409 carrying its output when it fails."""
        try:
            with open(path, "rb") as f:
                script = f.read(HOOK_MAX_BYTES + 1).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            script = None
        if script is None or len(script) > HOOK_MAX_BYTES:
            raise ApiError(409, "git_failed", f"git commit: the {name} hook is not a text "
                           "script of at most 1 MiB, so it cannot run in the sandbox")
        timeout = self.settings.timeout_s
        env = {
            **self.git.env, "GIT_OPTIONAL_LOCKS": "0",  # the repository is read-only
            "GIT_CONFIG_NOSYSTEM": "1",  # not in the sandbox (nor the server's HOME)
            # The sandbox's user does not own the repository: git must still read it.
            **sandbox_config(repo),
        }
        sources = {f"hook/{name}": script, "COMMIT_EDITMSG": message}
        test = _HOOK_TEST.format(name=name, cwd=str(repo.top), env=env, timeout=timeout,
                                 args=["COMMIT_EDITMSG"] if name == "commit-msg" else [])
        report = self._sandboxed(sandbox.run_pytest, test, sources, project_dir=repo.top,
                                 targets=[], timeout=timeout + 30, test_timeout=timeout + 5)
        if report.all_passed:
            return
        result = next(iter(report.tests.values()), None)
        if report.ok and result is not None and result.outcome == "failed":
            text = (result.details or result.message).strip()
            root = str(self.git.root)
            text = text.replace(root + os.sep, "").replace(root, ".")
            status, _, output = text.partition(":\n")  # "exit N", then what it printed
            raise ApiError(409, "git_failed", f"git commit: the {name} hook refused the "
                           f"commit ({status})" + (f":\n{output}" if output else "")
                           + "\n-> fix what it reports, then commit again")
        why = report.reason or (result.message if result else "") or "no report"
        raise ApiError(409, "git_failed",
                       f"git commit: the {name} hook could not be run in the sandbox: {why}")

    def _sandboxed(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn`` (a sandbox run) within the sandbox's capacity, from this git thread.

        The capacity lives on the event loop; this thread waits for its slot and run
        there (503 ``sandbox_busy`` when it is full), so a hook is one more sandbox run,
        never one beside the cap.
        """
        capacity, loop = self.sandbox_capacity, self._loop
        if capacity is None or loop is None or not loop.is_running():
            return fn(*args, **kwargs)
        future = asyncio.run_coroutine_threadsafe(capacity.run(fn, *args, **kwargs), loop)
        return future.result()

    def branch(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        name = check_ref(req.name, "name")
        start = [check_rev(req.start, "start")] if req.start else []
        with self._write(repo):
            self.git.run(repo, "branch", "--", name, *start, field="start")
            return self._branches_of(repo)

    def switch(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        name = check_ref(req.name, "name")
        with self._write(repo):
            # Quiet: its report of local changes would look into submodules' trees.
            self.git.run(repo, "switch", "-q", name, field="name")
            return {"status": self._status(repo)}

    def branch_delete(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        name = check_ref(req.name, "name")
        with self._write(repo):
            self.git.run(repo, "branch", "-D" if req.force else "-d", "--", name,
                         field="name")
            return self._branches_of(repo)

    def _branches_of(self, repo: Repo) -> dict[str, Any]:
        return self.branches(_PathOnly(repo.rel))

    def stash(self, req: Any) -> dict[str, Any]:
        repo = self.git.with_submodules(self.git.repo(req.path))
        args = ["stash", "push", *([f"--message={req.message}"] if req.message else [])]
        with self._write(repo):
            output = self.git.run_full(repo, *args)
            return {"output": output, "stashed": "No local changes" not in output,
                    "status": self._status(repo)}

    def stash_pop(self, req: Any) -> dict[str, Any]:
        repo = self.git.with_submodules(self.git.repo(req.path))
        with self._write(repo):
            output = self.git.run_full(repo, "stash", "pop")
            return {"output": output, "status": self._status(repo)}

    def _remote_args(self, repo: Repo, req: Any) -> list[str]:
        remote = check_ref(req.remote, "remote") if req.remote else None
        branch = check_ref(req.branch, "branch") if req.branch else None
        if branch and not remote:
            remote = self._default_remote(repo)
        return [x for x in (remote, branch) if x]

    def _default_remote(self, repo: Repo) -> str:
        current = self.git.run(repo, "symbolic-ref", "-q", "--short", "HEAD", ok=(0, 1)).strip()
        if current:
            configured = self._config_value(repo, f"branch.{current}.remote")
            if configured:
                return configured
        remotes = self.git.run(repo, "remote").split()
        if "origin" in remotes or not remotes:
            return "origin"
        return remotes[0]

    def fetch(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        args = self._remote_args(repo, req)
        with self._write(repo):
            # "--": a remote name read from the repository's config is never an option.
            options = self.git.fetch_options(repo, args[0] if args else None)
            return {"output": self.git.run_full(repo, "fetch", *options, "--", *args,
                                                field="remote")}

    def pull(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        args = self._remote_args(repo, req)
        with self._write(repo):
            options = self.git.fetch_options(repo, args[0] if args else None)
            return {"output": self.git.run_full(repo, "pull", "--no-edit", *options, "--",
                                                *args, field="remote")}

    def push(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        args = self._remote_args(repo, req)
        current = self.git.run(repo, "symbolic-ref", "-q", "--short", "HEAD", ok=(0, 1)).strip()
        upstream = current and self._config_value(repo, f"branch.{current}.merge")
        options: list[str] = []
        if current and not upstream and len(args) < 2:
            # First push of a new branch: publish it and track it, as the UI expects.
            args = [args[0] if args else self._default_remote(repo), current]
            options.append("--set-upstream")
        with self._write(repo):
            options += self.git.push_options(repo, args[0] if args else None)
            # "--": a remote name read from the repository's config is never an option.
            return {"output": self.git.run_full(repo, "push", *options, "--", *args,
                                                field="remote")}

    def set_config(self, req: Any) -> dict[str, Any]:
        repo = self.git.repo(req.path)
        key = check_config(req.key, req.value)
        with self._write(repo):
            if req.value is None:
                self.git.run(repo, "config", "--local", "--unset", key, ok=(0, 5))
            else:
                self.git.run(repo, "config", "--local", key, req.value)
            return {"key": key, "value": self._config_value(repo, key)}

    # ------------------------------------------------------------------ drafting

    async def commit_message(self, req: Any) -> dict[str, Any]:
        """A commit message drafted by the model from the staged diff (bounded)."""
        from jupyter_ds.engine_calls import engine_errors, ensure_ready

        def staged() -> dict[str, Any]:
            repo = self.git.repo(req.path)
            return self._diff(repo, staged=True, revs=[], files=[], context=2)

        diff = await asyncio.wait_for(asyncio.to_thread(staged), self.settings.timeout_s * 3)
        if not diff["files"]:
            raise bad_request("nothing is staged: add files before drafting a commit message",
                              "path")
        if self.engine is None:
            raise ApiError(503, "model_not_ready", "no model is configured", retry_after=60)
        ensure_ready(self.engine)
        bounded, trimmed = msg.bound_diff(diff["text"], self.settings.message_diff_tokens * 3)
        template = self.engine.template
        prompt = template.chat_prompt(
            [{"role": "user", "content": msg.build_user_prompt(diff["files"], bounded)}],
            system=msg.SYSTEM)
        while self.engine.count_tokens(prompt) > self.settings.message_diff_tokens + 400 \
                and len(bounded) > 200:
            bounded, trimmed = msg.bound_diff(bounded, len(bounded) * 2 // 3)[0], True
            prompt = template.chat_prompt(
                [{"role": "user", "content": msg.build_user_prompt(diff["files"], bounded)}],
                system=msg.SYSTEM)
        started = time.monotonic()
        with engine_errors():
            result = await self.engine.generate(GenerationRequest(
                prompt=prompt, max_tokens=req.max_tokens or self.settings.message_max_tokens,
                temperature=0.0, stop=list(template.chat_stop),
                timeout_s=self.settings.message_timeout_s, priority=Priority.BATCH))
        if result.finish_reason is FinishReason.TIMEOUT:
            raise timed_out(f"drafting took longer than {self.settings.message_timeout_s} s")
        return {
            **msg.postprocess(template.strip_special(result.text), diff["files"]),
            "token_count": result.token_count,
            "confidence": round(result.confidence, 4),
            "model": result.model,
            "latency_ms": round(result.latency_ms or (time.monotonic() - started) * 1000, 1),
            "diff_trimmed": trimmed or diff["truncated"],
            "files": [f["path"] for f in diff["files"]],
        }


def sandbox_config(repo: Repo) -> dict[str, str]:
    """Config for git inside the sandbox: the runner's rules, and ``safe.directory``."""
    pairs = [*SAFE_CONFIG, ("safe.directory", "*"), *repo.config_overrides]
    return config_env(pairs, base=0)


@dataclass
class _PathOnly:
    path: str


class _Held:
    """Releases a lock acquired with a timeout when the ``with`` block ends."""

    def __init__(self, lock: Any):
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
