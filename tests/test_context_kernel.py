"""Kernel-aware context against real kernels: what the notebook's kernel holds, read
without side effects (no user code run, In/Out/_ and the execution count untouched),
cached until the user runs code, nothing sent to a busy, dead or non-Python kernel."""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import re
import signal
import statistics
import sys
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ds_engine.testing import ScriptedEngine
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.utils import ensure_event_loop
from jupyter_server.services.contents.manager import ContentsManager
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from jupyter_server.services.sessions.sessionmanager import SessionManager

from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.completion.service import CompletionService, CompletionSettings
from jupyter_ds.context import ContextGatherer, ContextQuery
from jupyter_ds.context import kernel_probe as probe_module
from jupyter_ds.context.kernel import (
    KernelContext,
    KernelName,
    Snapshot,
    parse_reply,
    probe_expression,
    render,
)

pd = pytest.importorskip("pandas")  # in the test extra; every kernel test uses it
np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(180)

NOTEBOOK = "work/analysis.ipynb"


def count(text: str) -> int:
    """A stand-in token counter: words and punctuation marks."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def query(prefix: str = "y = ", path: str = NOTEBOOK, language: str = "python"):
    return ContextQuery(path=path, prefix=prefix, suffix="", language=language)


# ----------------------------------------------------------------- one kernel per module


@pytest.fixture(scope="module")
def jp_asyncio_loop():
    """One event loop for the whole module (pytest-jupyter's is per test): the kernels,
    their clients and the managers' streams outlive a test."""
    loop = ensure_event_loop(prefer_selector_loop=True)
    yield loop
    loop.close()


class Kernel:
    """A kernel started through the session manager, driven like a frontend would."""

    def __init__(self, lab: Lab, path: str, kernel_id: str) -> None:
        self.lab, self.path, self.id = lab, path, kernel_id
        self.manager = lab.kernels.get_kernel(kernel_id)
        self.client = self.manager.client()
        self.client.start_channels()
        self.iopub: list[dict[str, Any]] = []
        self.mine: set[str] = set()
        self._reader: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        await self.client.wait_for_ready(timeout=60)
        self._reader = asyncio.ensure_future(self._read())
        await self.settle()

    async def _read(self) -> None:
        while True:
            self.iopub.append(await self.client.iopub_channel.get_msg())

    async def run(self, code: str, *, timeout: float = 60) -> tuple[dict[str, Any], str]:
        """A normal (non-silent) execute; its reply content and what it printed."""
        msg_id = self.client.execute(code)
        self.mine.add(msg_id)
        reply = await self.client._async_recv_reply(msg_id, timeout=timeout)
        await self.idle_of(msg_id)
        out = "".join(m["content"]["text"] for m in self.iopub
                      if m["parent_header"].get("msg_id") == msg_id
                      and m["msg_type"] == "stream" and m["content"]["name"] == "stdout")
        await self.settle()
        return reply["content"], out

    async def idle_of(self, msg_id: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                      and m["parent_header"].get("msg_id") == msg_id for m in self.iopub):
            assert time.monotonic() < deadline, "no idle status"
            await asyncio.sleep(0.005)

    async def settle(self) -> None:
        """Until the server's own view of the kernel is idle again (its IOPub stream is
        read on this loop too), and a little more for every other IOPub reader."""
        deadline = time.monotonic() + 30
        nudged = 0.0
        while self.manager.execution_state != "idle":
            assert time.monotonic() < deadline, self.manager.execution_state
            if self.manager.execution_state == "starting" and time.monotonic() - nudged > 0.2:
                # The server's IOPub stream may have missed the kernel's first statuses
                # (a new subscription misses what came before it): another request makes
                # new ones, as the server's own websocket nudge does.
                self.mine.add(self.client.kernel_info())
                nudged = time.monotonic()
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.03)

    def foreign(self, msg_type: str) -> list[dict[str, Any]]:
        """IOPub messages of ``msg_type`` caused by requests that were not this client's."""
        return [m for m in self.iopub if m["msg_type"] == msg_type
                and m["parent_header"].get("msg_id") not in self.mine]

    def probes_seen(self) -> int:
        """Execute requests that were not this client's, counted from IOPub (the kernel's
        own account, independent of the source's)."""
        return sum(1 for m in self.iopub if m["msg_type"] == "status"
                   and m["content"]["execution_state"] == "busy"
                   and m["parent_header"].get("msg_type") == "execute_request"
                   and m["parent_header"].get("msg_id") not in self.mine)

    async def state(self) -> dict[str, Any]:
        """In, Out, _ and the execution count, read with a normal execute."""
        content, out = await self.run(STATE_CODE)
        assert content["status"] == "ok", content
        state = json.loads(out)
        state["reply_count"] = content["execution_count"]
        return state

    def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.client.stop_channels()


STATE_CODE = (
    "import json as _j, sys as _s\n"
    "print(_j.dumps({'count': get_ipython().execution_count, 'In': len(In),"
    " 'In_tail': In[-3:-1], 'Out': sorted(Out), 'Out_last': repr(Out[max(Out)]) if Out else '',"
    " '_': repr(_), '__': repr(__), 'history': len(get_ipython().history_manager.input_hist_raw),"
    " 'last_error': repr(type(getattr(_s, 'last_value', None)))}))"
)


class Lab:
    """Jupyter server's kernel and session managers, without the HTTP server."""

    def __init__(self, root: Path) -> None:
        self.root = root
        kernels_dir = root / "kernelspecs"
        echo = kernels_dir / "echo"
        echo.mkdir(parents=True)
        # A real kernel that is not Python (pytest-jupyter ships it).
        (echo / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "pytest_jupyter.echo_kernel", "-f",
                     "{connection_file}"],
            "display_name": "Echo", "language": "echo"}))
        (root / "work").mkdir()
        self.kernels = AsyncMappingKernelManager(
            root_dir=str(root), connection_dir=str(root),
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels_dir)]))
        self.sessions = SessionManager(kernel_manager=self.kernels,
                                       contents_manager=ContentsManager(root_dir=str(root)))
        self.started: list[Kernel] = []

    async def start(self, path: str, kernel_name: str = "python3") -> Kernel:
        model = await self.sessions.create_session(path=path, kernel_name=kernel_name,
                                                   type="notebook", name=path)
        kernel = Kernel(self, path, model["kernel"]["id"])
        self.started.append(kernel)
        await kernel.ready()
        return kernel

    def source(self, **settings: Any) -> KernelContext:
        """A new source; 5 s to answer unless said (tests of what it says, not how fast:
        a first probe on a loaded machine may take longer than the 0.1 s default)."""
        settings.setdefault("timeout_s", 5.0)
        return KernelContext(self.sessions, self.kernels, **settings)

    async def fresh(self, kernel: Kernel, **settings: Any) -> KernelContext:
        """A new source for a settled kernel: a new client trusts the server's view of
        busy until it has seen the kernel's IOPub, and that view lags a probe just made."""
        await kernel.settle()
        return self.source(**settings)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, jp_asyncio_loop):
    root = tmp_path_factory.mktemp("lab")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IPYTHONDIR", str(root / "ipython"))  # not the real ~/.ipython
        lab = Lab(root)
        yield lab
        for kernel in lab.started:
            kernel.close()
        jp_asyncio_loop.run_until_complete(lab.kernels.shutdown_all(now=True))


SETUP = '''
import os, time, types
import numpy as np
import pandas as pd

MARK = {mark!r}
ARMED = False

def touched(what):
    """What a hostile object does when the probe touches it: leaves a mark."""
    if ARMED:
        with open(MARK, "a") as fh:
            fh.write(what + "\\n")
    return ARMED

def forever(what):
    if touched(what):
        end = time.monotonic() + 60
        while time.monotonic() < end:
            time.sleep(0.01)

class Meta(type):
    @property
    def __name__(cls):
        touched("metaclass __name__")
        return "Renamed"
    def __eq__(cls, other):
        touched("metaclass __eq__")
        return type.__eq__(cls, other)
    __hash__ = type.__hash__

class Hostile(metaclass=Meta):
    def __repr__(self):
        if touched("__repr__"): raise RuntimeError("repr")
        return "Hostile()"
    def __str__(self):
        if touched("__str__"): raise RuntimeError("str")
        return "Hostile"
    def __len__(self):
        forever("__len__")
        return 1
    def __bool__(self):
        touched("__bool__")
        return True
    def __eq__(self, other):
        touched("__eq__")
        return self is other
    def __hash__(self):
        return 7
    def __getattr__(self, name):
        forever("__getattr__ " + name)
        raise AttributeError(name)
    @property
    def value(self):
        if touched("property"): raise RuntimeError("property")
        return 1
    @property
    def __class__(self):
        touched("__class__")
        return Hostile

class HostileFrame(pd.DataFrame):
    @property
    def dtypes(self):
        forever("subclass dtypes")
        return super().dtypes

class LogisticRegression:
    def fit(self, X, y):
        return self

def load(path: str, n: int = 5, *rest, sep=",", **kw) -> pd.DataFrame:
    return pd.read_csv(path, sep=sep)

def takes(model=Hostile(), *, n: Hostile() = 1, label="a" * 80):
    return model

np_alias = np
df = pd.DataFrame({{"a": [1, 2, 3], "b": ["x", "y", "z"], "c": [0.5, 1.5, 2.5]}})
x = np.arange(12, dtype=np.int64).reshape(3, 4)
model = LogisticRegression()
h = Hostile()
sub = HostileFrame({{"a": [1]}})
odd = pd.DataFrame({{Hostile(): [1], "ok": [2], 3: [4]}})
wide = pd.DataFrame(np.zeros((2, 10_000)), columns=[f"c{{i}}" for i in range(10_000)])
ARMED = True
41 + 1
'''


@pytest.fixture(scope="module")
def notebook(lab: Lab, jp_asyncio_loop) -> Kernel:
    """The shared Python kernel, with data, functions and hostile objects defined."""

    async def setup() -> Kernel:
        kernel = await lab.start(NOTEBOOK)
        content, _ = await kernel.run(SETUP.format(mark=str(lab.root / "touched")))
        assert content["status"] == "ok", content
        return kernel

    return jp_asyncio_loop.run_until_complete(setup())


def forget(source: KernelContext, kernel: Kernel) -> None:
    """Make the source forget its cached answer, as a user execution would."""
    link = source._links.get(kernel.id)
    if link is not None:
        link.generation += 1


def lines_of(block) -> dict[str, str]:
    """The block's lines by the name they describe."""
    out = {}
    for line in block.text.splitlines():
        out[re.match(r"\w+", line).group()] = line
    return out


# ------------------------------------------------------------------------------- tests


async def test_names_frames_arrays_and_signatures(lab: Lab, notebook: Kernel):
    source = await lab.fresh(notebook)
    try:
        block = await source.gather(query("y = df["), 3000, count)
        assert block is not None and block.source == "kernel"
        lines = lines_of(block)
        b_dtype = str(pd.DataFrame({"b": ["x"]}).dtypes["b"])  # object, or str on pandas 3
        assert lines["df"] == f"df: DataFrame (3 columns: a int64, b {b_dtype}, c float64)"
        assert block.text.startswith("df: DataFrame")  # used in the prefix: first
        assert lines["x"] == "x: ndarray int64 (3, 4)"
        assert lines["load"] == "load(path: str, n: int = 5, *rest, sep=',', **kw) -> DataFrame"
        assert lines["np"] == "np: module numpy" and lines["np_alias"] == "np_alias: module numpy"
        assert lines["model"] == "model: LogisticRegression"
        assert lines["LogisticRegression"] == "LogisticRegression: class()"
        assert not {"In", "Out", "get_ipython", "exit", "quit", "open", "_", "_i"} & set(
            block.used)
        assert set(block.used) == set(lines)
        assert all(not name.startswith("_") for name in block.used)
    finally:
        source.close()


async def test_hostile_objects_are_never_called(lab: Lab, notebook: Kernel):
    mark = lab.root / "touched"
    source = await lab.fresh(notebook)
    try:
        block = await source.gather(query("h."), 2000, count)
        assert block is not None
        lines = lines_of(block)
        assert lines["h"] == "h: Hostile"  # the class's real name, not the metaclass's
        assert lines["Hostile"] == "Hostile: class()"
        assert lines["sub"] == "sub: HostileFrame"  # a subclass: its type name only
        assert lines["takes"] == "takes(model=..., *, n=1, label='" + "a" * 27 + "'...)"
        assert lines["odd"] == "odd: DataFrame (3 columns: <Hostile> int64, ok int64, 3 int64)"
        assert not mark.exists(), mark.read_text()
        # The kernel was not left running a hostile method either: it answers at once.
        content, out = await notebook.run("print(ARMED, len(df))")
        assert (content["status"], out) == ("ok", "True 3\n")
        assert not mark.exists(), mark.read_text()
    finally:
        source.close()


async def test_a_huge_frame_is_truncated_within_budget(lab: Lab, notebook: Kernel):
    source = await lab.fresh(notebook)
    try:
        budget = 120
        block = await source.gather(query("wide."), budget, count)
        assert block is not None
        line = lines_of(block)["wide"]
        assert line.startswith("wide: DataFrame (10000 columns: c0 float64, c1 float64")
        shown = line.count(" float64")
        assert 2 <= shown < 100 and line.endswith(f"… {10_000 - shown} more)")
        assert sum(count(f"# {each}\n") for each in block.text.splitlines()) <= budget
        assert block.skipped["columns"] == 10_000 - shown
        assert block.skipped["names"] >= 1  # the rest did not fit
        # The probe's own answer is bounded too: 200 of the 10^4 columns.
        snapshot = await source.snapshot(NOTEBOOK)
        assert len(snapshot.get("wide").columns) == 200
    finally:
        source.close()


async def test_the_kernel_state_is_unchanged(lab: Lab, notebook: Kernel):
    source = await lab.fresh(notebook)
    try:
        published = len(notebook.iopub)
        first = await notebook.state()
        second = await notebook.state()
        # Several probes: a cold one (kernel_info first), then fresh ones, then the cache.
        for _ in range(3):
            assert await source.gather(query(), 300, count) is not None
            forget(source, notebook)
        assert await source.gather(query(), 300, count) is not None
        assert source.requests_sent(notebook.id)["execute_request"] == 4
        third = await notebook.state()
        # Nothing a frontend would show: no execute_input, no output, no result.
        shown = [m["msg_type"] for m in notebook.iopub[published:]
                 if m["parent_header"].get("msg_id") not in notebook.mine]
        assert shown and set(shown) == {"status"}, shown
    finally:
        source.close()
    # Between two reads nothing but the reads ran: each read adds one input, one count.
    assert second["count"] == first["count"] + 1
    for before, after in ((first, second), (second, third)):
        assert after["count"] == before["count"] + 1
        assert after["reply_count"] == before["reply_count"] + 1
        assert after["In"] == before["In"] + 1
        assert after["history"] == before["history"] + 1
        for key in ("Out", "Out_last", "_", "__", "last_error"):
            assert after[key] == before[key], key
    assert third["In_tail"][-1].startswith("import json as _j")  # no probe in In


async def test_a_busy_kernel_gives_nothing_at_once_without_being_asked(lab: Lab,
                                                                      notebook: Kernel):
    warm = await lab.fresh(notebook)
    try:
        assert await warm.gather(query(), 300, count) is not None
        sent = warm.requests_sent(notebook.id)
        msg_id = notebook.client.execute("import time; time.sleep(5)")
        notebook.mine.add(msg_id)
        await wait_busy(notebook)
        cold = lab.source()  # never talked to this kernel: the server's state decides
        try:
            for source in (warm, cold):
                started = time.monotonic()
                assert await source.gather(query("df."), 300, count) is None
                assert time.monotonic() - started < 0.03  # well under the default 0.1 s
            assert warm.requests_sent(notebook.id) == sent
            assert cold.requests_sent(notebook.id) == Counter()
        finally:
            cold.close()
        await interrupt(notebook, msg_id)
        assert await warm.gather(query(), 300, count) is not None  # idle again: asked

        # A probe that went out just as the user's cell started queues behind the cell:
        # the gathers that come later give nothing at once instead of waiting for it.
        warm.timeout_s = 0.1
        forget(warm, notebook)
        msg_id = notebook.client.execute("time.sleep(5)")
        notebook.mine.add(msg_id)
        await wait_busy(notebook)
        link = warm._links[notebook.id]
        link.refresh = asyncio.ensure_future(warm._refresh(link))  # the probe of that race
        link.refresh_started = time.monotonic()
        await asyncio.sleep(0.02)
        sent = warm.requests_sent(notebook.id)
        assert not link.refresh.done()  # queued behind the cell
        for _ in range(3):
            started = time.monotonic()
            assert await warm.gather(query(), 300, count) is None
            assert time.monotonic() - started < 0.03
        assert warm.requests_sent(notebook.id) == sent
        await interrupt(notebook, msg_id)  # the queued probe is aborted with the cell
        assert await warm.gather(query(), 300, count) is not None
    finally:
        warm.close()


async def wait_busy(kernel: Kernel) -> None:
    """Until the server (and so every IOPub reader on this loop) has seen the kernel busy."""
    deadline = time.monotonic() + 10
    while kernel.manager.execution_state != "busy":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)


async def interrupt(kernel: Kernel, msg_id: str) -> None:
    """Interrupt the user's running cell and wait until the kernel is idle."""
    await kernel.lab.kernels.interrupt_kernel(kernel.id)
    reply = await kernel.client._async_recv_reply(msg_id, timeout=30)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    await kernel.idle_of(msg_id)
    await kernel.settle()


async def test_the_completion_prompt_carries_the_kernel_lines(lab: Lab, notebook: Kernel):
    """Through the completion service: commented in before the code, reported."""
    source = await lab.fresh(notebook)
    try:
        engine = ScriptedEngine(["'a']"])
        service = CompletionService(engine, CompletionSettings(context_tokens=384),
                                    ContextGatherer([source]))
        answer = await service.complete(CompleteRequest(prefix="y = df[", path=NOTEBOOK))
        prompt = engine.prompts[-1]
        assert "# df: DataFrame (3 columns: a int64" in prompt
        assert prompt.index("# df: DataFrame") < prompt.index("y = df[")
        report = {e["source"]: e for e in answer["context"]}["kernel"]
        assert report["state"] == "used" and report["used"][0] == "df"
        assert 0 < report["tokens"] <= 384
    finally:
        source.close()


async def test_output_during_the_probe_does_not_break_it(lab: Lab, notebook: Kernel):
    content, _ = await notebook.run(
        "import threading\n"
        "_chatty_stop = threading.Event()\n"
        "def _chatty():\n"
        "    while not _chatty_stop.is_set():\n"
        "        print('tick', flush=True); time.sleep(0.001)\n"
        "threading.Thread(target=_chatty, daemon=True).start()\n"
        "def _hook(): print('post_execute says hi')\n"
        "get_ipython().events.register('post_execute', _hook)\n")
    assert content["status"] == "ok"
    source = await lab.fresh(notebook)
    try:
        for _ in range(5):
            forget(source, notebook)
            block = await source.gather(query("y = df"), 300, count)
            assert block is not None and "df: DataFrame" in block.text
        assert source.requests_sent(notebook.id)["execute_request"] == 5
    finally:
        source.close()
        content, _ = await notebook.run(
            "_chatty_stop.set(); get_ipython().events.unregister('post_execute', _hook)")
        assert content["status"] == "ok"


async def test_answers_are_cached_until_the_user_runs_code(lab: Lab, notebook: Kernel):
    source = await lab.fresh(notebook)
    try:
        seen = notebook.probes_seen()
        block = await source.gather(query(), 300, count)
        assert block is not None and "fresh_name" not in block.used
        assert source.requests_sent(notebook.id)["execute_request"] == 1
        await asyncio.sleep(0.05)
        assert notebook.probes_seen() == seen + 1
        snapshot = await source.snapshot(NOTEBOOK)
        last_count = (await notebook.state())["reply_count"]  # a user execution too
        # The state read above was user code: the cache is gone, and the new answer
        # carries the kernel's execution count.
        block = await source.gather(query(), 300, count)
        snapshot = await source.snapshot(NOTEBOOK)
        assert snapshot.execution_count == last_count
        assert source.requests_sent(notebook.id)["execute_request"] == 2
        # Typing in a cell: the same answer, nothing sent.
        for prefix in ("y = ", "y = d", "y = df", "y = df."):
            assert await source.gather(query(prefix), 300, count) is not None
        assert source.requests_sent(notebook.id)["execute_request"] == 2
        await asyncio.sleep(0.05)
        assert notebook.probes_seen() == seen + 2
        # The user runs a cell: asked again, and the new name is there.
        await notebook.run("fresh_name = 1")
        block = await source.gather(query("fresh"), 300, count)
        assert block is not None and block.used[0] == "fresh_name"
        assert source.requests_sent(notebook.id)["execute_request"] == 3
        # Code run silently by another client (a widget callback, a variable inspector)
        # publishes no execute_input, but is someone else's work all the same.
        msg_id = notebook.client.execute("silently_made = 2", silent=True)
        notebook.mine.add(msg_id)
        await notebook.idle_of(msg_id)
        await notebook.settle()
        block = await source.gather(query("silently"), 300, count)
        assert block is not None and block.used[0] == "silently_made"
        assert source.requests_sent(notebook.id)["execute_request"] == 4
    finally:
        source.close()


async def test_warm_and_cold_latency(lab: Lab, notebook: Kernel):
    colds, probes, cached = [], [], []
    for _ in range(5):
        source = await lab.fresh(notebook, timeout_s=2.0)  # measured, not cut off
        started = time.perf_counter()
        assert await source.gather(query("df."), 300, count) is not None
        colds.append((time.perf_counter() - started) * 1000)
        source.close()
    source = await lab.fresh(notebook, timeout_s=0.1)  # every gather below answers in it
    try:
        loop = asyncio.get_running_loop()
        assert await source.snapshot(NOTEBOOK, loop.time() + 5) is not None  # connected
        for i in range(10):
            await notebook.run(f"_warm = {i}")  # a user execution: the next one asks
            started = time.perf_counter()
            assert await source.gather(query("df."), 300, count) is not None
            probes.append((time.perf_counter() - started) * 1000)
        for _ in range(50):
            started = time.perf_counter()
            assert await source.gather(query("df."), 300, count) is not None
            cached.append((time.perf_counter() - started) * 1000)
        assert source.requests_sent(notebook.id)["execute_request"] == 11
    finally:
        source.close()
    print(f"\nkernel context: cold p50 {statistics.median(colds):.1f} ms, "
          f"warm (asked) p50 {statistics.median(probes):.1f} ms "
          f"max {max(probes):.1f} ms, cached p50 {statistics.median(cached):.2f} ms")
    assert statistics.median(cached) < 50
    assert statistics.median(probes) < 100


async def test_a_non_python_kernel_gets_nothing_and_one_log_line(lab: Lab, caplog):
    kernel = await lab.start("work/echo.ipynb", kernel_name="echo")
    source = lab.source()
    try:
        with caplog.at_level(logging.INFO, logger="jupyter_ds.context.kernel"):
            for _ in range(3):
                assert await source.gather(query(path="work/echo.ipynb"), 300, count) is None
                await asyncio.sleep(0.02)
        said = [r.getMessage() for r in caplog.records if "not Python" in r.getMessage()]
        assert len(said) == 1 and kernel.id in said[0] and "'echo'" in said[0]
        assert source.requests_sent(kernel.id) == Counter({"kernel_info_request": 1})
    finally:
        source.close()


async def test_off_or_another_language_or_no_session_sends_nothing(lab: Lab,
                                                                   notebook: Kernel):
    off = lab.source(enabled=False)
    on = await lab.fresh(notebook)
    try:
        assert await off.gather(query(), 300, count) is None
        assert off._links == {}
        assert await on.gather(query(language="r"), 300, count) is None
        assert await on.gather(query(path="work/nowhere.ipynb"), 300, count) is None
        assert await on.gather(query(path=None), 300, count) is None
        assert on._links == {}
        assert await on.gather(query(path="/" + NOTEBOOK), 300, count) is not None
    finally:
        off.close()
        on.close()


async def test_through_the_server_a_restart_and_a_kernel_that_dies(jp_fetch, jp_serverapp):
    """The server's own managers, a session made through its REST API."""
    response = await jp_fetch("api", "sessions", method="POST", body=json.dumps({
        "path": "lab/live.ipynb", "type": "notebook", "name": "live.ipynb",
        "kernel": {"name": "python3"}}))
    session = json.loads(response.body)
    kernel_id = session["kernel"]["id"]
    manager = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    client = manager.client()
    client.start_channels()
    source = KernelContext(jp_serverapp.session_manager, jp_serverapp.kernel_manager,
                           timeout_s=5.0)
    live = query("m", path="lab/live.ipynb")

    async def run(code: str) -> None:
        reply = await client.execute(code, reply=True, timeout=60)
        assert reply["content"]["status"] == "ok"
        deadline = time.monotonic() + 30
        while manager.execution_state != "idle":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.03)

    try:
        await client.wait_for_ready(timeout=60)
        await run("import numpy as np\nm = np.ones((2, 5))")
        block = await source.gather(live, 300, count)
        assert block is not None and "m: ndarray float64 (2, 5)" in block.text

        # Restarted: another process behind the same id; nothing of the old answer stays.
        await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body="{}")
        await client.wait_for_ready(timeout=60)
        await run("after_restart = 1")
        block = await source.gather(live, 300, count)
        assert block is not None and block.used == ["after_restart"]

        # Dies in the middle of a request: the gather still ends in time, without error.
        source.timeout_s = 0.1
        source._links[kernel_id].generation += 1
        pending = asyncio.ensure_future(source.gather(live, 300, count))
        await asyncio.sleep(0.002)  # the probe is sent
        os.kill(manager.provisioner.pid, signal.SIGKILL)
        started = time.monotonic()
        await pending
        assert time.monotonic() - started < 0.2
        while await manager.is_alive():
            await asyncio.sleep(0.005)
        # Dead: nothing, at once, and nothing sent.
        sent = source.requests_sent(kernel_id)
        started = time.monotonic()
        assert await source.gather(live, 300, count) is None
        assert time.monotonic() - started < 0.05
        assert source.requests_sent(kernel_id) == sent
        # Shut down through the API: no session, no context, and its client is closed.
        await jp_fetch("api", "sessions", session["id"], method="DELETE")
        assert await source.gather(live, 300, count) is None
        assert kernel_id not in source._links
    finally:
        source.close()
        client.stop_channels()


# ----------------------------------------------------------- no kernel: probe and render


def run_probe(namespace: dict[str, Any], **limits: int) -> dict[str, Any]:
    """The probe as the kernel runs it: the same expression, evaluated in ``namespace``."""
    namespace.setdefault("__builtins__", builtins)
    return json.loads(eval(probe_expression(limits), namespace, namespace))


def test_the_probe_never_touches_user_objects_and_defines_nothing():
    calls: list[str] = []

    class Meta(type):
        def __getattribute__(cls, name):
            if name not in ("__dict__", "__mro__", "__name__", "__module__"):
                calls.append(f"meta {name}")
            return type.__getattribute__(cls, name)

        @property
        def __name__(cls):
            calls.append("meta __name__")
            return "Renamed"

    class Trap(metaclass=Meta):
        def __getattribute__(self, name):
            calls.append(name)
            raise AttributeError(name)

        def __repr__(self):
            calls.append("repr")
            return "Trap"

    def f(a, b=Trap(), /, c: Trap() = 1, *args, d: int, e=None, **kw) -> None:  # noqa: B008
        return None

    f.__signature__ = Trap()  # inspect.signature would look at it; the probe does not
    f.__wrapped__ = Trap()
    namespace = {"t": Trap(), "T": Trap, "f": f, "bound": Trap.__repr__.__get__(Trap()),
                 "frame": pd.DataFrame({Trap(): [1]}), "L": len}
    before = dict(namespace)
    calls.clear()
    data = run_probe(namespace)
    assert calls == []
    got = {e["n"]: e for e in data["names"]}
    assert got["t"] == {"n": "t", "k": "other", "t": "Trap"}
    assert got["T"]["k"] == "class" and got["T"]["t"] == "Meta"
    # (this module's annotations are strings: from __future__ import annotations)
    assert got["f"]["sig"] == "(a, b=..., /, c: Trap() = 1, *args, d: int, e=None, **kw) -> None"
    assert got["bound"]["sig"] == "()"
    assert got["frame"]["cols"] == [[{"t": "Trap"}, "int64"]]
    assert got["L"]["sig"] == "(obj)"
    namespace.pop("__builtins__")
    assert namespace == before  # the probe defined nothing in the namespace


def test_the_probe_describes_tensors_and_bounds_itself():
    torch = pytest.importorskip("torch")
    namespace: dict[str, Any] = {"_hidden": 1, "In": [], "get_ipython": len}
    namespace.update({f"v{i}": i for i in range(300)})
    namespace["early_frame"] = pd.DataFrame({"a": [1]})
    namespace.update({f"w{i}": i for i in range(10)})
    namespace["t"] = torch.zeros(2, 3)
    namespace["s"] = pd.Series([1.0, 2.0])
    namespace["mod"] = types.ModuleType("fake")  # a module without a real file
    data = run_probe(namespace, names=20)
    got = {e["n"]: e for e in data["names"]}
    assert got["t"] == {"n": "t", "k": "array", "t": "Tensor", "shape": [2, 3],
                        "dtype": "float32"}
    assert got["s"]["k"] == "series" and got["s"]["shape"] == [2]
    assert got["mod"] == {"n": "mod", "k": "module", "module": "fake"}
    assert "early_frame" in got  # data before plain values, however early
    assert len(got) == 20 and data["more"] == 314 - 20
    assert [e["n"] for e in data["names"]][:3] == ["mod", "s", "t"]  # most recent first
    assert not {"_hidden", "In", "get_ipython"} & set(got)
    # It answers, never raises: a raise would overwrite the user's sys.last_traceback.
    assert json.loads(probe_module.probe(["not", "a", "namespace"]))["error"] == "namespace"


def test_parse_reply_takes_only_a_well_formed_answer():
    good = {"status": "ok", "execution_count": 4, "user_expressions": {"jupyter_ds": {
        "status": "ok", "data": {"text/plain": repr(json.dumps({"v": 1, "names": [
            {"n": "df", "k": "frame", "t": "DataFrame", "ncols": 1, "cols": [["a\nb", "x"]]},
            {"n": "not an identifier", "k": "other", "t": "int"},
            {"n": "e", "k": "weird", "t": "int\n# injected"}]}))}}}}
    snapshot = parse_reply(good)
    assert snapshot.execution_count == 4
    assert [n.name for n in snapshot.names] == ["df", "e"]
    assert snapshot.get("df").line() == "df: DataFrame (1 column: 'a\\nb' x)"
    assert snapshot.get("e").line() == "e: int # injected"
    for bad in ({"status": "error"}, {"status": "ok", "user_expressions": {}},
                {"status": "ok", "user_expressions": {"jupyter_ds": {
                    "status": "error", "ename": "NameError"}}},
                {"status": "ok", "user_expressions": {"jupyter_ds": {
                    "status": "ok", "data": {"text/plain": "__import__('os')"}}}}):
        assert parse_reply(bad) is None


def test_render_puts_names_used_near_the_cursor_first_within_the_budget():
    names = [KernelName("zeta", "other", type_name="int"),
             KernelName("alpha", "other", type_name="str"),
             KernelName("frame", "frame", type_name="DataFrame", ncols=3,
                        columns=(("a", "int64"), ("b", "object"), ("c", "float64"))),
             KernelName("beta", "function", signature="(x)")]
    snapshot = Snapshot(names=names, execution_count=1, generation=0, more=2)
    block = render(snapshot, "beta(alpha)\nq = frame", 1000, count)
    assert block.used == ["frame", "alpha", "beta", "zeta"]
    assert block.text.splitlines()[0] == (
        "frame: DataFrame (3 columns: a int64, b object, c float64)")
    assert block.skipped == {"names": 2}
    small = render(snapshot, "zeta", 6, count)
    assert small.used == ["zeta"] and small.skipped == {"names": 5}
    assert render(snapshot, "", 2, count) is None


async def test_suggestions_are_checked_against_the_kernel(lab: Lab, notebook: Kernel):
    """Grounding through the completion service: a made-up column becomes the real one,
    a name the kernel and the notebook lack ends the suggestion, ``data.context`` says
    so; with ``kernel_grounding`` off the suggestion stays as the model wrote it."""
    content, _ = await notebook.run(
        "sales = pd.DataFrame({'price_eur': [1.5], 'units_sold': [3]})")
    assert content["status"] == "ok"
    source = await lab.fresh(notebook)
    try:
        engine = ScriptedEngine(["sales['price'] * sales['units_sold'] * undefined_rate"])
        req = CompleteRequest(prefix="revenue = ", path=NOTEBOOK)
        on = CompletionService(engine, CompletionSettings(), ContextGatherer([source]))
        answer = await on.complete(req)
        assert answer["output"] == "sales['price_eur'] * sales['units_sold']"
        kernel = {e["source"]: e for e in answer["context"]}["kernel"]
        assert kernel["grounding"] == {"cut_at": "undefined_rate",
                                       "fixed": ["price -> price_eur"]}
        # The same through the stream (what ghost text shows, partial events included).
        events = [e async for e in on.stream(req)]
        assert all("undefined_rate" not in e["text"] and "'price'" not in e["text"]
                   for e in events)
        assert events[-1]["text"] == answer["output"]
        # A name the cell defines below the cursor is no invention.
        answer = await on.complete(CompleteRequest(
            prefix="revenue = ", suffix="\nundefined_rate = 0.2", path=NOTEBOOK))
        assert answer["output"] == "sales['price_eur'] * sales['units_sold'] * undefined_rate"
        off = CompletionService(engine, CompletionSettings(kernel_grounding=False),
                                ContextGatherer([source]))
        answer = await off.complete(req)
        assert answer["output"] == "sales['price'] * sales['units_sold'] * undefined_rate"
        assert "grounding" not in {e["source"]: e for e in answer["context"]}["kernel"]
    finally:
        source.close()


async def test_a_polars_frame_gives_its_columns_and_grounds_keys(lab: Lab, notebook: Kernel):
    pytest.importorskip("polars")
    content, _ = await notebook.run(
        "import polars as pl\npf = pl.DataFrame({'city': ['Oslo'], 'temp_c': [1.5]})")
    assert content["status"] == "ok"
    source = await lab.fresh(notebook)
    try:
        block = await source.gather(query("y = pf["), 3000, count)
        assert block is not None
        assert lines_of(block)["pf"] == "pf: DataFrame (2 columns: city String, temp_c Float64)"
        assert dict(block.known.columns)["pf"] == ("city", "temp_c")
        engine = ScriptedEngine(["pf['temp'].mean()"])
        service = CompletionService(engine, CompletionSettings(), ContextGatherer([source]))
        answer = await service.complete(CompleteRequest(prefix="y = ", path=NOTEBOOK))
        assert answer["output"] == "pf['temp_c'].mean()"
    finally:
        source.close()
