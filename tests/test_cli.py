"""`jupyter-ds complete|explain` print the API envelope from the same services."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_ds.cli import split_at_cursor


def run_cli(*args: str, stdin: str | None = None) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_ds.cli", *args],
        input=stdin, capture_output=True, text=True, timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_complete_a_file_at_a_cursor(tmp_path: Path, tiny_model_dir: Path):
    src = tmp_path / "stats.py"
    src.write_text("def mean(xs):\n    return \n\nprint(mean([1, 2]))\n")
    code, env = run_cli("complete", str(src), "--cursor", "2:11", "--max-tokens", "6",
                        "--model-path", str(tiny_model_dir))
    assert code == 0, env
    data = env["data"]
    assert env["status"] == "success" and 1 <= data["token_count"] <= 6
    prefix, suffix = split_at_cursor(src.read_text(), "2:11")
    for item in data["items"]:
        compile(prefix + item["insertText"] + suffix, "<item>", "exec")


def test_explain_from_stdin(tiny_model_dir: Path):
    code, env = run_cli("explain", "-", "--max-tokens", "5", "--model-path", str(tiny_model_dir),
                        stdin="print(1 + 1)\n")
    assert code == 0, env
    assert env["data"]["format"] == "markdown" and 1 <= env["data"]["token_count"] <= 5


@pytest.mark.parametrize(
    "args, status, field",
    [
        (("complete", "/no/such/file.py"), 404, "file"),
        (("complete", "-", "--cursor", "nine"), 400, "cursor"),
        (("complete", "-", "--cursor", "99:0"), 400, "cursor"),
    ],
)
def test_errors_are_envelopes_with_exit_status_1(args, status, field, tiny_model_dir):
    code, env = run_cli(*args, "--model-path", str(tiny_model_dir), stdin="x = 1\n")
    assert code == 1
    assert env["status"] == "error" and env["error"]["field"] == field


def test_a_model_that_cannot_load_is_an_error_envelope(tmp_path: Path):
    code, env = run_cli("explain", "-", "--model-path", str(tmp_path / "missing"), stdin="x\n")
    assert code == 1 and env["status"] == "error"
    assert "missing" in env["error"]["message"]


@pytest.mark.parametrize(
    "text, cursor, prefix",
    [("ab\ncd\n", "1:1", "a"), ("ab\ncd\n", "2:0", "ab\n"), ("ab\ncd", "2:2", "ab\ncd"),
     ("ab\r\ncd", "2:1", "ab\r\nc")],
)
def test_split_at_cursor(text, cursor, prefix):
    before, after = split_at_cursor(text, cursor)
    assert before == prefix and before + after == text


def test_git_verbs_print_the_envelope(tmp_path: Path, monkeypatch):
    import os

    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    (repo / "a.py").write_text("x = 1\n")

    def git_cli(*args: str) -> tuple[int, dict]:
        proc = subprocess.run([sys.executable, "-m", "jupyter_ds.cli", "git", *args,
                               "--root", str(tmp_path)], capture_output=True, text=True,
                              timeout=60, env=env)
        return proc.returncode, json.loads(proc.stdout)

    code, env_out = git_cli("add", "--path", "repo", "--files", "a.py")
    assert code == 0 and env_out["data"]["status"]["staged"][0]["path"] == "a.py"
    code, env_out = git_cli("commit", "--path", "repo", "--message", "first")
    assert code == 0 and env_out["data"]["summary"] == "first"  # author: the OS user
    code, env_out = git_cli("log", "--path", "repo")
    assert [c["summary"] for c in env_out["data"]["commits"]] == ["first"]
    code, env_out = git_cli("status", "--path", "../")
    assert code == 1 and env_out["error"]["code"] == "forbidden"
    code, env_out = git_cli("branch", "--path", "repo", "--name=-x")
    assert code == 1 and env_out["error"]["field"] == "name"
