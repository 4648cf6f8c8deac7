"""``jupyter-ds/v1/git/<verb>`` on a real Jupyter server over real repositories."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from gitrepos import RepoFactory, isolate_git_config, notebook
from test_api import assert_error, assert_success


@pytest.fixture
def repos(jp_root_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RepoFactory:
    isolate_git_config(monkeypatch, tmp_path)
    return RepoFactory(jp_root_dir)


@pytest.fixture
def git(http_server_client, jp_auth_header, jp_base_url):
    """``git(verb, query_or_body)``: GET with a raw query string, POST with a JSON body."""

    async def call(verb: str, payload: str | dict[str, Any] = "", *, headers=None):
        url = f"{jp_base_url}jupyter-ds/v1/git/{verb}"
        kwargs: dict[str, Any] = {"headers": {**jp_auth_header, **(headers or {})},
                                  "raise_error": False, "request_timeout": 120}
        if isinstance(payload, dict):
            kwargs.update(method="POST", body=json.dumps(payload))
        else:
            url += f"?{payload}" if payload else ""
        response = await http_server_client.fetch(url, **kwargs)
        return response.code, json.loads(response.body or b"{}")

    return call


async def test_everyday_workflow(repos, git, jp_root_dir):
    repo = repos.init(identity=False)
    repos.write(repo, {"app.py": "def f():\n    return 2\n", "notes é.md": "x\n"})
    st = assert_success(*await git("status", "path=repo"))
    assert st["unstaged"] == [{"path": "app.py", "status": "M"}]
    assert st["untracked"] == ["notes é.md"] and st["state"] == "clean"
    st = assert_success(*await git("add", {"path": "repo", "files": ["app.py",
                                                                       "notes é.md"]}))
    assert len(st["status"]["staged"]) == 2
    diff = assert_success(*await git("diff", "path=repo&staged=true&context=1"))
    assert {f["path"] for f in diff["files"]} == {"app.py", "notes é.md"}
    assert "+    return 2" in diff["text"] and diff["truncated"] is False
    # No identity in the repository's config: the Jupyter user is the author.
    done = assert_success(*await git("commit", {"path": "repo", "message": "fix: two"}))
    assert done["summary"] == "fix: two"
    author = repos.git(repo, "log", "-1", "--format=%an")
    assert author and author != "Ada Tester"
    log = assert_success(*await git("log", "path=repo&limit=1"))
    assert log["commits"][0]["sha"] == done["sha"] and log["has_more"] is True
    shown = assert_success(*await git("show", f"path=repo&rev={done['short']}"))
    assert shown["commit"]["message"] == "fix: two" and shown["files"]
    blame = assert_success(*await git("blame", "path=repo&file=app.py"))
    assert blame["lines"][1]["sha"] == done["sha"]

    assert_success(*await git("branch", {"path": "repo", "name": "topic"}))
    st = assert_success(*await git("switch", {"path": "repo", "name": "topic"}))
    assert st["status"]["branch"] == "topic"
    br = assert_success(*await git("branches", "path=repo"))
    assert br["current"] == "topic" and {b["name"] for b in br["local"]} == {"main", "topic"}
    assert_success(*await git("switch", {"path": "repo", "name": "main"}))
    assert_success(*await git("branch-delete", {"path": "repo", "name": "topic"}))

    repos.write(repo, {"app.py": "scratch\n"})
    out = assert_success(*await git("stash", {"path": "repo", "message": "scratch"}))
    assert out["stashed"] and out["status"]["unstaged"] == []
    assert_success(*await git("stash-pop", {"path": "repo"}))
    st = assert_success(*await git("restore", {"path": "repo", "files": ["app.py"]}))
    assert st["status"]["unstaged"] == []

    assert_success(*await git("config", {"path": "repo", "key": "user.name", "value": "Z"}))
    cfg = assert_success(*await git("config", "path=repo&key=user.name"))
    assert cfg["value"] == "Z"
    assert_error(*await git("config", {"path": "repo", "key": "core.pager", "value": "sh"}),
                 400, "invalid_request", "key")


async def test_root_repository_and_notebook_diff(repos, git, jp_root_dir):
    root = repos.init(".")
    repos.commit(root, {"nb.ipynb": notebook(("code", "a = 1"))}, "nb")
    repos.write(root, {"nb.ipynb": notebook(("code", "a = 2"), ("markdown", "Done"),
                                            outputs=5)})
    for query in ("path=", "path=.", ""):
        st = assert_success(*await git("status", query))
        assert st["repo"] == "." and st["unstaged"] == [{"path": "nb.ipynb", "status": "M"}]
    diff = assert_success(*await git("diff", "path=."))
    assert diff["files"][0]["notebook"] is True
    assert "-a = 1\n+a = 2\n" in diff["text"] and "execution_count" not in diff["text"]


async def test_conflicts_are_409_with_what_to_do(repos, git):
    repo = repos.init()
    repos.conflict(repo)
    st = assert_success(*await git("status", "path=repo"))
    assert st["state"] == "merging" and st["conflicted"] == ["app.py"]
    code, env = await git("commit", {"path": "repo", "message": "m"})
    assert_error(code, env, 409, "conflict")
    assert "resolve" in env["error"]["message"]
    repos.git(repo, "merge", "--abort")
    repos.write(repo, {"app.py": "dirty\n"})
    code, env = await git("switch", {"path": "repo", "name": "other"})
    assert_error(code, env, 409, "conflict")
    assert "stash" in env["error"]["message"]


async def test_fetch_pull_push_and_non_fast_forward(repos, git):
    repo = repos.init()
    bare = repos.remote(repo)
    other = repos.clone(bare, "other")
    repos.commit(other, {"o.py": "o\n"}, "theirs")
    repos.git(other, "push", "-q")
    out = assert_success(*await git("fetch", {"path": "repo", "remote": "origin"}))
    assert isinstance(out["output"], str)
    assert assert_success(*await git("status", "path=repo"))["behind"] == 1
    assert_success(*await git("pull", {"path": "repo"}))
    repos.commit(repo, {"m.py": "m\n"}, "mine")
    assert_success(*await git("push", {"path": "repo"}))
    assert repos.git(bare, "log", "-1", "--format=%s") == "mine"
    repos.commit(other, {"o2.py": "o\n"}, "theirs again")
    repos.git(other, "push", "-q", "--force")
    repos.commit(repo, {"m2.py": "m\n"}, "mine again")
    code, env = await git("push", {"path": "repo", "remote": "origin", "branch": "main"})
    assert_error(code, env, 409, "conflict")
    assert "pull" in env["error"]["message"]


async def test_empty_repository_and_detached_head(repos, git):
    repos.init("empty", commit=False)
    st = assert_success(*await git("status", "path=empty"))
    assert st["head"] is None and st["branch"] == "main"
    assert assert_success(*await git("log", "path=empty"))["commits"] == []
    assert assert_success(*await git("branches", "path=empty"))["local"] == []
    repo = repos.init()
    repos.git(repo, "switch", "-q", "--detach")
    st = assert_success(*await git("status", "path=repo"))
    assert st["detached"] is True and st["branch"] is None


@pytest.mark.parametrize("query", [
    "path=..", "path=../", "path=%2e%2e%2f", "path=%2E%2E", "path=..%2F..%2Fetc",
    "path=repo%2F..%2F..", "path=/etc", "path=%2Fetc", "path=%2F", "path=link-out",
    "path=link-out%2Fsub", "path=repo&file=..%2F..%2Fsecret", "path=repo&file=%2Fetc%2Fpasswd",
    "path=repo&file=escape%2Fx.py", "path=repo&file=.git%2Fconfig",
])
async def test_escape_attempts_are_refused(repos, git, jp_root_dir, tmp_path, query):
    repo = repos.init()
    outside = RepoFactory(tmp_path / "outside").init("theirs")
    (tmp_path / "secret").write_text("s")
    os.symlink(outside, Path(jp_root_dir) / "link-out")
    os.symlink(outside, repo / "escape")
    verb = "blame" if "file=" in query else "status"
    code, env = await git(verb, query)
    assert_error(code, env, 403, "forbidden")
    assert str(tmp_path) not in json.dumps(env)


@pytest.mark.parametrize("files", [["../x"], ["/etc/passwd"], ["escape/x.py"],
                                   ["ok.py", "../../x"], [".git/hooks/pre-commit"]])
async def test_file_paths_escaping_the_repository_are_refused(repos, git, tmp_path, files):
    repo = repos.init()
    os.symlink(tmp_path, repo / "escape")
    code, env = await git("add", {"path": "repo", "files": files})
    assert_error(code, env, 403, "forbidden", "files")


@pytest.mark.parametrize("name", ["-x", "a..b", "x@{1}", "has space", "a~1", "x.lock"])
async def test_invalid_names_are_400_naming_the_field(repos, git, name):
    repos.init()
    for verb in ("branch", "switch", "branch-delete"):
        code, env = await git(verb, {"path": "repo", "name": name})
        assert_error(code, env, 400, "invalid_request", "name")
    code, env = await git("log", f"path=repo&rev={quote(name)}")
    assert_error(code, env, 400, "invalid_request", "rev")
    code, env = await git("diff", f"path=repo&from={quote(name)}")
    assert_error(code, env, 400, "invalid_request", "from")


async def test_bad_requests_name_the_field(repos, git, jp_root_dir):
    repos.init()
    (Path(jp_root_dir) / "plain").mkdir()
    code, env = await git("status", "path=plain")
    assert_error(code, env, 404, "not_found", "path")
    assert "not in a git repository" in env["error"]["message"]
    assert_error(*await git("status", "path=nowhere"), 404, "not_found", "path")
    assert_error(*await git("log", "path=repo&limit=many"), 400, "invalid_request", "limit")
    assert_error(*await git("log", "path=repo&limit=0"), 400, "invalid_request", "limit")
    assert_error(*await git("diff", "path=repo&staged=maybe"), 400, "invalid_request",
                 "staged")
    assert_error(*await git("add", {"path": "repo"}), 400, "invalid_request", "files")
    assert_error(*await git("add", {"path": "repo", "files": []}), 400, "invalid_request",
                 "files")
    assert_error(*await git("commit", {"path": "repo", "message": "  "}), 400,
                 "invalid_request", "message")
    assert_error(*await git("blame", "path=repo"), 400, "invalid_request", "file")


async def test_commit_message_is_drafted_from_the_staged_diff(repos, git, ds_ready):
    repo = repos.init()
    code, env = await git("commit-message", {"path": "repo"})
    assert_error(code, env, 400, "invalid_request")
    assert "nothing is staged" in env["error"]["message"]
    big = "".join(f"row_{i} = {i}\n" for i in range(3000))
    repos.write(repo, {"app.py": "def f():\n    return 3\n", "big.py": big,
                       "blob.bin": bytes(range(256)) * 8})
    repos.git(repo, "add", "-A")
    data = assert_success(*await git("commit-message", {"path": "repo", "max_tokens": 24}))
    assert data["summary"].strip() and len(data["summary"]) <= 72
    assert "\n" not in data["summary"]
    assert data["output"].startswith(data["summary"])
    assert 1 <= data["token_count"] <= 24 and 0 <= data["confidence"] <= 1
    assert data["model"] and data["latency_ms"] > 0 and data["diff_trimmed"] is True
    assert isinstance(data["fallback"], bool)
    assert set(data["files"]) == {"app.py", "big.py", "blob.bin"}
