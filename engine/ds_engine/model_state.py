"""The model behind the in-process engine: loading it, and what state it is in.

Loading takes seconds to minutes (a download, a GGUF conversion, int8 packing), and
Jupyter's loop must never wait on it, so it runs on its own thread while the engine
answers "loading, retry in 5 s" (:class:`ds_engine.interface.EngineNotReady`). The
state machine is UNLOADED -> LOADING -> READY or FAILED (FAILED may load again); every
failure lands in FAILED with its error, never in a hang. Before READY the model is
warmed up (:func:`ds_engine.runner.warm_up`) so the first user request does not pay
first-call costs, and the engine builds what serves it (``on_ready``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ds_engine.compiled import StaticDecoder, use_inductor_cache
from ds_engine.generation import eos_token_ids
from ds_engine.interface import EngineNotReady, EngineState
from ds_engine.loader import LoadedModel, ProgressCallback, default_cache_dir, load_model
from ds_engine.runner import warm_up
from ds_engine.scheduler import available_memory_bytes, batch_size_limit

log = logging.getLogger(__name__)

RETRY_AFTER_LOADING_S = 5
RETRY_AFTER_FAILED_S = 60

#: ``on_ready(loaded, eos_token_ids, batch_limit)``, called on the loading thread once
#: the model is loaded and warmed up, before the state becomes READY.
ReadyCallback = Callable[[LoadedModel, frozenset[int], int], None]


class ModelState:
    """Loads one model in the background and tracks its :class:`EngineState`."""

    def __init__(
        self,
        *,
        model_path: str | Path | None,
        device: str,
        dtype: str,
        cache_dir: str | Path | None,
        name: str | None,
        num_threads: int | None,
        quantization: str,
        default_adapter: str | None,
        max_batch_size: int,
        warmup: bool,
        progress: ProgressCallback | None,
        on_ready: ReadyCallback,
        compile_buckets: tuple[int, ...] = (),
    ) -> None:
        self._load_args = dict(
            device=device, dtype=dtype, cache_dir=cache_dir, name=name,
            quantization=quantization, adapter=default_adapter,
        )
        self.model_path = model_path
        self.num_threads = num_threads
        self.max_batch_size = max(1, max_batch_size)
        self.warmup = warmup
        self.progress = progress
        self._on_ready = on_ready
        self.compile_buckets = compile_buckets
        self.cache_dir = cache_dir
        # The compiled decode step (ds_engine.compiled), once warmed; None: eager only.
        self.static: StaticDecoder | None = None
        self._lock = threading.Lock()
        self.state = EngineState.UNLOADED
        self.loaded: LoadedModel | None = None
        self.eos: frozenset[int] = frozenset()
        self.error: str | None = None  # why loading failed ("Type: message")
        self.exception: BaseException | None = None
        self.stage: tuple[str, float] | None = None  # the last progress report
        self.warmup_s: float | None = None
        self._settled = threading.Event()  # set once loading ends, READY or FAILED
        self._thread: threading.Thread | None = None

    def _report(self, stage: str, fraction: float) -> None:
        self.stage = (stage, fraction)
        if self.progress is not None:
            self.progress(stage, fraction)

    def _begin(self) -> bool:
        """Move to LOADING unless a load is running or done; True if the caller loads."""
        with self._lock:
            if self.state in (EngineState.LOADING, EngineState.READY):
                return False
            self.state = EngineState.LOADING
            self.error = None
            self.exception = None
            self._settled.clear()
            return True

    def _load(self) -> None:
        try:
            if self.num_threads:
                torch.set_num_threads(self.num_threads)
            loaded = load_model(self.model_path, progress=self._report, **self._load_args)
            eos = eos_token_ids(loaded.model, loaded.tokenizer)
            limit = batch_size_limit(
                self.max_batch_size, available_memory_bytes(loaded.device), loaded.memory_bytes
            )
            if self.warmup:
                started = time.monotonic()
                self._report("warming up", 0.0)
                if not warm_up(loaded):
                    limit = 1  # a KV cache that cannot be padded: one request at a time
                self.warmup_s = time.monotonic() - started
            if self.compile_buckets:
                self.static = self._compile(loaded)
            if self.warmup or self.static is not None:
                self._report("ready", 1.0)
            self._on_ready(loaded, eos, limit)
        except Exception as exc:  # every failure must land in FAILED, never in a hang
            log.exception("loading the model failed")
            with self._lock:
                self.error = f"{type(exc).__name__}: {exc}"
                self.exception = exc
                self.state = EngineState.FAILED
        else:
            with self._lock:
                self.loaded = loaded
                self.eos = eos
                self.state = EngineState.READY
        finally:
            self._settled.set()

    def _compile(self, loaded: LoadedModel) -> StaticDecoder:
        """Compile the decode step of every bucket before READY (about 50 s a bucket on 2
        cores, 35 s on a restart from inductor's cache), reported as a loading stage."""
        use_inductor_cache(Path(self.cache_dir or default_cache_dir()) / "inductor")
        static = StaticDecoder(loaded.model, loaded.context_window, self.compile_buckets)
        self._report("compiling decode", 0.0)
        static.warm(lambda done, total, _s: self._report("compiling decode", done / total))
        return static

    def start_loading(self) -> None:
        """Load in a background daemon thread; no-op while loading or once ready."""
        if not self._begin():
            return
        self._thread = threading.Thread(target=self._load, name="ds-engine-load", daemon=True)
        self._thread.start()

    def load(self) -> LoadedModel:
        """Load and wait; re-raises the loading error on failure."""
        if self._begin():
            # In a thread that ends with the load: torch work on the caller's thread would
            # leave a second OpenMP thread pool behind, and two pools on few cores make
            # libgomp sleep between parallel regions (decode ~1.5x slower; see the
            # GOMP_SPINCOUNT note in ds_engine/__init__.py).
            loader = threading.Thread(target=self._load, name="ds-engine-load", daemon=True)
            loader.start()
            loader.join()
        else:
            self._settled.wait()
        if self.state is EngineState.FAILED:
            assert self.exception is not None
            raise self.exception
        assert self.loaded is not None
        return self.loaded

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loading settles (or ``timeout``); True if the model is READY."""
        if self.state is EngineState.UNLOADED:
            return False
        self._settled.wait(timeout)
        return self.state is EngineState.READY

    def join(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) for a background load still running."""
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)

    def check_ready(self) -> None:
        """Raise :class:`EngineNotReady` (with its retry delay) unless READY."""
        state = self.state
        if state is EngineState.READY:
            return
        if state is EngineState.FAILED:
            raise EngineNotReady(
                state, f"model failed to load: {self.error}", retry_after=RETRY_AFTER_FAILED_S
            )
        if state is EngineState.LOADING:
            raise EngineNotReady(state, "model is loading", retry_after=RETRY_AFTER_LOADING_S)
        raise EngineNotReady(state, "model is not loaded", retry_after=RETRY_AFTER_LOADING_S)
