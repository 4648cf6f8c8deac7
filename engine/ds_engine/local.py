"""The in-process engine: a model loaded in a background thread, run by one scheduler.

Jupyter's tornado/asyncio loop must never wait on a forward pass, so loading happens on a
daemon thread and every forward runs on a single dedicated worker thread. That worker is
a small continuous-batching scheduler (vLLM's shape, on one device): waiting requests are
admitted by priority (:mod:`ds_engine.scheduler`) up to a batch size bounded by memory,
each is prefilled on its own (from the KV-prefix cache, in chunks so that a long prompt
does not stall the others), then joins the decode batch (:mod:`ds_engine.batch`), where
all running requests share one forward per token. A request leaves the batch at the step
where it finishes, is cancelled or times out, and its slot goes to the next one waiting.
Results and stream chunks travel back to the caller's loop through
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ds_engine.adapters import AdapterError, AdapterSet, check_base, check_name, read_adapter
from ds_engine.batch import DecodeBatch
from ds_engine.generation import (
    SequenceState,
    eos_token_ids,
    prefill_step,
    start_prefill,
)
from ds_engine.interface import (
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from ds_engine.loader import LoadedModel, ProgressCallback, load_model
from ds_engine.prefix_cache import PrefixCache
from ds_engine.scheduler import (
    Admission,
    ServiceTime,
    WaitingQueue,
    available_memory_bytes,
    batch_size_limit,
)
from ds_engine.templates import PromptTemplate

log = logging.getLogger(__name__)

RETRY_AFTER_LOADING_S = 5
RETRY_AFTER_FAILED_S = 60
# Finish reasons whose result depends on when the request was stopped, not on its input.
_UNCACHEABLE = frozenset({FinishReason.CANCELLED, FinishReason.TIMEOUT})


@dataclass
class _Failure:
    """An exception raised on the worker, carried to the consumer's loop."""

    error: BaseException


@dataclass
class _Work:
    """A submitted request with its result future; ``seq``/``cache`` once admitted."""

    request: GenerationRequest
    on_chunk: Callable[[StreamChunk], None] | None
    future: Future[GenerationResult] = field(default_factory=Future)
    seq: SequenceState | None = None
    cache: Any = None
    started_at: float | None = None  # when it took a batch slot


_WARMUP_PROMPTS = ("def add(a, b):\n    return", "import os\n\n\ndef main():\n    path = ")


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
        ``load_shedding=False`` turns that off (requests then wait until their deadline)."""
        self.model_path = model_path
        self.device = device
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.name = name
        self.num_threads = num_threads
        self.quantization = quantization  # "none" | "int8", see ds_engine.quantize
        self.default_adapter = default_adapter
        self._progress_cb = progress
        # Attached adapters (ds_engine.adapters); changed and used under _model_lock,
        # which the worker holds for every forward.
        self._model_lock = threading.RLock()
        self._adapters: AdapterSet | None = None
        self._adapter_users: dict[str, int] = {}  # running requests per adapter
        self._unloading: set[str] = set()
        self._adapter_stats: dict[str, dict[str, float]] = {}

        self._lock = threading.Lock()
        self._state = EngineState.UNLOADED
        self._loaded: LoadedModel | None = None
        self._eos: frozenset[int] = frozenset()
        self._error: str | None = None
        self._exception: BaseException | None = None
        self._settled = threading.Event()  # set once loading ends, READY or FAILED
        self._load_thread: threading.Thread | None = None
        self._load_stage: tuple[str, float] | None = None

        self.max_batch_size = max(1, max_batch_size)
        self.prefill_chunk = max(1, prefill_chunk)
        self.warmup = warmup
        self._batch_limit = 1  # set from memory once the model is loaded
        self._batchable = True  # False once a cache type that cannot be batched shows up
        self._warmup_s: float | None = None

        # The scheduler: submitters push under _lock and notify; the worker takes.
        self._wakeup = threading.Condition(self._lock)
        self._waiting = WaitingQueue()
        self._admission = Admission(max(0, int(max_queued)), enabled=load_shedding)
        self._service = ServiceTime()  # batch-slot seconds per request, for admission
        self._shed_total = 0
        self._worker: threading.Thread | None = None
        self._requests: dict[str, GenerationRequest] = {}  # queued or running
        self._requests_total = 0
        self._tokens_total = 0
        self._queued = 0
        self._cancelled_total = 0
        self._batch_steps = 0
        self._batched_tokens = 0  # sum over decode steps of the batch size
        self._max_batch_seen = 0
        self._closed = False

        # Touched by the worker thread only.
        if prefix_cache_entries is None:
            prefix_cache_entries = max(16, 2 * max_batch_size)
        self._prefix_cache_bytes_given = prefix_cache_bytes is not None
        self._prefix_cache = (
            PrefixCache(prefix_cache_entries, max_bytes=prefix_cache_bytes)
            if prefix_cache_entries > 0
            else None
        )
        self._prefix_hits = 0
        self._prefix_misses = 0
        self._prompt_tokens_total = 0
        self._prompt_tokens_reused_total = 0
        # Shared between the callers' loop (lookups) and the worker (stores): under _lock.
        self._result_cache_entries = max(0, result_cache_entries)
        self._results: OrderedDict[str, GenerationResult] = OrderedDict()
        self._result_hits = 0

    # ----------------------------------------------------------------- loading

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def error(self) -> str | None:
        """Why loading failed (``"Type: message"``), or None."""
        return self._error

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model; raises :class:`EngineNotReady` before it is ready."""
        self._check_ready()
        assert self._loaded is not None
        return self._loaded

    @property
    def template(self) -> PromptTemplate:
        return self.loaded.template

    def _on_progress(self, stage: str, fraction: float) -> None:
        self._load_stage = (stage, fraction)
        if self._progress_cb is not None:
            self._progress_cb(stage, fraction)

    def _begin_loading(self) -> bool:
        """Move to LOADING unless a load is running or done; True if the caller loads."""
        with self._lock:
            if self._state in (EngineState.LOADING, EngineState.READY):
                return False
            self._state = EngineState.LOADING
            self._error = None
            self._exception = None
            self._settled.clear()
            return True

    def _load(self) -> None:
        try:
            if self.num_threads:
                torch.set_num_threads(self.num_threads)
            loaded = load_model(
                self.model_path,
                device=self.device,
                dtype=self.dtype,
                cache_dir=self.cache_dir,
                progress=self._on_progress,
                name=self.name,
                quantization=self.quantization,
                adapter=self.default_adapter,
            )
            eos = eos_token_ids(loaded.model, loaded.tokenizer)
            limit = batch_size_limit(
                self.max_batch_size, available_memory_bytes(loaded.device), loaded.memory_bytes
            )
            if self._prefix_cache is not None and not self._prefix_cache_bytes_given:
                self._prefix_cache.max_bytes = max(loaded.memory_bytes or 0, 256 * 2**20)
            if self.warmup:
                self._warm_up(loaded, eos)
        except Exception as exc:  # every failure must land in FAILED, never in a hang
            log.exception("loading the model failed")
            with self._lock:
                self._error = f"{type(exc).__name__}: {exc}"
                self._exception = exc
                self._state = EngineState.FAILED
        else:
            with self._lock:
                self._loaded = loaded
                self._adapters = AdapterSet(loaded.model, loaded.dtype)
                self._eos = eos
                self._batch_limit = limit if self._batchable else 1
                self._state = EngineState.READY
        finally:
            self._settled.set()

    def start_loading(self) -> None:
        """Load in a background daemon thread; no-op while loading or once ready."""
        if not self._begin_loading():
            return
        self._load_thread = threading.Thread(target=self._load, name="ds-engine-load", daemon=True)
        self._load_thread.start()

    def load(self, progress: ProgressCallback | None = None) -> LoadedModel:
        """Load synchronously (CLIs, scripts); re-raises the loading error on failure.

        ``progress`` replaces the constructor's progress callback.
        """
        if progress is not None:
            self._progress_cb = progress
        if self._begin_loading():
            # In a thread that ends with the load: torch work on the caller's thread would
            # leave a second OpenMP thread pool behind, and two pools on few cores make
            # libgomp sleep between parallel regions (decode ~1.5x slower, see __init__).
            loader = threading.Thread(target=self._load, name="ds-engine-load", daemon=True)
            loader.start()
            loader.join()
        else:
            self._settled.wait()
        if self._state is EngineState.FAILED:
            assert self._exception is not None
            raise self._exception
        assert self._loaded is not None
        return self._loaded

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loading settles (or ``timeout``); True if the model is READY."""
        if self._state is EngineState.UNLOADED:
            return False
        self._settled.wait(timeout)
        return self._state is EngineState.READY

    def _check_ready(self) -> None:
        state = self._state
        if state is EngineState.READY:
            return
        if state is EngineState.FAILED:
            raise EngineNotReady(
                state, f"model failed to load: {self._error}", retry_after=RETRY_AFTER_FAILED_S
            )
        if state is EngineState.LOADING:
            raise EngineNotReady(state, "model is loading", retry_after=RETRY_AFTER_LOADING_S)
        raise EngineNotReady(state, "model is not loaded", retry_after=RETRY_AFTER_LOADING_S)

    # ----------------------------------------------------------------- model facts

    def count_tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def context_window(self) -> int:
        return self.loaded.context_window

    # ----------------------------------------------------------------- generation

    def _count_token(self, _token: int) -> None:
        with self._lock:
            self._tokens_total += 1

    def _count_prompt(self, prompt_tokens: int, reused: int) -> None:
        with self._lock:
            self._prompt_tokens_total += prompt_tokens
            self._prompt_tokens_reused_total += reused
            if self._prefix_cache is not None:
                if reused:
                    self._prefix_hits += 1
                else:
                    self._prefix_misses += 1

    # ----------------------------------------------------------------- result cache

    def _result_key(self, request: GenerationRequest) -> str | None:
        """Cache key of a deterministic (greedy) request, or None if not cacheable."""
        if self._result_cache_entries == 0 or request.temperature > 0.0:
            return None
        loaded = self._loaded
        name = loaded.name if loaded is not None else self.name
        adapter = self._adapters.adapters.get(request.adapter) if (
            self._adapters is not None and request.adapter) else None
        material = json.dumps(
            [name, request.prompt, request.max_tokens, list(request.stop), request.temperature,
             request.adapter, adapter.digest if adapter is not None else None]
        )
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def _cached_result(self, request: GenerationRequest) -> GenerationResult | None:
        """A stored result for an identical greedy request, stamped for this request."""
        key = self._result_key(request)
        if key is None or request.cancelled:
            return None
        with self._lock:
            if self._closed:
                raise EngineNotReady(self._state, "engine is closed")
            cached = self._results.get(key)
            if cached is None:
                return None
            self._results.move_to_end(key)
            self._result_hits += 1
            self._requests_total += 1
        latency = (time.monotonic() - request.created_at) * 1000.0
        return dataclasses.replace(
            cached,
            request_id=request.request_id,
            latency_ms=latency,
            time_to_first_token_ms=None if cached.token_count == 0 else latency,
        )

    def _store_result(self, request: GenerationRequest, result: GenerationResult) -> None:
        if result.finish_reason in _UNCACHEABLE:
            return
        key = self._result_key(request)
        if key is None:
            return
        with self._lock:
            self._results[key] = result
            self._results.move_to_end(key)
            while len(self._results) > self._result_cache_entries:
                self._results.popitem(last=False)

    # ----------------------------------------------------------------- scheduler

    def _warm_up(self, loaded: LoadedModel, eos: frozenset[int]) -> None:
        """Pay first-call costs before READY: a prefill, and a 2-sequence decode batch.

        It also finds out whether the model's KV cache can be batched at all.
        """
        started = time.monotonic()
        self._on_progress("warming up", 0.0)
        seqs = [
            SequenceState(
                GenerationRequest(prompt=p, max_tokens=3),
                loaded.tokenizer,
                context_window=loaded.context_window,
                device=loaded.device,
            )
            for p in _WARMUP_PROMPTS
        ]
        batch = DecodeBatch(loaded.model)
        with torch.inference_mode():
            for seq in seqs:
                cache = start_prefill(seq, loaded.model)
                logits = prefill_step(seq, loaded.model, cache)
                assert logits is not None
                seq.accept(logits)
                if not batch.can_join(cache, seq.prompt_tokens):
                    self._batchable = False
                    break
                batch.add(seq, cache)
            for _ in range(2):
                batch.step()
        self._warmup_s = time.monotonic() - started
        self._on_progress("ready", 1.0)

    def _ensure_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._serve, name="ds-engine-scheduler", daemon=True
            )
            self._worker.start()

    def _submit(
        self, request: GenerationRequest, on_chunk: Callable[[StreamChunk], None] | None
    ) -> Future[GenerationResult]:
        self._check_ready()
        if request.max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        request.adapter = self._served_adapter(request.adapter)
        work = _Work(request, on_chunk)
        with self._wakeup:
            if self._closed:
                raise EngineNotReady(self._state, "engine is closed")
            if request.adapter is not None and (
                request.adapter not in self._adapters or request.adapter in self._unloading
            ):
                raise AdapterError(404, f"unknown adapter {request.adapter!r}")
            self._admit_or_shed(request)  # before anything is counted: a shed costs nothing
            if request.adapter is not None:
                self._adapter_users[request.adapter] = (
                    self._adapter_users.get(request.adapter, 0) + 1)
            self._requests[request.request_id] = request
            self._requests_total += 1
            self._waiting.push(request, work)
            self._queued = len(self._waiting)
            self._ensure_worker()
            self._wakeup.notify()
        return work.future

    def _admit_or_shed(self, request: GenerationRequest) -> None:
        """The admission policy on the queue as it is now (call under ``_lock``)."""
        try:
            self._admission.check(
                request,
                self._waiting,
                running=len(self._requests) - len(self._waiting),
                limit=self._batch_limit,
                service_s=self._service.seconds,
                now=time.monotonic(),
            )
        except EngineOverloaded:
            self._shed_total += 1
            raise

    def check_admission(self, request: GenerationRequest) -> None:
        """Raise :class:`EngineOverloaded` now if ``request`` would be shed.

        For callers that build an expensive prompt (tokenizing a file's context): asked
        first, with the request's priority, user and deadlines and no prompt yet, it
        sheds an overloaded request in well under a millisecond, before that work.
        """
        self._check_ready()
        with self._lock:
            self._admit_or_shed(request)

    def _serve(self) -> None:
        """The worker thread: admit, prefill one chunk, decode one step; repeat."""
        loaded = self._loaded
        assert loaded is not None
        batch = DecodeBatch(loaded.model)
        prefilling: list[_Work] = []  # admitted, prompt not fully forwarded yet
        held: list[_Work] = []  # prefilled but cannot share the batch (unbatchable cache)
        works: dict[str, _Work] = {}  # running, by request id
        with torch.inference_mode():
            while True:
                with self._wakeup:
                    while not (self._waiting or prefilling or held or batch or self._closed):
                        self._wakeup.wait()
                    if self._closed and not (self._waiting or prefilling or held or batch):
                        return
                    dropped = self._waiting.remove_where(
                        lambda w: _interrupted(w.request) or self._closed
                    )
                    running = [w.request for w in (*prefilling, *held)]
                    running += [s.request for s in batch.seqs]
                    admitted: list[_Work] = []
                    limit = self._batch_limit
                    while (w := self._waiting.pop_admissible(running, limit)) is not None:
                        admitted.append(w)
                        running.append(w.request)
                    self._queued = len(self._waiting)
                for work in dropped:
                    self._guard(work, lambda w=work: self._drop(w, loaded))
                for work in admitted:
                    self._guard(work, lambda w=work: self._start(w, loaded, prefilling, works))
                if prefilling:
                    work = min(prefilling, key=lambda w: w.request.priority)
                    ok = self._guard(work, lambda w=work: self._prefill(w, loaded, batch, held))
                    seq = work.seq
                    assert seq is not None
                    if not ok or seq.finished or seq.prefilled >= seq.prompt_tokens:
                        prefilling.remove(work)
                    if not ok or seq.finished:
                        works.pop(work.request.request_id, None)
                if not batch and held:
                    # The first held request starts a batch; those of its adapter join it.
                    adapter = held[0].request.adapter
                    for work in [w for w in held if w.request.adapter == adapter]:
                        assert work.seq is not None
                        if batch and not batch.can_join(work.cache, work.seq.prompt_tokens):
                            break
                        held.remove(work)
                        batch.add(work.seq, work.cache)
                        work.cache = None
                if batch:
                    self._decode(batch, works)

    def _admit(self, work: _Work, loaded: LoadedModel) -> _Work:
        work.seq = SequenceState(
            work.request,
            loaded.tokenizer,
            context_window=loaded.context_window,
            stop_token_ids=self._eos,
            on_chunk=work.on_chunk,
            on_token=self._count_token,
            model_name=loaded.name,
            device=loaded.device,
        )
        return work

    def _drop(self, work: _Work, loaded: LoadedModel) -> None:
        """Finish a request that never started: cancelled, expired, or the engine closed.

        One that waited past its queue timeout (but not its deadline) is shed
        (:class:`EngineOverloaded`): it was never tried, and a completion that starts
        that late is stale anyway. Past its deadline, it times out as ever.
        """
        request = work.request
        now = time.monotonic()
        start_by, deadline = request.start_deadline, request.deadline
        if (
            not (request.cancelled or self._closed)
            and start_by is not None
            and now >= start_by
            and (deadline is None or now < deadline)
        ):
            self._forget(request)
            with self._lock:
                self._shed_total += 1
            waited = time.monotonic() - request.created_at
            work.future.set_exception(EngineOverloaded(
                f"the model is busy: this request waited {waited:.1f} s and could not "
                "start in time; retry shortly",
                max(1, min(60, round(self._service.seconds or 1.0))),
            ))
            return
        seq = self._admit(work, loaded).seq
        assert seq is not None
        if not seq.check_start():
            seq.stop(FinishReason.CANCELLED)
        self._finish(work)

    def _start(
        self, work: _Work, loaded: LoadedModel, prefilling: list[_Work], works: dict[str, _Work]
    ) -> None:
        seq = self._admit(work, loaded).seq
        assert seq is not None
        if seq.check_start():
            self._finish(work)
            return
        work.started_at = time.monotonic()
        work.cache = start_prefill(seq, loaded.model, self._prefix_cache, self._count_prompt)
        prefilling.append(work)
        works[work.request.request_id] = work

    def _prefill(
        self, work: _Work, loaded: LoadedModel, batch: DecodeBatch, held: list[_Work]
    ) -> None:
        """One prefill chunk of ``work``; once the prompt is in, its first token."""
        seq = work.seq
        assert seq is not None
        reason = seq.interrupted()
        if reason is not None:
            seq.stop(reason)
            self._finish(work)
            return
        with self._model_lock:
            self._activate(seq.request.adapter)
            logits = prefill_step(
                seq, loaded.model, work.cache, chunk=self.prefill_chunk,
                prefix_cache=self._prefix_cache,
            )
        if logits is None:
            return
        if seq.accept(logits):
            self._finish(work)
        elif batch and batch.seqs and batch.seqs[0].request.adapter != seq.request.adapter:
            held.append(work)  # one adapter per decode batch: wait for this one to drain
        elif batch.can_join(work.cache, seq.prompt_tokens):
            batch.add(seq, work.cache)
            work.cache = None
        else:
            with self._lock:
                self._batchable = False
                self._batch_limit = 1
            held.append(work)

    def _decode(self, batch: DecodeBatch, works: dict[str, _Work]) -> None:
        """One decode step of the whole batch; finished requests leave it at once."""
        done: list[SequenceState] = []
        for seq in batch.seqs:
            reason = seq.interrupted()
            if reason is not None:  # cancelled: free the slot before paying for a step
                seq.stop(reason)
                done.append(seq)
        batch.remove(done)
        if batch:
            size = len(batch)
            try:
                with self._model_lock:
                    self._activate(batch.seqs[0].request.adapter)
                    logits = batch.step()
            except Exception as exc:
                log.exception("a decode step failed; failing its %d requests", size)
                for seq in batch.seqs:
                    works.pop(seq.request.request_id).future.set_exception(exc)
                    self._forget(seq.request)
                batch.clear()
                return
            with self._lock:
                self._batch_steps += 1
                self._batched_tokens += size
                self._max_batch_seen = max(self._max_batch_seen, size)
            finished = [s for s, row in batch.live_logits(logits) if s.accept(row)]
            batch.remove(finished)
            done += finished
        for seq in done:
            work = works.pop(seq.request.request_id)
            self._guard(work, lambda w=work: self._finish(w))

    def _guard(self, work: _Work, action: Callable[[], None]) -> bool:
        """Run ``action``; on an exception fail ``work``'s future instead of the worker."""
        try:
            action()
        except Exception as exc:
            log.exception("request %s failed", work.request.request_id)
            self._forget(work.request)
            if not work.future.done():
                work.future.set_exception(exc)
            return False
        return True

    def _forget(self, request: GenerationRequest) -> None:
        with self._lock:
            known = self._requests.pop(request.request_id, None) is not None
            name = request.adapter
            if not known or name is None or name not in self._adapter_users:
                return
            self._adapter_users[name] -= 1
            if self._adapter_users[name] > 0:
                return
            del self._adapter_users[name]
            last_user_of_unloading = name in self._unloading
        if last_user_of_unloading:
            self._detach(name)

    def _finish(self, work: _Work) -> None:
        """Build the result, send the final chunk, settle the future, count, cache."""
        assert work.seq is not None
        result = work.seq.result()
        if work.started_at is not None:
            with self._lock:
                self._service.observe(time.monotonic() - work.started_at)
        self._forget(work.request)
        if result.finish_reason is FinishReason.CANCELLED:
            with self._lock:
                self._cancelled_total += 1
        self._store_result(work.request, result)
        work.future.set_result(result)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run ``request`` on the worker; cancelling the awaiting task cancels it.

        An identical greedy request answered before returns its stored result at once.
        """
        self._check_ready()
        cached = self._cached_result(request)
        if cached is not None:
            return cached
        future = self._submit(request, None)
        try:
            # shield: a cancelled await must not cancel the concurrent future itself
            # (the worker then never runs and bookkeeping would leak); the flag does it.
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            request.cancel()
            raise

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Cumulative chunks, the last one ``done`` with the result.

        Raises :class:`EngineNotReady` here, at call time, so a handler can answer 503
        before it starts streaming. Leaving the iteration early (``aclose``, a cancelled
        task, a disconnected client) cancels the generation.
        A result-cache hit streams a single ``done`` chunk.
        """
        self._check_ready()
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
                request.cancel()

        def on_done(fut: Future[GenerationResult]) -> None:
            exc = fut.exception()
            if exc is not None:
                post(_Failure(exc))

        future = self._submit(request, post)
        future.add_done_callback(on_done)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _Failure):
                    raise item.error
                yield item
                if item.done:
                    return
        finally:
            if not future.done():
                request.cancel()

    def cancel(self, request_id: str) -> bool:
        with self._lock:
            request = self._requests.get(request_id)
        if request is None:
            return False
        request.cancel()
        return True

    def cancel_all(self) -> int:
        """Cancel every queued and running request (shutdown, model swap)."""
        with self._lock:
            requests = list(self._requests.values())
        for request in requests:
            request.cancel()
        return len(requests)

    def close(self, load_timeout: float = 60.0) -> None:
        """Cancel everything and stop the worker; the engine accepts no more requests.

        A load still running is waited for (up to ``load_timeout`` seconds): a server that
        stops while its model loads must not leave forward passes running behind it, in
        a process that may start another server (a test session) and its own torch work.
        """
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        self.cancel_all()
        thread = self._load_thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(load_timeout)

    shutdown = close

    # ----------------------------------------------------------------- adapters

    def _served_adapter(self, name: str | None) -> str | None:
        """None for the model as served (the merged default adapter's name included)."""
        loaded = self._loaded
        if name is None or (loaded is not None and loaded.adapter is not None
                            and name == loaded.adapter.name):
            return None
        return name

    def _activate(self, name: str | None) -> None:
        assert self._adapters is not None
        self._adapters.activate(name)

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
        loaded = self._loaded
        out = []
        if loaded is not None and loaded.adapter is not None:
            out.append({**loaded.adapter.describe(), "merged": True, "state": "ready",
                        "default": True})
        if self._adapters is not None:
            with self._lock:
                attached = list(self._adapters.adapters.values())
                users = dict(self._adapter_users)
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
                if self._adapter_users.get(name):
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
            busy = self._adapter_users.get(name, 0)
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

    def info(self) -> dict[str, Any]:
        loaded = self._loaded
        with self._lock:
            counters = {
                "requests_total": self._requests_total,
                "tokens_generated_total": self._tokens_total,
                # Known requests that left the queue and are not finished yet.
                "active_requests": len(self._requests) - self._queued,
                "queued_requests": self._queued,
                "cancelled_total": self._cancelled_total,
                "shed_total": self._shed_total,
                "max_queued": self._admission.max_queued,
                "service_time_s": None if self._service.seconds is None
                else round(self._service.seconds, 3),
                "max_batch_size": self._batch_limit if self._loaded else self.max_batch_size,
                "batch_steps_total": self._batch_steps,
                "mean_batch_size": round(self._batched_tokens / self._batch_steps, 2)
                if self._batch_steps
                else None,
                "max_batch_size_seen": self._max_batch_seen,
                "prefix_cache_hits": self._prefix_hits,
                "prefix_cache_misses": self._prefix_misses,
                "prefix_cache_entries": len(self._prefix_cache) if self._prefix_cache else 0,
                "prompt_tokens_total": self._prompt_tokens_total,
                "prompt_tokens_reused_total": self._prompt_tokens_reused_total,
                "result_cache_hits": self._result_hits,
                "result_cache_entries": len(self._results),
            }
        stage = self._load_stage
        return {
            "name": loaded.name if loaded else self.name,
            "source": str(loaded.source) if loaded else _str_or_none(self.model_path),
            "kind": loaded.kind if loaded else None,
            "device": str(loaded.device) if loaded else self.device,
            "dtype": str(loaded.dtype).removeprefix("torch.") if loaded else self.dtype,
            "state": self._state.value,
            "error": self._error,
            "loading_stage": stage[0] if stage else None,
            "loading_progress": stage[1] if stage else None,
            "template": loaded.template.name if loaded else None,
            "supports_fim": loaded.template.supports_fim if loaded else None,
            "context_window": loaded.context_window if loaded else None,
            "load_time_s": round(loaded.load_time_s, 3) if loaded else None,
            "warmup_s": None if self._warmup_s is None else round(self._warmup_s, 3),
            "from_cache": loaded.from_cache if loaded else None,
            "quantization": loaded.quantization if loaded else self.quantization,
            "model_memory_bytes": loaded.memory_bytes if loaded else None,
            "adapter": loaded.adapter.name if loaded and loaded.adapter else None,
            "adapters_attached": len(self._adapters.adapters) if self._adapters else 0,
            **counters,
        }


def _interrupted(request: GenerationRequest) -> bool:
    """Cancelled, or past its start deadline: such a waiting request never starts."""
    start_by = request.start_deadline
    return request.cancelled or (start_by is not None and time.monotonic() >= start_by)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
