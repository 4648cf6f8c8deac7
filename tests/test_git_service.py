"""GitService on real repositories in temporary folders: every verb, conflicts, remotes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from gitrepos import RepoFactory, isolate_git_config, notebook

from jupyter_ds.errors import ApiError
from jupyter_ds.git.requests import (
    GitBlameRequest,
    GitBranchDeleteRequest,
    GitBranchRequest,
    GitCommitRequest,
    GitConfigQuery,
    GitConfigRequest,
    GitDiffRequest,
    GitFilesRequest,
    GitLogRequest,
    GitPathRequest,
    GitRemoteRequest,
    GitShowRequest,
    GitStashRequest,
    GitSwitchRequest,
)
from jupyter_ds.git.service import GitService, GitSettings


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate_git_config(monkeypatch, tmp_path)
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


@pytest.fixture
def repos(root: Path) -> RepoFactory:
    return RepoFactory(root)


@pytest.fixture
def svc(root: Path) -> GitService:
    return GitService(str(root))


def refused(fn, *args, status: int, field: str | None = None, **kw) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kw)
    assert info.value.status == status, info.value.message
    if field is not None:
        assert info.value.field == field, info.value.message
    return info.value


# -- happy paths -----------------------------------------------------------------------


def test_status_add_commit_log_show_blame(repos, svc):
    repo = repos.init()
    repos.write(repo, {"app.py": "def f():\n    return 42\n", "new.txt": "hello\n"})
    st = svc.status(GitPathRequest("repo"))
    assert st["branch"] == "main" and not st["detached"] and st["state"] == "clean"
    assert st["unstaged"] == [{"path": "app.py", "status": "M"}]
    assert st["untracked"] == ["new.txt"] and st["staged"] == [] and st["repo"] == "repo"

    diff = svc.diff(GitDiffRequest("repo"))
    assert [f["path"] for f in diff["files"]] == ["app.py"]
    assert diff["files"][0]["additions"] == 1 and "+    return 42" in diff["text"]

    st = svc.add(GitFilesRequest("repo", ["app.py", "new.txt"]))["status"]
    assert {(s["path"], s["status"]) for s in st["staged"]} == {("app.py", "M"),
                                                                ("new.txt", "A")}
    staged = svc.diff(GitDiffRequest("repo", staged=True))
    assert {f["path"] for f in staged["files"]} == {"app.py", "new.txt"}

    done = svc.commit(GitCommitRequest("repo", "feat: answer 42"))
    assert done["summary"] == "feat: answer 42" and done["sha"].startswith(done["short"])
    log = svc.log(GitLogRequest("repo", limit=1))
    assert log["has_more"] and log["commits"][0]["sha"] == done["sha"]
    assert log["commits"][0]["author"] == "Ada Tester"
    page2 = svc.log(GitLogRequest("repo", skip=1, limit=5))
    assert [c["summary"] for c in page2["commits"]] == ["initial commit"]
    assert not page2["has_more"]
    assert svc.log(GitLogRequest("repo", file="new.txt"))["commits"][0]["sha"] == done["sha"]

    shown = svc.show(GitShowRequest("repo", rev=done["short"]))
    assert shown["commit"]["message"] == "feat: answer 42"
    assert len(shown["commit"]["parents"]) == 1
    assert {f["path"] for f in shown["files"]} == {"app.py", "new.txt"}
    first = svc.show(GitShowRequest("repo", rev="HEAD~1"))  # root commit: against nothing
    assert {f["status"] for f in first["files"]} == {"A"}

    blame = svc.blame(GitBlameRequest("app.py", "repo"))["lines"]
    assert [b["text"] for b in blame] == ["def f():", "    return 42"]
    assert blame[1]["sha"] == done["sha"] and blame[0]["sha"] != done["sha"]


def test_restore_and_unstage(repos, svc):
    repo = repos.init()
    repos.write(repo, {"app.py": "broken\n", "README.md": "changed\n"})
    svc.add(GitFilesRequest("repo", ["README.md"]))
    st = svc.unstage(GitFilesRequest("repo", ["README.md"]))["status"]
    assert st["staged"] == [] and {u["path"] for u in st["unstaged"]} == {"app.py",
                                                                          "README.md"}
    st = svc.restore(GitFilesRequest("repo", ["app.py"]))["status"]
    assert (repo / "app.py").read_text() == "def f():\n    return 1\n"
    assert st["unstaged"] == [{"path": "README.md", "status": "M"}]


def test_diff_between_refs_and_renames(repos, svc):
    repo = repos.init()
    first = repos.git(repo, "rev-parse", "HEAD")
    repos.git(repo, "mv", "app.py", "core.py")
    repos.git(repo, "commit", "-q", "-m", "rename")
    diff = svc.diff(GitDiffRequest("repo", from_=first, to="HEAD"))
    assert diff["files"] == [{"path": "core.py", "old_path": "app.py", "status": "R",
                              "additions": 0, "deletions": 0, "binary": False,
                              "notebook": False}]
    st = svc.status(GitPathRequest("repo"))
    assert st["staged"] == []


def test_binary_files_are_flagged(repos, svc):
    repo = repos.init()
    repos.write(repo, {"data.bin": bytes(range(256))})
    svc.add(GitFilesRequest("repo", ["data.bin"]))
    f = svc.diff(GitDiffRequest("repo", staged=True))["files"][0]
    assert f["binary"] and f["additions"] == 0


def test_notebooks_are_diffed_by_cell_source(repos, svc):
    repo = repos.init()
    repos.commit(repo, {"nb.ipynb": notebook(("code", "x = 1\nprint(x)"),
                                             ("markdown", "# Notes"), outputs=1)}, "nb")
    repos.write(repo, {"nb.ipynb": notebook(("code", "x = 2\nprint(x)"),
                                            ("markdown", "# Notes"), ("code", "y = x"),
                                            outputs=7)})
    diff = svc.diff(GitDiffRequest("repo"))
    (f,) = diff["files"]
    assert f["notebook"] and f["additions"] == 4 and f["deletions"] == 1
    text = diff["text"]
    assert "-x = 1\n+x = 2\n" in text and "+y = x" in text and "# %% [markdown]" in text
    assert "outputs" not in text and "execution_count" not in text and '"source"' not in text
    svc.add(GitFilesRequest("repo", ["nb.ipynb"]))
    assert "+x = 2" in svc.diff(GitDiffRequest("repo", staged=True))["text"]
    svc.commit(GitCommitRequest("repo", "nb: two"))
    assert "+y = x" in svc.show(GitShowRequest("repo"))["text"]


def test_unicode_file_names(repos, svc):
    repo = repos.init()
    name = "données/naïve façade 数据.py"
    repos.write(repo, {name: "x = 'ü'\n"})
    st = svc.status(GitPathRequest("repo"))
    assert st["untracked"] == ["données/"]
    st = svc.add(GitFilesRequest("repo", [name]))["status"]
    assert st["staged"] == [{"path": name, "status": "A"}]
    assert svc.diff(GitDiffRequest("repo", staged=True))["files"][0]["path"] == name
    svc.commit(GitCommitRequest("repo", "add ü"))
    assert svc.blame(GitBlameRequest(name, "repo"))["lines"][0]["text"] == "x = 'ü'"
    assert svc.log(GitLogRequest("repo", file=name))["commits"][0]["summary"] == "add ü"


def test_branches_create_switch_delete(repos, svc):
    repos.init()
    out = svc.branch(GitBranchRequest("repo", "feature/x", start="HEAD"))
    assert {b["name"] for b in out["local"]} == {"main", "feature/x"}
    st = svc.switch(GitSwitchRequest("repo", "feature/x"))["status"]
    assert st["branch"] == "feature/x"
    refused(svc.branch_delete, GitBranchDeleteRequest("repo", "feature/x"), status=409)
    svc.switch(GitSwitchRequest("repo", "main"))
    out = svc.branch_delete(GitBranchDeleteRequest("repo", "feature/x", force=True))
    assert [b["name"] for b in out["local"]] == ["main"] and out["current"] == "main"
    refused(svc.branch, GitBranchRequest("repo", "main"), status=409)
    refused(svc.switch, GitSwitchRequest("repo", "nope"), status=400, field="name")


def test_branch_delete_refuses_unmerged_work(repos, svc):
    repo = repos.init()
    repos.git(repo, "switch", "-q", "-c", "wip")
    repos.commit(repo, {"wip.py": "1\n"}, "wip")
    repos.git(repo, "switch", "-q", "main")
    err = refused(svc.branch_delete, GitBranchDeleteRequest("repo", "wip"), status=409)
    assert "force" in err.message


def test_stash_and_pop(repos, svc):
    repo = repos.init()
    repos.write(repo, {"app.py": "changed\n"})
    out = svc.stash(GitStashRequest("repo", message="wip: later"))
    assert out["stashed"] and out["status"]["unstaged"] == []
    assert "wip: later" in repos.git(repo, "stash", "list")
    nothing = svc.stash(GitStashRequest("repo"))
    assert nothing["stashed"] is False
    out = svc.stash_pop(GitPathRequest("repo"))
    assert out["status"]["unstaged"] == [{"path": "app.py", "status": "M"}]
    refused(svc.stash_pop, GitPathRequest("repo"), status=409)


def test_config_whitelist(repos, svc):
    repos.init()
    out = svc.set_config(GitConfigRequest("repo", "user.name", "Grace"))
    assert out == {"key": "user.name", "value": "Grace"}
    assert svc.config(GitConfigQuery("repo", "user.name"))["value"] == "Grace"
    assert svc.config(GitConfigQuery("repo"))["values"]["pull.rebase"] is None
    svc.set_config(GitConfigRequest("repo", "pull.rebase", "false"))
    assert svc.set_config(GitConfigRequest("repo", "pull.rebase", None))["value"] is None
    for key in ("core.pager", "core.hooksPath", "remote.origin.url", "alias.x"):
        refused(svc.set_config, GitConfigRequest("repo", key, "x"), status=400, field="key")
        refused(svc.config, GitConfigQuery("repo", key), status=400, field="key")
    refused(svc.set_config, GitConfigRequest("repo", "pull.rebase", "sometimes"), status=400,
            field="value")
    refused(svc.set_config, GitConfigRequest("repo", "user.name", "a\nb"), status=400,
            field="value")


# -- empty repos, detached HEAD, conflicts -------------------------------------------


def test_empty_repository(repos, svc):
    repo = repos.init(commit=False)
    st = svc.status(GitPathRequest("repo"))
    assert st["branch"] == "main" and st["head"] is None and st["state"] == "clean"
    assert svc.log(GitLogRequest("repo")) == {"commits": [], "has_more": False}
    br = svc.branches(GitPathRequest("repo"))
    assert br == {"current": "main", "detached": False, "local": [], "remote": []}
    repos.write(repo, {"a.py": "1\n"})
    svc.add(GitFilesRequest("repo", ["a.py"]))
    assert svc.diff(GitDiffRequest("repo", staged=True))["files"][0]["status"] == "A"
    st = svc.unstage(GitFilesRequest("repo", ["a.py"]))["status"]
    assert st["staged"] == [] and st["untracked"] == ["a.py"]
    refused(svc.commit, GitCommitRequest("repo", "nothing staged"), status=409)
    svc.add(GitFilesRequest("repo", ["a.py"]))
    assert svc.commit(GitCommitRequest("repo", "first"))["summary"] == "first"


def test_detached_head(repos, svc):
    repo = repos.init()
    repos.commit(repo, {"b.py": "2\n"}, "second")
    repos.git(repo, "switch", "-q", "--detach", "HEAD~1")
    st = svc.status(GitPathRequest("repo"))
    assert st["detached"] and st["branch"] is None and st["head"]
    br = svc.branches(GitPathRequest("repo"))
    assert br["detached"] and br["current"] is None
    assert svc.log(GitLogRequest("repo"))["commits"][0]["summary"] == "initial commit"
    assert svc.switch(GitSwitchRequest("repo", "main"))["status"]["branch"] == "main"


def test_merge_conflict_is_reported_and_blocks(repos, svc):
    repo = repos.init()
    repos.conflict(repo)
    st = svc.status(GitPathRequest("repo"))
    assert st["state"] == "merging" and st["conflicted"] == ["app.py"]
    err = refused(svc.commit, GitCommitRequest("repo", "merge"), status=409)
    assert "resolve" in err.message
    refused(svc.switch, GitSwitchRequest("repo", "other"), status=409)
    repos.write(repo, {"app.py": "def f():\n    return 5\n"})
    svc.add(GitFilesRequest("repo", ["app.py"]))
    svc.commit(GitCommitRequest("repo", "merge other"))
    assert svc.status(GitPathRequest("repo"))["state"] == "clean"


def test_switch_with_a_dirty_tree_is_409(repos, svc):
    repo = repos.init()
    repos.git(repo, "switch", "-q", "-c", "other")
    repos.commit(repo, {"app.py": "other\n"}, "other")
    repos.git(repo, "switch", "-q", "main")
    repos.write(repo, {"app.py": "local edit\n"})
    err = refused(svc.switch, GitSwitchRequest("repo", "other"), status=409)
    assert "stash" in err.message and err.code == "conflict"


# -- remotes -------------------------------------------------------------------------


def test_fetch_pull_push_against_a_bare_remote(repos, svc):
    repo = repos.init()
    bare = repos.remote(repo)
    other = repos.clone(bare, "other")
    repos.commit(other, {"remote.py": "r\n"}, "from the other clone")
    repos.git(other, "push", "-q")

    svc.fetch(GitRemoteRequest("repo"))
    st = svc.status(GitPathRequest("repo"))
    assert st["upstream"] == "origin/main" and st["behind"] == 1
    assert "origin/main" in {b["name"] for b in svc.branches(GitPathRequest("repo"))["remote"]}
    svc.pull(GitRemoteRequest("repo", remote="origin", branch="main"))
    assert (repo / "remote.py").exists()

    repos.commit(repo, {"mine.py": "m\n"}, "mine")
    assert svc.status(GitPathRequest("repo"))["ahead"] == 1
    svc.push(GitRemoteRequest("repo"))
    assert repos.git(bare, "log", "-1", "--format=%s") == "mine"

    # A new branch is published with its upstream on first push.
    repos.git(repo, "switch", "-q", "-c", "topic")
    svc.push(GitRemoteRequest("repo"))
    assert svc.status(GitPathRequest("repo"))["upstream"] == "origin/topic"

    # Non-fast-forward: the other clone pushes first.
    repos.git(repo, "switch", "-q", "main")
    repos.git(other, "pull", "-q")
    repos.commit(other, {"o.py": "o\n"}, "theirs")
    repos.git(other, "push", "-q")
    repos.commit(repo, {"m2.py": "m\n"}, "ours")
    err = refused(svc.push, GitRemoteRequest("repo"), status=409)
    assert "pull" in err.message
    refused(svc.fetch, GitRemoteRequest("repo", remote="nowhere"), status=409)
    refused(svc.fetch, GitRemoteRequest("repo", remote="--upload-pack=touch x"), status=400,
            field="remote")


# -- confinement -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["..", "../", "../outside", "repo/../..", "/etc",
                                  "/tmp", "\\\\server\\share", "C:/Windows"])
def test_repository_paths_outside_the_root_are_403(repos, svc, path):
    repos.init()
    refused(svc.status, GitPathRequest(path), status=403, field="path")


def test_symlinks_out_of_the_root_are_refused(root, repos, svc, tmp_path):
    outside = RepoFactory(tmp_path).init("outside")
    os.symlink(outside, root / "link-to-repo")
    refused(svc.status, GitPathRequest("link-to-repo"), status=403, field="path")
    repo = repos.init()
    os.symlink(tmp_path / "outside", repo / "escape")
    for f in ("escape/app.py", "escape/../../x", "../outside/app.py", "/etc/passwd"):
        refused(svc.add, GitFilesRequest("repo", [f]), status=403, field="files")
    refused(svc.diff, GitDiffRequest("repo", file="escape/app.py"), status=403, field="file")
    refused(svc.blame, GitBlameRequest("../../etc/passwd", "repo"), status=403, field="file")
    # A symlink inside the repository to a file inside it is fine.
    os.symlink("app.py", repo / "alias.py")
    svc.add(GitFilesRequest("repo", ["alias.py"]))


def test_a_root_inside_a_bigger_repository_is_not_that_repository(tmp_path, monkeypatch):
    isolate_git_config(monkeypatch, tmp_path)
    big = RepoFactory(tmp_path).init("big")
    (big / "served").mkdir()
    svc = GitService(str(big / "served"))
    err = refused(svc.status, GitPathRequest("."), status=404, field="path")
    assert "not in a git repository" in err.message


def test_git_internals_and_excluded_paths_are_refused(repos, root):
    svc = GitService(str(root), settings=GitSettings(exclude=(".ssh", "*.pem", "repo/private/*")))
    repo = repos.init()
    repos.write(repo, {".ssh/id_rsa": "KEY", "cert.pem": "PEM", "private/x.txt": "x",
                       "ok.txt": "ok"})
    for f in (".git/config", ".ssh/id_rsa", "sub/cert.pem", "private/x.txt"):
        refused(svc.add, GitFilesRequest("repo", [f]), status=403, field="files")
    (root / ".ssh").mkdir()
    refused(svc.status, GitPathRequest(".ssh"), status=403, field="path")
    # Adding the whole tree skips the excluded files instead of staging them.
    st = svc.add(GitFilesRequest("repo", ["."]))["status"]
    assert [s["path"] for s in st["staged"]] == ["ok.txt"]
    assert svc.add(GitFilesRequest("repo", ["."]))["status"]["untracked"]  # still no-op
    # Staged behind the API's back: diffs still leave the excluded files out.
    repos.git(repo, "add", "-f", ".ssh/id_rsa", "cert.pem")
    diff = svc.diff(GitDiffRequest("repo", staged=True))
    assert [f["path"] for f in diff["files"]] == ["ok.txt"] and "KEY" not in diff["text"]
    refused(svc.add, GitFilesRequest("repo", ["no-such-file"]), status=400, field="files")


def test_unknown_and_non_repository_paths_are_404(repos, root, svc):
    repos.init()
    (root / "plain").mkdir()
    refused(svc.status, GitPathRequest("plain"), status=404, field="path")
    refused(svc.status, GitPathRequest("missing"), status=404, field="path")
    refused(svc.status, GitPathRequest("repo/app.py"), status=404, field="path")


@pytest.mark.parametrize("name", ["-x", "--force", "a..b", "x@{1}", "has space", "x.lock",
                                  "a~1", "a^", "a:b", "a\\b", "/a", "a/", "a//b", ".hidden",
                                  "end.", "@", "", "HEAD", "a\x01b", "ques?", "st*r", "br[ack"])
def test_invalid_branch_names_are_400_naming_the_field(repos, svc, name):
    repos.init()
    refused(svc.branch, GitBranchRequest("repo", name), status=400, field="name")
    refused(svc.switch, GitSwitchRequest("repo", name), status=400, field="name")


@pytest.mark.parametrize("rev", ["-x", "--output=/tmp/x", "a..b", "a...b", "HEAD@{1}",
                                 "@{-1}", "with space", ":/message"])
def test_invalid_revisions_are_400(repos, svc, rev):
    repos.init()
    refused(svc.log, GitLogRequest("repo", rev=rev), status=400, field="rev")
    refused(svc.diff, GitDiffRequest("repo", from_=rev), status=400, field="from")
    refused(svc.show, GitShowRequest("repo", rev=rev), status=400, field="rev")


def test_valid_revisions_pass(repos, svc):
    repo = repos.init()
    repos.commit(repo, {"b.py": "2\n"}, "second")
    sha = repos.git(repo, "rev-parse", "HEAD")
    for rev in ("HEAD~1", "HEAD^", "main", sha, sha[:7], "refs/heads/main"):
        assert svc.show(GitShowRequest("repo", rev=rev))["commit"]["sha"]
    refused(svc.show, GitShowRequest("repo", rev="nosuchbranch"), status=400, field="rev")


# -- commit identity and timeouts -----------------------------------------------------


def test_commit_author_from_config_else_the_jupyter_user_else_400(repos, svc):
    repo = repos.init(identity=False, commit=False)
    repos.write(repo, {"a.py": "1\n"})
    svc.add(GitFilesRequest("repo", ["a.py"]))
    err = refused(svc.commit, GitCommitRequest("repo", "first"), status=400)
    assert "user.name" in err.message
    svc.commit(GitCommitRequest("repo", "first"), user="Jupyter Jane")
    author = repos.git(repo, "log", "-1", "--format=%an <%ae>")
    assert author == "Jupyter Jane <Jupyter-Jane@localhost>"
    repos.git(repo, "config", "user.name", "Configured")
    repos.git(repo, "config", "user.email", "c@example.com")
    svc.commit(GitCommitRequest("repo", "amended", amend=True), user="Jupyter Jane")
    assert repos.git(repo, "log", "-1", "--format=%cn %s") == "Configured amended"
    assert len(svc.log(GitLogRequest("repo"))["commits"]) == 1


def test_a_hanging_git_command_is_killed_and_504(repos, root, tmp_path):
    repo = repos.init()
    # A repository's own hooks never run; the server's (global) signing program does.
    slow = tmp_path / "slow-gpg"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    global_config = Path(os.environ["GIT_CONFIG_GLOBAL"])
    global_config.write_text(f"[gpg]\n\tprogram = {slow}\n[commit]\n\tgpgSign = true\n")
    repos.write(repo, {"a.py": "1\n"})
    svc = GitService(str(root), settings=GitSettings(timeout_s=1.0))
    svc.add(GitFilesRequest("repo", ["a.py"]))
    with pytest.raises(ApiError) as info:
        asyncio.run(svc.call("commit", GitCommitRequest("repo", "slow"), write=True))
    assert info.value.status == 504
    # The lock was released: the repository takes the next write.
    global_config.write_text("")
    svc.commit(GitCommitRequest("repo", "fast"))
