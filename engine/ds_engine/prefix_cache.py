"""KV-prefix reuse across keystrokes: a small LRU of prompt KV caches.

Inline completion sends a new prompt at nearly every keystroke, and consecutive prompts
share almost all of their tokens (the file above the cursor). The token loop therefore
keeps, per recent prompt, the key/value tensors of every layer for the prompt tokens and,
on the next request, starts from the entry that shares the longest token prefix with the
new prompt: only the tokens after that prefix are forwarded.

Entries hold per-layer ``(keys, values)`` tensors of shape ``[batch, kv_heads, seq,
head_dim]`` sliced to the prompt length, never a live cache object: the token loop's
``DynamicCache`` grows by ``torch.cat`` (a new tensor each step, never in place), so a
slice taken after generation stays valid, and a reuse builds a fresh cache from slices
through the public ``Cache.update`` (one copy of the reused prefix, far cheaper than the
forward pass that produced it). Only plain full-attention layers are stored: a
sliding-window layer keeps the last window of tokens only, so its prefix cannot be cut.

The engine touches the cache from its single worker thread only; there is no locking.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_MIN_PREFIX = 16

LayerKV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class PrefixHit:
    """A reusable prefix: ``length`` tokens whose per-layer KV tensors are ``layers``."""

    length: int
    layers: list[LayerKV]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _nbytes(layers: list[LayerKV]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def extract_layers(cache: Any, length: int) -> list[LayerKV] | None:
    """Per-layer KV of the first ``length`` positions of ``cache``, or None if unsafe.

    None when the cache has a layer that is not plain full attention (sliding window,
    recurrent state, quantized or offloaded storage), or holds fewer than ``length``
    positions (the prompt forward did not complete).
    """
    layers = getattr(cache, "layers", None)
    out: list[LayerKV] = []
    if layers is not None:  # transformers >= 4.56 / 5.x: one object per layer
        from transformers.cache_utils import DynamicLayer

        for layer in layers:
            if type(layer) is not DynamicLayer or not getattr(layer, "is_initialized", False):
                return None
            out.append((layer.keys, layer.values))
    else:  # older DynamicCache: parallel lists
        keys = getattr(cache, "key_cache", None)
        values = getattr(cache, "value_cache", None)
        if keys is None or values is None:
            return None
        out = list(zip(keys, values, strict=True))
    if not out:
        return None
    sliced: list[LayerKV] = []
    for k, v in out:
        if k.dim() != 4 or k.shape[-2] < length or v.shape[-2] < length:
            return None
        sliced.append((k[..., :length, :], v[..., :length, :]))
    return sliced


def fill_cache(cache: Any, layers: list[LayerKV]) -> None:
    """Load ``layers`` into an empty cache through the public ``update`` (copies)."""
    for idx, (k, v) in enumerate(layers):
        cache.update(k, v, idx)


def adopt_layers(cache: Any, layers: list[LayerKV]) -> None:
    """Make ``layers`` the content of an empty cache without copying them.

    For the decode batch, which builds its padded tensors itself: a copy through
    ``update`` would double the cost of every join. Falls back to :func:`fill_cache`
    for cache layouts other than transformers' per-layer ``DynamicLayer``.
    """
    own = getattr(cache, "layers", None)
    if own is None or len(own) < len(layers):
        fill_cache(cache, layers)
        return
    from transformers.cache_utils import DynamicLayer

    if any(type(layer) is not DynamicLayer for layer in own[: len(layers)]):
        fill_cache(cache, layers)
        return
    for layer, (k, v) in zip(own, layers, strict=False):
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v


class PrefixCache:
    """Bounded LRU of prompt KV caches keyed by prompt token ids.

    ``max_entries`` bounds the number of prompts kept (0 keeps none); ``max_bytes``, if
    given, bounds the KV bytes held (the oldest entries go first; a single entry larger
    than the budget is not kept). ``min_prefix`` is the shortest shared prefix worth
    reusing: below it, recomputing costs about as much as the bookkeeping.
    """

    def __init__(
        self,
        max_entries: int = 4,
        max_bytes: int | None = None,
        min_prefix: int = DEFAULT_MIN_PREFIX,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.min_prefix = max(1, min_prefix)
        self._entries: OrderedDict[tuple, list[LayerKV]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def keys(self) -> list[tuple]:
        """Stored prompts, least recently used first."""
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    @staticmethod
    def _key(ids: Sequence[int], namespace: str) -> tuple:
        # A namespace (an adapter's name) leads the key: KV computed under one adapter
        # never matches a prompt of another, as no token id equals a string.
        return (namespace, *ids) if namespace else tuple(ids)

    def lookup(self, ids: Sequence[int], namespace: str = "") -> PrefixHit | None:
        """The longest reusable prefix of ``ids`` (at least one token is left to feed),
        among the prompts stored under the same ``namespace``."""
        if not self._entries or len(ids) < 2:
            return None
        lead = 1 if namespace else 0
        wanted = self._key(ids, namespace)
        best_key: tuple | None = None
        best = 0
        for key in self._entries:
            n = common_prefix_length(key, wanted) - lead
            if n > best:
                best_key, best = key, n
        best = min(best, len(ids) - 1)  # the last prompt token must be fed for its logits
        if best_key is None or best < self.min_prefix:
            return None
        self._entries.move_to_end(best_key)
        layers = self._entries[best_key]
        return PrefixHit(best, [(k[..., :best, :], v[..., :best, :]) for k, v in layers])

    def store(self, ids: Sequence[int], layers: list[LayerKV], namespace: str = "") -> None:
        """Keep ``layers`` (the KV of exactly ``ids``) as the most recent entry."""
        if self.max_entries == 0 or len(ids) < self.min_prefix:
            return
        key = self._key(ids, namespace)
        size = _nbytes(layers)
        if self.max_bytes is not None and size > self.max_bytes:
            return
        # An entry whose prompt is a prefix of this one can never give a longer match.
        for old in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
            self._drop(old)
        self._entries[key] = layers
        self._bytes += size
        while len(self._entries) > self.max_entries or (
            self.max_bytes is not None and self._bytes > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple) -> None:
        layers = self._entries.pop(key)
        self._bytes -= _nbytes(layers)
