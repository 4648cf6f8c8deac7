"""A factory of real git repositories in temporary folders (the git tests' fixture).

The set-up runs the real ``git`` binary (never a mock), with the user's global and
system config shut out so that identity, default branch and hooks are the test's own.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest


def isolate_git_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ~/.gitconfig or /etc/gitconfig: each repository brings its own config."""
    empty = tmp_path / "empty-gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)


def notebook(*cells: tuple[str, str], outputs: int = 0) -> str:
    """An nbformat-4 notebook of ``(kind, source)`` cells; ``outputs`` varies the noise."""
    out = []
    for kind, source in cells:
        cell = {"cell_type": kind, "metadata": {}, "source": source.splitlines(True)}
        if kind == "code":
            cell.update(execution_count=outputs, outputs=[
                {"output_type": "stream", "name": "stdout", "text": [f"run {outputs}\n"]}])
        out.append(cell)
    return json.dumps({"cells": out, "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
                      indent=1)



def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write ``files`` (relative path -> text or bytes) under ``root``; return ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root

class RepoFactory:
    """Makes repositories under ``root`` (the server root of the test)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def git(self, repo: Path, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              timeout=30)
        if check and proc.returncode != 0:
            raise AssertionError(f"git {args}: {proc.stderr}")
        return proc.stdout.strip()

    def init(self, name: str = "repo", *, commit: bool = True, identity: bool = True) -> Path:
        repo = self.root / name
        repo.mkdir(parents=True, exist_ok=True)
        self.git(repo, "init", "-q", "-b", "main")
        if identity:
            self.git(repo, "config", "user.name", "Ada Tester")
            self.git(repo, "config", "user.email", "ada@example.com")
        if commit:
            self.commit(repo, {"README.md": "# demo\n", "app.py": "def f():\n    return 1\n"},
                        "initial commit")
        return repo

    def write(self, repo: Path, files: dict[str, str | bytes]) -> None:
        write_files(repo, files)

    def commit(self, repo: Path, files: dict[str, str | bytes], message: str) -> str:
        self.write(repo, files)
        self.git(repo, "add", "-A")
        # Set-up commits work whether or not the repository has an identity.
        name = self.git(repo, "config", "user.name", check=False) or "Set Up"
        self.git(repo, "-c", f"user.name={name}", "-c", "user.email=setup@example.com",
                 "commit", "-q", "-m", message)
        return self.git(repo, "rev-parse", "HEAD")

    def conflict(self, repo: Path) -> None:
        """Leave ``repo`` in a merge with ``app.py`` conflicted."""
        self.git(repo, "switch", "-q", "-c", "other")
        self.commit(repo, {"app.py": "def f():\n    return 2\n"}, "two")
        self.git(repo, "switch", "-q", "main")
        self.commit(repo, {"app.py": "def f():\n    return 3\n"}, "three")
        self.git(repo, "merge", "other", check=False)

    def remote(self, repo: Path, name: str = "remote.git") -> Path:
        """A bare repository (outside the repo, inside the root) as ``origin``; pushed."""
        bare = self.root / name
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
        self.git(repo, "remote", "add", "origin", os.fspath(bare))
        self.git(repo, "push", "-q", "-u", "origin", "main")
        return bare

    def clone(self, bare: Path, name: str) -> Path:
        dest = self.root / name
        subprocess.run(["git", "clone", "-q", os.fspath(bare), os.fspath(dest)], check=True,
                       capture_output=True)
        self.git(dest, "config", "user.name", "Bob Other")
        self.git(dest, "config", "user.email", "bob@example.com")
        return dest
