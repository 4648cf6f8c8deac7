"""One :class:`~ds_engine.interface.Engine` over several replicas of the same model.

A route (``JupyterDsApp.routes``, :mod:`jupyter_ds.routing.routes`) names several model
servers that serve one model, normally one ``ds_engine.remote.RemoteEngine`` per endpoint
URL. :class:`EnginePool` puts them behind the ``Engine`` interface itself, so that the
services (completion, explain, tests, commit messages) and the metrics wrapper need no
change: they call ``generate``/``stream``/``cancel`` and read ``state`` and ``info()``
as they do on the in-process engine.

What the pool decides, per request:

* **Which replica.** Among the *usable* ones (the engine says READY and its circuit
  breaker lets requests through), a request with an ``affinity_key`` (completion's file
  path) goes to the replica that rendezvous hashing ranks first for that key, so the
  file's KV prefix stays cached on one server, unless that replica has more than
  ``affinity_slack`` requests outstanding above the least-loaded one. Every other
  request goes to the replica with the fewest outstanding requests (counted here, not
  asked: a remote server's own queue figure is a round trip and a scrape old). When a
  replica goes down, only the keys it held move, each to its next-ranked replica.
* **Failover.** A replica that fails before anything reached the caller (a
  ``BackendError`` with ``retryable=True``, an ``EngineNotReady`` from a replica that
  just went down, a connection error) is replaced by another, at most ``max_attempts``
  replicas per request, and the caller never knows. A replica that sheds the request
  (``EngineOverloaded``) is passed over too, without counting as a failure; when every
  replica sheds it, the caller gets the ``EngineOverloaded`` (503/429). Once a chunk has
  been yielded the text cannot be taken back: a failure then ends the request with
  ``BackendError(retryable=False)`` naming the replica (the service's 502), and a
  replica that stops answering past the request's deadline plus ``stall_grace_s`` is
  such a failure too, so a caller never hangs on a dead server.
* **Circuit breaker.** ``failure_threshold`` consecutive failures (3) open a replica's
  breaker: it takes nothing for ``cooldown_s`` (10 s), then is *half open*: one request
  at a time probes it; a probe whose first chunk arrives closes the breaker, a failed
  probe opens it again for twice as long, up to ``max_cooldown_s`` (120 s).

Health: :meth:`EnginePool.start_loading` starts every replica (a remote engine begins
checking its server) and a daemon thread that runs :meth:`EnginePool.check_health` every
``health_interval_s``: it logs replicas going up and down and asks a failed or unloaded
replica to start again, backing off like the breaker. An endpoint that is unreachable at
start is just a replica that is not READY: the server starts, ``GET models`` shows it
down, and it takes requests once it answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ds_engine import (
    BackendError,
    Engine,
    EngineCounters,
    EngineInfo,
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from ds_engine.adapters import AdapterError
from ds_engine.templates import PromptTemplate

log = logging.getLogger(__name__)

# Defaults, documented in README.md ("Routes and replicas") and docs/architecture.md.
FAILURE_THRESHOLD = 3
COOLDOWN_S = 10.0
MAX_COOLDOWN_S = 120.0
# 1, not more: each request a CPU replica holds above its neighbour slows its whole
# batch; the simulation of benchmarks/scale.py needed 132 replicas for 1,000 users at
# 1, against 325 at 4 (benchmarks/results/scale.md).
AFFINITY_SLACK = 1
MAX_ATTEMPTS = 3
HEALTH_INTERVAL_S = 5.0
STALL_GRACE_S = 5.0

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

# Failures of a replica that another replica may make good, if nothing was yielded yet.
# OSError covers the connection errors an engine lets through unwrapped (refused, reset,
# unreachable).
FAILOVER_ERRORS = (BackendError, EngineNotReady, OSError)


class Stalled(Exception):
    """The pool's own watchdog: a replica gave no next step by the request's deadline
    plus ``stall_grace_s`` (kept apart from a ``TimeoutError`` a replica raises)."""

    def __str__(self) -> str:
        return "no answer within the request's deadline"


@dataclass
class Replica:
    """One endpoint of a pool: its engine and what the pool counts about it."""

    name: str
    url: str
    engine: Engine
    outstanding: int = 0  # requests the pool has running on it now
    requests_total: int = 0  # requests the pool sent it (attempts, failovers included)
    failures: int = 0  # consecutive failures; 0 again after a success
    failures_total: int = 0
    breaker: str = CLOSED
    open_until: float = 0.0
    cooldown_s: float = COOLDOWN_S  # the next opening's length
    probing: bool = False  # half open: the one probe request is running
    last_error: str | None = None
    last_state: EngineState | None = None  # as the last health check saw it
    next_warm: float = 0.0  # when check_health may ask it to start again
    warm_backoff: float = 0.0
    index: int = 0

    def engine_state(self) -> EngineState:
        """The engine's own state; an engine that cannot even say is FAILED."""
        try:
            return self.engine.state
        except Exception as exc:
            self.last_error = f"state: {exc}"
            return EngineState.FAILED


@dataclass
class _Live:
    """A request in the pool: the replica serving it now, and a cancel that came first."""

    replica: Replica | None = None
    cancelled: FinishReason | None = None


@dataclass
class _Attempts:
    """What the failover loop of one request has seen so far."""

    tried: set[int] = field(default_factory=set)
    failures: int = 0
    failure: BaseException | None = None
    overloaded: EngineOverloaded | None = None


def rendezvous_score(key: str, replica: Replica) -> int:
    """Highest-random-weight hashing: each (key, replica) pair gets a stable score and a
    key goes to its highest-scoring usable replica, so removing one replica moves only
    the keys it held. Keyed by URL, so reordering the endpoint list moves nothing."""
    digest = hashlib.blake2b(f"{key}\0{replica.url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class EnginePool:
    """An :class:`~ds_engine.interface.Engine` that spreads requests over ``replicas``.

    ``replicas``: (url, engine) pairs, every engine serving the same model with the same
    template (a route's endpoints). ``clock``: monotonic seconds, injected by tests of
    the breaker. The thresholds are described in the module's docstring.
    """

    def __init__(
        self,
        replicas: Sequence[tuple[str, Engine]],
        *,
        name: str = "pool",
        failure_threshold: int = FAILURE_THRESHOLD,
        cooldown_s: float = COOLDOWN_S,
        max_cooldown_s: float = MAX_COOLDOWN_S,
        affinity_slack: int = AFFINITY_SLACK,
        max_attempts: int = MAX_ATTEMPTS,
        health_interval_s: float = HEALTH_INTERVAL_S,
        stall_grace_s: float = STALL_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not replicas:
            raise ValueError(f"pool {name!r} needs at least one replica")
        self.name = name
        self.failure_threshold = max(1, int(failure_threshold))
        self.cooldown_s = float(cooldown_s)
        self.max_cooldown_s = max(float(max_cooldown_s), self.cooldown_s)
        self.affinity_slack = max(0, int(affinity_slack))
        self.max_attempts = max(1, int(max_attempts))
        self.health_interval_s = float(health_interval_s)
        self.stall_grace_s = float(stall_grace_s)
        self.clock = clock
        self.replicas = [
            Replica(name=f"{name}-{i}", url=url, engine=engine, index=i,
                    cooldown_s=self.cooldown_s, warm_backoff=self.health_interval_s or 1.0)
            for i, (url, engine) in enumerate(replicas)
        ]
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._started = False
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self.failovers_total = 0

    def __repr__(self) -> str:
        return f"EnginePool({self.name!r}, {[r.url for r in self.replicas]})"

    # ------------------------------------------------------------------ breaker

    def breaker_state(self, replica: Replica) -> str:
        """closed, open, or half_open (an open breaker whose cooldown has passed)."""
        with self._lock:
            if replica.breaker == OPEN and self.clock() >= replica.open_until:
                replica.breaker = HALF_OPEN
                replica.probing = False
            return replica.breaker

    def _succeeded(self, replica: Replica) -> None:
        with self._lock:
            if replica.breaker != CLOSED:
                log.info("jupyter-ds: route %s: %s answers again (breaker closed)",
                         self.name, replica.url)
            replica.failures = 0
            replica.breaker = CLOSED
            replica.cooldown_s = self.cooldown_s
            replica.probing = False

    def _failed(self, replica: Replica, exc: BaseException) -> None:
        with self._lock:
            replica.failures += 1
            replica.failures_total += 1
            replica.last_error = f"{type(exc).__name__}: {exc}"
            replica.probing = False
            if replica.breaker == HALF_OPEN or replica.failures >= self.failure_threshold:
                replica.breaker = OPEN
                replica.open_until = self.clock() + replica.cooldown_s
                log.warning("jupyter-ds: route %s: %s kept out for %.0f s after %d "
                            "failure(s): %s", self.name, replica.url, replica.cooldown_s,
                            replica.failures, replica.last_error)
                replica.cooldown_s = min(replica.cooldown_s * 2, self.max_cooldown_s)

    def _released(self, replica: Replica) -> None:
        """A probe that ended neither well nor badly (shed, cancelled): probe again."""
        with self._lock:
            replica.probing = False

    # ------------------------------------------------------------------ picking

    def usable(self, replica: Replica) -> bool:
        """READY, and its breaker lets a request through now."""
        if replica.engine_state() is not EngineState.READY:
            return False
        breaker = self.breaker_state(replica)
        return breaker == CLOSED or (breaker == HALF_OPEN and not replica.probing)

    def pick(
        self, affinity_key: str | None = None, exclude: set[int] | None = None
    ) -> Replica | None:
        """The replica the next request goes to (see the module docstring), or None.

        Counts nothing: :meth:`_begin` does, so that tests and the failover loop can ask.
        """
        candidates = [r for r in self.replicas
                      if (exclude is None or r.index not in exclude) and self.usable(r)]
        if not candidates:
            return None
        least = min(candidates, key=lambda r: (r.outstanding, r.requests_total, r.index))
        if affinity_key is None:
            return least
        sticky = max(candidates, key=lambda r: rendezvous_score(affinity_key, r))
        if sticky.outstanding <= least.outstanding + self.affinity_slack:
            return sticky
        return least

    def _begin(self, replica: Replica, request: GenerationRequest, live: _Live) -> None:
        with self._lock:
            replica.outstanding += 1
            replica.requests_total += 1
            if replica.breaker == HALF_OPEN:
                replica.probing = True
        live.replica = replica

    def _end(self, replica: Replica, live: _Live) -> None:
        with self._lock:
            replica.outstanding -= 1
        live.replica = None

    def _track(self, request_id: str) -> _Live:
        live = _Live()
        self._live[request_id] = live
        return live

    def _next_replica(self, request: GenerationRequest, attempts: _Attempts) -> Replica:
        """The replica for the next attempt, or the error that ends the request."""
        deadline = request.deadline
        out_of_time = deadline is not None and time.monotonic() >= deadline
        replica = None
        if attempts.failures < self.max_attempts and not out_of_time:
            replica = self.pick(request.affinity_key, attempts.tried)
        if replica is not None:
            attempts.tried.add(replica.index)
            return replica
        # Busy beats broken: a replica that shed the request will take one in a second.
        if attempts.overloaded is not None:
            raise attempts.overloaded
        failure = attempts.failure
        if isinstance(failure, EngineNotReady):
            raise failure
        if isinstance(failure, BackendError):
            raise BackendError(failure.backend, f"{_reason(failure)} (route {self.name}: "
                               f"{attempts.failures} endpoint(s) tried)", retryable=True)
        if failure is not None:
            raise BackendError(self._last_url(attempts), f"{type(failure).__name__}: {failure}"
                               f" (route {self.name}: {attempts.failures} endpoint(s) tried)",
                               retryable=True)
        raise self._not_ready()

    def _last_url(self, attempts: _Attempts) -> str:
        tried = [r for r in self.replicas if r.index in attempts.tried]
        return tried[-1].url if tried else self.name

    def _not_ready(self) -> EngineNotReady:
        """No replica can take a request now: say why, and when to come back."""
        now = self.clock()
        waits = [r.open_until - now for r in self.replicas
                 if r.breaker == OPEN and r.engine_state() is EngineState.READY]
        if waits:
            return EngineNotReady(
                EngineState.LOADING,
                f"every ready endpoint of route {self.name} is kept out after failures "
                f"(circuit open); next try in {max(0.0, min(waits)):.0f} s",
                retry_after=max(1, int(min(waits) + 0.999)),
            )
        state = self.state
        return EngineNotReady(state, f"no endpoint of route {self.name} is ready "
                                     f"({self._summary()})")

    def _record_failure(self, replica: Replica, exc: BaseException, attempts: _Attempts,
                        live: _Live) -> None:
        """Count a failure before the first chunk; re-raise it unless another may answer."""
        self._failed(replica, exc)
        retryable = not isinstance(exc, BackendError) or exc.retryable
        if not retryable or live.cancelled is not None:
            raise exc
        attempts.failures += 1
        attempts.failure = exc
        self.failovers_total += 1
        log.info("jupyter-ds: route %s: %s failed before its first token (%s); trying "
                 "another endpoint", self.name, replica.url, _reason(exc))

    async def _bounded(self, step: Any, request: GenerationRequest) -> Any:
        """Await a replica's next step until the request's deadline plus
        ``stall_grace_s`` (a replica that honours deadlines has ended by then), else
        raise :class:`Stalled`: a dead server never holds its caller."""
        deadline = request.deadline
        if deadline is None:
            return await step
        timeout = max(0.0, deadline - time.monotonic()) + self.stall_grace_s
        started = time.monotonic()
        try:
            return await asyncio.wait_for(step, timeout)
        except asyncio.TimeoutError:
            if time.monotonic() - started < timeout:
                raise  # the replica's own TimeoutError, not the watchdog's
            raise Stalled() from None

    # ------------------------------------------------------------------ requests

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if not any(self.usable(r) for r in self.replicas):
            raise self._not_ready()
        live = self._track(request.request_id)
        attempts = _Attempts()
        try:
            while True:
                replica = self._next_replica(request, attempts)
                self._begin(replica, request, live)
                try:
                    result = await self._bounded(replica.engine.generate(request), request)
                except EngineOverloaded as exc:
                    self._released(replica)
                    attempts.overloaded = exc
                    continue
                except FAILOVER_ERRORS as exc:
                    self._record_failure(replica, exc, attempts, live)
                    continue
                except Stalled as exc:
                    self._failed(replica, exc)
                    raise BackendError(replica.url, str(exc), retryable=False) from None
                except (asyncio.CancelledError, AdapterError):
                    self._released(replica)  # the caller's doing, not the replica's
                    raise
                except Exception as exc:
                    self._failed(replica, exc)
                    raise
                finally:
                    self._end(replica, live)
                self._succeeded(replica)
                return result
        finally:
            self._live.pop(request.request_id, None)

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Like every engine's, it raises ``EngineNotReady`` at call time when no
        replica can take the request; later failures surface while iterating."""
        if not any(self.usable(r) for r in self.replicas):
            raise self._not_ready()
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        live = self._track(request.request_id)
        attempts = _Attempts()
        try:
            while True:
                replica = self._next_replica(request, attempts)
                self._begin(replica, request, live)
                inner: Any = None
                yielded = 0
                ended = False
                try:
                    inner = replica.engine.stream(request)
                    if live.cancelled is not None:  # cancelled while it was being placed
                        replica.engine.cancel(request.request_id, reason=live.cancelled)
                    while True:
                        try:
                            chunk = await self._bounded(inner.__anext__(), request)
                        except StopAsyncIteration:
                            raise BackendError(replica.url, "the stream ended without a "
                                               "result", retryable=not yielded) from None
                        if not yielded:
                            self._succeeded(replica)  # it answers: its breaker closes
                        yielded += 1
                        if chunk.done:
                            # Finished: free the replica and forget the id now, not
                            # when the caller next resumes (it may never need to).
                            self._end(replica, live)
                            ended = True
                            self._live.pop(request.request_id, None)
                            yield chunk
                            return
                        yield chunk
                except EngineOverloaded as exc:
                    if yielded:
                        raise self._mid_stream(replica, exc, yielded) from exc
                    self._released(replica)
                    attempts.overloaded = exc
                except FAILOVER_ERRORS as exc:
                    if yielded:
                        raise self._mid_stream(replica, exc, yielded) from exc
                    self._record_failure(replica, exc, attempts, live)
                except Stalled as exc:
                    if yielded:
                        raise self._mid_stream(replica, exc, yielded) from None
                    self._failed(replica, exc)
                    raise BackendError(replica.url, str(exc), retryable=False) from None
                except (GeneratorExit, asyncio.CancelledError, AdapterError):
                    if not yielded:
                        self._released(replica)  # the caller's doing, not the replica's
                    raise
                except Exception as exc:
                    if yielded:
                        raise self._mid_stream(replica, exc, yielded) from exc
                    self._failed(replica, exc)
                    raise
                finally:
                    if not ended:
                        self._end(replica, live)
                    if inner is not None:
                        await _aclose(inner)
        finally:
            self._live.pop(request.request_id, None)

    def _mid_stream(self, replica: Replica, exc: BaseException, chunks: int) -> BackendError:
        """A failure after text reached the caller: never retried (the text cannot be
        taken back), always a failure of that replica, always named."""
        self._failed(replica, exc)
        reason = str(exc) if isinstance(exc, Stalled) else _reason(exc)
        return BackendError(replica.url, f"failed mid-stream after {chunks} chunk(s): "
                            f"{reason}", retryable=False)

    def cancel(self, request_id: str, *, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        """Forward to the replica serving ``request_id`` now; a request between replicas
        (failing over) is cancelled on the next one as soon as it is placed."""
        live = self._live.get(request_id)
        if live is None:
            return False
        if live.cancelled is None:
            live.cancelled = reason
        replica = live.replica
        if replica is None:
            return True
        try:
            return bool(replica.engine.cancel(request_id, reason=reason))
        except Exception as exc:  # the request ends with the replica's own error
            log.debug("cancel on %s failed: %s", replica.url, exc)
            return True

    def check_admission(self, request: GenerationRequest) -> None:
        """Shed only when every usable replica would shed the request; a replica that is
        not ready is the readiness check's business (``EngineNotReady`` is skipped)."""
        shed: EngineOverloaded | None = None
        for replica in self.replicas:
            if not self.usable(replica):
                continue
            try:
                replica.engine.check_admission(request)
                return
            except EngineOverloaded as exc:
                shed = shed or exc
            except EngineNotReady:
                continue
        if shed is not None:
            raise shed

    # ------------------------------------------------------------------ load state

    @property
    def state(self) -> EngineState:
        """READY when a replica can take a request now; LOADING when none can but one is
        loading or only kept out by its breaker for a while; UNLOADED before anything
        was started; FAILED otherwise (``info().error`` says why, per endpoint)."""
        states = [r.engine_state() for r in self.replicas]
        if any(self.usable(r) for r in self.replicas):
            return EngineState.READY
        if EngineState.LOADING in states or EngineState.READY in states:
            return EngineState.LOADING
        if all(s is EngineState.UNLOADED for s in states):
            return EngineState.UNLOADED
        if EngineState.UNLOADED in states and not self._started:
            return EngineState.UNLOADED
        if EngineState.UNLOADED in states:
            return EngineState.LOADING  # asked to start again by check_health
        return EngineState.FAILED

    def start_loading(self) -> None:
        """Start every replica (a remote engine starts checking its server) and the
        health thread; returns at once. An endpoint that fails here is logged and
        stays down until a health check finds it answering."""
        self._started = True
        for replica in self.replicas:
            self._warm(replica)
        self._start_monitor()

    def _warm(self, replica: Replica) -> None:
        try:
            replica.engine.start_loading()
        except Exception as exc:
            replica.last_error = f"start: {exc}"
            log.warning("jupyter-ds: route %s: %s did not start: %s", self.name,
                        replica.url, exc)

    def _start_monitor(self) -> None:
        if self.health_interval_s <= 0 or self._stop.is_set():
            return
        if self._monitor is not None and self._monitor.is_alive():
            return
        self._monitor = threading.Thread(target=self._watch, daemon=True,
                                         name=f"jupyter-ds-pool-{self.name}")
        self._monitor.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.health_interval_s):
            try:
                self.check_health()
            except Exception:  # a health pass must never kill the thread
                log.debug("route %s: health check failed", self.name, exc_info=True)

    def check_health(self) -> None:
        """One health pass: log each replica's state changes, and ask a failed or
        unloaded replica to start again (backing off from ``health_interval_s`` up to
        ``max_cooldown_s``), once the pool itself was started."""
        now = self.clock()
        for replica in self.replicas:
            state = replica.engine_state()
            if state is not replica.last_state:
                if replica.last_state is not None:
                    level = logging.INFO if state is EngineState.READY else logging.WARNING
                    log.log(level, "jupyter-ds: route %s: %s is %s (was %s)", self.name,
                            replica.url, state.value, replica.last_state.value)
                replica.last_state = state
                if state is EngineState.READY:
                    replica.warm_backoff = self.health_interval_s or 1.0
                    replica.next_warm = 0.0
            if (self._started and state in (EngineState.FAILED, EngineState.UNLOADED)
                    and now >= replica.next_warm):
                replica.next_warm = now + replica.warm_backoff
                replica.warm_backoff = min(replica.warm_backoff * 2, self.max_cooldown_s)
                self._warm(replica)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until a replica is READY (True), every replica has failed, or
        ``timeout`` passes (False)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.state
            if state is EngineState.READY:
                return True
            if state is EngineState.FAILED:
                return False
            if end is not None and time.monotonic() >= end:
                return False
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the health thread and close the replicas that can be closed."""
        self._stop.set()
        for replica in self.replicas:
            close = getattr(replica.engine, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as exc:
                    log.debug("closing %s: %s", replica.url, exc)

    # ------------------------------------------------------------------ model facts

    def _reference(self) -> list[Replica]:
        """Replicas in the order to ask for model facts: usable first, then READY, then
        the rest. All serve the same model, so any answers; a loaded one surely can."""
        return sorted(self.replicas, key=lambda r: (
            not self.usable(r), r.engine_state() is not EngineState.READY, r.index))

    def _ask(self, ask: Callable[[Engine], Any]) -> Any:
        first: Exception | None = None
        for replica in self._reference():
            try:
                return ask(replica.engine)
            except Exception as exc:
                first = first or exc
        assert first is not None
        raise first

    @property
    def template(self) -> PromptTemplate:
        return self._ask(lambda e: e.template)

    def template_for(self, adapter: str | None) -> PromptTemplate:
        return self._ask(lambda e: e.template_for(adapter))

    def count_tokens(self, text: str) -> int:
        return self._ask(lambda e: e.count_tokens(text))

    def context_window(self) -> int:
        """The smallest window of the replicas that can say: a prompt fitted to it fits
        every replica a failover may send it to."""
        windows = []
        for replica in self.replicas:
            try:
                windows.append(int(replica.engine.context_window()))
            except Exception:
                continue
        if windows:
            return min(windows)
        return self._ask(lambda e: e.context_window())

    def adapters(self) -> list[dict[str, Any]]:
        """The adapters of every replica that answers, once per name."""
        seen: dict[str, dict[str, Any]] = {}
        for replica in self._reference():
            try:
                listed = replica.engine.adapters()
            except Exception:
                continue
            for entry in listed:
                seen.setdefault(str(entry.get("name")), entry)
        return list(seen.values())

    def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        raise AdapterError(409, f"adapters of route {self.name} are loaded on its model "
                                f"servers, not through this server ({name!r})")

    def unload_adapter(self, name: str) -> dict[str, Any]:
        raise AdapterError(409, f"adapters of route {self.name} are unloaded on its model "
                                f"servers, not through this server ({name!r})")

    # ------------------------------------------------------------------ reporting

    def _summary(self) -> str:
        return ", ".join(f"{r.url}: {self._describe_state(r)}" for r in self.replicas)

    def _describe_state(self, replica: Replica) -> str:
        state = replica.engine_state().value
        breaker = self.breaker_state(replica)
        return state if breaker == CLOSED else f"{state}, breaker {breaker}"

    def endpoints(self) -> list[dict[str, Any]]:
        """Each endpoint as ``GET models`` shows it."""
        now = self.clock()
        out = []
        for replica in self.replicas:
            state = replica.engine_state()
            breaker = self.breaker_state(replica)
            error = replica.last_error
            if state is not EngineState.READY:
                try:
                    error = replica.engine.info().error or error
                except Exception as exc:
                    error = f"info: {exc}"
            out.append({
                "name": replica.name,
                "url": replica.url,
                "state": state.value,
                "usable": self.usable(replica),
                "outstanding": replica.outstanding,
                "requests_total": replica.requests_total,
                "failures": replica.failures,
                "failures_total": replica.failures_total,
                "breaker": breaker,
                "retry_in_s": round(max(0.0, replica.open_until - now), 1)
                if breaker == OPEN else None,
                "error": error,
            })
        return out

    def info(self) -> EngineInfo:
        """The route's model as its replicas describe it (kind ``pool``), the pool's own
        state, and the replicas' counters summed."""
        infos: list[EngineInfo] = []
        for replica in self._reference():
            try:
                infos.append(replica.engine.info())
            except Exception as exc:
                replica.last_error = f"info: {exc}"
        ref = infos[0] if infos else EngineInfo(name=None, state=EngineState.FAILED)
        state = self.state
        ready = sum(1 for r in self.replicas if self.usable(r))
        error = None
        if state is not EngineState.READY:
            error = f"route {self.name}: " + "; ".join(
                f"{e['url']} {e['state']}" + (f" (breaker {e['breaker']})"
                                              if e["breaker"] != CLOSED else "")
                + (f": {e['error']}" if e["error"] else "")
                for e in self.endpoints())
        try:
            window: int | None = self.context_window()
        except Exception:
            window = ref.context_window
        return EngineInfo(
            name=ref.name,
            state=state,
            error=error,
            source=ref.source,
            kind="pool",
            device=ref.device,
            dtype=ref.dtype,
            loading_stage=f"{ready}/{len(self.replicas)} endpoints ready",
            template=ref.template,
            supports_fim=ref.supports_fim,
            context_window=window,
            quantization=ref.quantization,
            adapter=ref.adapter,
            adapters_attached=ref.adapters_attached,
            counters=sum_counters([i.counters for i in infos if i.counters is not None]),
        )


def sum_counters(counters: list[EngineCounters]) -> EngineCounters | None:
    """The replicas' counters as one engine's: totals and gauges add up, a mean is the
    mean of the replicas that know it, the largest batch seen is the largest."""
    if not counters:
        return None
    out = EngineCounters()
    for f in fields(EngineCounters):
        values = [getattr(c, f.name) for c in counters if getattr(c, f.name) is not None]
        if not values:
            value = f.default
        elif f.name in ("service_time_s", "mean_batch_size"):
            value = sum(values) / len(values)
        elif f.name == "max_batch_size_seen":
            value = max(values)
        else:
            value = sum(values)
        setattr(out, f.name, value)
    return out


def _reason(exc: BaseException) -> str:
    """A failure's message, without the backend name a BackendError already carries."""
    if isinstance(exc, BackendError):
        text = str(exc)
        prefix = f"{exc.backend}: "
        return text[len(prefix):] if text.startswith(prefix) else text
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _aclose(stream: Any) -> None:
    """Close a replica's stream (which cancels its generation) whatever state it is in."""
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except (Exception, asyncio.CancelledError):  # already failed or cancelled: closed
        log.debug("closing a replica stream", exc_info=True)
