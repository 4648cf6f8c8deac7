"""A compiled decode step over a static KV cache, for a request that decodes alone.

In eager mode a decode step of a small model on a CPU is mostly per-op overhead: 30
layers of a dozen small kernels each, every one dispatched from Python, every KV cache
grown by a concatenation. ``torch.compile`` (inductor) fuses the step into a few
generated C++ loops, but only over fixed shapes, and a ``DynamicCache`` grows by one
position per token. So the step runs over a transformers ``StaticCache`` instead: KV
buffers of a fixed length (a *bucket*), written in place at the position the cache
keeps as a tensor, read in full under a causal mask that hides what is not written yet.

The buckets (by default 1024 and 2048 positions, none longer than the context
window) bound both the shapes and the attention work: a 700-token prompt decodes over
1,024 positions, not the 8,192 of the window. One graph is compiled per bucket, all at
warm-up (:meth:`StaticDecoder.warm`), so that no user request waits for a compilation;
inductor keeps what it generated in ``TORCHINDUCTOR_CACHE_DIR`` (by default a folder of
the engine's model cache), so a restart skips the C++ compilation (35 instead of 50 s a
bucket on 2 cores). The graphs themselves are not cached, since the weights are frozen
into them; without freezing a restart took 9 s a bucket, but every step 10 % longer.

The decode batch (:mod:`ds_engine.batch`) *enters* the static cache when one request
runs alone (its prefill KV copied in, once) and *leaves* it (the written positions
copied out to an ordinary cache) when another request joins or the bucket is full.
Several rows keep the eager path: their batch shape changes as requests come and go.

Greedy outputs equal the eager engine's where the activations are float32. With
bfloat16 activations (the int8 default on CPUs that run bfloat16 natively) the fused
kernels round at other places than eager's op-by-op ones; inductor's
``emulate_precision_casts`` rounds where eager would, which keeps the two in step
(measured in the closing note of the speed issue, and by ``benchmarks/latency.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ds_engine.prefix_cache import LayerKV

log = logging.getLogger(__name__)

DEFAULT_BUCKETS: tuple[int, ...] = (1024, 2048)


def use_inductor_cache(directory: os.PathLike[str] | str) -> None:
    """Keep inductor's generated code in ``directory`` unless the user chose a folder.

    Its default lives in ``/tmp``, which a reboot empties: every restart would compile
    again (about a minute per bucket on 2 cores)."""
    import ds_engine

    if ds_engine.USER_INDUCTOR_CACHE is None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)


def _settings() -> None:
    import torch._dynamo
    import torch._inductor.config as inductor

    # Round fused bfloat16 arithmetic where eager rounds it, so greedy choices agree.
    inductor.emulate_precision_casts = True
    # Weights become constants of the graph: the lm_head's GEMM is prepacked for oneDNN
    # (measured 38.6 -> 28.3 ms per token with the rest of this module's settings).
    inductor.freezing = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)


def _in_place_layer(max_cache_len: int) -> Any:
    """A transformers ``StaticLayer`` that writes new positions with ``index_put_``.

    transformers writes with ``index_copy_``, which the compiled graph turns into a copy
    of the whole buffer per layer and token (23 MB a step at 1,024 positions; 17 of 32
    ms in a profile); inductor writes ``index_put_`` in place."""
    from transformers.cache_utils import StaticLayer

    class InPlaceStaticLayer(StaticLayer):
        def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
                   *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            positions = torch.arange(key_states.shape[-2], device=self.device)
            positions = positions + self.cumulative_length
            self.cumulative_length.add_(key_states.shape[-2])
            self.keys[:, :, positions] = key_states
            self.values[:, :, positions] = value_states
            return self.keys, self.values

    return InPlaceStaticLayer(max_cache_len=max_cache_len)


class StaticDecoder:
    """One compiled single-token step per bucket, and the static caches it runs over.

    Holds at most one sequence at a time (see the module docstring): :meth:`enter` it
    with the KV of what was forwarded so far, :meth:`step` one token after another,
    :meth:`leave` with the KV written meanwhile. Used by the engine's worker thread only.
    """

    def __init__(self, model: Any, context_window: int,
                 buckets: Sequence[int] = DEFAULT_BUCKETS) -> None:
        from ds_engine.generation import _cache_kwarg

        if not buckets or any(b <= 0 for b in buckets):
            raise ValueError(f"compile buckets must be positive lengths, not {list(buckets)}")
        self.model = model
        self.buckets = tuple(sorted({min(int(b), context_window) for b in buckets}))
        self.device = next(model.parameters()).device
        self._kwarg = _cache_kwarg(model)
        self._caches: dict[int, Any] = {}
        self._compiled: Callable[..., torch.Tensor] | None = None
        self.warm_buckets: set[int] = set()
        self.bucket = 0  # the bucket in use; 0: no sequence entered
        self.length = 0  # positions written in the bucket in use
        self.steps = 0  # compiled steps run (for engine info)
        self.compile_seconds = 0.0

    @property
    def active(self) -> bool:
        return self.bucket > 0

    @property
    def room(self) -> int:
        """Positions left in the bucket in use."""
        return self.bucket - self.length

    def bucket_for(self, length: int) -> int | None:
        """The smallest compiled bucket with room for ``length`` positions and one more."""
        return next((b for b in self.buckets if b in self.warm_buckets and length < b), None)

    def _step_fn(self) -> Callable[..., torch.Tensor]:
        if self._compiled is None:
            _settings()
            model, kwarg = self.model, self._kwarg

            def step(tokens: torch.Tensor, cache: Any) -> torch.Tensor:
                out = model(input_ids=tokens, use_cache=True, logits_to_keep=1,
                            **{kwarg: cache})
                return out.logits[:, -1]

            self._compiled = torch.compile(step, dynamic=False)
        return self._compiled

    def _cache(self, bucket: int) -> Any:
        """The static cache of ``bucket``, its buffers allocated on first use."""
        cache = self._caches.get(bucket)
        if cache is None:
            from transformers import StaticCache
            from transformers.cache_utils import StaticLayer

            cache = StaticCache(config=self.model.config, max_cache_len=bucket)
            # Full-attention layers only (others cannot be entered: extract_layers says
            # no for their eager caches).
            cache.layers = [_in_place_layer(bucket) if type(layer) is StaticLayer else layer
                            for layer in cache.layers]
            self._caches[bucket] = cache
        return cache

    def warm(self, progress: Callable[[int, int, float], None] | None = None) -> None:
        """Compile the step of every bucket now (each from a one-token prefill of its
        own), so that serving never compiles. ``progress(done, total, seconds)`` after
        each bucket."""
        step = self._step_fn()
        start = time.perf_counter()
        with torch.inference_mode():
            for i, bucket in enumerate(self.buckets):
                cache = self._cache(bucket)
                tokens = torch.zeros((1, 1), dtype=torch.long, device=self.device)
                # An eager first update allocates the buffers outside the graph, as
                # transformers expects (StaticLayer.lazy_initialization).
                self.model(input_ids=tokens, use_cache=True, logits_to_keep=1,
                           **{self._kwarg: cache})
                for _ in range(2):  # the second call proves no recompilation is due
                    step(tokens, cache)
                self._reset(cache)
                self.warm_buckets.add(bucket)
                if progress is not None:
                    progress(i + 1, len(self.buckets), time.perf_counter() - start)
        self.compile_seconds = time.perf_counter() - start
        log.info("compiled decode for buckets %s in %.1f s", list(self.buckets),
                 self.compile_seconds)

    @staticmethod
    def _reset(cache: Any) -> None:
        for layer in cache.layers:
            layer.cumulative_length.zero_()

    def enter(self, layers: list[LayerKV], length: int) -> bool:
        """Take over a sequence whose KV (``length`` positions) is ``layers``; False if
        no compiled bucket has room for it (it then stays in eager mode)."""
        assert not self.active, "one sequence at a time"
        bucket = self.bucket_for(length)
        if bucket is None:
            return False
        cache = self._cache(bucket)
        if len(cache.layers) != len(layers):
            return False
        for layer, (k, v) in zip(cache.layers, layers, strict=True):
            if not layer.is_initialized:  # pragma: no cover - warm() initializes them
                layer.lazy_initialization(k, v)
            if layer.keys.shape[1] != k.shape[1] or layer.keys.dtype != k.dtype:
                return False
            layer.keys[:, :, :length].copy_(k[:, :, -length:])
            layer.values[:, :, :length].copy_(v[:, :, -length:])
            layer.cumulative_length.fill_(length)
        self.bucket, self.length = bucket, length
        return True

    def step(self, token: int) -> torch.Tensor:
        """Forward ``token`` at the next position; its next-token logits, ``[1, vocab]``."""
        assert self.active and self.room > 0
        tokens = torch.tensor([[token]], dtype=torch.long, device=self.device)
        # Every graph was compiled at warm-up and nothing the guards check changes after
        # (adapters switch the batch to eager, ds_engine.batch): check only what tells
        # the buckets' graphs apart (1.9 -> 0.3 ms a step).
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            logits = self._step_fn()(tokens, self._caches[self.bucket])
        self.length += 1
        self.steps += 1
        return logits

    def leave(self) -> list[LayerKV]:
        """Give the sequence back: copies of its written KV, ``[1, heads, length, dim]``
        per layer (the buffers stay for the next sequence)."""
        assert self.active
        cache, n = self._caches[self.bucket], self.length
        layers = [(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone())
                  for layer in cache.layers]
        self._reset(cache)
        self.bucket = self.length = 0
        return layers

    def abandon(self) -> None:
        """Forget the sequence (it finished): nothing to copy out."""
        if self.active:
            self._reset(self._caches[self.bucket])
            self.bucket = self.length = 0
