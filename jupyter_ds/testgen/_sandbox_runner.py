"""The program that runs *inside* the sandbox (stdlib, pytest and coverage only).

``jupyter_ds.testgen.sandbox`` copies this file into each run's private directory and
starts it as ``python -s -B -P _sandbox_runner.py CONFIG.json`` (under bubblewrap, or
directly in the limits-only fallback). It is never imported by the server.

What it does, in order:

1. when started as root with a sandbox user in the config (bubblewrap started by root,
   without a user namespace), drop to that user for good, and check that it cannot
   come back;
2. set the resource limits (CPU, address space, file size, open files, processes, no
   core dumps) and ignore ``SIGXFSZ`` so an oversized write fails with ``EFBIG`` instead
   of killing the run;
3. copy the test file and the code under test into the (empty, private) work directory;
4. write ``started.json``, then fork: the child runs pytest under coverage, the parent
   (the supervisor) waits for it and writes ``supervisor.json`` with how it ended (exit
   code or signal, peak memory, CPU time). A test that kills ``os.getppid()`` kills this
   supervisor, never the server;
5. the child runs ``pytest.main`` with hermetic flags and the JUnit XML report, switches
   the coverage context to each test's node id (setup, call and teardown), and at the end
   writes ``runner.json``: the collected node ids, pytest's exit code, the collection
   errors, and per file under test its statements, its branch arcs and, per context, the
   lines and arcs executed. Written last and renamed into place: its absence means that
   the run did not finish (``os._exit``, a signal, a limit).

A process forked by a test that wanders back into pytest's machinery (a fork bomb that
returns) exits at the first hook it reaches, so it never writes a report.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import sys
import traceback

import pytest

_LIMITS = {
    "cpu": resource.RLIMIT_CPU,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "core": resource.RLIMIT_CORE,
}


def _write_json(path: str, data: object) -> None:
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _drop_privileges(config: dict) -> None:
    uid, gid = config.get("drop_uid"), config.get("drop_gid")
    if uid is None or os.getuid() != 0:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)  # real, effective and saved uid: capabilities are gone
    if os.getuid() != uid or os.geteuid() != uid:
        raise SystemExit("sandbox: could not drop privileges")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise SystemExit("sandbox: privileges could be regained")


def _tasks_of(uid: int) -> int:
    """Tasks (threads) of ``uid`` visible here: RLIMIT_NPROC counts them all."""
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return count


def _set_limits(limits: dict) -> None:
    for name, value in limits.items():
        if value is None:
            continue
        which = _LIMITS[name]
        soft = hard = int(value)
        if name == "nproc":
            # The limit counts every task of the user, not only this run's: allow this
            # run ``value`` more than what the user already has (under bubblewrap /proc
            # shows only the sandbox, so that is the runner itself).
            soft = hard = int(value) + _tasks_of(os.getuid())
        if name == "cpu":
            hard = soft + 1  # SIGXCPU at the soft limit, SIGKILL one second later
        _, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (soft, hard))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _copy_sources(src_dir: str, work_dir: str) -> None:
    if os.path.abspath(src_dir) == os.path.abspath(work_dir):
        return
    # Contents only: the work directory itself is the sandbox's (a tmpfs root's).
    for dirpath, _dirnames, filenames in os.walk(src_dir):
        rel = os.path.relpath(dirpath, src_dir)
        target = os.path.normpath(os.path.join(work_dir, rel))
        os.makedirs(target, exist_ok=True)
        for name in filenames:
            shutil.copyfile(os.path.join(dirpath, name), os.path.join(target, name))


class _Plugin:
    """pytest hooks: per-test coverage contexts, bookkeeping, and a guard on forks."""

    def __init__(self, cov, test_file: str):
        self.cov = cov
        self.main_pid = os.getpid()
        self.prefix = test_file + "::"
        self.collected: list[str] = []
        self.collect_errors: list[dict] = []
        self.outcomes: dict[str, str] = {}

    def key(self, nodeid: str) -> str:
        return nodeid[len(self.prefix) :] if nodeid.startswith(self.prefix) else nodeid

    def guard(self) -> None:
        if os.getpid() != self.main_pid:
            os._exit(70)  # a process forked by a test: never let it report

    @pytest.hookimpl(tryfirst=True)
    def pytest_collectreport(self, report) -> None:
        self.guard()
        if report.failed:
            self.collect_errors.append(
                {"nodeid": report.nodeid, "longrepr": str(report.longreprtext)[-8000:]}
            )

    def pytest_collection_finish(self, session) -> None:
        self.collected = [self.key(item.nodeid) for item in session.items]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item) -> None:
        self.guard()
        if self.cov is not None:
            self.cov.switch_context(self.key(item.nodeid))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(self, item, call) -> None:
        self.guard()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report) -> None:
        self.guard()
        key = self.key(report.nodeid)
        if report.failed:
            self.outcomes[key] = "failed" if report.when == "call" else "error"
        elif key not in self.outcomes or report.when == "call":
            self.outcomes.setdefault(key, report.outcome)
            if report.when == "call":
                self.outcomes[key] = report.outcome

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        self.guard()
        if self.cov is not None:
            self.cov.switch_context("")

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session, exitstatus) -> None:
        self.guard()


def _coverage_export(cov, targets: dict[str, str], work_dir: str, report_dir: str) -> dict:
    """Per target file: statements, branch arcs, and lines/arcs per context."""
    out: dict[str, dict] = {}
    data = cov.get_data()
    measured = {os.path.realpath(f): f for f in data.measured_files()}
    summary: dict[str, dict] = {}
    json_path = os.path.join(report_dir, "coverage-summary.json")
    try:
        cov.json_report(morfs=list(targets), outfile=json_path)
        with open(json_path, encoding="utf-8") as f:
            for name, info in json.load(f).get("files", {}).items():
                summary[os.path.realpath(os.path.join(work_dir, name))] = info
    except Exception:  # no data at all (the module was never imported), or unparsable
        pass
    finally:
        if os.path.exists(json_path):
            os.unlink(json_path)
    for path, label in targets.items():
        real = os.path.realpath(path)
        info = summary.get(real)
        entry: dict = {"statements": [], "branches": [], "contexts": {}}
        if info is not None:
            entry["statements"] = sorted(info["executed_lines"] + info["missing_lines"])
            entry["branches"] = sorted(
                info.get("executed_branches", []) + info.get("missing_branches", [])
            )
        else:
            try:
                _, statements, _, _, _ = cov.analysis2(path)
                entry["statements"] = sorted(statements)
            except Exception:
                pass
        measured_name = measured.get(real)
        if measured_name is not None:
            for context in sorted(data.measured_contexts()):
                data.set_query_contexts(["^" + re.escape(context) + "$"])
                lines = sorted(data.lines(measured_name) or [])
                arcs = sorted(data.arcs(measured_name) or [])
                if lines or arcs:
                    entry["contexts"][context] = {"lines": lines, "arcs": arcs}
            data.set_query_contexts(None)
        out[label] = entry
    return out


def _run_child(config: dict) -> int:
    work_dir, report_dir = config["work_dir"], config["report_dir"]
    cov = None
    if config.get("targets"):
        import coverage

        cov = coverage.Coverage(
            data_file=None,
            branch=True,
            include=list(config["targets"]),
            config_file=False,
        )
        cov.start()
    sys.path[:0] = [p for p in config.get("sys_path", []) if p not in sys.path]
    plugin = _Plugin(cov, config["test_file"])
    result: dict = {"complete": False}
    try:
        code = int(pytest.main(config["pytest_args"], plugins=[plugin]))
    except BaseException as exc:  # SystemExit from a test file, an internal error
        plugin.guard()
        code = 3
        result["exception"] = "".join(traceback.format_exception_only(type(exc), exc))[-2000:]
    plugin.guard()
    if cov is not None:
        cov.stop()
    result.update(
        pytest_exit_code=code,
        collected=plugin.collected,
        outcomes=plugin.outcomes,
        collect_errors=plugin.collect_errors,
    )
    if cov is not None:
        result["coverage"] = _coverage_export(cov, config["targets"], work_dir, report_dir)
    result["complete"] = True
    _write_json(os.path.join(report_dir, "runner.json"), result)
    return code


def _probe(config: dict) -> int:
    import coverage  # noqa: F401
    import pytest_timeout  # noqa: F401

    print(json.dumps({"probe": "ok", "uid": os.getuid(), "gid": os.getgid()}), flush=True)
    return 0


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        config = json.load(f)
    _drop_privileges(config)
    _set_limits(config.get("limits", {}))
    if config.get("probe"):
        return _probe(config)
    work_dir, report_dir = config["work_dir"], config["report_dir"]
    os.makedirs(work_dir, exist_ok=True)
    _copy_sources(config["src_dir"], work_dir)
    os.chdir(work_dir)
    os.makedirs(os.path.join(work_dir, ".tmp"), exist_ok=True)
    _write_json(
        os.path.join(report_dir, "started.json"),
        {"pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid()},
    )
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            code = _run_child(config)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:
            continue
    summary = {
        "exit_code": os.waitstatus_to_exitcode(status),
        "maxrss_kb": usage.ru_maxrss,
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }
    _write_json(os.path.join(report_dir, "supervisor.json"), summary)
    code = summary["exit_code"]
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
