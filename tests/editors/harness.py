"""Running a real editor headless against `jupyter-ds lsp`, for the tests in this folder.

* :func:`readme_snippet` takes an editor's configuration from README.md, between
  ``<!-- editors:NAME -->`` and ``<!-- /editors:NAME -->``: the tests run what the README
  tells users to write, so the two cannot drift apart.
* :func:`require_lsp` checks that `jupyter-ds lsp --help` works first: a test skips
  when the command line has no ``lsp`` subcommand at all, and fails, with its error,
  when the subcommand is there but does not start.
* :func:`run_editor` runs one editor process with a deadline; the editor's script writes
  what it saw as JSON (``JDS_EDITOR_OUT``) and the language server's pid
  (``JDS_EDITOR_PID``); whatever happens, the editor's process group and the language
  server are killed at the end, and :meth:`EditorRun.describe` gives everything there is
  to read (exit status, JSON, stdout, stderr, the language server's log) for a failure
  message.

The editors find ``jupyter-ds`` on ``PATH``, as the README snippets say: the folder of the
interpreter running the tests (the project's venv) comes first, or
``$JUPYTER_DS_EDITORS_BIN_DIR`` when set (to try another build of the command).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
README = REPO_ROOT / "README.md"
# Where `make setup` (scripts/ensure-editors.sh) gets the editors from, for skip reasons.
SETUP_HINT = "`make setup` installs it (scripts/ensure-editors.sh, Debian packages, as root)"


@dataclass(frozen=True)
class Case:
    """A Python file and the cursor at the end of ``prefix``, where an editor completes."""

    name: str
    prefix: str
    suffix: str

    @property
    def line(self) -> int:  # 0-based
        return self.prefix.count("\n")

    @property
    def col(self) -> int:  # characters (= bytes: the cases are ASCII)
        return len(self.prefix.rsplit("\n", 1)[-1])

    def write(self, folder: Path) -> Path:
        path = folder / self.name
        path.write_text(self.prefix + self.suffix, encoding="utf-8")
        return path


# Where the editors complete: after a space (nothing to replace), and in the middle of a
# word (the suggestion's edit replaces the word typed so far, as editors filter by it).
CASES = (
    Case("stats.py", "def mean(values):\n    return ", "\n\n\nprint(mean([1.0, 2.0, 4.0]))\n"),
    Case("totals.py", "def total(values):\n    return su", "\n"),
)


def cases_json(folder: Path) -> str:
    """Writes the case files into ``folder``; their cursors as the editor scripts read them."""
    return json.dumps(
        [{"file": str(case.write(folder)), "line": case.line, "col": case.col} for case in CASES]
    )


def check_completion(seen: dict[str, Any], case: Case, expected: str, why: str) -> dict[str, Any]:
    """The jupyter-ds item the editor got at ``case``'s cursor carries the REST API's
    suggestion ``expected``, and accepting it wrote exactly that at the cursor."""
    ours = [item for item in seen.get("items") or [] if item.get("detail") == "jupyter-ds"]
    assert ours, why
    item = ours[0]
    new_text = item["textEdit"]["newText"]
    assert item.get("insertText") == new_text, why
    assert new_text.endswith(expected), why
    if not re.search(r"\w$", case.prefix):  # nothing typed to replace: the text itself
        assert new_text == expected, why
    assert seen["buffer"] == case.prefix + expected + case.suffix, why
    return item


def bin_dir() -> Path:
    """The folder whose ``jupyter-ds`` the editors start."""
    override = os.environ.get("JUPYTER_DS_EDITORS_BIN_DIR")
    return Path(override) if override else Path(sys.executable).parent


def readme_snippet(name: str) -> str:
    """The code block between ``<!-- editors:NAME -->`` and ``<!-- /editors:NAME -->``."""
    text = README.read_text(encoding="utf-8")
    tag = re.escape(name)
    match = re.search(
        rf"<!-- editors:{tag} -->\s*```[\w-]*\n(.*?)```\s*<!-- /editors:{tag} -->", text, re.DOTALL
    )
    assert match, f"README.md has no ```-block between <!-- editors:{name} --> markers"
    return match.group(1)


@functools.lru_cache(maxsize=1)
def _lsp_check() -> tuple[str, str] | None:
    """None when `jupyter-ds lsp --help` works; else ("skip" | "fail", why)."""
    exe = bin_dir() / "jupyter-ds"
    if not exe.exists():
        return "skip", f"{exe} does not exist"
    try:
        proc = subprocess.run(
            [str(exe), "lsp", "--help"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "fail", f"`{exe} lsp --help` did not answer in 60 s"
    if proc.returncode == 0:
        return None
    why = f"`{exe} lsp --help` failed ({proc.returncode}): {proc.stderr.strip()[-800:]}"
    # A command line without the subcommand (this checkout predates it) skips; a
    # subcommand that is there and breaks fails.
    return ("skip" if "invalid choice: 'lsp'" in proc.stderr else "fail"), why


def require_lsp() -> None:
    problem = _lsp_check()
    if problem is None:
        return
    kind, why = problem
    if kind == "skip":
        pytest.skip(f"this jupyter-ds has no `lsp` command: {why}")
    pytest.fail(f"the jupyter-ds language server does not start: {why}")


def find_editor(name: str) -> str | None:
    return shutil.which(name)


def editor_env(work: Path, url: str, token: str, **extra: str) -> dict[str, str]:
    """The editor's environment: the server address for `jupyter-ds lsp` (client mode reads
    ``JUPYTER_DS_URL``/``JUPYTER_DS_TOKEN``), ``jupyter-ds`` on PATH, and a home and XDG
    folders of its own so no user configuration or state of this machine is read."""
    home = work / "home"
    for sub in ("config", "cache", "data", "state"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_CACHE_HOME=str(home / "cache"),
        XDG_DATA_HOME=str(home / "data"),
        XDG_STATE_HOME=str(home / "state"),
        JUPYTER_DS_URL=url,
        JUPYTER_DS_TOKEN=token,
        JDS_EDITOR_OUT=str(work / "result.json"),
        JDS_EDITOR_PID=str(work / "lsp.pid"),
        **extra,
    )
    # The language server must not inherit a pytest-jupyter or CI setting that points it
    # at another server's runtime files: the URL and token above are the only address.
    env.pop("JUPYTER_TOKEN", None)
    return env


@dataclass
class EditorRun:
    argv: list[str]
    returncode: int | None
    timed_out: bool
    seconds: float
    stdout: str
    stderr: str
    result: dict[str, Any] | None
    logs: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [
            f"editor: {' '.join(self.argv)}",
            f"exit status: {self.returncode}"
            + (" (killed at the deadline)" if self.timed_out else "")
            + f", {self.seconds:.1f} s",
            "result: " + (json.dumps(self.result, indent=1)[-4000:] if self.result else "none"),
            "stdout:\n" + self.stdout[-3000:],
            "stderr:\n" + self.stderr[-3000:],
        ]
        parts += [f"{name}:\n{text[-4000:]}" for name, text in self.logs.items()]
        return "\n".join(parts)


def _kill_pid_file(pid_file: Path) -> None:
    """Kill the language server the editor started, if it is still running."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return  # gone
    if b"lsp" in cmdline:  # still ours, not a reused pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def run_editor(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    logs: dict[str, Path] | None = None,
) -> EditorRun:
    """Run an editor until it exits or ``timeout`` seconds pass (then kill it).

    Awaited on the test's event loop, so the in-process Jupyter server keeps answering the
    language server while the editor runs.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    out_path = Path(env["JDS_EDITOR_OUT"])
    pid_path = Path(env["JDS_EDITOR_PID"])
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group: killed as a whole below
    )
    timed_out = False
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _kill_pid_file(pid_path)
    result = None
    if out_path.exists():
        try:
            result = json.loads(out_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            result = {"unreadable": f"{exc}: {out_path.read_text(encoding='utf-8')[:2000]}"}
    log_texts = {}
    for name, path in (logs or {}).items():
        if path.exists():
            log_texts[name] = path.read_text(encoding="utf-8", errors="replace")
    return EditorRun(
        argv=argv,
        returncode=proc.returncode,
        timed_out=timed_out,
        seconds=loop.time() - start,
        stdout=stdout.decode("utf-8", "replace"),
        stderr=stderr.decode("utf-8", "replace"),
        result=result,
        logs=log_texts,
    )
