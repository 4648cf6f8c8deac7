"""Which Python files under the server root the repository index may read.

``.gitignore`` is honoured the way git itself does it where git can be asked: a folder
that is a git working tree (the root, or any folder below it) is listed with
``git ls-files --cached --others --exclude-standard``, run through the git runner's
safe set-up (:class:`jupyter_ds.git.runner.Runner`: no hooks, no fsmonitor, discovery
stopped at the root), so nothing a repository's config names runs. Anything else is
walked, with every ``.gitignore`` met on the way applied by the fine-tuning corpus's
matcher (:class:`jupyter_ds.gitignore.GitIgnore`).

Whatever the listing, the same rules apply to what it gives:

* hidden paths (a part starting with ``.``, as Jupyter hides them) and folders that
  never hold a project's own code (``__pycache__``, ``node_modules``, virtualenvs,
  ``site-packages``, build output) are left out;
* a symlink is followed only when its target is inside the root: one that leads out is
  skipped and counted (``symlink_outside``), one that cannot resolve or leads back to a
  folder above it or already walked is skipped and counted (``symlink_loop``); real paths
  are tracked, so no file is read twice and no walk goes round;
* the walk is bounded (:data:`MAX_ENTRIES` directory entries, :data:`MAX_DEPTH` levels),
  for a root that is a whole home folder.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_ds.gitignore import SKIP_DIRS, GitIgnore
from jupyter_ds.paths import is_within

log = logging.getLogger(__name__)

MAX_ENTRIES = 200_000  # directory entries a walk looks at, at most
MAX_DEPTH = 40
GIT_TIMEOUT_S = 10.0
SUFFIXES = (".py",)
# Folders of installed packages that a .gitignore may not mention.
EXTRA_SKIP = frozenset({"env", "virtualenv", "__pypackages__", "htmlcov", "egg-info"})


@dataclass
class Listing:
    """Candidate files (relative path, real path), in listing order, and what was left
    out, counted by reason."""

    files: list[tuple[str, str]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    via_git: int = 0  # working trees listed by git


def _skipped_part(rel: str) -> bool:
    """Hidden, or in a folder that holds no project code."""
    parts = rel.split("/")
    return any(p.startswith(".") or p in SKIP_DIRS or p in EXTRA_SKIP
               or p.endswith(".egg-info") for p in parts[:-1]) or parts[-1].startswith(".")


class _Lister:
    def __init__(self, root: Path, git_timeout_s: float) -> None:
        self.root = Path(os.path.realpath(root))
        self.git_timeout_s = git_timeout_s
        self.out = Listing()
        self.seen_files: set[str] = set()  # real paths
        self.seen_dirs: set[str] = set()
        self.entries = 0
        self.links: list[tuple[str, str]] = []  # file links, admitted last
        self._runner = None

    # ---------------------------------------------------------------- one file

    def add(self, rel: str, path: str, *, links_now: bool = False) -> None:
        """Admit the file ``path`` (``rel`` under the root) if it is a regular file,
        inside the root by its real path, and not seen before. A link waits until the
        listing is done (``links_now``), so that a file met both by its own path and
        through a link is indexed under its own."""
        if not rel.endswith(SUFFIXES) or _skipped_part(rel):
            return
        try:
            is_link = os.path.islink(path)
            if is_link and not links_now:
                self.links.append((rel, path))
                return
            real = os.path.realpath(path)
        except OSError as exc:  # realpath raises on a loop in some Python versions
            if exc.errno == errno.ELOOP:
                self.out.skipped["symlink_loop"] += 1
            return
        except ValueError:
            return
        if not is_within(self.root, real):
            # Through a link of its own (a folder link was checked when walked).
            self.out.skipped["symlink_outside"] += 1
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            if is_link and exc.errno == errno.ELOOP:
                self.out.skipped["symlink_loop"] += 1
            return
        if not stat.S_ISREG(st.st_mode) or real in self.seen_files:
            return
        self.seen_files.add(real)
        self.out.files.append((rel, real))

    # ---------------------------------------------------------------- git

    def runner(self):
        if self._runner is None:
            from jupyter_ds.git.runner import Runner  # GitPython only when there is git

            self._runner = Runner(self.root, timeout_s=self.git_timeout_s)
        return self._runner

    def git_files(self, rel_dir: str) -> list[str] | None:
        """The files git lists in the working tree at ``rel_dir`` (relative to it), or
        None when it is not one, or git fails (then the folder is walked instead)."""
        try:
            runner = self.runner()
            repo = runner.repo(rel_dir or ".")
            if os.path.realpath(repo.top) != os.path.realpath(self.root / rel_dir):
                return None  # a folder inside a repository: the walk goes on
            out = runner.run(repo, "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard", "--", *(f"*{s}" for s in SUFFIXES))
        except Exception as exc:  # not a repository, no git, a timeout: walk instead
            log.debug("jupyter-ds: no git listing of %r: %s", rel_dir or ".", exc)
            return None
        return [f for f in dict.fromkeys(out.split("\0")) if f and not f.endswith("/")]

    # ---------------------------------------------------------------- walk

    def visit(self, folder: str, rel: str, rules: GitIgnore, depth: int) -> None:
        """List the folder ``folder`` (``rel`` under the root; its real path is in
        ``seen_dirs`` already)."""
        if depth > MAX_DEPTH:
            return
        if os.path.lexists(os.path.join(folder, ".git")):
            listed = self.git_files(rel)
            if listed is not None:
                self.out.via_git += 1
                for name in listed:
                    self.add(f"{rel}/{name}" if rel else name, os.path.join(folder, name))
                return
        ignore_file = os.path.join(folder, ".gitignore")
        if os.path.isfile(ignore_file) and not os.path.islink(ignore_file):
            try:
                with open(ignore_file, encoding="utf-8", errors="replace") as f:
                    rules = rules.extended(rel, f.read(100_000))
            except OSError:
                pass
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                if not self.out.skipped["walk_limit"]:
                    log.warning("jupyter-ds: repository context looked at %d entries under "
                                "%s and stopped there", MAX_ENTRIES, self.root)
                self.out.skipped["walk_limit"] += 1
                return
            name = entry.name
            child = f"{rel}/{name}" if rel else name
            if name.startswith("."):
                continue
            try:
                is_link = entry.is_symlink()
            except OSError:
                continue
            try:
                is_dir = entry.is_dir()  # follows a link
            except OSError:
                is_dir = False  # a link that loops: add() counts it
            if not is_dir:  # a file, or a link to one (or a link that loops)
                if name.endswith(SUFFIXES) and not rules.ignored(child, False):
                    self.add(child, entry.path)
                continue
            if name in SKIP_DIRS or name in EXTRA_SKIP or name.endswith(".egg-info"):
                continue
            if rules.ignored(child, True):
                continue
            try:
                real = os.path.realpath(entry.path) if is_link else entry.path
            except (OSError, ValueError):
                self.out.skipped["symlink_loop"] += 1
                continue
            if is_link:
                if not is_within(self.root, real):
                    self.out.skipped["symlink_outside"] += 1
                    continue
                if real in self.seen_dirs or is_within(real, os.path.realpath(folder)):
                    self.out.skipped["symlink_loop"] += 1
                    continue
            if real in self.seen_dirs:
                continue
            self.seen_dirs.add(real)
            self.visit(entry.path, child, rules, depth + 1)
        return


def list_python_files(root: str | os.PathLike[str],
                      git_timeout_s: float = GIT_TIMEOUT_S) -> Listing:
    """The Python files under ``root`` that the index may read; never raises."""
    lister = _Lister(Path(root), git_timeout_s)
    try:
        if lister.root.is_dir():
            lister.seen_dirs.add(str(lister.root))
            lister.visit(str(lister.root), "", GitIgnore(), 0)
            for rel, path in lister.links:
                lister.add(rel, path, links_now=True)
    except Exception as exc:  # a file system that misbehaves: what was listed so far
        log.warning("jupyter-ds: listing %s for repository context failed: %s",
                    lister.root, exc)
    return lister.out
