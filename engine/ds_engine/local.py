"""The in-process engine: a model loaded in a background thread, run on one worker.

Jupyter's tornado/asyncio loop must never wait on a forward pass, so loading happens on a
daemon thread and every generation runs on a single dedicated worker thread (one model,
one stream of matmuls: a second concurrent generation would only halve the speed of
both). Results and stream chunks travel back to the caller's loop through
``loop.call_soon_threadsafe``. Cancellation is a flag on the request, checked by the
token loop between tokens and by the worker before it starts a queued request.
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ds_engine.generation import eos_token_ids, run_generation
from ds_engine.interface import (
    EngineNotReady,
    EngineState,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from ds_engine.loader import LoadedModel, ProgressCallback, load_model
from ds_engine.prefix_cache import PrefixCache
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
        prefix_cache_entries: int = 4,
        prefix_cache_bytes: int | None = None,
        result_cache_entries: int = 256,
        quantization: str = "none",
    ) -> None:
        """``prefix_cache_entries`` recent prompts keep their KV cache for reuse by the
        next prompt sharing a token prefix (0 disables; ``prefix_cache_bytes`` bounds
        their memory); ``result_cache_entries`` greedy results are kept for identical
        repeated requests (0 disables)."""
        self.model_path = model_path
        self.device = device
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.name = name
        self.num_threads = num_threads
        self.quantization = quantization  # "none" | "int8", see ds_engine.quantize
        self._progress_cb = progress

        self._lock = threading.Lock()
        self._state = EngineState.UNLOADED
        self._loaded: LoadedModel | None = None
        self._eos: frozenset[int] = frozenset()
        self._error: str | None = None
        self._exception: BaseException | None = None
        self._settled = threading.Event()  # set once loading ends, READY or FAILED
        self._load_thread: threading.Thread | None = None
        self._load_stage: tuple[str, float] | None = None

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ds-engine-gen")
        self._requests: dict[str, GenerationRequest] = {}  # queued or running
        self._requests_total = 0
        self._tokens_total = 0
        self._active = 0
        self._queued = 0
        self._cancelled_total = 0
        self._closed = False

        # Touched by the worker thread only.
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
            )
            eos = eos_token_ids(loaded.model, loaded.tokenizer)
        except Exception as exc:  # every failure must land in FAILED, never in a hang
            log.exception("loading the model failed")
            with self._lock:
                self._error = f"{type(exc).__name__}: {exc}"
                self._exception = exc
                self._state = EngineState.FAILED
        else:
            with self._lock:
                self._loaded = loaded
                self._eos = eos
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
            self._load()
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
        material = json.dumps(
            [name, request.prompt, request.max_tokens, list(request.stop), request.temperature]
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

    def _run(
        self, request: GenerationRequest, on_chunk: Callable[[StreamChunk], None] | None
    ) -> GenerationResult:
        """Worker-thread body: skip a request cancelled or expired while queued."""
        loaded = self._loaded
        assert loaded is not None
        with self._lock:
            self._queued -= 1
            self._active += 1
        try:
            result = run_generation(
                loaded.model,
                loaded.tokenizer,
                request,
                context_window=loaded.context_window,
                stop_token_ids=self._eos,
                on_chunk=on_chunk,
                on_token=self._count_token,
                model_name=loaded.name,
                prefix_cache=self._prefix_cache,
                on_prompt=self._count_prompt,
            )
        finally:
            with self._lock:
                self._active -= 1
                self._requests.pop(request.request_id, None)
        if result.finish_reason is FinishReason.CANCELLED:
            with self._lock:
                self._cancelled_total += 1
        self._store_result(request, result)
        return result

    def _submit(
        self, request: GenerationRequest, on_chunk: Callable[[StreamChunk], None] | None
    ) -> Future[GenerationResult]:
        self._check_ready()
        if request.max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        with self._lock:
            if self._closed:
                raise EngineNotReady(self._state, "engine is closed")
            self._requests[request.request_id] = request
            self._requests_total += 1
            self._queued += 1
        try:
            return self._executor.submit(self._run, request, on_chunk)
        except RuntimeError:  # executor shut down between the check and the submit
            with self._lock:
                self._requests.pop(request.request_id, None)
                self._queued -= 1
            raise

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

    def close(self) -> None:
        """Cancel everything and stop the worker; the engine accepts no more requests."""
        with self._lock:
            self._closed = True
        self.cancel_all()
        self._executor.shutdown(wait=False, cancel_futures=False)

    shutdown = close

    # ----------------------------------------------------------------- reporting

    def info(self) -> dict[str, Any]:
        loaded = self._loaded
        with self._lock:
            counters = {
                "requests_total": self._requests_total,
                "tokens_generated_total": self._tokens_total,
                "active_requests": self._active,
                "queued_requests": self._queued,
                "cancelled_total": self._cancelled_total,
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
            "from_cache": loaded.from_cache if loaded else None,
            "quantization": loaded.quantization if loaded else self.quantization,
            "model_memory_bytes": loaded.memory_bytes if loaded else None,
            **counters,
        }


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
