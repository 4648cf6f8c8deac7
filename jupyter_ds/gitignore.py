"""``.gitignore`` rules matched as git matches them, without running git, and the folders
that never hold a project's own source.

Shared by what reads a repository as untrusted input: the fine-tuning corpus
(:mod:`jupyter_ds.finetune.data`) and the repository context's file listing
(:mod:`jupyter_ds.context.repo_files`) when the root is not a git work tree.
"""

from __future__ import annotations

import re

# Folders that never hold a project's own source.
SKIP_DIRS = frozenset({
    ".git", ".hg", ".svn", "__pycache__", ".ipynb_checkpoints", ".venv", "venv",
    "node_modules", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache",
    "site-packages", "dist-packages", "build", "dist", ".eggs",
})


class GitIgnore:
    """The rules of the ``.gitignore`` files met on the way down, matched as git does.

    Supported: comments, ``!`` negation, a leading or inner ``/`` anchoring the pattern
    to its file's folder, a trailing ``/`` for folders only, ``*``, ``?``, ``[...]`` and
    ``**``. The last matching rule wins.
    """

    def __init__(self) -> None:
        self.rules: list[tuple[str, re.Pattern[str], bool, bool]] = []

    def extended(self, folder: str, text: str) -> GitIgnore:
        """A copy with the rules of ``folder``'s ``.gitignore`` (``folder`` relative)."""
        child = GitIgnore()
        child.rules = list(self.rules)
        for raw in text.splitlines():
            line = raw.rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            line = line.removeprefix("\\")
            dir_only = line.endswith("/")
            line = line.strip("/") if dir_only else line
            anchored = "/" in line.lstrip("/")[:-1] or line.startswith("/")
            line = line.lstrip("/")
            if not line:
                continue
            body = _glob_to_regex(line)
            base = f"{re.escape(folder)}/" if folder else ""
            pattern = f"^{base}{body}$" if anchored else f"^(?:{base}|{base}.*/){body}$"
            child.rules.append((raw, re.compile(pattern), negate, dir_only))
        return child

    def ignored(self, rel: str, is_dir: bool) -> bool:
        verdict = False
        for _raw, pattern, negate, dir_only in self.rules:
            if dir_only and not is_dir:
                continue
            if pattern.match(rel):
                verdict = not negate
        return verdict


def _glob_to_regex(glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("/.*")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = glob.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                inner = glob[i + 1 : end].replace("\\", "\\\\")
                if inner.startswith("!"):
                    inner = "^" + inner[1:]
                out.append(f"[{inner}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)
