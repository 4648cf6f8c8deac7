"""The test sandbox (jupyter_ds/testgen/sandbox.py): verdicts, coverage, hostile candidates.

Each hostile candidate must be rejected with the right reason, leave nothing behind (no
process of its run, no file outside its directory) and leak nothing (network, the
server's token, ~/.ssh). Expectations follow the sandbox this machine has: bubblewrap
where it works, otherwise the limits-only fallback, which must say what it does not
isolate. Limits are kept tight: a shared machine with 2 cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from jupyter_ds.testgen import sandbox as sb

MODULE = textwrap.dedent(
    """
    def classify(n):
        if n < 0:
            return "negative"
        if n == 0:
            return "zero"
        return "positive"


    def add(a, b):
        return a + b
    """
).lstrip()

TIGHT = sb.Limits(cpu_s=10, memory_bytes=512 * 1024**2, processes=16)


@pytest.fixture(scope="module")
def info() -> sb.SandboxInfo:
    return sb.detect_sandbox()


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (the run's private dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def run(candidate: str, **kwargs) -> sb.RunReport:
    """Run a candidate test file against MODULE; check that nothing of the run survives."""
    started: dict[str, object] = {}
    kwargs.setdefault("limits", TIGHT)
    kwargs.setdefault("timeout", 20)
    kwargs.setdefault("test_timeout", 5)
    report = sb.run_pytest(
        textwrap.dedent(candidate),
        {"mod.py": MODULE},
        on_start=lambda pgid, run_dir: started.update(pgid=pgid, run_dir=run_dir),
        **kwargs,
    )
    # The whole process group is gone, and so is every process of the run.
    with pytest.raises(ProcessLookupError):
        os.killpg(started["pgid"], 0)
    assert _processes_mentioning(str(started["run_dir"])) == []
    assert not os.path.exists(str(started["run_dir"])), "the private directory is removed"
    json.dumps(report.to_dict())  # JSON-ready
    return report


# ----------------------------------------------------------------------------- detection


def test_detect_sandbox_shape(info):
    assert info.mode in ("bwrap", "limits-only")
    assert info.reason
    data = info.to_dict()
    assert set(data) >= {"mode", "reason", "user", "network_isolated", "filesystem_isolated"}
    json.dumps(data)
    assert sb.detect_sandbox() is info, "cached"
    if info.mode == "bwrap":
        assert info.network_isolated and info.filesystem_isolated
        flags = set(info.bwrap_flags)
        assert {"--die-with-parent", "--new-session", "--clearenv"} <= flags
        assert (
            "--unshare-all" in flags
            or {
                "--unshare-net",
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
            }
            <= flags
        )
    else:
        assert not info.network_isolated
        assert "network not isolated" in info.reason
    if os.geteuid() == 0 and info.user is None:
        assert "process-count limit is not effective" in info.reason


def test_no_bwrap_on_path_falls_back_to_limits_only(monkeypatch, tmp_path):
    monkeypatch.delenv("JUPYTER_DS_SANDBOX", raising=False)
    monkeypatch.setattr(sb, "_detected", None)  # restored afterwards
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bwrap
    fallback = sb.detect_sandbox(refresh=True)
    assert fallback.mode == "limits-only"
    assert "bwrap" in fallback.reason and "not installed or not on PATH" in fallback.reason
    assert "network not isolated" in fallback.reason
    assert not fallback.network_isolated and not fallback.filesystem_isolated


def test_failing_probe_falls_back_and_every_result_says_so(monkeypatch):
    real_probe = sb._probe

    def probe(candidate: sb.SandboxInfo) -> str | None:
        if candidate.mode == "bwrap":
            return "exit 1: bwrap: No permissions to create new namespace"
        return real_probe(candidate)

    monkeypatch.delenv("JUPYTER_DS_SANDBOX", raising=False)
    monkeypatch.setattr(sb, "_probe", probe)
    monkeypatch.setattr(sb, "_detected", None)
    if sb.shutil.which("bwrap") is None:
        monkeypatch.setattr(sb.shutil, "which", lambda name: "/usr/bin/bwrap")
    fallback = sb.detect_sandbox(refresh=True)
    assert fallback.mode == "limits-only"
    assert "cannot create its namespaces" in fallback.reason
    assert "No permissions to create new namespace" in fallback.reason
    report = run("def test_ok():\n    assert True\n", sandbox=fallback)
    assert report.ok and report.all_passed
    assert report.sandbox["mode"] == "limits-only"
    assert "network not isolated" in report.sandbox["reason"]


def test_unusable_sandbox_user_is_reported(info, monkeypatch):
    if info.mode != "bwrap" or info.user is None:
        pytest.skip("needs bubblewrap with the sandbox user (root)")
    real_probe = sb._probe

    def probe(candidate: sb.SandboxInfo) -> str | None:
        if candidate.user is not None:
            return "exit 1: setuid failed"
        return real_probe(candidate)

    monkeypatch.delenv("JUPYTER_DS_SANDBOX", raising=False)
    monkeypatch.setattr(sb, "_probe", probe)
    monkeypatch.setattr(sb, "_detected", None)
    degraded = sb.detect_sandbox(refresh=True)
    assert degraded.mode == "bwrap" and degraded.user is None
    assert not degraded.process_limit
    assert "could not be used (exit 1: setuid failed)" in degraded.reason
    assert "process-count limit is not effective" in degraded.reason


# ------------------------------------------------------------------------------ verdicts


def test_passing_tests_pass_with_per_test_coverage(info):
    report = run(
        """
        from mod import add, classify

        def test_negative():
            assert classify(-3) == "negative"

        def test_zero_and_positive():
            assert classify(0) == "zero"
            assert classify(5) == "positive"

        class TestAdd:
            def test_add(self):
                assert add(2, 3) == 5
        """
    )
    assert report.ok, report.reason
    assert report.failure is None and report.reason is None
    assert report.all_passed
    assert set(report.tests) == {"test_negative", "test_zero_and_positive", "TestAdd::test_add"}
    assert report.totals == {"passed": 3, "failed": 0, "error": 0, "skipped": 0, "total": 3}
    assert report.sandbox == info.to_dict()
    neg = report.tests["test_negative"]
    both = report.tests["test_zero_and_positive"]
    plus = report.tests["TestAdd::test_add"]
    # Lines: classify's body (2-6), add's body (10); defs (1, 9) run at import.
    assert neg.lines["mod.py"] == [2, 3]
    assert both.lines["mod.py"] == [2, 4, 5, 6]
    assert plus.lines["mod.py"] == [10]
    # Branch arcs: each test's own.
    assert neg.arcs["mod.py"] == [[2, 3]]
    assert both.arcs["mod.py"] == [[2, 4], [4, 5], [4, 6]]
    assert plus.arcs["mod.py"] == []
    cov = report.coverage["mod.py"]
    assert cov.statements == [1, 2, 3, 4, 5, 6, 9, 10]
    assert cov.branches == [[2, 3], [2, 4], [4, 5], [4, 6]]
    assert cov.import_lines == [1, 9]
    assert cov.line_percent == 100.0 and cov.branch_percent == 100.0
    assert 0 < report.duration_s < 20


def test_failing_test_fails_with_its_message():
    report = run(
        """
        from mod import add

        def test_ok():
            assert add(1, 1) == 2

        def test_wrong():
            assert add(1, 2) == 4, "one and two make four?"
        """
    )
    assert report.ok  # the run itself went fine
    assert not report.all_passed
    assert report.tests["test_ok"].outcome == "passed"
    wrong = report.tests["test_wrong"]
    assert wrong.outcome == "failed"
    assert "one and two make four?" in wrong.message
    assert "assert 3 == 4" in wrong.message
    assert report.totals["failed"] == 1 and report.totals["passed"] == 1
    assert report.coverage["mod.py"].branch_percent == 0.0


def test_runs_as_the_sandbox_user(info):
    if info.user is None:
        pytest.skip("no sandbox user here: runs as the server's user")
    report = run(
        f"""
        import os

        def test_who():
            assert (os.getuid(), os.geteuid(), os.getgid()) == ({info.uid}, {info.uid}, {info.gid})
            assert os.getgroups() in ([], [{info.gid}])

        def test_no_way_back():
            try:
                os.setuid(0)
            except PermissionError:
                return
            raise AssertionError("became root again")
        """
    )
    assert report.all_passed, report.tests


def test_import_error_is_a_collection_error():
    report = run("import not_a_module_here\n\ndef test_a():\n    pass\n")
    assert not report.ok and report.failure == "collection_error"
    assert "ModuleNotFoundError" in report.reason and "not_a_module_here" in report.reason
    assert report.tests == {}


def test_repeated_runs_count_passes():
    reports = sb.run_pytest_repeated(
        "from mod import add\n\ndef test_ok():\n    assert add(1, 1) == 2\n\n"
        "def test_bad():\n    assert add(1, 1) == 3\n",
        {"mod.py": MODULE},
        runs=2,
        limits=TIGHT,
    )
    assert len(reports) == 2
    assert sb.pass_counts(reports) == {"test_ok": 2, "test_bad": 0}


def test_hash_seed_is_the_runs():
    def parity(seed: int) -> int:
        env = {"PYTHONHASHSEED": str(seed), "PATH": os.environ.get("PATH", "")}
        code = "print(hash('jupyter-ds') % 2)"
        return int(subprocess.check_output([sys.executable, "-c", code], env=env))

    base = parity(0)
    other = next(seed for seed in range(1, 40) if parity(seed) != base)
    for seed in (0, other):
        report = sb.run_pytest(
            f"def test_parity():\n    assert hash('jupyter-ds') % 2 == {parity(seed)}\n",
            {"mod.py": MODULE},
            hash_seed=seed,
            limits=TIGHT,
        )
        assert report.all_passed, (seed, report.tests)


def test_project_dir_read_only(info, tmp_path):
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "calc.py").write_text("def double(x):\n    return 2 * x\n")
    report = sb.run_pytest(
        textwrap.dedent(
            f"""
            from pkg.calc import double

            def test_double():
                assert double(4) == 8

            def test_cannot_write_project():
                try:
                    open({str(project / "pkg" / "new.py")!r}, "w").write("x = 1\\n")
                except OSError:
                    return
                raise AssertionError("wrote into the project")
            """
        ),
        project_dir=project,
        targets=["pkg/calc.py"],
        limits=TIGHT,
        timeout=20,
    )
    assert report.ok, report.reason
    assert report.tests["test_double"].outcome == "passed"
    assert report.tests["test_double"].lines["pkg/calc.py"] == [2]
    if info.filesystem_isolated or info.user:
        assert report.tests["test_cannot_write_project"].outcome == "passed"
        assert not (project / "pkg" / "new.py").exists()


# --------------------------------------------------------------------- hostile candidates


def test_network_is_not_reachable(info):
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        report = run(
            f"""
            import socket

            def test_phone_home():
                conn = socket.create_connection(("127.0.0.1", {port}), timeout=2)
                conn.sendall(b"stolen")
            """
        )
        connected = True
        try:
            server.accept()
        except BlockingIOError:
            connected = False
    finally:
        server.close()
    assert report.ok
    if info.network_isolated:
        assert not connected
        assert report.tests["test_phone_home"].outcome == "failed"
        assert "Connection refused" in report.tests["test_phone_home"].message or (
            "unreachable" in report.tests["test_phone_home"].message
        )
    else:
        assert report.sandbox["network_isolated"] is False
        assert "network not isolated" in report.sandbox["reason"]


def test_cannot_write_outside_the_work_directory(info, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "pwned.txt"
    report = run(
        f"""
        import os

        def test_write_outside():
            with open({str(target)!r}, "w") as f:
                f.write("pwned")

        def test_write_in_cwd():
            with open("scratch.txt", "w") as f:
                f.write("fine")
            assert open(os.path.join(os.getcwd(), "scratch.txt")).read() == "fine"
        """
    )
    assert report.ok
    assert report.tests["test_write_in_cwd"].outcome == "passed"
    if info.filesystem_isolated or info.user:
        assert not target.exists()
        assert report.tests["test_write_outside"].outcome == "failed"
        assert "Error" in report.tests["test_write_outside"].message
    else:
        assert "file system not isolated" in report.sandbox["reason"]


def test_secrets_are_not_visible(info, tmp_path, monkeypatch):
    secret = "s3cr3t-" + os.urandom(8).hex()
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_rsa"
    key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{secret}\n")
    key.chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    for name in ("JUPYTER_TOKEN", "JPY_API_TOKEN", "JUPYTERHUB_API_TOKEN", "GITHUB_TOKEN"):
        monkeypatch.setenv(name, secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:{secret}@proxy:3128")
    report = run(
        f"""
        import os

        def test_environment():
            leaked = {{k: v for k, v in os.environ.items() if {secret!r} in v}}
            assert not leaked, leaked
            assert not [k for k in os.environ if k.startswith(("JUPYTER", "JPY"))]

        def test_home_ssh_key():
            assert not os.path.exists(os.path.expanduser("~/.ssh/id_rsa"))

        def test_server_home_ssh_key():
            try:
                data = open({str(key)!r}).read()
            except OSError:
                return
            raise AssertionError(data)
        """
    )
    assert report.ok
    assert report.tests["test_environment"].outcome == "passed"
    assert report.tests["test_home_ssh_key"].outcome == "passed"
    if info.filesystem_isolated or info.user:
        assert report.tests["test_server_home_ssh_key"].outcome == "passed"
        assert secret not in json.dumps(report.to_dict())
    else:
        assert "file system not isolated" in report.sandbox["reason"]


def test_fork_bomb_is_bounded(info):
    if not info.process_limit:
        pytest.skip("the process-count limit is not effective here (root without a sandbox user)")
    report = run(
        """
        import os

        def test_bomb():
            while True:
                os.fork()
        """,
        timeout=15,
    )
    assert not report.all_passed
    assert report.ok, report.reason
    assert report.tests["test_bomb"].outcome == "failed"
    assert "processes" in report.limits_hit
    assert not report.timed_out
    # A bomb that swallows the error keeps forking: held by the limit, ended by the timeout.
    report = run(
        """
        import os

        def test_bomb():
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
        """,
        timeout=4,
        limits=sb.Limits(cpu_s=10, memory_bytes=512 * 1024**2, processes=8),
    )
    assert not report.ok and report.failure == "timeout" and report.timed_out
    # run() checked that no process of either run is left (other runs may share the uid).


def test_memory_bomb_hits_the_memory_limit():
    report = run(
        """
        def test_big():
            block = bytearray(8 * 1024**3)

        def test_growing():
            hoard = []
            while True:
                hoard.append(bytearray(50 * 1024**2))
        """,
        limits=sb.Limits(cpu_s=10, memory_bytes=384 * 1024**2, processes=16),
    )
    assert report.ok, report.reason
    assert not report.all_passed
    for name in ("test_big", "test_growing"):
        assert report.tests[name].outcome == "failed"
        assert "MemoryError" in report.tests[name].message
    assert "memory" in report.limits_hit


def test_infinite_loop_per_test_timeout():
    report = run("def test_spin():\n    while True:\n        pass\n", test_timeout=1.5)
    assert report.ok
    spin = report.tests["test_spin"]
    assert spin.outcome == "failed" and spin.timed_out
    assert "Timeout" in spin.message


def test_infinite_loop_killed_with_its_whole_group():
    # Ignores pytest-timeout's alarm and SIGTERM, and has a looping child too.
    report = run(
        """
        import os, signal

        def test_spin():
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.fork()
            while True:
                pass
        """,
        timeout=3,
        test_timeout=60,
    )
    assert not report.ok
    assert report.failure == "timeout" and report.timed_out
    assert report.tests == {}
    assert report.duration_s < 15
    # run() checked that os.killpg(pgid, 0) raises and no process of the run is left.


def test_cpu_limit():
    report = run(
        """
        import signal

        def test_spin():
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            while True:
                pass
        """,
        timeout=30,
        test_timeout=60,
        limits=sb.Limits(cpu_s=2, memory_bytes=512 * 1024**2, processes=16),
    )
    assert not report.ok
    assert report.failure == "cpu_limit" and "cpu" in report.limits_hit
    assert report.killed_by_signal in ("SIGXCPU", "SIGKILL")


def test_os_exit_in_a_test_is_not_a_pass():
    report = run(
        """
        import os

        def test_a():
            assert True

        def test_b():
            os._exit(0)
        """
    )
    assert not report.ok and not report.all_passed
    assert report.failure == "no_report"
    assert "os._exit" in report.reason
    assert not report.passed("test_a")


def test_sys_exit_at_import():
    report = run("import sys\nsys.exit(0)\n\ndef test_a():\n    assert True\n")
    assert not report.ok and not report.all_passed
    assert report.failure == "collection_error"
    assert "SystemExit" in report.reason
    assert report.tests == {}


def test_killing_the_parent_leaves_the_server_alive():
    report = run(
        """
        import os, signal

        def test_kill_parent():
            os.kill(os.getppid(), signal.SIGKILL)
            assert True
        """
    )
    # We (the server's process) are still here, and the run is reported as killed.
    assert not report.ok and not report.all_passed
    assert report.failure == "killed"
    assert report.killed_by_signal == "SIGKILL"
    assert "killed" in report.reason


def test_signalling_everything_reaches_only_the_sandbox(info):
    if info.mode != "bwrap" and info.user is None:
        pytest.skip("kill(-1) as the server's own user would reach the server")
    report = run(
        """
        import os, signal

        def test_kill_everything():
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(-1, sig)
                except OSError:
                    pass
        """
    )
    assert not report.all_passed


# ------------------------------------------------------------------------ report parsing


def test_truncated_or_forged_reports_are_rejected(tmp_path):
    good = (
        b'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
        b'tests="2"><testcase classname="test_candidate" name="test_a" time="0.1"/>'
        b'<testcase classname="test_candidate" name="test_b" time="0.1">'
        b'<failure message="boom">trace</failure></testcase></testsuite></testsuites>'
    )
    cases, error = sb._parse_junit(good)
    assert error is None
    assert [(c["name"], c["outcome"], c["message"]) for c in cases] == [
        ("test_a", "passed", ""),
        ("test_b", "failed", "boom"),
    ]
    assert sb._parse_junit(good[:-40])[1] is not None  # truncated XML
    fewer = good.replace(b'tests="2"', b'tests="3"')
    assert "truncated" in sb._parse_junit(fewer)[1]
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><testsuites/>'
    assert "DTD" in sb._parse_junit(bomb)[1]
    # A report replaced by a symlink (to a server file) is never followed.
    secret = tmp_path / "secret"
    secret.write_text("token")
    link = tmp_path / "junit.xml"
    link.symlink_to(secret)
    assert sb._read_untrusted(link) is None
    assert sb._read_untrusted(secret) == b"token"
    assert sb._case_key("test_candidate.TestX.TestY", "test_z[1]") == "TestX::TestY::test_z[1]"
