"""Hostile repositories (issue 15, finding 2): git through the API never runs their code.

A repository unpacked from an archive into the server root brings its own ``.git/config``,
hooks and ``.gitattributes``. Each test plants every way such a repository can make git
start a program (fsmonitor, hooks in ``.git/hooks`` or under ``core.hooksPath``, filter,
textconv, external-diff and merge drivers, pager, editor, credential helper, gpg, ssh and
askpass commands, upload/receive-pack commands, an alternate-refs command, a submodule
with its own such config, hooks of a local bare remote), each writing a marker file
outside the server root, then drives every git verb of the API and asserts that no
marker appears and that the verbs still give the right answers.

Commit hooks run only when ``JupyterDsApp.git_commit_hooks`` is on, and then inside the
test sandbox (bubblewrap), with the repository read-only; those tests are skipped where
bubblewrap does not work.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import test_git_api
from gitrepos import RepoFactory
from test_api import assert_error, assert_success

from jupyter_ds.testgen import sandbox as sb

# The git API suite's fixtures: a RepoFactory under the server root, and the API caller.
repos = test_git_api.repos
git = test_git_api.git

# Hooks git runs on the client side, and those of a repository pushed to.
HOOKS = (
    "pre-commit", "prepare-commit-msg", "commit-msg", "post-commit", "post-checkout",
    "post-merge", "pre-merge-commit", "pre-push", "post-rewrite", "reference-transaction",
    "post-index-change", "pre-auto-gc", "pre-rebase", "fsmonitor-watchman",
)
REMOTE_HOOKS = ("pre-receive", "update", "post-receive", "post-update",
                "reference-transaction", "push-to-checkout")
# Hooks whose failure would stop git: they fail too, so a run would also show as an error.
FAILING_HOOKS = ("pre-commit", "commit-msg", "pre-merge-commit", "pre-push", "pre-receive")


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    """Where a planted program leaves its marker: outside the server root."""
    path = tmp_path / "markers"
    path.mkdir()
    return path


def touch(markers: Path, name: str) -> str:
    return f"touch '{markers / name}'"


def write_hook(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def plant_hooks(folder: Path, markers: Path, names: tuple[str, ...], tag: str) -> None:
    for name in names:
        code = 1 if name in FAILING_HOOKS else 0
        write_hook(folder, name, f"{touch(markers, f'{tag}-hook-{name}')}\nexit {code}")


def hostile_config(markers: Path, tag: str = "repo") -> dict[str, str]:
    """Every config key that makes git start a program, each leaving a marker."""

    def t(name: str) -> str:
        return touch(markers, f"{tag}-{name}")

    return {
        "core.fsmonitor": f"{t('fsmonitor')}; false",
        "core.pager": t("pager"),
        "pager.status": t("pager-status"),
        "pager.log": t("pager-log"),
        "core.editor": t("editor"),
        "sequence.editor": t("sequence-editor"),
        "core.sshCommand": t("ssh-command"),
        "core.askPass": t("askpass"),
        "core.gitProxy": t("git-proxy"),
        "credential.helper": f"!{t('credential-helper')}",
        "gpg.program": f"{t('gpg')}; false",
        "gpg.ssh.defaultKeyCommand": t("gpg-ssh-key"),
        "commit.gpgSign": "true",
        "log.showSignature": "true",
        "diff.external": t("diff-external"),
        "diff.evil.textconv": f"{t('textconv')}; cat",
        "diff.evil.command": t("diff-command"),
        "filter.evil.clean": f"{t('filter-clean')}; cat",
        "filter.evil.smudge": f"{t('filter-smudge')}; cat",
        "filter.evil.process": t("filter-process"),
        "filter.evil.required": "true",
        "merge.evil.driver": f"{t('merge-driver')}; false",
        "core.alternateRefsCommand": t("alternate-refs"),
        "remote.origin.uploadpack": f"{t('uploadpack')}; git-upload-pack",
        "remote.origin.receivepack": f"{t('receivepack')}; git-receive-pack",
    }


def configure(repos: RepoFactory, repo: Path, config: dict[str, str]) -> None:
    for key, value in config.items():
        repos.git(repo, "config", key, value)


def stat_dirty(path: Path) -> None:
    """Same content, another mtime: git must read the file (through its filter) to compare."""
    then = time.time() - 3600
    os.utime(path, (then, then))


def seen(markers: Path) -> list[str]:
    return sorted(p.name for p in markers.iterdir())


def build_hostile(repos: RepoFactory, markers: Path, hooks_at: str) -> Path:
    """A repository (with a local bare remote, a nested repository and alternates) that
    tries every way of running a program; all set up before any of it is planted."""
    repo = repos.init("hostile")
    repos.commit(repo, {
        ".gitattributes": "* filter=evil diff=evil merge=evil\n*.txt filter=inc\n",
        "notes.txt": "one\ntwo\n",
        "m.txt": "1\n2\n3\n4\n5\n",
    }, "attributes")
    # A nested repository recorded as a gitlink (no .gitmodules needed for git to look
    # inside it): its own config is as hostile as the outer one.
    sub = repos.init("hostile/sub")
    repos.commit(sub, {".gitattributes": "* filter=subevil\n"}, "sub attributes")
    repos.git(repo, "add", "sub")
    repos.git(repo, "commit", "-q", "-m", "sub")
    bare = repos.remote(repo)
    other = repos.clone(bare, "other")
    repos.commit(other, {"m.txt": "1 (theirs)\n2\n3\n4\n5\n"}, "theirs")
    repos.git(other, "push", "-q")
    (repo / ".git" / "objects" / "info" / "alternates").write_text(
        str(bare / "objects") + "\n")

    # Planted from here on: only the API runs git in these repositories.
    configure(repos, repo, hostile_config(markers))
    (repo / ".git" / "extra.config").write_text(
        f"[filter \"inc\"]\n\tclean = {touch(markers, 'include-clean')}; cat\n"
        f"\tsmudge = {touch(markers, 'include-smudge')}; cat\n")
    repos.git(repo, "config", "include.path", "extra.config")
    if hooks_at == "hooksPath":
        repos.git(repo, "config", "core.hooksPath", ".githooks")
        plant_hooks(repo / ".githooks", markers, HOOKS, "hookspath")
    plant_hooks(repo / ".git" / "hooks", markers, HOOKS, "repo")
    configure(repos, sub, {
        "core.fsmonitor": f"{touch(markers, 'sub-fsmonitor')}; false",
        "filter.subevil.clean": f"{touch(markers, 'sub-filter-clean')}; cat",
        "filter.subevil.smudge": f"{touch(markers, 'sub-filter-smudge')}; cat",
    })
    plant_hooks(sub / ".git" / "hooks", markers, HOOKS, "sub")
    configure(repos, bare, hostile_config(markers, "bare"))
    plant_hooks(bare / "hooks", markers, REMOTE_HOOKS, "bare")
    for path in (repo / "app.py", repo / "notes.txt", sub / "app.py", sub / "README.md"):
        stat_dirty(path)
    return repo


@pytest.mark.parametrize("hooks_at", ["git-dir", "hooksPath"])
async def test_no_verb_runs_what_a_repository_plants(repos, git, markers, jp_root_dir,
                                                     hooks_at):
    repo = build_hostile(repos, markers, hooks_at)
    ran: dict[str, list[str]] = {}
    done: set[str] = set()

    async def call(verb: str, payload: str | dict[str, Any]) -> dict[str, Any]:
        code, env = await git(verb, payload)
        new = [m for m in seen(markers) if m not in done]
        if new:
            ran[f"{verb} {payload}"] = new
            done.update(new)
        return assert_success(code, env)

    def untracked(st: dict[str, Any]) -> list[str]:
        return [p for p in st["untracked"] if not p.startswith(".githooks/")]

    # Reads.
    st = await call("status", "path=hostile")
    assert st["unstaged"] == [] and untracked(st) == [] and st["state"] == "clean"
    repos.write(repo, {"notes.txt": "one\ntwo\nthree\n", "new.py": "x = 1\n"})
    st = await call("status", "path=hostile")
    assert st["unstaged"] == [{"path": "notes.txt", "status": "M"}]
    assert untracked(st) == ["new.py"]
    diff = await call("diff", "path=hostile")
    assert "+three" in diff["text"] and [f["path"] for f in diff["files"]] == ["notes.txt"]
    assert (await call("diff", "path=hostile&file=notes.txt"))["files"][0]["additions"] == 1
    log = await call("log", "path=hostile&limit=10")
    assert [c["summary"] for c in log["commits"]][:2] == ["sub", "attributes"]
    shown = await call("show", "path=hostile&rev=HEAD~1")
    assert {f["path"] for f in shown["files"]} >= {"notes.txt", "m.txt"}
    blame = await call("blame", "path=hostile&file=app.py")
    assert [line["text"] for line in blame["lines"]] == ["def f():", "    return 1"]
    assert (await call("branches", "path=hostile"))["current"] == "main"
    assert (await call("config", "path=hostile&key=user.name"))["value"] == "Ada Tester"
    await call("config", {"path": "hostile", "key": "pull.rebase", "value": "false"})

    # Writes.
    st = (await call("add", {"path": "hostile", "files": ["notes.txt", "new.py"]}))["status"]
    assert {f["path"] for f in st["staged"]} == {"notes.txt", "new.py"}
    staged = await call("diff", "path=hostile&staged=true")
    assert "+three" in staged["text"] and "+x = 1" in staged["text"]
    await call("unstage", {"path": "hostile", "files": ["new.py"]})
    await call("add", {"path": "hostile", "files": ["new.py"]})
    done_commit = await call("commit", {"path": "hostile", "message": "feat: three"})
    assert done_commit["summary"] == "feat: three"
    assert (repo / ".git" / "refs" / "heads" / "main").read_text().strip() == \
        done_commit["sha"]
    amended = await call("commit", {"path": "hostile", "message": "feat: three, amended",
                                    "amend": True})
    assert amended["summary"] == "feat: three, amended"
    await call("branch", {"path": "hostile", "name": "topic"})
    assert (await call("switch", {"path": "hostile", "name": "topic"}))["status"][
        "branch"] == "topic"
    await call("switch", {"path": "hostile", "name": "main"})
    await call("branch-delete", {"path": "hostile", "name": "topic"})
    repos.write(repo, {"notes.txt": "scratch\n"})
    assert (await call("stash", {"path": "hostile", "message": "wip"}))["stashed"] is True
    assert (repo / "notes.txt").read_text() == "one\ntwo\nthree\n"
    await call("stash-pop", {"path": "hostile"})
    assert (repo / "notes.txt").read_text() == "scratch\n"
    await call("restore", {"path": "hostile", "files": ["notes.txt"]})
    assert (repo / "notes.txt").read_text() == "one\ntwo\nthree\n"

    # Remotes: a local bare repository with hooks of its own, and an alternate.
    fetched = await call("fetch", {"path": "hostile", "remote": "origin"})
    assert "error" not in fetched["output"]
    repos.write(repo, {"m.txt": "1\n2\n3\n4\n5 (mine)\n"})
    await call("add", {"path": "hostile", "files": ["m.txt"]})
    await call("commit", {"path": "hostile", "message": "mine"})
    await call("pull", {"path": "hostile"})
    assert (repo / "m.txt").read_text() == "1 (theirs)\n2\n3\n4\n5 (mine)\n"
    pushed = await call("push", {"path": "hostile"})
    assert "error" not in pushed["output"]
    log = await call("log", "path=hostile&limit=1")
    assert (jp_root_dir / "remote.git" / "refs" / "heads" / "main").read_text().strip() \
        == log["commits"][0]["sha"]

    assert ran == {}, f"programs planted in the repository ran: {ran}"


async def test_commit_message_draft_runs_nothing(repos, git, markers, ds_ready):
    repo = build_hostile(repos, markers, "git-dir")
    repos.write(repo, {"notes.txt": "one\ntwo\nthree\n"})
    code, env = await git("add", {"path": "hostile", "files": ["notes.txt"]})
    assert_success(code, env)
    data = assert_success(*await git("commit-message", {"path": "hostile",
                                                         "max_tokens": 8}))
    assert data["files"] == ["notes.txt"]
    assert seen(markers) == []


async def test_trusted_config_still_applies(repos, git, markers, monkeypatch):
    """The server's own (global) filter still runs; a repository's redefinition of it is
    replaced by the global one, and its own filters are ignored."""
    global_config = Path(os.environ["GIT_CONFIG_GLOBAL"])
    global_config.write_text("[filter \"upper\"]\n\tclean = tr a-z A-Z\n\tsmudge = cat\n"
                             "[credential]\n\thelper = store\n")
    repo = repos.init("plain")
    repos.commit(repo, {".gitattributes": "*.up filter=upper\n*.raw filter=mine\n"}, "attrs")
    repos.git(repo, "config", "filter.mine.clean", f"{touch(markers, 'mine')}; tr a-z A-Z")
    repos.write(repo, {"a.up": "hello\n", "b.raw": "hello\n"})
    assert_success(*await git("add", {"path": "plain", "files": ["a.up", "b.raw"]}))
    assert repos.git(repo, "cat-file", "blob", ":a.up") == "HELLO"
    assert repos.git(repo, "cat-file", "blob", ":b.raw") == "hello"
    repos.git(repo, "config", "filter.upper.clean", f"{touch(markers, 'upper')}; cat")
    repos.write(repo, {"c.up": "again\n"})
    assert_success(*await git("add", {"path": "plain", "files": ["c.up"]}))
    assert repos.git(repo, "-c", "filter.upper.clean=tr a-z A-Z", "cat-file", "blob",
                     ":c.up") == "AGAIN"
    assert seen(markers) == []


def test_overrides_neutralise_untrusted_scopes_only():
    from jupyter_ds.git.runner import MERGE_DRIVER, untrusted_overrides

    entries = [
        ("global", "filter.lfs.clean", "git-lfs clean -- %f"),
        ("global", "credential.helper", "store"),
        ("global", "gpg.program", "/usr/bin/gpg2"),
        ("system", "credential.https://example.com.helper", "cache"),
        ("local", "filter.lfs.clean", "evil"),
        ("local", "filter.We=ird.x.process", "evil"),
        ("local", "filter.We=ird.x.required", "true"),
        ("worktree", "diff.pdf.textconv", "evil"),
        ("local", "merge.mine.driver", "evil %A"),
        ("local", "credential.helper", "!evil"),
        ("local", "credential.https://example.com.helper", "!evil"),
        ("local", "gpg.program", "evil"),
        ("local", "gpg.x509.program", "evil"),
        ("local", "remote.origin.uploadpack", "evil"),
        ("local", "remote.hg.vcs", "hg"),
        ("local", "remote.bad.vcs", "../../x"),
        ("local", "user.name", "Ada"),
        ("local", "core.gitproxy", "evil"),
        ("command", "diff.safe.textconv", "admin-tool"),
    ]
    pairs, env = untrusted_overrides(entries)
    assert pairs == [
        ("filter.lfs.clean", "git-lfs clean -- %f"),
        ("filter.We=ird.x.process", ""),
        ("filter.We=ird.x.required", "false"),
        ("diff.pdf.textconv", "cat"),
        ("merge.mine.driver", MERGE_DRIVER),
        ("credential.helper", ""),
        ("credential.helper", "store"),
        ("credential.https://example.com.helper", ""),
        ("credential.https://example.com.helper", "cache"),
        ("gpg.program", "/usr/bin/gpg2"),
        ("gpg.x509.program", "gpgsm"),
        ("remote.origin.uploadpack", "git-upload-pack"),
        ("remote.bad.vcs", ""),
    ]
    assert env == {"GIT_PROXY_COMMAND": ""}
    assert untrusted_overrides([e for e in entries if e[0] != "local"
                                and e[0] != "worktree"]) == ([], {})


# --------------------------------------------------------------------- commit hooks


def bwrap_works() -> bool:
    return sb.detect_sandbox().mode == "bwrap"


class TestCommitHooksOff:
    async def test_hooks_never_run_by_default(self, repos, git, markers):
        repo = repos.init("hooked")
        write_hook(repo / ".git" / "hooks", "pre-commit",
                   f"{touch(markers, 'pre-commit')}\necho refused >&2\nexit 1")
        repos.write(repo, {"app.py": "x = 2\n"})
        assert_success(*await git("add", {"path": "hooked", "files": ["app.py"]}))
        done = assert_success(*await git("commit", {"path": "hooked", "message": "two"}))
        assert done["summary"] == "two" and seen(markers) == []


class TestCommitHooksSandboxed:
    """``git_commit_hooks`` on: pre-commit and commit-msg run in the sandbox."""

    @pytest.fixture
    def ds_config(self) -> dict[str, Any]:
        return {"git_commit_hooks": True}

    @pytest.fixture(autouse=True)
    def needs_bwrap(self) -> None:
        if not bwrap_works():
            pytest.skip("bubblewrap does not work here: " + sb.detect_sandbox().reason)

    async def test_passing_hooks_see_the_repository_read_only(self, repos, git, markers):
        repo = repos.init("hooked")
        hooks = repo / ".git" / "hooks"
        write_hook(hooks, "pre-commit", "\n".join([
            "git diff --cached --name-only | grep -qx app.py || "
            "{ echo 'app.py is not staged'; exit 4; }",
            f"touch '{repo}/written-by-hook' 2>/dev/null",
            f"{touch(markers, 'escaped')} 2>/dev/null",
            "exit 0",
        ]))
        write_hook(hooks, "commit-msg",
                   "grep -q '^feat:' \"$1\" || { echo 'message must start with feat:'; "
                   "exit 1; }")
        for name in ("post-commit", "prepare-commit-msg", "post-rewrite",
                     "reference-transaction"):
            write_hook(hooks, name, touch(markers, name))
        repos.write(repo, {"app.py": "x = 2\n"})
        assert_success(*await git("add", {"path": "hooked", "files": ["app.py"]}))

        code, env = await git("commit", {"path": "hooked", "message": "fix: two"})
        assert_error(code, env, 409, "git_failed")
        assert "commit-msg" in env["error"]["message"]
        assert "message must start with feat:" in env["error"]["message"]
        done = assert_success(*await git("commit", {"path": "hooked",
                                                    "message": "feat: two"}))
        assert done["summary"] == "feat: two"
        assert not (repo / "written-by-hook").exists()
        assert seen(markers) == []

    async def test_failing_pre_commit_refuses_the_commit(self, repos, git):
        repo = repos.init("hooked")
        write_hook(repo / ".git" / "hooks", "pre-commit",
                   "echo 'lint: TODO left in app.py' >&2\nexit 1")
        head = (repo / ".git" / "refs" / "heads" / "main").read_text()
        repos.write(repo, {"app.py": "x = 2  # TODO\n"})
        assert_success(*await git("add", {"path": "hooked", "files": ["app.py"]}))
        code, env = await git("commit", {"path": "hooked", "message": "two"})
        assert_error(code, env, 409, "git_failed")
        message = env["error"]["message"]
        assert "pre-commit" in message and "TODO left in app.py" in message
        assert (repo / ".git" / "refs" / "heads" / "main").read_text() == head
        st = assert_success(*await git("status", "path=hooked"))
        assert st["staged"] == [{"path": "app.py", "status": "M"}]

    async def test_hooks_under_core_hookspath_run_too(self, repos, git):
        repo = repos.init("hooked")
        repos.git(repo, "config", "core.hooksPath", "ci/hooks")
        write_hook(repo / "ci" / "hooks", "pre-commit", "echo 'from hooksPath'\nexit 3")
        repos.write(repo, {"app.py": "x = 2\n"})
        assert_success(*await git("add", {"path": "hooked", "files": ["app.py"]}))
        code, env = await git("commit", {"path": "hooked", "message": "two"})
        assert_error(code, env, 409, "git_failed")
        assert "from hooksPath" in env["error"]["message"]
        assert "exit 3" in env["error"]["message"]


class TestCommitHooksWithoutSandbox:
    @pytest.fixture
    def ds_config(self) -> dict[str, Any]:
        return {"git_commit_hooks": True}

    @pytest.fixture(autouse=True)
    def no_bwrap(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fallback = sb.SandboxInfo(mode="limits-only", reason="limits only (test)", user=None)
        monkeypatch.setattr(sb, "detect_sandbox", lambda **_: fallback)

    async def test_a_hook_is_refused_rather_than_run_unsandboxed(self, repos, git, markers):
        repo = repos.init("hooked")
        write_hook(repo / ".git" / "hooks", "pre-commit", touch(markers, "pre-commit"))
        head = (repo / ".git" / "refs" / "heads" / "main").read_text()
        repos.write(repo, {"app.py": "x = 2\n"})
        assert_success(*await git("add", {"path": "hooked", "files": ["app.py"]}))
        code, env = await git("commit", {"path": "hooked", "message": "two"})
        assert_error(code, env, 409, "git_failed")
        assert "git_commit_hooks" in env["error"]["message"]
        assert "bubblewrap" in env["error"]["message"]
        assert (repo / ".git" / "refs" / "heads" / "main").read_text() == head
        assert seen(markers) == []

    async def test_a_hook_outside_the_root_is_not_read(self, repos, git, tmp_path):
        repo = repos.init("hooked")
        write_hook(tmp_path / "elsewhere", "pre-commit", "exit 0")
        repos.git(repo, "config", "core.hooksPath", str(tmp_path / "elsewhere"))
        repos.write(repo, {"app.py": "x = 2\n"})
        assert_success(*await git("add", {"path": "hooked", "files": ["app.py"]}))
        code, env = await git("commit", {"path": "hooked", "message": "two"})
        assert_error(code, env, 409, "git_failed")
        assert "outside the server root" in env["error"]["message"]
        assert str(tmp_path) not in json.dumps(env)

    async def test_no_hook_no_sandbox_needed(self, repos, git):
        repo = repos.init("plain")
        repos.write(repo, {"app.py": "x = 2\n"})
        assert_success(*await git("add", {"path": "plain", "files": ["app.py"]}))
        done = assert_success(*await git("commit", {"path": "plain", "message": "two"}))
        assert done["summary"] == "two"
