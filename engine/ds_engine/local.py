"""The in-process engine: a model loaded in a background thread, run by one worker.

Jupyter's tornado/asyncio loop must never wait on a forward pass, so loading happens on
a daemon thread (:mod:`ds_engine.model_state`) and every forward runs on one dedicated
worker thread. The engine is split as vLLM v1 splits its own: this module is the thin
front that callers on the event loop see (generate, stream, cancel, info, adapters);
:class:`ds_engine.scheduler.Scheduler` decides, without a model, which requests wait,
start, are shed or dropped, and holds each request's stop flag;
:class:`ds_engine.runner.ModelRunner` runs the forwards (chunked prefill from the
KV-prefix cache, one decode step of the whole batch per token). The worker alternates
``schedule()`` -> runner -> ``update_from_output()``; results and stream chunks travel
back to the caller's loop through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ds_engine.adapters import AdapterError, AdapterSet, check_base, check_name, read_adapter
from ds_engine.compiled import DEFAULT_BUCKETS
from ds_engine.interface import (
    EngineConfig,
    EngineCounters,
    EngineInfo,
    EngineNotReady,
    EngineState,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from ds_engine.loader import LoadedModel, ProgressCallback
from ds_engine.model_state import ModelState
from ds_engine.prefix_cache import PrefixCache
from ds_engine.runner import ModelRunner, ResultCache
from ds_engine.scheduler import RequestState, RunnerOutput, Scheduler, SchedulerOutput
from ds_engine.templates import PromptTemplate

log = logging.getLogger(__name__)


@dataclass
class _Failure:
    """An exception raised on the worker, carried to the consumer's loop."""

    error: BaseException


class LocalEngine:
    """:class:`ds_engine.interface.Engine` backed by a transformers model in this process."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | Path | None = None,
        name: str | None = None,
        num_threads: int | None = None,
        progress: ProgressCallback | None = None,
        prefix_cache_entries: int | None = None,
        prefix_cache_bytes: int | None = None,
        result_cache_entries: int = 256,
        quantization: str = "none",
        max_batch_size: int = 8,
        prefill_chunk: int = 256,
        warmup: bool = True,
        default_adapter: str | None = "auto",
        max_queued: int = 64,
        load_shedding: bool = True,
        speculative_tokens: int = 0,
        compile_decode: bool = False,
        compile_buckets: tuple[int, ...] | list[int] = DEFAULT_BUCKETS,
    ) -> None:
        """``prefix_cache_entries`` recent prompts (default: 16, or two per batch slot if more, so
        that each concurrent typist keeps one) keep their KV cache for reuse by the next
        prompt sharing a token prefix (0 disables; ``prefix_cache_bytes`` bounds their
        memory, by default to the model's own size); ``result_cache_entries`` greedy
        results are kept for identical repeated requests (0 disables). At most
        ``max_batch_size`` requests run at once (1: one at a time), fewer if memory is
        short; prompts are forwarded ``prefill_chunk`` tokens at a time. ``warmup`` runs
        a short generation while loading so the first user request does not pay
        first-call costs. ``default_adapter`` is merged into the weights at load
        (``auto``: the shipped FIM adapter for the embedded model; ``none``: none); other
        adapters are attached later with :meth:`load_adapter`. At most ``max_queued``
        requests of each priority wait for a slot (0: no bound); past that, or when a
        request could not start before its start deadline, it is shed at once with
        :class:`EngineOverloaded` (see :class:`ds_engine.scheduler.Admission`);
        ``load_shedding=False`` turns that off (requests then wait until their deadline).
        ``speculative_tokens`` tokens drafted from the context are verified per decode
        step of a lone greedy request (:mod:`ds_engine.speculative`; 0: off).
        ``compile_decode`` compiles a decode step over a static KV cache of each length
        in ``compile_buckets`` while loading, for requests that decode alone
        (:mod:`ds_engine.compiled`; it takes precedence over ``speculative_tokens``)."""
        self.model_path = model_path
        self.device = device
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.name = name
        self.num_threads = num_threads
        self.quantization = quantization  # "none" | "int8" | "auto", see ds_engine.quantize
        self.default_adapter = default_adapter
        self.max_batch_size = max(1, max_batch_size)
        self.prefill_chunk = max(1, prefill_chunk)
        self.speculative_tokens = max(0, speculative_tokens)
        buckets = tuple(compile_buckets)
        if compile_decode and (not buckets or not all(
                isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets)):
            raise ValueError(f"compile_buckets must be positive token counts, not {list(buckets)}")
        self.compile_buckets = buckets if compile_decode else ()
        self.warmup = warmup
        self._model = ModelState(
            model_path=model_path, device=device, dtype=dtype, cache_dir=cache_dir,
            name=name, num_threads=num_threads, quantization=quantization,
            default_adapter=default_adapter, max_batch_size=self.max_batch_size,
            warmup=warmup, progress=progress, on_ready=self._on_ready,
            compile_buckets=self.compile_buckets,
        )
        # Attached adapters (ds_engine.adapters); changed and used under _model_lock,
        # which the worker holds for every forward.
        self._model_lock = threading.RLock()
        self._adapters: AdapterSet | None = None
        self._unloading: set[str] = set()
        self._adapter_stats: dict[str, dict[str, float]] = {}

        # The scheduler is called under _lock only: submitters add and notify, the
        # worker takes its decisions and reports back.
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._scheduler = Scheduler(max_queued, load_shedding=load_shedding)
        self._runner: ModelRunner | None = None  # once the model is loaded
        self._worker: threading.Thread | None = None

        if prefix_cache_entries is None:
            prefix_cache_entries = max(16, 2 * max_batch_size)
        self._prefix_cache_bytes_given = prefix_cache_bytes is not None
        self._prefix_cache = (
            PrefixCache(prefix_cache_entries, max_bytes=prefix_cache_bytes)
            if prefix_cache_entries > 0
            else None
        )
        self._results = ResultCache(result_cache_entries)

    @classmethod
    def from_config(cls, config: EngineConfig) -> LocalEngine:
        """The engine the server's settings describe (``ds_engine.factory``).

        The common fields map onto the constructor's keywords of the same name;
        ``config.options`` may give any other keyword (``name``, ``num_threads``,
        ``progress``, ``prefix_cache_entries``, ``prefix_cache_bytes``,
        ``result_cache_entries``). An option that is not one, or that repeats a common
        field, is a ValueError naming it: a typo in a configuration file must not be
        ignored silently.
        """
        common = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                  if f.name != "options"}
        keywords = set(inspect.signature(cls.__init__).parameters) - {"self"}
        options = dict(config.options)
        unknown = sorted(set(options) - (keywords - set(common)))
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} option(s): {', '.join(unknown)} (known: "
                f"{', '.join(sorted(keywords - set(common)))}; the others are EngineConfig "
                f"fields)"
            )
        return cls(**common, **options)

    # ----------------------------------------------------------------- loading

    @property
    def state(self) -> EngineState:
        return self._model.state

    @property
    def error(self) -> str | None:
        """Why loading failed (``"Type: message"``), or None."""
        return self._model.error

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model; raises :class:`EngineNotReady` before it is ready."""
        self._check_ready()
        assert self._model.loaded is not None
        return self._model.loaded

    @property
    def template(self) -> PromptTemplate:
        return self.loaded.template

    def _on_ready(self, loaded: LoadedModel, eos: frozenset[int], batch_limit: int) -> None:
        """Build what serves the model, before the engine says READY."""
        if self._prefix_cache is not None and not self._prefix_cache_bytes_given:
            self._prefix_cache.max_bytes = max(loaded.memory_bytes or 0, 256 * 2**20)
        adapters = AdapterSet(loaded.model, loaded.dtype)
        runner = ModelRunner(
            loaded, eos=eos, adapters=adapters, model_lock=self._model_lock,
            prefix_cache=self._prefix_cache, results=self._results,
            prefill_chunk=self.prefill_chunk, speculative_tokens=self.speculative_tokens,
            static=self._model.static,
        )
        with self._lock:
            self._adapters = adapters
            self._runner = runner
            self._scheduler.batch_limit = batch_limit

    def start_loading(self) -> None:
        """Load in a background daemon thread; no-op while loading or once ready."""
        self._model.start_loading()

    def load(self, progress: ProgressCallback | None = None) -> LoadedModel:
        """Load synchronously (CLIs, scripts); re-raises the loading error on failure.

        ``progress`` replaces the constructor's progress callback.
        """
        if progress is not None:
            self._model.progress = progress
        return self._model.load()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loading settles (or ``timeout``); True if the model is READY."""
        return self._model.wait_ready(timeout)

    def _check_ready(self) -> None:
        self._model.check_ready()

    # ----------------------------------------------------------------- model facts

    def count_tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context_window(self) -> int:
        return self.loaded.context_window

    # ----------------------------------------------------------------- requests in

    def _cached_result(self, request: GenerationRequest) -> GenerationResult | None:
        """A stored result for an identical greedy request, stamped for this request."""
        runner = self._runner
        assert runner is not None
        key = runner.result_key(request)
        if key is None:
            return None
        with self._lock:
            if self._scheduler.closed:
                raise EngineNotReady(self.state, "engine is closed")
        cached = self._results.get(key)
        if cached is None:
            return None
        latency = (time.monotonic() - request.created_at) * 1000.0
        return dataclasses.replace(
            cached,
            request_id=request.request_id,
            latency_ms=latency,
            time_to_first_token_ms=None if cached.token_count == 0 else latency,
        )

    def _submit(
        self, request: GenerationRequest, on_chunk: Callable[[StreamChunk], None] | None
    ) -> Future[GenerationResult]:
        self._check_ready()
        if request.max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        state = RequestState(request, on_chunk=on_chunk, future=Future())
        with self._wakeup:
            if self._scheduler.closed:
                raise EngineNotReady(self.state, "engine is closed")
            if request.adapter is not None and (
                request.adapter not in self._adapters or request.adapter in self._unloading
            ):
                raise AdapterError(404, f"unknown adapter {request.adapter!r}")
            # Sheds (EngineOverloaded) before anything is counted: a shed costs nothing.
            self._scheduler.add(state, time.monotonic())
            self._ensure_worker()
            self._wakeup.notify()
        return state.future

    def check_admission(self, request: GenerationRequest) -> None:
        """Raise :class:`EngineOverloaded` now if ``request`` would be shed.

        For callers that build an expensive prompt (tokenizing a file's context): asked
        first, with the request's priority, user and deadlines and no prompt yet, it
        sheds an overloaded request in well under a millisecond, before that work.
        """
        self._check_ready()
        with self._lock:
            self._scheduler.check(request, time.monotonic())

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run ``request`` on the worker; cancelling the awaiting task cancels it.

        An identical greedy request answered before returns its stored result at once.
        """
        self._check_ready()
        request.adapter = self._served_adapter(request.adapter)
        cached = self._cached_result(request)
        if cached is not None:
            return cached
        future = self._submit(request, None)
        try:
            # shield: a cancelled await must not cancel the concurrent future itself
            # (the worker then never runs and bookkeeping would leak); the flag does it.
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            self.cancel(request.request_id)
            raise

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Cumulative chunks, the last one ``done`` with the result.

        Raises :class:`EngineNotReady` here, at call time, so a handler can answer 503
        before it starts streaming. Leaving the iteration early (``aclose``, a cancelled
        task, a disconnected client) cancels the generation.
        A result-cache hit streams a single ``done`` chunk.
        """
        self._check_ready()
        request.adapter = self._served_adapter(request.adapter)
        cached = self._cached_result(request)
        if cached is not None:
            return self._replay(cached)
        return self._stream(request)

    @staticmethod
    async def _replay(result: GenerationResult) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(result.text, result.text, result.token_count, done=True, result=result)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StreamChunk | _Failure] = asyncio.Queue()

        def post(item: StreamChunk | _Failure) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the consumer's loop is gone: nobody wants the rest
                self.cancel(request.request_id)

        def on_done(fut: Future[GenerationResult]) -> None:
            exc = fut.exception()
            if exc is not None:
                post(_Failure(exc))

        future = self._submit(request, post)
        future.add_done_callback(on_done)
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, _Failure):
                    raise item.error
                finished = item.done
                yield item
        finally:
            if not (finished or future.done()):
                self.cancel(request.request_id)

    # ----------------------------------------------------------------- stopping

    def cancel(self, request_id: str, *, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        """Stop a queued or running request by id; True if it was known.

        ``CANCELLED``: the client gave up; the result says CANCELLED and counts in
        ``cancelled_total``. ``STOP``: the caller has what it needs; the request ends
        as a normal finish (STOP) with the text so far. A queued request never starts;
        a running one stops before its next token.
        """
        with self._wakeup:
            known = self._scheduler.cancel(request_id, reason)
            if known:
                self._wakeup.notify()
        return known

    def cancel_all(self) -> int:
        """Cancel every queued and running request (shutdown, model swap)."""
        with self._lock:
            return self._scheduler.cancel_all()

    def close(self, load_timeout: float = 60.0) -> None:
        """Cancel everything and stop the worker; the engine accepts no more requests.

        A load still running is waited for (up to ``load_timeout`` seconds): a server that
        stops while its model loads must not leave forward passes running behind it, in
        a process that may start another server (a test session) and its own torch work.
        """
        with self._wakeup:
            self._scheduler.close()
            self._wakeup.notify()
        self._model.join(load_timeout)

    shutdown = close

    # ----------------------------------------------------------------- the worker

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._serve, name="ds-engine-scheduler", daemon=True
            )
            self._worker.start()

    def _serve(self) -> None:
        """The worker thread: schedule, run the step, record what it did; repeat."""
        runner = self._runner
        assert runner is not None
        scheduler = self._scheduler
        while True:
            with self._wakeup:
                while not (scheduler.has_work() or scheduler.closed):
                    self._wakeup.wait()
                if scheduler.closed and not scheduler.has_work():
                    return
                plan = scheduler.schedule(time.monotonic())
            self._answer_shed(plan)
            for output in runner.execute(plan):
                with self._lock:
                    freed = scheduler.update_from_output(output, time.monotonic())
                self._answer(output, freed)

    def _answer_shed(self, plan: SchedulerOutput) -> None:
        for state, error in plan.shed:
            state.future.set_exception(error)
        self._release(plan.freed_adapters)

    def _answer(self, output: RunnerOutput, freed: list[str]) -> None:
        """Settle the futures of what finished or failed in one runner stage."""
        self._release(freed)
        for state, result in output.finished:
            state.future.set_result(result)
        for state, error in output.failed:
            if not state.future.done():
                state.future.set_exception(error)

    def _release(self, freed: list[str]) -> None:
        """Detach the unloading adapters whose last request just left."""
        if not freed:
            return
        with self._lock:
            detach = [name for name in freed if name in self._unloading]
        for name in detach:
            self._detach(name)

    # ----------------------------------------------------------------- adapters

    def _served_adapter(self, name: str | None) -> str | None:
        """None for the model as served (the merged default adapter's name included)."""
        loaded = self._model.loaded
        if name is None or (loaded is not None and loaded.adapter is not None
                            and name == loaded.adapter.name):
            return None
        return name

    def template_for(self, adapter: str | None) -> PromptTemplate:
        base = self.loaded.template
        name = self._served_adapter(adapter)
        if name is None:
            return base
        with self._lock:
            found = self._adapters.adapters.get(name) if self._adapters else None
            if found is None or name in self._unloading:
                raise AdapterError(404, f"unknown adapter {adapter!r}")
        return base.with_fim(found.fim) if found.fim is not None else base

    def adapters(self) -> list[dict[str, Any]]:
        loaded = self._model.loaded
        out = []
        if loaded is not None and loaded.adapter is not None:
            out.append({**loaded.adapter.describe(), "merged": True, "state": "ready",
                        "default": True})
        if self._adapters is not None:
            with self._lock:
                attached = list(self._adapters.adapters.values())
                users = dict(self._scheduler.adapter_users)
                unloading = set(self._unloading)
                stats = {k: dict(v) for k, v in self._adapter_stats.items()}
            for a in attached:
                out.append({**a.describe(), "merged": False, "default": False,
                            "state": "unloading" if a.name in unloading else "ready",
                            "running_requests": users.get(a.name, 0), **stats.get(a.name, {})})
        return out

    def load_adapter(self, name: str, path: str | Path) -> dict[str, Any]:
        """Read, check and attach an adapter (replacing one of the same name).

        Reading and checking happen before the model lock is taken; attaching takes it
        for the time it takes to copy the weights (milliseconds for a small adapter),
        between two forwards. A corrupt or incompatible folder raises 422 and changes
        nothing.
        """
        check_name(name)
        self._check_ready()
        loaded = self.loaded
        if loaded.adapter is not None and name == loaded.adapter.name:
            raise AdapterError(409, f"{name!r} is the default adapter, merged into the weights")
        started = time.monotonic()
        adapter = read_adapter(path, name)
        check_base(adapter, loaded.lineage)
        read_s = time.monotonic() - started
        assert self._adapters is not None
        with self._model_lock:
            with self._lock:
                if self._scheduler.adapter_users.get(name):
                    raise AdapterError(409, f"adapter {name!r} has running requests; "
                                            f"load the new one under another name")
                self._unloading.discard(name)
            self._adapters.attach(adapter)
        total = time.monotonic() - started
        with self._lock:
            self._adapter_stats[name] = {"load_s": round(total, 4), "read_s": round(read_s, 4)}
        log.info("adapter %s attached from %s in %.3fs", name, adapter.path, total)
        return {**adapter.describe(), "merged": False, "default": False, "state": "ready",
                "load_s": round(total, 4)}

    def unload_adapter(self, name: str) -> dict[str, Any]:
        """Detach ``name``; requests already running with it finish first."""
        self._check_ready()
        loaded = self.loaded
        if loaded.adapter is not None and name == loaded.adapter.name:
            raise AdapterError(409, f"{name!r} is merged into the weights; restart with "
                                    f"default_adapter='none' to serve the model without it")
        with self._lock:
            if self._adapters is None or name not in self._adapters or name in self._unloading:
                raise AdapterError(404, f"unknown adapter {name!r}")
            busy = self._scheduler.adapter_users.get(name, 0)
            if busy:
                self._unloading.add(name)
        if not busy:
            self._detach(name)
        return {"name": name, "state": "unloading" if busy else "unloaded",
                "running_requests": busy}

    def _detach(self, name: str) -> None:
        assert self._adapters is not None
        with self._model_lock:
            self._adapters.detach(name)
        with self._lock:
            self._unloading.discard(name)
            self._adapter_stats.pop(name, None)
        log.info("adapter %s detached", name)

    # ----------------------------------------------------------------- reporting

    def info(self) -> EngineInfo:
        model = self._model
        loaded = model.loaded
        runner = self._runner
        prefix = self._prefix_cache
        with self._lock:
            s = self._scheduler
            counters = EngineCounters(
                requests_total=s.requests_total + self._results.hits,
                tokens_generated_total=s.tokens_total,
                active_requests=s.active,
                queued_requests=s.queued,
                cancelled_total=s.cancelled_total,
                shed_total=s.shed_total,
                max_queued=s.admission.max_queued,
                service_time_s=None if s.service.seconds is None
                else round(s.service.seconds, 3),
                max_batch_size=s.batch_limit if loaded else self.max_batch_size,
                batch_steps_total=s.batch_steps,
                mean_batch_size=s.mean_batch_size,
                max_batch_size_seen=s.max_batch_seen,
                prefix_cache_hits=runner.prefix_hits if runner else 0,
                prefix_cache_misses=runner.prefix_misses if runner else 0,
                prefix_cache_entries=len(prefix) if prefix else 0,
                prompt_tokens_total=runner.prompt_tokens_total if runner else 0,
                prompt_tokens_reused_total=runner.prompt_tokens_reused_total if runner else 0,
                result_cache_hits=self._results.hits,
                result_cache_entries=len(self._results),
                draft_steps_total=runner.drafts.steps if runner else 0,
                draft_tokens_total=runner.drafts.drafted if runner else 0,
                draft_tokens_accepted_total=runner.drafts.accepted if runner else 0,
                compiled_steps_total=model.static.steps if model.static else 0,
            )
            attached = len(self._adapters.adapters) if self._adapters else 0
        stage = model.stage
        return EngineInfo(
            name=loaded.name if loaded else self.name,
            source=str(loaded.source) if loaded else _str_or_none(self.model_path),
            kind=loaded.kind if loaded else None,
            device=str(loaded.device) if loaded else self.device,
            dtype=str(loaded.dtype).removeprefix("torch.") if loaded else self.dtype,
            state=model.state,
            error=model.error,
            loading_stage=stage[0] if stage else None,
            loading_progress=stage[1] if stage else None,
            template=loaded.template.name if loaded else None,
            supports_fim=loaded.template.supports_fim if loaded else None,
            context_window=loaded.context_window if loaded else None,
            load_time_s=round(loaded.load_time_s, 3) if loaded else None,
            warmup_s=None if model.warmup_s is None else round(model.warmup_s, 3),
            from_cache=loaded.from_cache if loaded else None,
            quantization=loaded.quantization if loaded else self.quantization,
            model_memory_bytes=loaded.memory_bytes if loaded else None,
            adapter=loaded.adapter.name if loaded and loaded.adapter else None,
            adapters_attached=attached,
            counters=counters,
        )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
