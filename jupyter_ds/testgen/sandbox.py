"""Run one generated pytest file against the code under test, in a sandbox; read the verdict.

Plain Python (no Jupyter imports): the server, the CLI and the benchmarks call it alike.

The sandbox
-----------
Every run gets a private temporary directory, its own process group (session) with a
wall-clock timeout that kills the whole group (so does a caller's ``cancel``: SIGTERM,
then SIGKILL after a short grace), resource limits (CPU seconds, address
space, file size, open files, processes, no core files), a fixed minimal environment
(nothing of the server's: no tokens, credentials, ``JUPYTER*``, proxies) and, where
bubblewrap works, namespaces: no network, a new mount namespace showing only the
interpreter and its packages, the code under test and the run's own directories (all
read-only but the work directory and the report directory), a new pid namespace (the
run cannot see or signal anything outside it, and all of it dies with its init).

:func:`detect_sandbox` decides once (cached) how runs are isolated:

* ``bwrap`` as root with the dedicated user (``jupyter-ds-sandbox``, made by
  ``scripts/ensure-sandbox.sh``): bubblewrap is started by root *without* a user
  namespace (``--unshare-ipc --unshare-pid --unshare-net --unshare-uts
  --unshare-cgroup-try``, i.e. ``--unshare-all`` minus the user namespace), with every
  capability dropped but ``CAP_SETUID``/``CAP_SETGID``, and the runner's first act is to
  become the sandbox user for good. Why not ``--unshare-all`` here: its user namespace
  would map the sandbox's root to the real uid 0, which is exempt from ``RLIMIT_NPROC``
  (a fork bomb would be bounded only by the timeout), and a user namespace with only
  uid 0 mapped leaves no way to switch to an unprivileged uid. Binding as root also
  lets the sandbox see an interpreter that lives in root's home (pyenv), which a
  bubblewrap started by the unprivileged user could not bind.
* ``bwrap`` as an ordinary user: ``--unshare-all`` (an unprivileged user namespace); the
  process limit is set inside it, where it counts the sandbox's own processes only.
* ``bwrap`` as root without the sandbox user: ``--unshare-all``; the result says that the
  process-count limit is not effective.
* ``limits-only`` (no bubblewrap, or it cannot create namespaces here): the same limits,
  directory, environment and process group, as the sandbox user when root has one that
  can run the interpreter; the result says what is *not* isolated (network, file system,
  and the process limit when running as root). Never silent: ``SandboxInfo.reason`` and
  ``RunReport.sandbox`` say it, for ``GET health`` and every result.

The verdict
-----------
pytest runs hermetically (``python -s -P -B`` in a fixed environment: what ``-I`` does,
except that ``PYTHONHASHSEED`` is honoured, so a run's hash seed is chosen, per run, by
the caller; ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``, only
``-p pytest_timeout`` loaded, ``-p no:cacheprovider``, rootdir and confcutdir = the work
directory) with ``--junitxml``, under coverage with branch measurement and one coverage
context per test (its node id). The verdict is read from the reports the runner writes
(the JUnit XML and the runner's own JSON, written last), never from the exit code alone:
a missing or invalid report fails the whole run with a reason (a test that calls
``os._exit(0)`` does not pass).

Limits of the model: a test runs in the same interpreter as pytest, so a test written to
forge its own report could; what this defends against is damage and escape (network, the
file system, the server's secrets and processes, the machine's resources) and mistakes
that look like passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SANDBOX_USER = "jupyter-ds-sandbox"
RUNNER = Path(__file__).with_name("_sandbox_runner.py")
TEST_FILE = "test_candidate.py"

# Namespace flags. ``--unshare-all`` where the user namespace is wanted; as root with the
# sandbox user, every namespace but the user one (see the module docstring).
BWRAP_COMMON = ("--die-with-parent", "--new-session", "--clearenv")
BWRAP_ALL = ("--unshare-all", *BWRAP_COMMON)
BWRAP_ROOT = (
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup-try",
    *BWRAP_COMMON,
    "--cap-drop",
    "ALL",
    "--cap-add",
    "CAP_SETUID",
    "--cap-add",
    "CAP_SETGID",
)
# Small files of /etc that programs expect (the dynamic loader, time zone, user names).
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
    "/etc/mime.types",
)
# ``-I`` minus ``-E``: no user site-packages (-s), no script or current directory on
# sys.path (-P, Python 3.11+), no bytecode files (-B). The environment is fixed by
# _environment(); -E would also drop the PYTHONHASHSEED it sets on purpose.
PYTHON_FLAGS = ("-s", "-B", *(("-P",) if sys.version_info >= (3, 11) else ()))
REPORT_MAX_BYTES = 32 * 1024 * 1024
# A run that is stopped (timeout, cancel) gets SIGTERM, then SIGKILL this much later: the
# grace is short because nothing of a stopped run is kept but its reports.
KILL_GRACE_S = 1.0
# Longest pause between two looks at a running run (its exit, its cancel, its deadline).
POLL_MAX_S = 0.05
OUTPUT_TAIL_CHARS = 4000
MESSAGE_CHARS = 1000
DETAILS_CHARS = 4000


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run (each process; ``nproc`` counts the sandbox user's)."""

    cpu_s: int = 30
    memory_bytes: int = 1024 * 1024 * 1024  # RLIMIT_AS
    file_size_bytes: int = 64 * 1024 * 1024
    open_files: int = 256
    processes: int = 32
    tmpfs_bytes: int = 128 * 1024 * 1024  # each of the work directory and /tmp (bwrap)


@dataclass(frozen=True)
class SandboxInfo:
    """How runs are isolated here; ``to_dict()`` goes into health and every result."""

    mode: Literal["bwrap", "limits-only"]
    reason: str
    user: str | None  # the unprivileged user the tests run as; None: the server's own user
    network_isolated: bool = False
    filesystem_isolated: bool = False
    process_limit: bool = False  # whether RLIMIT_NPROC actually binds
    uid: int | None = None
    gid: int | None = None
    bwrap: str | None = None
    bwrap_flags: tuple[str, ...] = ()
    drop_in_runner: bool = False  # root bwrap: the runner becomes ``uid`` itself

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "user": self.user,
            "network_isolated": self.network_isolated,
            "filesystem_isolated": self.filesystem_isolated,
            "process_limit": self.process_limit,
            "bwrap_flags": list(self.bwrap_flags),
        }


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class
    name: str
    outcome: Literal["passed", "failed", "error", "skipped"]
    message: str = ""
    details: str = ""
    duration_s: float = 0.0
    timed_out: bool = False  # pytest-timeout stopped it
    # Per file under test (its label): lines and branch arcs (from, to) this test ran,
    # setup and teardown included; a negative ``to`` is an exit from the code object.
    lines: dict[str, list[int]] = field(default_factory=dict)
    arcs: dict[str, list[list[int]]] = field(default_factory=dict)


@dataclass
class FileCoverage:
    statements: list[int] = field(default_factory=list)
    branches: list[list[int]] = field(default_factory=list)  # every branch arc
    covered_lines: list[int] = field(default_factory=list)  # the whole run
    covered_arcs: list[list[int]] = field(default_factory=list)  # branch arcs, whole run
    import_lines: list[int] = field(default_factory=list)  # run outside any test
    import_arcs: list[list[int]] = field(default_factory=list)
    line_percent: float = 0.0
    branch_percent: float = 0.0


@dataclass
class RunReport:
    """The verdict of one run. ``ok`` is False when the run as a whole failed."""

    ok: bool
    sandbox: dict[str, Any]
    duration_s: float
    failure: str | None = None  # code, see FAILURES
    reason: str | None = None  # human words for ``failure``
    tests: dict[str, TestResult] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    coverage: dict[str, FileCoverage] = field(default_factory=dict)
    timed_out: bool = False  # the wall-clock limit killed the run
    killed_by_signal: str | None = None  # e.g. "SIGKILL", how the runner ended
    exit_code: int | None = None
    limits_hit: list[str] = field(default_factory=list)  # memory, cpu, processes, ...
    collection_error: str | None = None
    output_tail: str = ""

    @property
    def all_passed(self) -> bool:
        return (
            self.ok and bool(self.tests) and all(t.outcome == "passed" for t in self.tests.values())
        )

    def passed(self, name: str) -> bool:
        test = self.tests.get(name)
        return self.ok and test is not None and test.outcome == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Run-level failure codes (RunReport.failure).
FAILURES = {
    "timeout": "the run exceeded its wall-clock limit and was killed",
    "killed": "the runner was killed by a signal",
    "cpu_limit": "the run exceeded its CPU-time limit",
    "no_report": "the run ended without writing its report",
    "invalid_report": "the run's report is truncated or invalid",
    "collection_error": "the test file could not be collected",
    "no_tests": "the test file has no tests",
    "sandbox_error": "the sandbox could not be started",
    "cancelled": "the run was stopped by its caller (its client went away)",
    "internal_error": "pytest stopped with an internal error",
}


# --------------------------------------------------------------------------- detection

_detect_lock = threading.Lock()
_detected: SandboxInfo | None = None


def detect_sandbox(*, refresh: bool = False) -> SandboxInfo:
    """Whether bubblewrap works here, and how runs will be isolated (cached).

    ``JUPYTER_DS_SANDBOX=limits-only`` forces the fallback; ``JUPYTER_DS_SANDBOX_USER``
    names the unprivileged user (default ``jupyter-ds-sandbox``; empty: none).
    """
    global _detected
    with _detect_lock:
        if _detected is None or refresh:
            _detected = _detect()
        return _detected


def _detect() -> SandboxInfo:
    root = os.geteuid() == 0
    user_name = os.environ.get("JUPYTER_DS_SANDBOX_USER", SANDBOX_USER)
    account = None
    if root and user_name:
        with contextlib.suppress(KeyError):
            account = pwd.getpwnam(user_name)
    if account is not None and account.pw_uid == 0:
        account = None
    notes: list[str] = []
    if root and account is None:
        notes.append(
            f"no sandbox user {user_name!r} (scripts/ensure-sandbox.sh creates it): "
            "runs as root, so the process-count limit is not effective"
        )
    forced = os.environ.get("JUPYTER_DS_SANDBOX", "").strip().lower()
    bwrap = shutil.which("bwrap")
    why_not = ""
    if forced in {"limits-only", "limits", "off", "none"}:
        why_not = "JUPYTER_DS_SANDBOX=limits-only"
    elif bwrap is None:
        why_not = "bubblewrap (bwrap) is not installed or not on PATH"
    else:
        candidates: list[SandboxInfo] = []
        if account is not None:
            candidates.append(
                SandboxInfo(
                    mode="bwrap",
                    reason=(
                        f"bubblewrap: no network, private mount and pid namespaces; runs as "
                        f"{account.pw_name} (uid {account.pw_uid})"
                    ),
                    user=account.pw_name,
                    network_isolated=True,
                    filesystem_isolated=True,
                    process_limit=True,
                    uid=account.pw_uid,
                    gid=account.pw_gid,
                    bwrap=bwrap,
                    bwrap_flags=BWRAP_ROOT,
                    drop_in_runner=True,
                )
            )
        errors = []
        for info in candidates:  # the sandbox user's first
            error = _probe(info)
            if error is None:
                return info
            errors.append(error)
            notes.append(
                f"the sandbox user {info.user!r} could not be used ({error}): runs as root, "
                "so the process-count limit is not effective"
            )
        info = SandboxInfo(
            mode="bwrap",
            reason="bubblewrap: no network, private mount, pid and user namespaces"
            + ("; " + "; ".join(notes) if notes else ""),
            user=None,
            network_isolated=True,
            filesystem_isolated=True,
            process_limit=not root,
            bwrap=bwrap,
            bwrap_flags=BWRAP_ALL,
        )
        error = _probe(info)
        if error is None:
            return info
        errors.append(error)
        notes = notes[: 1 if account is None else 0]
        why_not = "bubblewrap cannot create its namespaces here: " + " / ".join(errors)
    # The fallback: limits, private directory, scrubbed environment, process group.
    user = None
    uid = gid = None
    if account is not None:
        info = SandboxInfo(
            mode="limits-only",
            reason="",
            user=account.pw_name,
            uid=account.pw_uid,
            gid=account.pw_gid,
            process_limit=True,
        )
        error = _probe(info)
        if error is None:
            user, uid, gid = account.pw_name, account.pw_uid, account.pw_gid
        else:
            notes = [
                f"the sandbox user {account.pw_name!r} cannot run the interpreter ({error}): "
                "runs as root, so the process-count limit is not effective"
            ]
    parts = [
        f"limits only ({why_not})",
        "network not isolated",
        "file system not isolated"
        + (
            f" (runs as {user}: it can read what any user can read)"
            if user
            else " (runs as the server's user)"
        ),
        *notes,
    ]
    return SandboxInfo(
        mode="limits-only",
        reason="; ".join(parts),
        user=user,
        uid=uid,
        gid=gid,
        process_limit=(user is not None) or not root,
    )


def _probe(info: SandboxInfo) -> str | None:
    """Run the real command line with a probe config; None when it works, else why not."""
    with tempfile.TemporaryDirectory(prefix="jupyter-ds-probe-") as tmp:
        layout = _Layout.create(Path(tmp), info)
        config = {
            "probe": True,
            "drop_uid": info.uid if info.drop_in_runner else None,
            "drop_gid": info.gid if info.drop_in_runner else None,
            "limits": _limits_config(Limits(), info),
        }
        layout.write_config(config)
        env = _environment(info, layout, hash_seed=0)
        cmd = _command(
            info, layout, python=sys.executable, project_dir=None, limits=Limits(), env=env
        )
        try:
            proc = subprocess.run(
                cmd,
                env=env if info.mode != "bwrap" else {"PATH": env["PATH"]},
                cwd=str(layout.work if info.mode == "limits-only" else "/"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                start_new_session=True,
                **_popen_user(info),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{type(exc).__name__}: {exc}"
        out = proc.stdout.decode(errors="replace")
        if proc.returncode != 0 or '"probe": "ok"' not in out:
            err = (proc.stderr.decode(errors="replace") or out).strip().splitlines()
            return f"exit {proc.returncode}: {err[-1] if err else 'no output'}"
        if info.uid is not None and f'"uid": {info.uid},' not in out:
            return "the probe did not run as the sandbox user"
        return None


# ------------------------------------------------------------------------------- runs


class _Layout:
    """A run's private directory (host side) and what the sandbox sees of it.

    root/          0711, the server's
      runner/      the runner and its config, read-only for the sandbox
      src/         the test file and the code under test (copied into work/ by the runner)
      work/        the run's cwd and HOME (a size-limited tmpfs under bubblewrap)
      report/      JUnit XML and the runner's JSON, the only host directory it may write
      output.log   stdout and stderr, opened by the server
    """

    def __init__(self, root: Path):
        self.root = root
        self.runner = root / "runner"
        self.src = root / "src"
        self.work = root / "work"
        self.report = root / "report"
        self.log = root / "output.log"
        self.config = self.runner / "config.json"
        self.script = self.runner / "_sandbox_runner.py"

    @classmethod
    def create(cls, root: Path, info: SandboxInfo) -> _Layout:
        layout = cls(root)
        os.chmod(root, 0o711)
        for d in (layout.runner, layout.src, layout.work, layout.report):
            d.mkdir(mode=0o755)
        shutil.copyfile(RUNNER, layout.script)
        os.chmod(layout.script, 0o644)
        if info.uid is not None:
            for d in (layout.work, layout.report):
                os.chown(d, info.uid, info.gid if info.gid is not None else -1)
                os.chmod(d, 0o700)
        return layout

    def write_config(self, config: dict[str, Any]) -> None:
        config.setdefault("work_dir", str(self.work))
        config.setdefault("report_dir", str(self.report))
        config.setdefault("src_dir", str(self.src))
        self.config.write_text(json.dumps(config), encoding="utf-8")
        os.chmod(self.config, 0o644)


def _limits_config(limits: Limits, info: SandboxInfo) -> dict[str, int | None]:
    return {
        "cpu": limits.cpu_s,
        "as": limits.memory_bytes,
        "fsize": limits.file_size_bytes,
        "nofile": limits.open_files,
        "nproc": limits.processes,
        "core": 0,
    }


def _environment(info: SandboxInfo, layout: _Layout, *, hash_seed: int) -> dict[str, str]:
    """The whole environment of a run: fixed, nothing taken from the server's."""
    venv_bin = str(Path(sys.executable).parent)
    tmp = "/tmp" if info.mode == "bwrap" else str(layout.work / ".tmp")
    return {
        "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(layout.work),
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "USER": info.user or "sandbox",
        "LOGNAME": info.user or "sandbox",
        # The only PYTHON* variables of a run (the interpreter is not run with -E).
        "PYTHONHASHSEED": str(hash_seed),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        # One thread per math library: deterministic, and within the process limit.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_MAX_THREADS": "1",
    }


def _popen_user(info: SandboxInfo) -> dict[str, Any]:
    """Limits-only as root with the sandbox user: Popen switches user (no preexec_fn)."""
    if info.mode == "limits-only" and info.uid is not None and os.geteuid() == 0:
        return {"user": info.uid, "group": info.gid, "extra_groups": []}
    return {}


def _python_roots(python: str) -> list[str]:
    """Directories the interpreter needs: its prefix and the venv's (read-only binds)."""
    roots = []
    for path in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(python))):
        real = os.path.realpath(path)
        if os.path.basename(real) == "bin":
            real = os.path.dirname(real)
        roots.append(real)
    out: list[str] = []
    for root in sorted(set(roots), key=len):
        if root in ("/", "/usr") or root.startswith("/usr/"):
            continue
        if not any(root == o or root.startswith(o + "/") for o in out):
            out.append(root)
    return out


def _command(
    info: SandboxInfo,
    layout: _Layout,
    *,
    python: str,
    project_dir: Path | None,
    limits: Limits,
    env: Mapping[str, str],
) -> list[str]:
    """The whole command line; under bubblewrap, ``env`` is set inside (``--clearenv``)."""
    runner = [python, *PYTHON_FLAGS, str(layout.script), str(layout.config)]
    if info.mode != "bwrap":
        return runner
    args = [info.bwrap or "bwrap", *info.bwrap_flags]
    made = {"/", "/usr", "/tmp", "/etc", "/proc", "/dev"}

    def parents(dest: str) -> list[str]:
        # bubblewrap would create missing parents 0700 (root's): the user could not pass.
        out = []
        for parent in reversed(Path(dest).parents):
            if str(parent) not in made:
                made.add(str(parent))
                out += ["--perms", "0755", "--dir", str(parent)]
        made.add(dest)
        return out

    args += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--perms", "1777", "--size", str(limits.tmpfs_bytes), "--tmpfs", "/tmp"]
    binds = [("--ro-bind", root) for root in _python_roots(python)]
    if project_dir is not None:
        binds.append(("--ro-bind", str(project_dir)))
    binds += [
        ("--ro-bind", str(layout.runner)),
        ("--ro-bind", str(layout.src)),
        ("--bind", str(layout.report)),
    ]
    for kind, path in binds:
        args += [*parents(path), kind, path, path]
    args += parents(str(layout.work))
    args += ["--perms", "1777", "--size", str(limits.tmpfs_bytes), "--tmpfs", str(layout.work)]
    args += _setenv_args(env)
    args += ["--chdir", "/", *runner]
    return args


def _setenv_args(env: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for key, value in env.items():
        out += ["--setenv", key, value]
    return out


def _safe_rel(rel: str) -> Path:
    path = Path(rel)
    if path.is_absolute() or not rel or any(p in ("..", "") for p in path.parts):
        raise ValueError(f"not a relative path inside the run directory: {rel!r}")
    return path


def run_pytest(
    test_source: str,
    sources: Mapping[str, str] | None = None,
    *,
    project_dir: str | os.PathLike[str] | None = None,
    targets: Sequence[str] | None = None,
    timeout: float = 60.0,
    test_timeout: float = 10.0,
    limits: Limits | None = None,
    sandbox: SandboxInfo | None = None,
    hash_seed: int | None = None,
    keep_dir: str | os.PathLike[str] | None = None,
    on_start: Callable[[int, str], None] | None = None,
    cancel: threading.Event | None = None,
    kill_grace: float = KILL_GRACE_S,
) -> RunReport:
    """Run pytest on one test file in the sandbox and return the verdict.

    ``test_source``: the test module's text (run as ``test_candidate.py``).
    ``sources``: files of the code under test, relative path -> text, written next to the
    test file (e.g. ``{"mymod.py": text}``; ``{"pkg/__init__.py": "", "pkg/m.py": ...}``).
    ``project_dir``: alternatively (or as well, ``sources`` shadowing it) a directory put
    on ``sys.path``: bound read-only under bubblewrap; copied into the run (its sources
    and small files, not its hidden directories, caches or virtual environments) in the
    fallback, or where the sandbox user could not read it.
    ``targets``: the files whose coverage is measured, relative to the work directory
    (``sources``) or to ``project_dir``; default: every ``.py`` of ``sources``.
    ``timeout``: wall clock of the whole run; ``test_timeout``: each test (pytest-timeout).
    ``hash_seed``: the run's ``PYTHONHASHSEED`` (pytest's interpreter and what the tests
    start); random by default, so repeated runs differ in hash order as real ones would.
    ``keep_dir``: copy the run directory there (debugging).
    ``on_start``: called with the run's process-group id and its private directory once
    it has started (monitoring, tests).
    ``cancel``: set from another thread to stop the run (a server's client went away):
    a run not started yet never starts; a running one is killed with everything it
    started (SIGTERM, SIGKILL ``kill_grace`` seconds later) and fails as ``cancelled``.
    A thread blocked in this call is not interruptible otherwise, so a server must pass
    one.
    """
    info = sandbox or detect_sandbox()
    if cancel is not None and cancel.is_set():
        return RunReport(
            ok=False,
            sandbox=info.to_dict(),
            duration_s=0.0,
            failure="cancelled",
            reason=FAILURES["cancelled"],
        )
    limits = limits or Limits()
    python = sys.executable
    sources = dict(sources or {})
    project = Path(project_dir).resolve() if project_dir is not None else None
    if hash_seed is None:
        hash_seed = secrets.randbelow(2**32)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="jupyter-ds-run-")
    try:
        layout = _Layout.create(Path(tmp), info)
        project_bound = None
        if project is not None and info.mode == "bwrap" and _readable_by(project, info):
            project_bound = project
        target_map, sys_path = _write_sources(
            layout, test_source, sources, project, targets, copy_project=project_bound is None
        )
        pytest_args = [
            str(layout.work / TEST_FILE),
            "-q",
            "-c",
            str(layout.work / "pytest.ini"),
            "--rootdir",
            str(layout.work),
            "--confcutdir",
            str(layout.work),
            "-p",
            "no:cacheprovider",
            "-p",
            "pytest_timeout",
            f"--timeout={test_timeout:g}",
            "--junitxml",
            str(layout.report / "junit.xml"),
            "-o",
            "junit_family=xunit2",
            "--tb=short",
            "-W",
            "ignore::DeprecationWarning",
        ]
        layout.write_config(
            {
                "drop_uid": info.uid if info.drop_in_runner else None,
                "drop_gid": info.gid if info.drop_in_runner else None,
                "limits": _limits_config(limits, info),
                "test_file": TEST_FILE,
                "targets": target_map,
                "sys_path": sys_path,
                "pytest_args": pytest_args,
            }
        )
        env = _environment(info, layout, hash_seed=hash_seed)
        cmd = _command(
            info, layout, python=python, project_dir=project_bound, limits=limits, env=env
        )
        outcome = _execute(cmd, info, layout, env, timeout, on_start, cancel, kill_grace)
        report = _build_report(info, layout, outcome, target_map)
        if keep_dir is not None:
            shutil.copytree(tmp, keep_dir, symlinks=True, dirs_exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.duration_s = round(time.monotonic() - started, 3)
    return report


def run_pytest_repeated(
    test_source: str,
    sources: Mapping[str, str] | None = None,
    *,
    runs: int = 5,
    stop_on_failure: bool = False,
    **kwargs: Any,
) -> list[RunReport]:
    """``runs`` independent runs (flakiness: a kept test passes in every one of them)."""
    reports = []
    for _ in range(runs):
        report = run_pytest(test_source, sources, **kwargs)
        reports.append(report)
        if stop_on_failure and not report.all_passed:
            break
    return reports


def pass_counts(reports: Sequence[RunReport]) -> dict[str, int]:
    """Per test name: in how many of ``reports`` it passed (run-level failures count 0)."""
    counts: dict[str, int] = {}
    for report in reports:
        for name in report.tests:
            counts.setdefault(name, 0)
            if report.passed(name):
                counts[name] += 1
    return counts


def _write_sources(
    layout: _Layout,
    test_source: str,
    sources: Mapping[str, str],
    project: Path | None,
    targets: Sequence[str] | None,
    *,
    copy_project: bool,
) -> tuple[dict[str, str], list[str]]:
    """Write the run's files into src/.

    Returns {absolute path of a target, as the sandbox sees it: its label} and the
    directories the runner puts first on ``sys.path`` (the work directory, the project).
    """
    files = {TEST_FILE: test_source, "pytest.ini": "[pytest]\n", **sources}
    for rel, text in files.items():
        path = layout.src / _safe_rel(rel)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o644)
    sys_path = [str(layout.work)]
    project_seen = project
    if project is not None:
        if copy_project:
            _copy_project(project, layout.src / PROJECT_COPY)
            project_seen = layout.work / PROJECT_COPY
        sys_path.append(str(project_seen))
    if targets is None:
        targets = [rel for rel in sources if rel.endswith(".py")]
    target_map = {}
    for rel in targets:
        if rel in sources or project_seen is None:
            target_map[str(layout.work / _safe_rel(rel))] = rel
        else:
            target_map[str(project_seen / _safe_rel(rel))] = rel
    return target_map, sys_path


PROJECT_COPY = "_project"
PROJECT_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "venv", "env"}
PROJECT_FILE_MAX = 2 * 1024 * 1024
PROJECT_TOTAL_MAX = 64 * 1024 * 1024


def _copy_project(project: Path, dest: Path) -> None:
    """Copy a project's files for a run: no hidden dirs, caches, venvs, links, big files."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(project):
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in PROJECT_SKIP_DIRS
            and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))
            and not os.path.islink(os.path.join(dirpath, d))
        ]
        target = dest / os.path.relpath(dirpath, project)
        target.mkdir(parents=True, exist_ok=True, mode=0o755)
        for name in filenames:
            src = os.path.join(dirpath, name)
            try:
                st = os.lstat(src)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size > PROJECT_FILE_MAX:
                continue
            total += st.st_size
            if total > PROJECT_TOTAL_MAX:
                raise ValueError(
                    f"project_dir is too large to copy into the sandbox (over "
                    f"{PROJECT_TOTAL_MAX // 2**20} MiB of files)"
                )
            shutil.copyfile(src, target / name)
            os.chmod(target / name, 0o644)


def _readable_by(path: Path, info: SandboxInfo) -> bool:
    """Whether the sandbox's user can list and enter ``path`` (its own permission bits)."""
    if info.uid is None:
        return True
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_uid == info.uid:
        bits = stat.S_IRUSR | stat.S_IXUSR
    elif st.st_gid == info.gid:
        bits = stat.S_IRGRP | stat.S_IXGRP
    else:
        bits = stat.S_IROTH | stat.S_IXOTH
    return st.st_mode & bits == bits


@dataclass
class _Outcome:
    returncode: int | None
    timed_out: bool
    duration_s: float
    cancelled: bool = False


def _execute(
    cmd: list[str],
    info: SandboxInfo,
    layout: _Layout,
    env: dict[str, str],
    timeout: float,
    on_start: Callable[[int, str], None] | None = None,
    cancel: threading.Event | None = None,
    kill_grace: float = KILL_GRACE_S,
) -> _Outcome:
    started = time.monotonic()
    info_r = info_w = -1
    pass_fds: tuple[int, ...] = ()
    if info.mode == "bwrap":
        # bubblewrap reports the pid of the sandbox's init: killing it ends the whole pid
        # namespace, and bubblewrap returns only once all of it is gone.
        info_r, info_w = os.pipe()
        os.set_blocking(info_r, False)
        cmd = [cmd[0], "--info-fd", str(info_w), *cmd[1:]]
        pass_fds = (info_w,)
    ended = "exited"
    try:
        with open(layout.log, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                env=env if info.mode != "bwrap" else {"PATH": env["PATH"]},
                cwd=str(layout.work) if info.mode != "bwrap" else "/",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session and process group
                close_fds=True,
                pass_fds=pass_fds,
                **_popen_user(info),
            )
            if info_w >= 0:
                os.close(info_w)
                info_w = -1
            try:
                if on_start is not None:
                    on_start(proc.pid, str(layout.root))
                ended = _wait(proc, started + timeout, cancel)
            finally:
                # Stopped, or on_start raised: end the run, whatever it still runs.
                if proc.poll() is None:
                    _stop(proc, info_r, kill_grace)
                _kill_group(proc.pid)  # whatever a test left in the group (limits-only)
                _wait_group_gone(proc.pid)
    finally:
        for fd in (info_r, info_w):
            if fd >= 0:
                os.close(fd)
    _sweep(str(layout.root))
    return _Outcome(
        proc.returncode,
        ended == "timeout",
        time.monotonic() - started,
        cancelled=ended == "cancelled",
    )


def _wait(
    proc: subprocess.Popen[bytes], deadline: float, cancel: threading.Event | None
) -> Literal["exited", "timeout", "cancelled"]:
    """Until the run exits, its deadline passes or ``cancel`` is set, whichever is first.

    Waiting on the event (not sleeping) makes a cancel act at once; the pause between
    looks at the process grows as ``Popen.wait`` does, so short runs stay short.
    """
    delay = 0.0005
    while proc.poll() is None:
        if cancel is not None and cancel.is_set():
            return "cancelled"
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        pause = min(delay, left)
        if cancel is not None:
            cancel.wait(pause)
        else:
            time.sleep(pause)
        delay = min(delay * 2, POLL_MAX_S)
    return "exited"


def _stop(proc: subprocess.Popen[bytes], info_fd: int, grace: float) -> None:
    """Kill a run with everything it started: SIGTERM to its group, SIGKILL after ``grace``.

    The group is the runner's (limits-only) or bubblewrap's. Under bubblewrap the tests
    run in a session of their own inside a pid namespace, possibly as another user, so
    the sure kill is SIGKILL to the namespace's init (sent as the server, which started
    it): the kernel then kills every process of the namespace. The init is pinned by a
    pidfd opened while bubblewrap, its parent, is still running, so that a recycled pid
    is never signalled. bubblewrap's ``--die-with-parent`` kills the init as well when
    bubblewrap itself dies of the SIGTERM.
    """
    init = _sandbox_init(info_fd)
    try:
        _signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, grace))
        if init is not None:
            init.kill()
        _kill_group(proc.pid)
        proc.wait()
    finally:
        if init is not None:
            init.close()


class _Pinned:
    """A process to SIGKILL later without the risk of hitting a recycled pid (pidfd)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.fd = -1
        with contextlib.suppress(OSError, AttributeError):  # no pidfd: plain pid
            self.fd = os.pidfd_open(pid)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if self.fd >= 0:
                signal.pidfd_send_signal(self.fd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _wait_group_gone(pgid: int, wait_s: float = 3.0) -> None:
    """Until the killed group's last members have died and been reaped (by init)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def _sandbox_init(info_fd: int) -> _Pinned | None:
    """The sandbox's init as bubblewrap reported it on ``--info-fd`` (None: not yet)."""
    if info_fd < 0:
        return None
    try:
        data = os.read(info_fd, 65536)
        pid = json.loads(data.decode().split("}")[0] + "}").get("child-pid")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(pid, int) and pid > 1:
        return _Pinned(pid)
    return None


def _sweep(run_dir: str, wait_s: float = 3.0) -> None:
    """Kill what is left of a run: processes whose command line names its directory, or
    whose working directory is in it.

    Under bubblewrap nothing is (its pid namespace died with it); in the limits-only
    fallback this also reaches a process that left the process group (``setsid``): the
    runner's command line names the directory, and what a test starts inherits its
    working directory, the run's ``work/``.
    """
    needle = run_dir.encode() + b"/"
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        if needle in f.read():
                            found.append(int(entry.name))
                            continue
                    cwd = os.readlink(f"/proc/{entry.name}/cwd")
                except OSError:
                    continue
                if (cwd + "/").startswith(run_dir + "/"):
                    found.append(int(entry.name))
        if not found or time.monotonic() > deadline:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _kill_group(pgid: int) -> None:
    _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


# ---------------------------------------------------------------------------- reports


def _read_untrusted(path: Path, limit: int = REPORT_MAX_BYTES) -> bytes | None:
    """Read a file the sandbox wrote: no symlinks, regular files only, bounded size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def _read_json(path: Path) -> dict[str, Any] | None:
    data = _read_untrusted(path)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _tail(path: Path, chars: int = OUTPUT_TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars * 2))
            return f.read().decode("utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def _trim(text: str | None, chars: int, *, keep_end: bool = False) -> str:
    text = (text or "").strip()
    if len(text) <= chars:
        return text
    return "…" + text[-chars:] if keep_end else text[:chars] + "…"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_LIMIT_PATTERNS = (
    ("memory", re.compile(r"\bMemoryError\b|Cannot allocate memory")),
    ("processes", re.compile(r"BlockingIOError|Resource temporarily unavailable")),
    ("open_files", re.compile(r"Too many open files")),
    ("file_size", re.compile(r"File too large")),
)


def _limits_in(text: str) -> list[str]:
    return [name for name, pattern in _LIMIT_PATTERNS if pattern.search(text)]


def _parse_junit(data: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """Test cases of a JUnit XML report, or an error saying why it is not valid."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        return [], "the JUnit report contains a DTD"
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        return [], f"the JUnit report is not valid XML ({exc})"
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if root.tag not in ("testsuites", "testsuite") or not suites:
        return [], "the JUnit report has no test suite"
    cases: list[dict[str, Any]] = []
    for suite in suites:
        found = suite.findall("testcase")
        declared = suite.get("tests")
        if declared is not None and declared.isdigit() and int(declared) != len(found):
            # pytest counts a test with a teardown error twice; never fewer cases.
            if int(declared) > len(found):
                return [], "the JUnit report is truncated (fewer test cases than declared)"
        for case in found:
            entry: dict[str, Any] = {
                "classname": case.get("classname", ""),
                "name": case.get("name", ""),
                "time": case.get("time", "0"),
                "outcome": "passed",
                "message": "",
                "details": "",
            }
            rank = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
            for child in case:
                kind = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(child.tag)
                if kind is not None and rank[kind] > rank[entry["outcome"]]:
                    entry["outcome"] = kind
                    entry["message"] = child.get("message", "") or ""
                    entry["details"] = child.text or ""
            cases.append(entry)
    return cases, None


def _case_key(classname: str, name: str) -> str:
    stem = TEST_FILE[: -len(".py")]
    rest = classname[len(stem) :].lstrip(".") if classname.startswith(stem) else classname
    return (rest.replace(".", "::") + "::" + name) if rest else name


def _pairs(arcs: Any) -> list[list[int]]:
    out = []
    for arc in arcs or []:
        if isinstance(arc, (list, tuple)) and len(arc) == 2:
            if all(isinstance(v, int) for v in arc):
                out.append([arc[0], arc[1]])
    return out


def _ints(values: Any) -> list[int]:
    return [v for v in values or [] if isinstance(v, int)]


def _build_report(
    info: SandboxInfo, layout: _Layout, outcome: _Outcome, target_map: dict[str, str]
) -> RunReport:
    report = RunReport(
        ok=False,
        sandbox=info.to_dict(),
        duration_s=round(outcome.duration_s, 3),
        timed_out=outcome.timed_out,
        output_tail=_tail(layout.log),
    )
    code = outcome.returncode
    started = _read_json(layout.report / "started.json")
    supervisor = _read_json(layout.report / "supervisor.json")
    runner = _read_json(layout.report / "runner.json")
    junit_bytes = _read_untrusted(layout.report / "junit.xml")

    # How did the runner end? Under bubblewrap a signal shows as exit 128+n. A run the
    # server stopped (timeout, cancel) was killed by the server, not by a limit.
    stopped = outcome.timed_out or outcome.cancelled
    child_code = supervisor.get("exit_code") if supervisor else None
    if isinstance(child_code, int) and child_code < 0:
        report.killed_by_signal = _signal_name(-child_code)
    elif code is not None and code < 0 and not stopped:
        report.killed_by_signal = _signal_name(-code)
    elif (
        info.mode == "bwrap"
        and code is not None
        and code > 128
        and supervisor is None
        and started is not None
        and not stopped
    ):
        report.killed_by_signal = _signal_name(code - 128)
    report.exit_code = child_code if isinstance(child_code, int) else code

    def fail(kind: str, reason: str) -> RunReport:
        report.failure, report.reason = kind, reason
        return report

    if outcome.cancelled:
        return fail("cancelled", FAILURES["cancelled"])
    if outcome.timed_out:
        return fail("timeout", FAILURES["timeout"])
    if started is None:
        return fail(
            "sandbox_error",
            f"{FAILURES['sandbox_error']} (exit {code}): "
            + _trim(report.output_tail, 600, keep_end=True),
        )
    if report.killed_by_signal in ("SIGXCPU",):
        report.limits_hit.append("cpu")
        return fail("cpu_limit", FAILURES["cpu_limit"])
    if report.killed_by_signal:
        limits = _limits_in(report.output_tail)
        report.limits_hit.extend(limits)
        who = "the runner" if supervisor is None else "pytest"
        return fail(
            "killed",
            f"{who} was killed by {report.killed_by_signal}"
            + (f" ({', '.join(limits)} limit)" if limits else "")
            + (" (a test may have killed its parent process)" if supervisor is None else ""),
        )
    if runner is None or not runner.get("complete"):
        report.limits_hit.extend(_limits_in(report.output_tail))
        return fail(
            "no_report",
            f"{FAILURES['no_report']} (exit code {report.exit_code}): a test may have called "
            "os._exit() or exit() outside pytest's control, or the process was stopped",
        )
    if junit_bytes is None:
        return fail("no_report", "the run ended without writing its JUnit report")
    cases, error = _parse_junit(junit_bytes)
    if error is not None:
        return fail("invalid_report", error)
    # pytest's own crash (e.g. SystemExit raised while importing the test file) shows as
    # a test case named "internal" of class "pytest": never a test.
    internal = [c for c in cases if (c["classname"], c["name"]) == ("pytest", "internal")]
    if internal:
        details = internal[0]["details"] or internal[0]["message"]
        last = _collection_message(details)
        if "importtestmodule" in details or "import_path" in details:
            report.collection_error = f"{last} (raised while importing the test file)"
            return fail("collection_error", f"collection error: {report.collection_error}")
        return fail("internal_error", f"{FAILURES['internal_error']}: {last}")

    # Collection errors (import errors): the whole file is unusable.
    collect_errors = runner.get("collect_errors") or []
    texts = [str(e.get("longrepr", "")) for e in collect_errors if isinstance(e, dict)]
    if runner.get("exception"):
        texts.append(str(runner["exception"]))
    if texts:
        detail = _collection_message("\n".join(texts))
        report.collection_error = detail
        report.limits_hit.extend(_limits_in("\n".join(texts)))
        return fail("collection_error", f"collection error: {detail}")

    exit_code = runner.get("pytest_exit_code")
    coverage = runner.get("coverage") or {}
    for case in cases:
        key = _case_key(case["classname"], case["name"])
        message = case["message"]
        details = case["details"]
        try:
            duration = float(case["time"])
        except ValueError:
            duration = 0.0
        result = TestResult(
            name=key,
            outcome=case["outcome"],
            message=_trim(message, MESSAGE_CHARS),
            details=_trim(details, DETAILS_CHARS, keep_end=True),
            duration_s=round(duration, 3),
            timed_out="Timeout >" in message or "Timeout (>" in message,
        )
        previous = report.tests.get(key)
        if previous is not None and previous.outcome in ("failed", "error"):
            continue
        report.tests[key] = result
        for hit in _limits_in(message + "\n" + details):
            if hit not in report.limits_hit:
                report.limits_hit.append(hit)
    # A collected test absent from the JUnit report is an error, never a pass.
    for key in runner.get("collected") or []:
        if isinstance(key, str) and key not in report.tests:
            report.tests[key] = TestResult(
                name=key, outcome="error", message="no result in the JUnit report"
            )
    # Cross-check with the runner's own bookkeeping: never report a pass it did not see.
    outcomes = runner.get("outcomes") or {}
    for key, result in report.tests.items():
        seen = outcomes.get(key)
        if result.outcome == "passed" and seen not in ("passed",):
            result.outcome = "error"
            result.message = "the JUnit report and the runner disagree about this test"

    for label, entry in coverage.items():
        if label not in target_map.values() or not isinstance(entry, dict):
            continue
        contexts = entry.get("contexts") or {}
        branches = _pairs(entry.get("branches"))
        branch_set = {tuple(a) for a in branches}
        statements = _ints(entry.get("statements"))
        fc = FileCoverage(statements=statements, branches=branches)
        all_lines: set[int] = set()
        all_arcs: set[tuple[int, int]] = set()
        for context, data in contexts.items():
            if not isinstance(data, dict):
                continue
            lines = set(_ints(data.get("lines"))) & set(statements)
            arcs = {tuple(a) for a in _pairs(data.get("arcs"))} & branch_set
            all_lines |= lines
            all_arcs |= arcs
            if context == "":
                fc.import_lines = sorted(lines)
                fc.import_arcs = [list(a) for a in sorted(arcs)]
            elif context in report.tests:
                report.tests[context].lines[label] = sorted(lines)
                report.tests[context].arcs[label] = [list(a) for a in sorted(arcs)]
        fc.covered_lines = sorted(all_lines)
        fc.covered_arcs = [list(a) for a in sorted(all_arcs)]
        fc.line_percent = round(100.0 * len(all_lines) / len(statements), 2) if statements else 0.0
        fc.branch_percent = round(100.0 * len(all_arcs) / len(branches), 2) if branches else 100.0
        report.coverage[label] = fc

    totals = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for result in report.tests.values():
        totals[result.outcome] += 1
    totals["total"] = len(report.tests)
    report.totals = totals

    if not report.tests:
        return fail("no_tests", FAILURES["no_tests"])
    if exit_code in (3, 4):
        return fail("internal_error", f"{FAILURES['internal_error']} (exit code {exit_code})")
    report.ok = True
    return report


def _collection_message(text: str) -> str:
    """The telling line of a collection error (``E   ModuleNotFoundError: ...``)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln[1:].strip() for ln in lines if ln.startswith("E ")]
    if errors:
        return _trim(errors[-1], MESSAGE_CHARS)
    lines = [ln for ln in lines if not ln.startswith("^")]
    return _trim(lines[-1] if lines else text, MESSAGE_CHARS)
