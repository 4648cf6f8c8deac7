"""Test generation that proves itself: generate, validate, run, keep what passes and helps.

Per round: the model continues a test file (see ``prompt``); its answer is split into
candidates and validated without running anything (``candidates``); the valid ones run
together in the sandbox, the passing ones run again until each has passed ``runs`` times
out of ``runs`` (flaky otherwise), and a test is kept only if its own coverage adds lines
or branch arcs to what the existing tests and the tests kept so far already cover.
Failures go back into the next round's prompt. Every candidate ends with a verdict.

Sandbox runs block a thread each for up to their timeout, so they get their own bounded
capacity (:class:`SandboxCapacity`), never the event loop's default executor that git
and the rest of the server share: a global cap with a short bounded queue, a per-user
cap, cancellation that reaches the sandbox's processes, and a total time budget per
``tests/run`` call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import math
import os
import posixpath
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ds_engine import Engine, FinishReason, GenerationRequest, Priority

from jupyter_ds.engine_calls import engine_errors, ensure_ready
from jupyter_ds.errors import ApiError, bad_request, too_large
from jupyter_ds.metrics import observe_sandbox_run
from jupyter_ds.paths import DEFAULT_EXCLUDE
from jupyter_ds.testgen.candidates import Candidate, build_test_module, extract_candidates
from jupyter_ds.testgen.context import TargetContext, target_context
from jupyter_ds.testgen.insert import find_test_file, insert_tests, insertion_target
from jupyter_ds.testgen.prompt import Failure, build_prompt
from jupyter_ds.testgen.requests import TestsInsertRequest, TestsRequest, TestsRunRequest
from jupyter_ds.testgen.sandbox import RunReport, SandboxInfo, detect_sandbox, run_pytest

# Verdict reasons (besides the candidate parser's: does_not_parse, side_effect, ...).
KEPT = "kept"
FAILS = "fails"
ERROR = "error"
FLAKY = "flaky"
NO_COVERAGE = "adds_no_coverage"
TIMED_OUT = "timed_out"
KILLED = "killed_by_sandbox"
IMPORT_ERROR = "import_error"

T = TypeVar("T")


@dataclass
class TestgenSettings:
    __test__ = False
    max_tokens: int = 320
    runs: int = 5  # a kept test passes runs out of runs
    run_timeout_s: float = 60.0
    test_timeout_s: float = 10.0
    # All the runs of one ``tests/run`` call together (``runs`` of up to run_timeout_s
    # each would otherwise hold a sandbox slot for up to ten minutes).
    call_timeout_s: float = 120.0
    # PYTHONHASHSEED of each run's child processes; None: random (as in real use).
    hash_seeds: Sequence[int] | None = None
    root_dir: str | None = None
    # Globs no test file may match (the server's git_exclude: .ssh, *.pem...).
    exclude: Sequence[str] = DEFAULT_EXCLUDE


@dataclass
class Coverage:
    """Lines and branch arcs of the module under test that some kept test runs."""

    statements: int = 0
    branches: int = 0
    lines: set[int] = field(default_factory=set)
    arcs: set[tuple[int, int]] = field(default_factory=set)
    # Lines that run when any test imports the module (``def`` lines, constants): covered
    # as soon as one test exists, but no test's own contribution.
    import_lines: set[int] = field(default_factory=set)

    def percent(self) -> dict[str, float]:
        lines = self.lines | self.import_lines if self.lines else set()
        return {
            "lines": round(100 * len(lines) / self.statements, 1) if self.statements else 0.0,
            "branches": round(100 * len(self.arcs) / self.branches, 1) if self.branches else 0.0,
            "covered_lines": len(lines),
            "statements": self.statements,
            "covered_branches": len(self.arcs),
            "total_branches": self.branches,
        }


def module_name(path: str | None) -> str:
    """``pkg/stats.py`` -> ``stats``; a request without a path tests ``module_under_test``."""
    if not path:
        return "module_under_test"
    stem = posixpath.basename(path.replace("\\", "/"))
    stem = stem[:-3] if stem.endswith(".py") else stem
    name = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in stem) or "module"
    # "<name>.py" must stay a file name: 255 bytes, and a letter takes up to 4 in UTF-8.
    return (name if not name[0].isdigit() else f"m_{name}")[:60]


# The largest source or test file read from under the root (a request's own text is
# bounded by max_input_chars; a file named by a request is bounded here).
MAX_FILE_BYTES = 4 * 1024 * 1024


def _read_under_root(
    root: str | None, path: str, field_name: str = "path", max_bytes: int = MAX_FILE_BYTES
) -> str:
    from jupyter_ds.completion.notebook import resolve_notebook_path

    if root is None:
        raise bad_request(
            f"field '{field_name}' needs a server root; send the code instead", field_name
        )
    real = resolve_notebook_path(root, path, field_name)
    if real is None or not real.is_file():
        raise ApiError(
            404, "not_found", f"no such file under the server root: {path}", field=field_name
        )
    size = real.stat().st_size
    if size > max_bytes:
        raise too_large(f"field '{field_name}': {path} is {size} bytes, over the limit of "
                        f"{max_bytes}", field_name)
    try:
        return real.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"field '{field_name}': {path} is not UTF-8 text", field_name) from None


def _with_prompt_imports(imports: list[str], candidates: Sequence[Candidate]) -> list[str]:
    """The answer's imports plus ``import pytest``, which the prompt's test file already had
    (so the model does not repeat it), when a candidate uses it."""
    if "import pytest" in imports or not any("pytest." in c.source for c in candidates):
        return imports
    return ["import pytest", *imports]


def _lines_arcs(report: RunReport, name: str, label: str) -> tuple[set[int], set[tuple[int, int]]]:
    result = report.tests.get(name)
    if result is None:
        return set(), set()
    lines = set(result.lines.get(label, []))
    # Branch arcs, exits from the function (negative targets) included: the branch totals
    # count them too, so a test whose only new coverage is such an exit still gets credit.
    arcs = {(a, b) for a, b in result.arcs.get(label, [])}
    return lines, arcs


def default_sandbox_concurrency() -> int:
    """Sandbox runs at once by default: one per core, at least two."""
    return max(2, os.cpu_count() or 1)


class SandboxCapacity:
    """Where sandbox runs execute, and how many: separate from the default executor.

    A sandbox run blocks a thread in ``subprocess`` for up to its timeout. Run on the
    event loop's default executor (``asyncio.to_thread``), a handful of slow runs took
    every thread that git and the other blocking calls share, and a client that left did
    not give its thread back. Here runs have their own executor, sized to the global cap,
    and:

    * at most ``max_concurrent`` run at once; a run beyond waits in a queue of at most
      ``queue_size`` for at most ``queue_timeout_s``, else 503 ``sandbox_busy`` with
      Retry-After (a short wait absorbs bursts; a long one would only hide an overload);
    * at most ``max_per_user`` calls (``tests/run``, test generation) of one user hold
      the sandbox at once (:meth:`session`; 0: no per-user cap), else 429
      ``rate_limited``; a call runs its runs one after another, so this also bounds the
      user's runs;
    * cancelling the task that awaits :meth:`run` (a client that went away) sets the
      run's ``cancel`` event, which kills its processes at once; its slot is free only
      when its thread has really ended, so the cap counts processes, not requests.

    State is touched on the event loop only; a worker thread that ends hands its slot
    back through ``call_soon_threadsafe``.
    """

    def __init__(
        self,
        max_concurrent: int | None = None,
        max_per_user: int = 2,
        queue_size: int = 8,
        queue_timeout_s: float = 10.0,
    ):
        self.max_concurrent = max_concurrent or default_sandbox_concurrency()
        if self.max_concurrent < 1 or max_per_user < 0 or queue_size < 0 or queue_timeout_s < 0:
            raise ValueError("sandbox capacity: counts and times must not be negative")
        self.max_per_user = max_per_user
        self.queue_size = queue_size
        self.queue_timeout_s = queue_timeout_s
        self.running = 0  # slots taken: runs whose thread has not ended yet
        self.users: dict[str, int] = {}  # calls in a session, per user
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._cancels: set[threading.Event] = set()
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_concurrent, thread_name_prefix="jupyter-ds-sandbox"
        )

    # -- per user ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def session(self, user: str | None) -> AsyncIterator[None]:
        """One call of ``user`` that uses the sandbox; 429 when they have too many.

        ``user`` None (the CLI, a library caller) is not capped per user.
        """
        if user is None or self.max_per_user <= 0:
            yield
            return
        held = self.users.get(user, 0)
        if held >= self.max_per_user:
            raise ApiError(
                429,
                "rate_limited",
                f"{held} sandbox calls of yours are already running (sandbox_max_per_user "
                f"= {self.max_per_user}); wait for one to finish or cancel it",
                retry_after=2,
            )
        self.users[user] = held + 1
        try:
            yield
        finally:
            left = self.users.get(user, 1) - 1
            if left > 0:
                self.users[user] = left
            else:
                self.users.pop(user, None)

    # -- global ------------------------------------------------------------------------

    def _busy(self) -> ApiError:
        return ApiError(
            503,
            "sandbox_busy",
            f"the test sandbox is busy ({self.running} runs, sandbox_max_concurrent = "
            f"{self.max_concurrent}, {len(self._waiters)} waiting); retry shortly",
            retry_after=max(1, math.ceil(self.queue_timeout_s or 1)),
        )

    async def _acquire(self) -> None:
        if self.running < self.max_concurrent and not self._waiters:
            self.running += 1
            return
        if self.queue_timeout_s <= 0 or len(self._waiters) >= self.queue_size:
            raise self._busy()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.queue_timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # handed over just now: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise self._busy() from None
            raise

    def _free_slot(self) -> None:
        """A run's thread ended: its slot goes to the first waiter, else back to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; ``running`` is unchanged
                return
        self.running -= 1

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, cancel=event, **kwargs)`` on a sandbox thread, within the caps.

        ``fn`` must end soon after ``cancel`` is set (``run_pytest`` kills the run).
        """
        await self._acquire()
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        context = contextvars.copy_context()  # the request id of the JSON logs
        try:
            job = self._executor.submit(context.run, fn, *args, cancel=cancel, **kwargs)
        except BaseException:
            self._free_slot()
            raise
        self._cancels.add(cancel)

        def ended(_: Future[T]) -> None:
            def free() -> None:
                self._cancels.discard(cancel)
                self._free_slot()

            try:
                loop.call_soon_threadsafe(free)
            except RuntimeError:  # the loop is closed: nobody waits any more
                free()

        job.add_done_callback(ended)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            cancel.set()  # the thread kills the run; its slot frees when it has
            raise

    def close(self) -> None:
        """Stop every run (server shutdown) and the executor, without waiting."""
        for cancel in list(self._cancels):
            cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


class TestgenService:
    """Generates tests for a function and returns only those that proved themselves."""

    __test__ = False

    def __init__(
        self,
        engine: Engine,
        settings: TestgenSettings | None = None,
        runner: Callable[..., RunReport] = run_pytest,
        capacity: SandboxCapacity | None = None,
    ):
        self.engine = engine
        self.settings = settings or TestgenSettings()
        self.run_pytest = runner
        self.capacity = capacity or SandboxCapacity()

    def close(self) -> None:
        """Kill the runs still going (server shutdown)."""
        self.capacity.close()

    @property
    def sandbox(self) -> SandboxInfo:
        return detect_sandbox()

    # -- running -------------------------------------------------------------------

    async def _run(
        self,
        tests: str,
        module: str,
        source: str,
        seed: int | None,
        timeout: float | None = None,
    ) -> RunReport:
        """One sandbox run, on the sandbox's own threads; cancelling it kills the run."""
        label = f"{module}.py"
        report = await self.capacity.run(
            self.run_pytest,
            tests,
            {label: source},
            targets=[label],
            timeout=self.settings.run_timeout_s if timeout is None else timeout,
            test_timeout=self.settings.test_timeout_s,
            hash_seed=seed,
        )
        observe_sandbox_run(report)  # jupyter_ds_sandbox_runs_total{verdict}
        return report

    def _seed(self, index: int) -> int | None:
        seeds = self.settings.hash_seeds
        return seeds[index % len(seeds)] if seeds else None

    async def run_tests(self, req: TestsRunRequest, user: str | None = None) -> dict[str, Any]:
        """``POST tests/run``: per-test results of ``runs`` runs of the given test file.

        The runs share one time budget (``call_timeout_s``): the run it cuts short is a
        timeout, and no further run starts. ``user`` is capped per user (see
        :meth:`SandboxCapacity.session`).
        """
        source = req.source
        if source is None:
            if not req.path:
                raise bad_request("send 'source' (the code under test) or 'path'", "source")
            source = _read_under_root(self.settings.root_dir, req.path)
        module = req.module or module_name(req.path)
        if not module.isidentifier():
            raise bad_request(
                f"field 'module' must be a Python identifier, got {module!r}", "module"
            )
        started = time.monotonic()
        budget = self.settings.call_timeout_s
        deadline = started + budget
        reports: list[RunReport] = []
        spent = False
        async with self.capacity.session(user):
            for i in range(req.runs):
                left = deadline - time.monotonic()
                if left <= 0:
                    spent = True
                    break
                timeout = min(self.settings.run_timeout_s, left)
                report = await self._run(req.tests, module, source, self._seed(i), timeout)
                reports.append(report)
                if report.timed_out and timeout < self.settings.run_timeout_s:
                    spent = True  # the budget, not the run's own limit, cut it short
                    break
        done = len(reports)
        names = sorted({n for r in reports for n in r.tests})
        per_test = []
        for name in names:
            passes = sum(r.passed(name) for r in reports)
            last = next(r.tests[name] for r in reversed(reports) if name in r.tests)
            per_test.append(
                {
                    "name": name,
                    "passed_runs": passes,
                    "runs": done,
                    "outcome": last.outcome if passes in (0, done) else FLAKY,
                    "message": last.message,
                }
            )
        first = reports[0]
        label = f"{module}.py"
        cov = first.coverage.get(label)
        failure = next((r.failure for r in reports if not r.ok), None)
        reason = next((r.reason for r in reports if not r.ok), None)
        if spent:
            failure = "timeout"
            reason = (
                f"the runs took longer than the call's budget (sandbox_call_timeout = "
                f"{budget:g} s): {done} of {req.runs} runs done"
            )
        return {
            "tests": per_test,
            "ok": not spent and all(r.ok for r in reports),
            "failure": failure,
            "reason": reason,
            "runs": req.runs,
            "runs_done": done,
            "coverage": (
                {"lines": cov.line_percent, "branches": cov.branch_percent} if cov else None
            ),
            "sandbox": first.sandbox,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        }

    def insert(self, req: TestsInsertRequest, *, allow_hidden: bool = False) -> dict[str, Any]:
        """Append kept tests to the test file matching ``req.path`` (created if missing).

        Only a test file may be written (:func:`insertion_target`: a ``test_*.py`` or
        ``*_test.py`` name, no hidden folder unless ``allow_hidden``, nothing the
        ``exclude`` globs match, checked on where its links lead); the source path must
        stay under the root.
        """
        from jupyter_ds.completion.notebook import resolve_notebook_path

        root = self.settings.root_dir
        if root is None:
            raise bad_request("inserting tests needs a server root", "path")
        rel = insertion_target(root, req.path, req.test_path, allow_hidden=allow_hidden,
                               exclude=self.settings.exclude)
        where = "test_path" if req.test_path else "path"
        real = resolve_notebook_path(root, rel, where)
        if real is None or real.suffix != ".py":
            raise bad_request(
                f"field 'test_path': test file {rel!r} must be a .py file under the server "
                "root", "test_path"
            )
        if real.exists() and not real.is_file():
            raise bad_request(f"field '{where}': {rel!r} is not a regular file", where)
        if real.is_file() and real.stat().st_size > MAX_FILE_BYTES:
            raise too_large(f"field '{where}': {rel!r} is over {MAX_FILE_BYTES} bytes", where)
        try:
            existing = real.read_text(encoding="utf-8") if real.is_file() else None
        except UnicodeDecodeError:
            raise bad_request(f"field '{where}': {rel!r} is not UTF-8 text", where) from None
        try:
            text = insert_tests(existing, req.imports, req.tests)
        except ValueError as exc:
            raise bad_request(f"cannot insert the tests: {exc}", "tests") from None
        try:
            self._write_atomically(real, text, keep_mode=existing is not None)
        except PermissionError:
            raise ApiError(403, "forbidden", f"field '{where}': cannot write {rel!r}",
                           field=where) from None
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise bad_request(f"field '{where}': cannot create {rel!r}, a file is in the way",
                              where) from None
        return {"test_path": rel, "created": existing is None, "added": len(req.tests)}

    @staticmethod
    def _write_atomically(real: Path, text: str, *, keep_mode: bool) -> None:
        real.parent.mkdir(parents=True, exist_ok=True)
        # A fresh temporary file (O_EXCL, random name): a symlink planted under a fixed
        # name could otherwise redirect the write outside the root.
        tmp = real.with_name(f".{real.name}.{secrets.token_hex(6)}.jupyter-ds-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                f.write(text)
            if keep_mode:
                os.chmod(tmp, real.stat().st_mode & 0o7777)
            os.replace(tmp, real)  # atomic: the file is never half written
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- generating ----------------------------------------------------------------

    def _context(self, req: TestsRequest) -> tuple[TargetContext, str, str | None]:
        source = req.source
        if source is None:
            if not req.path:
                raise bad_request("send 'source' (the code to test) or 'path'", "source")
            source = _read_under_root(self.settings.root_dir, req.path)
        existing = req.existing_tests
        if existing is None and req.path and self.settings.root_dir:
            found = find_test_file(req.path, self.settings.root_dir)
            if found:
                # Optional context: one that leaves the root (a symlink), is too big or is
                # not text is left out, never read.
                with contextlib.suppress(ApiError):
                    existing = _read_under_root(self.settings.root_dir, found)
        module = module_name(req.path)
        ctx = target_context(source, module, req.target, existing)
        return ctx, source, existing

    async def generate(self, req: TestsRequest, user: str | None = None) -> dict[str, Any]:
        final: dict[str, Any] = {}
        async for event in self.events(req, user):
            if event["type"] == "done":
                final = event
        final.pop("type", None)
        return final

    async def events(
        self, req: TestsRequest, user: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Progress events (``candidate``, ``verdict``, ``round``) and a final ``done``.

        The whole generation is one sandbox call of ``user`` (429 before the first event
        when they have too many); its runs take the global slots one at a time.
        """
        ensure_ready(self.engine)
        ctx, source, existing = self._context(req)
        async with (
            self.capacity.session(user),
            contextlib.aclosing(self._events(req, ctx, source, existing)) as events,
        ):
            async for event in events:
                yield event

    async def _events(
        self, req: TestsRequest, ctx: TargetContext, source: str, existing: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        started = time.monotonic()
        label = f"{ctx.module}.py"
        sandbox = self.sandbox.to_dict()
        yield {"type": "start", "function": ctx.function, "module": ctx.module, "sandbox": sandbox}

        covered = Coverage()
        if existing:
            base = await self._run(existing, ctx.module, source, self._seed(0))
            for name in base.tests:
                if base.passed(name):
                    lines, arcs = _lines_arcs(base, name, label)
                    covered.lines |= lines
                    covered.arcs |= arcs
            self._totals(covered, base, label)
        base_lines, base_arcs = set(covered.lines), set(covered.arcs)

        kept: list[dict[str, Any]] = []
        kept_sources: list[str] = []
        kept_imports: list[str] = []
        kept_fixtures: list[Candidate] = []
        verdicts: list[dict[str, Any]] = []
        failures: list[Failure] = []
        funnel = {
            "candidates": 0,
            "parse": 0,
            "pass": 0,
            "stable": 0,
            "adds_coverage": 0,
            "kept": 0,
        }
        for round_no in range(1, req.rounds + 1):
            prompt, head = build_prompt(self.engine.template, ctx, kept_sources, failures)
            gen = GenerationRequest(
                prompt=prompt,
                max_tokens=req.max_tokens or self.settings.max_tokens,
                temperature=0.0 if round_no == 1 else 0.7,
                stop=[s for s in self.engine.template.stop],
                seed=round_no,
                timeout_s=120.0,
                priority=Priority.BATCH,
            )
            with engine_errors():
                result = await self.engine.generate(gen)
            # A control token in the answer starts another file: the tests end there.
            answer = head + self.engine.template.cut_special(result.text)
            known = "\n\n".join(filter(None, [existing or "", *kept_sources]))
            cands = extract_candidates(
                answer,
                existing=known or None,
                truncated=result.finish_reason is FinishReason.LENGTH,
            )
            yield {
                "type": "round",
                "round": round_no,
                "tokens": result.token_count,
                "candidates": len(cands.tests) + len(cands.rejected),
            }
            funnel["candidates"] += len(cands.tests) + len(cands.rejected)
            funnel["parse"] += len(cands.tests)
            for rej in cands.rejected:
                verdict = {
                    "name": rej.name,
                    "source": rej.source,
                    "status": "rejected",
                    "reason": rej.reason,
                    "message": rej.message,
                    "round": round_no,
                }
                verdicts.append(verdict)
                yield {"type": "verdict", **verdict}
            for cand in cands.tests:
                yield {
                    "type": "candidate",
                    "name": cand.name,
                    "source": cand.source,
                    "round": round_no,
                }
            failures = []
            if not cands.tests:
                continue
            imports = _with_prompt_imports(cands.imports, [*cands.tests, *cands.fixtures])
            outcome = await self._judge(
                ctx, source, imports, cands.fixtures, cands.tests, covered, label
            )
            for cand, verdict in outcome:
                verdict["round"] = round_no
                verdicts.append(verdict)
                if verdict["status"] == KEPT:
                    kept.append(verdict)
                    kept_sources.append(cand.source)
                    kept_imports.extend(i for i in imports if i not in kept_imports)
                    kept_fixtures.extend(f for f in cands.fixtures if f not in kept_fixtures)
                if verdict["reason"] in (FAILS, ERROR):
                    failures.append(Failure(cand.name, verdict["message"]))
                for key, reasons in (
                    ("pass", {KEPT, FLAKY, NO_COVERAGE}),
                    ("stable", {KEPT, NO_COVERAGE}),
                    ("adds_coverage", {KEPT}),
                    ("kept", {KEPT}),
                ):
                    funnel[key] += verdict["reason"] in reasons
                yield {"type": "verdict", **verdict}

        before = Coverage(
            covered.statements, covered.branches, base_lines, base_arcs, covered.import_lines
        )
        yield {
            "type": "done",
            "function": ctx.function,
            "module": ctx.module,
            "kept": kept,
            "verdicts": verdicts,
            "funnel": funnel,
            "coverage": {"before": before.percent(), "after": covered.percent()},
            "imports": [*kept_imports, ctx.import_line],
            "fixtures": [f.source for f in kept_fixtures],
            "test_file": build_test_module(
                kept_imports, kept_fixtures, kept_sources, module_import=ctx.import_line
            )
            if kept
            else "",
            "sandbox": sandbox,
            "model": self.engine.info().name,
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
        }

    @staticmethod
    def _totals(covered: Coverage, report: RunReport, label: str) -> None:
        cov = report.coverage.get(label)
        if cov is not None:
            covered.statements = len(cov.statements)
            covered.branches = len(cov.branches)
            covered.import_lines = set(cov.import_lines)

    async def _judge(
        self,
        ctx: TargetContext,
        source: str,
        imports: list[str],
        fixtures: list[Candidate],
        tests: list[Candidate],
        covered: Coverage,
        label: str,
    ) -> list[tuple[Candidate, dict[str, Any]]]:
        """Run the candidates; verdict each: fails, flaky, adds no coverage, or kept."""
        module_text = build_test_module(imports, fixtures, tests, module_import=ctx.import_line)
        first = await self._run(module_text, ctx.module, source, self._seed(0))
        self._totals(covered, first, label)
        verdicts: dict[str, dict[str, Any]] = {}

        def verdict(cand: Candidate, reason: str, message: str = "", **extra: Any) -> None:
            verdicts[cand.name] = {
                "name": cand.name,
                "source": cand.source,
                "status": KEPT if reason == KEPT else "rejected",
                "reason": reason,
                "message": message,
                **extra,
            }

        if not first.ok:
            # The file as a whole failed (import error, a test that kills the runner...):
            # run each candidate alone so one bad test does not sink the others.
            if len(tests) > 1:
                results = []
                for cand in tests:
                    results += await self._judge(
                        ctx, source, imports, fixtures, [cand], covered, label
                    )
                return results
            reason = {
                "timeout": TIMED_OUT,
                "killed": KILLED,
                "cpu_limit": KILLED,
                "collection_error": IMPORT_ERROR,
            }.get(first.failure or "", ERROR)
            verdict(tests[0], reason, first.reason or first.collection_error or "")
            return [(tests[0], verdicts[tests[0].name])]

        passing = []
        for cand in tests:
            res = first.tests.get(cand.name)
            if res is None:
                verdict(cand, ERROR, "the test was not collected")
            elif res.timed_out:
                verdict(cand, TIMED_OUT, res.message)
            elif res.outcome != "passed":
                verdict(cand, FAILS if res.outcome == "failed" else ERROR, res.message)
            else:
                passing.append(cand)

        passes = {c.name: 1 for c in passing}
        if passing and self.settings.runs > 1:
            again = build_test_module(imports, fixtures, passing, module_import=ctx.import_line)
            for i in range(1, self.settings.runs):
                report = await self._run(again, ctx.module, source, self._seed(i))
                for cand in passing:
                    passes[cand.name] += report.passed(cand.name)
        for cand in passing:
            runs = self.settings.runs
            if passes[cand.name] < runs:
                verdict(
                    cand,
                    FLAKY,
                    f"passed {passes[cand.name]} of {runs} runs",
                    passed_runs=passes[cand.name],
                )
                continue
            lines, arcs = _lines_arcs(first, cand.name, label)
            new_lines, new_arcs = lines - covered.lines, arcs - covered.arcs
            if not new_lines and not new_arcs:
                verdict(
                    cand, NO_COVERAGE, "covers nothing the other tests do not", passed_runs=runs
                )
                continue
            covered.lines |= new_lines
            covered.arcs |= new_arcs
            verdict(
                cand,
                KEPT,
                f"passed {runs} of {runs} runs",
                passed_runs=runs,
                adds={"lines": len(new_lines), "branches": len(new_arcs)},
            )
        return [(c, verdicts[c.name]) for c in tests]
