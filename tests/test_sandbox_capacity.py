"""The sandbox's own bounded capacity (issue 15, finding 4).

Sandbox runs have their own executor, a global cap with a short bounded queue (503
``sandbox_busy`` beyond it) and a per-user cap (429 ``rate_limited``); a run dies with its
whole process tree when its client goes away, and a ``tests/run`` call has a total time
budget across its ``runs``. The server-level tests use a real Jupyter server, the real
sandbox (bubblewrap where it works) and real git repositories: a saturated sandbox must
leave ``git/status`` fast, and nothing of a run may outlive its client.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ds_engine.testing import ScriptedEngine
from gitrepos import RepoFactory, isolate_git_config
from jupyter_server.auth.identity import IdentityProvider, User
from tornado.httpclient import HTTPClientError

from jupyter_ds.errors import ApiError
from jupyter_ds.ratelimit import GENERATION_ENDPOINTS
from jupyter_ds.testgen import sandbox as sb
from jupyter_ds.testgen.requests import TestsRequest
from jupyter_ds.testgen.service import SandboxCapacity, TestgenService, TestgenSettings

SOURCE = "def double(x):\n    return 2 * x\n"
# A child that ignores SIGTERM and sleeps; the marker (its last argument) finds it in /proc.
CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(200)"


def hanging_tests(marker: str) -> str:
    """A test only a kill ends: it ignores pytest-timeout's SIGALRM and SIGTERM, starts a
    child that ignores SIGTERM too (its command line carries ``marker``), and sleeps."""
    return textwrap.dedent(
        f"""
        import signal, subprocess, sys, time


        def test_hang():
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            subprocess.Popen([sys.executable, "-c", {CHILD!r}, {marker!r}])
            time.sleep(200)
        """
    ).lstrip()


def marked(marker: str) -> list[int]:
    """Live processes whose command line has ``marker`` as an argument."""
    needle = b"\0" + marker.encode() + b"\0"
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[-1].split()[0] == b"Z"
        except OSError:
            continue
        if needle in b"\0" + cmdline and not zombie:
            found.append(int(pid))
    return found


async def until(check: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``check`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


@pytest.fixture
def marker() -> Any:
    """A unique marker; whatever still carries it after the test is killed (cleanup)."""
    value = f"jds-hang-{uuid.uuid4().hex}"
    yield value
    for pid in marked(value):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class OneUser(IdentityProvider):
    """Every request with the server's token is the user ``ann``.

    Jupyter's own provider draws a new random user for each cookie-less token request,
    which no per-user cap could hold back; the tests pin one name.
    """

    async def get_user_token(self, handler: Any) -> User | None:
        user = await super().get_user_token(handler)
        return None if user is None else User(username="ann")


@pytest.fixture
def server_app_config() -> dict[str, Any]:
    return {"identity_provider_class": OneUser}


@pytest.fixture
def repos(jp_root_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RepoFactory:
    isolate_git_config(monkeypatch, tmp_path)
    return RepoFactory(jp_root_dir)


@pytest.fixture
def api(http_server_client: Any, jp_auth_header: dict[str, str], jp_base_url: str) -> Any:
    """``api(method, path, body=None, timeout=...)`` -> (status, envelope, headers).

    A client-side timeout closes the connection (the client went away): status 599.
    """

    async def call(
        method: str, path: str, body: Any = None, *, timeout: float = 60.0
    ) -> tuple[int, dict[str, Any], Any]:
        kwargs: dict[str, Any] = {
            "method": method,
            "headers": dict(jp_auth_header),
            "raise_error": False,
            "request_timeout": timeout,
        }
        if body is not None:
            kwargs["body"] = json.dumps(body)
        try:
            response = await http_server_client.fetch(
                f"{jp_base_url}jupyter-ds/v1/{path}", **kwargs
            )
        except HTTPClientError as exc:
            return exc.code, {}, {}
        return response.code, json.loads(response.body or b"{}"), response.headers

    return call


def run_body(marker: str, runs: int = 10) -> dict[str, Any]:
    return {"tests": hanging_tests(marker), "source": SOURCE, "path": "calc.py", "runs": runs}


async def timed(coro: Any) -> tuple[float, Any]:
    started = time.monotonic()
    result = await coro
    return time.monotonic() - started, result


# ------------------------------------------------------------------ a real server


class TestSaturatedSandbox:
    """Two runs at most, a queue of one waiting at most 1 s, many runs per user."""

    @pytest.fixture
    def ds_config(self) -> dict[str, Any]:
        return {
            "sandbox_max_concurrent": 2,
            "sandbox_max_per_user": 8,
            "sandbox_queue_size": 1,
            "sandbox_queue_timeout": 1.0,
        }

    async def test_git_stays_fast_and_runs_die_with_their_clients(
        self, ds_ready: Any, api: Any, repos: RepoFactory, marker: str
    ) -> None:
        repos.init()
        client_timeout = 8.0
        # Seven calls of ten runs each, of a test that only a kill ends (the finding's
        # reproduction); their clients give up after client_timeout seconds.
        calls = [
            asyncio.ensure_future(
                api("POST", "tests/run", run_body(marker), timeout=client_timeout)
            )
            for _ in range(7)
        ]
        peak = 0

        def watch() -> bool:
            nonlocal peak
            peak = max(peak, len(marked(marker)))
            return peak >= 2

        assert await until(watch, 30), "the sandbox runs did not start"
        latencies = []
        for _ in range(3):
            seconds, (code, env, _) = await timed(api("GET", "git/status?path=repo", timeout=30))
            assert code == 200, env
            latencies.append(seconds)
            watch()
            await asyncio.sleep(0.2)
        assert max(latencies) < 2.0, latencies
        # ...and so does completion: the sandbox's threads are its own.
        seconds, (code, env, _) = await timed(api(
            "POST", "complete", {"prefix": "x = ", "max_tokens": 2, "language": "text"},
            timeout=30))
        assert code == 200 and seconds < 2.0, (seconds, env)

        results = await asyncio.gather(*calls)
        watch()
        assert peak == 2, f"{peak} runs at once, over sandbox_max_concurrent"
        codes = sorted(code for code, _, _ in results)
        # Two ran until their clients left; one waited its second in the queue and four
        # found the queue full: 503 sandbox_busy with Retry-After.
        assert codes == [503] * 5 + [599] * 2, codes
        for code, env, headers in results:
            if code == 503:
                assert env["error"]["code"] == "sandbox_busy", env
                assert int(headers["Retry-After"]) >= 1
                assert env["error"]["retry_after"] >= 1

        # The clients are gone: within a few seconds nothing of their runs is left, and
        # their calls start no further run.
        assert await until(lambda: not marked(marker), 6), marked(marker)
        await asyncio.sleep(1.5)
        assert marked(marker) == []

        seconds, (code, env, _) = await timed(api("GET", "git/status?path=repo"))
        assert code == 200 and seconds < 2.0, (seconds, env)
        # The slots are free again: an ordinary run goes through.
        ok = {
            "tests": "from calc import double\n\n\ndef test_ok():\n    assert double(2) == 4\n",
            "source": SOURCE,
            "path": "calc.py",
        }
        code, env, _ = await api("POST", "tests/run", ok)
        assert code == 200, env
        assert env["data"]["tests"][0]["outcome"] == "passed"


class TestPerUserCap:
    @pytest.fixture
    def ds_config(self) -> dict[str, Any]:
        return {"sandbox_max_per_user": 1, "sandbox_max_concurrent": 4}

    async def test_over_the_per_user_cap_is_429(
        self, ds_ready: Any, api: Any, marker: str
    ) -> None:
        first = asyncio.ensure_future(api("POST", "tests/run", run_body(marker), timeout=5))
        assert await until(lambda: bool(marked(marker)), 30), "the run did not start"
        code, env, headers = await api("POST", "tests/run", run_body(marker))
        assert code == 429, env
        assert env["error"]["code"] == "rate_limited" and "sandbox_max_per_user" in env[
            "error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        assert (await first)[0] == 599
        assert await until(lambda: not marked(marker), 6), marked(marker)


class TestGenerationSlots:
    @pytest.fixture
    def ds_config(self) -> dict[str, Any]:
        return {"max_concurrent_per_user": 1, "sandbox_max_per_user": 4}

    async def test_tests_run_takes_a_generation_slot(
        self, ds_ready: Any, api: Any, marker: str
    ) -> None:
        assert {"tests", "tests/run"} <= GENERATION_ENDPOINTS
        first = asyncio.ensure_future(api("POST", "tests/run", run_body(marker), timeout=5))
        assert await until(lambda: bool(marked(marker)), 30), "the run did not start"
        code, env, _ = await api("POST", "tests/run", run_body(marker))
        assert code == 429, env
        assert "max_concurrent_per_user" in env["error"]["message"]
        assert (await first)[0] == 599
        assert await until(lambda: not marked(marker), 6), marked(marker)


class TestCallBudget:
    @pytest.fixture
    def ds_config(self) -> dict[str, Any]:
        return {"sandbox_call_timeout": 3.0}

    async def test_a_call_stops_when_its_budget_is_spent(
        self, ds_ready: Any, api: Any, marker: str
    ) -> None:
        # Ten runs of 60 s each (the per-run limit) would take ten minutes.
        seconds, (code, env, _) = await timed(
            api("POST", "tests/run", run_body(marker), timeout=60)
        )
        assert code == 200, env
        data = env["data"]
        assert seconds < 15, seconds
        assert data["ok"] is False and data["failure"] == "timeout"
        assert "sandbox_call_timeout" in data["reason"]
        assert data["runs_done"] == 1 and data["runs"] == 10
        assert await until(lambda: not marked(marker), 6), marked(marker)


# ------------------------------------------------------------- the sandbox alone


def test_a_cancelled_run_is_killed_with_everything_it_started(marker: str) -> None:
    cancel = threading.Event()
    started: dict[str, Any] = {}

    def on_start(pgid: int, run_dir: str) -> None:
        started.update(pgid=pgid, run_dir=run_dir)

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 30
        while not marked(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        cancel.set()

    helper = threading.Thread(target=cancel_when_running)
    helper.start()
    t0 = time.monotonic()
    report = sb.run_pytest(
        hanging_tests(marker),
        {"calc.py": SOURCE},
        timeout=60,
        test_timeout=60,
        cancel=cancel,
        on_start=on_start,
    )
    helper.join()
    assert time.monotonic() - t0 < 20
    assert not report.ok and report.failure == "cancelled", report.reason
    with pytest.raises(ProcessLookupError):
        os.killpg(started["pgid"], 0)
    assert marked(marker) == []
    assert not os.path.exists(started["run_dir"])


def test_a_run_cancelled_before_it_starts_never_starts() -> None:
    cancel = threading.Event()
    cancel.set()
    calls = []
    report = sb.run_pytest(
        "def test_a():\n    pass\n",
        cancel=cancel,
        on_start=lambda *a: calls.append(a),
    )
    assert report.failure == "cancelled" and not report.ok and calls == []


# ------------------------------------------------------------ the capacity alone


def _blocking(release: threading.Event) -> Callable[..., str]:
    def work(*_: Any, cancel: threading.Event | None = None) -> str:
        while not release.is_set():
            if cancel is not None and cancel.wait(0.01):
                return "cancelled"
        return "done"

    return work


async def test_capacity_caps_users_and_queues_briefly() -> None:
    cap = SandboxCapacity(max_concurrent=2, max_per_user=2, queue_size=1, queue_timeout_s=0.3)
    release = threading.Event()
    work = _blocking(release)
    try:
        async with cap.session("ann"), cap.session("ann"):
            with pytest.raises(ApiError) as err:
                async with cap.session("ann"):
                    pass
            assert err.value.status == 429 and err.value.retry_after >= 1
            one = asyncio.ensure_future(cap.run(work))
            two = asyncio.ensure_future(cap.run(work))
            await asyncio.sleep(0.05)
            assert cap.running == 2
            # One waits in the queue (and gives up after queue_timeout_s); the next finds
            # the queue full at once.
            queued = asyncio.ensure_future(cap.run(work))
            await asyncio.sleep(0.05)
            with pytest.raises(ApiError) as err:
                await cap.run(work)
            assert err.value.status == 503 and err.value.code == "sandbox_busy"
            with pytest.raises(ApiError) as err:
                await queued
            assert err.value.status == 503 and err.value.retry_after >= 1
            # A queued call gets the slot a finished run frees.
            waiting = asyncio.ensure_future(cap.run(work))
            await asyncio.sleep(0.05)
            release.set()
            assert await asyncio.gather(one, two, waiting) == ["done"] * 3
        assert cap.running == 0 and cap.users == {}
    finally:
        release.set()
        cap.close()


async def test_capacity_frees_a_slot_only_when_the_run_has_ended() -> None:
    cap = SandboxCapacity(max_concurrent=1, max_per_user=1, queue_size=0, queue_timeout_s=0)
    ended = threading.Event()

    def work(*, cancel: threading.Event) -> str:
        cancel.wait(10)
        time.sleep(0.3)  # killing and cleaning up take a moment
        ended.set()
        return "stopped"

    try:
        task = asyncio.ensure_future(cap.run(work))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Cancelled at once, but the run still holds its slot until it has ended.
        assert cap.running == 1 and not ended.is_set()
        with pytest.raises(ApiError):
            await cap.run(work)
        assert await until(lambda: cap.running == 0, 5)
        assert ended.is_set()
    finally:
        cap.close()


def test_capacity_defaults_follow_the_cores() -> None:
    cap = SandboxCapacity()
    try:
        assert cap.max_concurrent == max(2, os.cpu_count() or 1)
        assert cap.max_per_user == 2
    finally:
        cap.close()


async def test_a_generation_is_one_sandbox_call_of_its_user() -> None:
    cap = SandboxCapacity(max_concurrent=2, max_per_user=1)
    seen: list[int] = []

    def runner(*_: Any, cancel: threading.Event, **__: Any) -> sb.RunReport:
        seen.append(cap.users.get("ann", 0))
        return sb.RunReport(ok=False, sandbox={}, duration_s=0.0, failure="no_tests")

    service = TestgenService(
        ScriptedEngine(["_one():\n    assert double(1) == 2\n"]),
        TestgenSettings(runs=1, hash_seeds=(0,)),
        runner=runner,
        capacity=cap,
    )
    req = TestsRequest(source=SOURCE, path="calc.py", rounds=1)
    try:
        async with cap.session("ann"):
            with pytest.raises(ApiError) as err:
                await service.generate(req, "ann")  # refused before any event
            assert err.value.status == 429
        await service.generate(req, "ann")
        assert seen and all(n == 1 for n in seen)  # held while its runs ran
        assert cap.users == {} and cap.running == 0
    finally:
        service.close()


async def test_closing_stops_the_runs_still_going() -> None:
    cap = SandboxCapacity(max_concurrent=1)
    started = threading.Event()

    def work(*, cancel: threading.Event) -> str:
        started.set()
        return "cancelled" if cancel.wait(10) else "timed out"

    task = asyncio.ensure_future(cap.run(work))
    assert await until(started.is_set, 5)
    cap.close()  # server shutdown
    assert await asyncio.wait_for(task, 5) == "cancelled"


class TestCommitHooksShareTheCapacity:
    """A commit hook (git_commit_hooks) is one more sandbox run, within the same cap."""

    @pytest.fixture
    def ds_config(self) -> dict[str, Any]:
        return {"git_commit_hooks": True, "sandbox_max_concurrent": 1,
                "sandbox_queue_size": 0}

    async def test_a_hook_waits_for_no_slot_beside_the_cap(
        self, ds_ready: Any, api: Any, repos: RepoFactory, marker: str
    ) -> None:
        if sb.detect_sandbox().mode != "bwrap":
            pytest.skip("commit hooks run only under bubblewrap")
        from tests.test_git_hostile import write_hook

        repo = repos.init("hooked")
        write_hook(repo / ".git" / "hooks", "pre-commit", "exit 0")
        repos.write(repo, {"app.py": "x = 2\n"})
        code, env, _ = await api("POST", "git/add", {"path": "hooked", "files": ["app.py"]})
        assert code == 200, env
        hanging = asyncio.ensure_future(api("POST", "tests/run", run_body(marker), timeout=8))
        assert await until(lambda: bool(marked(marker)), 30), "the run did not start"
        # The one slot is taken: the hook is refused, not run beside it.
        code, env, headers = await api("POST", "git/commit",
                                       {"path": "hooked", "message": "two"})
        assert code == 503 and env["error"]["code"] == "sandbox_busy", env
        assert int(headers["Retry-After"]) >= 1
        assert (await hanging)[0] == 599
        assert await until(lambda: not marked(marker), 6), marked(marker)
        # With the slot free again, the hook runs and the commit goes through.
        code, env, _ = await api("POST", "git/commit", {"path": "hooked", "message": "two"})
        assert code == 200 and env["data"]["summary"] == "two", env
