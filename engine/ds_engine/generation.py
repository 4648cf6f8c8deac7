"""The token loop: one forward per token with a KV cache, cancellable between tokens.

``model.generate`` cannot be interrupted from outside except through stopping criteria,
reports no per-token text, and hides the log-probabilities that the API's ``confidence``
needs. This loop forwards the prompt once, then feeds back one token at a time through a
``DynamicCache``; between two tokens it checks the request's stop flag (the engine's
:class:`ds_engine.scheduler.StopFlag`, set by ``Engine.cancel``) and its deadline,
decodes the text so far (never emitting half a UTF-8 character or the start of a stop
sequence that may still complete) and reports a cumulative :class:`StreamChunk`.

The per-request part of that loop lives in :class:`SequenceState`, so that the batched
decode of :mod:`ds_engine.batch` and the single-request :func:`run_generation` share it.
"""

from __future__ import annotations

import inspect
import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ds_engine.interface import (
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from ds_engine.prefix_cache import PrefixCache, extract_layers, fill_cache
from ds_engine.scheduler import StopFlag

ChunkCallback = Callable[[StreamChunk], None]

# A UTF-8 character spans at most 4 bytes, so after this many tokens a trailing
# replacement character will not be repaired by later tokens: emit it as is.
_MAX_PENDING_TOKENS = 4
# Prompt tokens decoded in front of the output so tokenizers that drop a leading space
# at the start of a decode (SentencePiece) still render the first output token right.
_ANCHOR_TOKENS = 3
_REPLACEMENT = "\ufffd"


def _cache_kwarg(model: Any) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache``; accept both."""
    # A peft wrapper's forward takes **kwargs: ask the model it wraps.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older signature without config
        return DynamicCache()


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the generation config, the model config and tokenizer."""
    ids: set[int] = set()
    sources = (
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    )
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, Iterable):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that begins some stop sequence.

    That tail is not streamed yet: if the stop completes, it is cut from the result, and
    a streamed chunk must never be taken back.
    """
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


def _find_stop(text: str, stops: Sequence[str], start: int) -> int:
    """Index of the earliest stop sequence in ``text[start:]`` (absolute), or -1."""
    found = -1
    for stop in stops:
        idx = text.find(stop, start)
        if idx != -1 and (found == -1 or idx < found):
            found = idx
    return found


class _Detokenizer:
    """Decodes the growing output; knows when the tail is an incomplete character."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.anchor = list(prompt_ids[-_ANCHOR_TOKENS:])
        self.anchor_text = self._decode(self.anchor)
        self.anchor_ok = not self.anchor_text.endswith(_REPLACEMENT)

    def _decode(self, ids: Sequence[int]) -> str:
        # Special tokens are kept as text so that stop sequences such as "<file_sep>"
        # can match; the end-of-sequence token itself never reaches the output.
        return self.tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def text(self, output_ids: Sequence[int]) -> str:
        if self.anchor_ok and self.anchor:
            full = self._decode(self.anchor + list(output_ids))
            if full.startswith(self.anchor_text):
                return full[len(self.anchor_text) :]
        return self._decode(output_ids)


def _choose(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
) -> int:
    """Greedy at temperature 0; otherwise temperature then nucleus (top-p) sampling."""
    if temperature <= 0.0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / temperature, dim=-1)
    if 0.0 < top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first stays).
        drop = (cumulative - sorted_probs) >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        pick = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[pick].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


def fit_prompt(
    prompt_ids: list[int], max_tokens: int, context_window: int
) -> tuple[list[int], int]:
    """Left-truncate so prompt + output fit; returns (prompt ids, max new tokens).

    The tail of the prompt (the code right before the cursor) matters most, so the head
    is dropped. Callers normally trim by themselves with better knowledge of structure.
    """
    max_new = max(0, min(max_tokens, context_window - 1))
    keep = max(1, context_window - max_new)
    return prompt_ids[-keep:], max_new


class SequenceState:
    """One request's generation state, advanced one token at a time.

    The sequence carries its own state (vLLM's style), so the same code serves the
    single-request loop below and the batched decode of :mod:`ds_engine.batch`: the
    caller forwards the model and hands each step's logits to :meth:`accept`, which
    samples, detokenizes, checks stops, streams and says when the request is finished.
    ``stop`` is the engine's flag for this request (its scheduler's, set by
    ``Engine.cancel``); without one the sequence stops only at its deadline or its end.
    """

    def __init__(
        self,
        request: GenerationRequest,
        tokenizer: Any,
        *,
        context_window: int,
        stop_token_ids: Iterable[int] = (),
        on_chunk: ChunkCallback | None = None,
        on_token: Callable[[int], None] | None = None,
        model_name: str = "",
        device: torch.device | str = "cpu",
        stop: StopFlag | None = None,
    ) -> None:
        self.request = request
        self.stop_flag = stop if stop is not None else StopFlag()
        self.started = time.monotonic()
        self.on_chunk = on_chunk
        self.on_token = on_token
        self.model_name = model_name
        self.eos = frozenset(stop_token_ids)
        self.stops = [s for s in request.stop if s]
        # Ending tokens masked while fewer than request.min_tokens are out.
        self.ending: list[int] = []
        if request.min_tokens > 0:
            single = (tokenizer(s, add_special_tokens=False)["input_ids"] for s in self.stops)
            self.ending = sorted(self.eos | {ids[0] for ids in single if len(ids) == 1})

        # The bias of each text's first token (the larger where two texts share one).
        self.first_bias: dict[int, float] = {}
        for text, bias in request.first_token_bias.items():
            starts = tokenizer(text, add_special_tokens=False)["input_ids"][:1] if text else []
            for token in starts:
                self.first_bias[token] = max(bias, self.first_bias.get(token, bias))
        ids = tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
        if not ids:  # an empty prompt still needs one position to condition on
            start_id = getattr(tokenizer, "bos_token_id", None)
            if start_id is None:
                start_id = getattr(tokenizer, "eos_token_id", None) or 0
            ids = [start_id]
        self.prompt_ids, self.max_new = fit_prompt(list(ids), request.max_tokens, context_window)
        self.generator: torch.Generator | None = None
        if request.temperature > 0.0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(
                request.seed if request.seed is not None else secrets.randbits(62)
            )
        self.detok = _Detokenizer(tokenizer, self.prompt_ids)
        self.output_ids: list[int] = []
        self.logprobs: list[float] = []
        self.emitted = ""
        self.text = ""
        self.pending = 0
        self.first_token_at: float | None = None
        self.finish: FinishReason | None = None
        self.prefilled = 0  # prompt tokens already in the KV cache (reused or forwarded)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return self.finish is not None

    @property
    def next_token(self) -> int:
        """The token to feed next (the last one accepted)."""
        return self.output_ids[-1]

    @property
    def next_position(self) -> int:
        """Position of :attr:`next_token` in the sequence (prompt positions come first)."""
        return self.prompt_tokens + len(self.output_ids) - 1

    def interrupted(self) -> FinishReason | None:
        """Why the request must stop now: the reason it was stopped with (CANCELLED or
        STOP, see :class:`ds_engine.scheduler.StopFlag`), TIMEOUT past its deadline, or
        None."""
        reason = self.stop_flag.reason
        if reason is not None:
            return reason
        deadline = self.request.deadline
        if deadline is not None and time.monotonic() >= deadline:
            return FinishReason.TIMEOUT
        return None

    def check_start(self) -> bool:
        """Finish before any forward if stopped, expired or asked for 0 tokens."""
        reason = self.interrupted()
        if reason is None and self.max_new == 0:
            reason = FinishReason.LENGTH
        if reason is not None:
            self.finish = reason
        return self.finished

    def stop(self, reason: FinishReason) -> None:
        self.finish = reason

    def accept(self, logits: torch.Tensor) -> bool:
        """Take one step's next-token logits (1-D); True when the request is finished."""
        reason = self.interrupted()
        if reason is not None:
            self.finish = reason
            return True
        logits = logits.float()
        request = self.request
        if self.ending and len(self.output_ids) < request.min_tokens:
            logits = logits.clone()
            logits[self.ending] = float("-inf")
        if self.first_bias and not self.output_ids:
            logits = logits.clone()
            tokens = [t for t in self.first_bias if 0 <= t < logits.shape[-1]]
            logits[tokens] += torch.tensor([self.first_bias[t] for t in tokens],
                                           dtype=logits.dtype, device=logits.device)
        token = _choose(logits, request.temperature, request.top_p, self.generator)
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        if token in self.eos:
            self.finish = FinishReason.STOP
            return True
        self.logprobs.append(float(torch.log_softmax(logits, dim=-1)[token].item()))
        self.output_ids.append(token)
        if self.on_token is not None:
            self.on_token(token)

        text = self.detok.text(self.output_ids)
        stops = self.stops
        if stops:
            # From 0: the tail of earlier text can change while a multi-byte character
            # completes, and outputs are short.
            at = _find_stop(text, stops, 0)
            if at != -1:
                self.text = text[:at]
                self.finish = FinishReason.STOP
                return True
        self.text = text
        if text.endswith(_REPLACEMENT) and self.pending < _MAX_PENDING_TOKENS:
            self.pending += 1  # wait for the rest of a multi-byte character
        else:
            self.pending = 0
            visible = text[: len(text) - _held_back(text, stops)] if stops else text
            if visible.startswith(self.emitted) and len(visible) > len(self.emitted):
                delta, self.emitted = visible[len(self.emitted) :], visible
            else:
                delta = ""
            if self.on_chunk is not None:
                self.on_chunk(StreamChunk(self.emitted, delta, len(self.output_ids)))
        if len(self.output_ids) >= self.max_new:
            self.finish = FinishReason.LENGTH
            return True
        return False

    def result(self, *, send: bool = True) -> GenerationResult:
        """The final result; also sends the ``done`` chunk to the stream callback unless
        ``send`` is False (then :meth:`send_result` does, once the caller is ready)."""
        now = time.monotonic()
        origin = min(self.started, self.request.created_at)
        logprobs = self.logprobs
        result = GenerationResult(
            text=self.text,
            token_count=len(self.output_ids),
            prompt_tokens=self.prompt_tokens,
            confidence=math.exp(sum(logprobs) / len(logprobs)) if logprobs else 1.0,
            finish_reason=self.finish or FinishReason.LENGTH,
            model=self.model_name,
            latency_ms=(now - origin) * 1000.0,
            time_to_first_token_ms=(
                None if self.first_token_at is None else (self.first_token_at - origin) * 1000.0
            ),
            request_id=self.request.request_id,
        )
        if send:
            self.send_result(result)
        return result

    def send_result(self, result: GenerationResult) -> None:
        """Send the final ``done`` chunk, carrying ``result``, to the stream callback."""
        if self.on_chunk is not None:
            text, emitted = self.text, self.emitted
            delta = text[len(emitted) :] if text.startswith(emitted) else ""
            self.on_chunk(
                StreamChunk(text, delta, len(self.output_ids), done=True, result=result)
            )


def new_cache(model: Any) -> Any:
    """An empty KV cache of the type the model's forward expects."""
    return _new_cache(model)


def forward(
    model: Any,
    input_ids: torch.Tensor,
    cache: Any,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    keep: int = 1,
) -> torch.Tensor:
    """One forward through ``cache``; the last position's logits, ``[batch, vocab]``,
    or with ``keep`` > 1 the last ``keep`` positions', ``[batch, keep, vocab]``."""
    kwargs: dict[str, Any] = {_cache_kwarg(model): cache}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=keep, **kwargs)
    return out.logits[:, -1] if keep == 1 else out.logits[:, -keep:]


def start_prefill(
    seq: SequenceState,
    model: Any,
    prefix_cache: PrefixCache | None = None,
    on_prompt: Callable[[int, int], None] | None = None,
) -> Any:
    """A new cache for ``seq``, filled from the longest reusable stored prefix."""
    cache = _new_cache(model)
    reused = 0
    if prefix_cache is not None:
        hit = prefix_cache.lookup(seq.prompt_ids, namespace=seq.request.adapter or "")
        if hit is not None:
            fill_cache(cache, hit.layers)
            reused = hit.length
    seq.prefilled = reused
    if on_prompt is not None:
        on_prompt(seq.prompt_tokens, reused)
    return cache


def prefill_step(
    seq: SequenceState,
    model: Any,
    cache: Any,
    *,
    chunk: int | None = None,
    prefix_cache: PrefixCache | None = None,
) -> torch.Tensor | None:
    """Forward the next ``chunk`` prompt tokens (all by default) of ``seq`` into ``cache``.

    Returns the last prompt position's logits once the whole prompt is in the cache
    (and stores the prompt's KV in ``prefix_cache``), else None. A long prompt forwarded
    in chunks lets a scheduler run other requests' decode steps in between.
    """
    ids = seq.prompt_ids
    end = len(ids) if chunk is None else min(len(ids), seq.prefilled + max(1, chunk))
    device = next(model.parameters()).device
    inputs = torch.tensor([ids[seq.prefilled : end]], dtype=torch.long, device=device)
    logits = forward(model, inputs, cache)
    seq.prefilled = end
    if end < len(ids):
        return None
    if prefix_cache is not None:
        layers = extract_layers(cache, len(ids))
        if layers is not None:
            prefix_cache.store(ids, layers, namespace=seq.request.adapter or "")
    return logits[0]


def run_generation(
    model: Any,
    tokenizer: Any,
    request: GenerationRequest,
    *,
    context_window: int,
    stop_token_ids: Iterable[int] = (),
    on_chunk: ChunkCallback | None = None,
    on_token: Callable[[int], None] | None = None,
    model_name: str = "",
    prefix_cache: PrefixCache | None = None,
    on_prompt: Callable[[int, int], None] | None = None,
    stop: StopFlag | None = None,
) -> GenerationResult:
    """Generate for ``request`` alone, on the calling thread; see the module docstring.

    ``token_count`` counts every generated token except an end-of-sequence token,
    including the tokens that spelled a stop sequence (they cost compute). ``confidence``
    is exp(mean log-probability) of those tokens under the raw model distribution
    (temperature 1), whatever the sampling temperature; with no tokens it is 1.0 by
    convention (nothing uncertain was said). ``on_chunk`` gets a cumulative chunk after
    every token whose text is complete (a token that ends inside a multi-byte character
    waits for the next) and a final ``done`` chunk carrying the result; ``on_token`` gets
    every generated token id, for counters.

    With a ``prefix_cache``, the prompt forward starts from the stored KV of the longest
    shared token prefix (see :mod:`ds_engine.prefix_cache`) and the prompt's KV is stored
    once forwarded. Greedy output is the same with or without it up to floating-point
    rounding of the attention over a split prompt. ``on_prompt(prompt_tokens,
    reused_tokens)`` is called once the prompt is about to be forwarded, for counters.
    Setting ``stop`` (from ``on_token``, another thread) ends the loop before the next
    token, with the reason it was set with.
    """
    device = next(model.parameters()).device
    seq = SequenceState(
        request,
        tokenizer,
        context_window=context_window,
        stop_token_ids=stop_token_ids,
        on_chunk=on_chunk,
        on_token=on_token,
        model_name=model_name,
        device=device,
        stop=stop,
    )
    with torch.inference_mode():
        if not seq.check_start():
            cache = start_prefill(seq, model, prefix_cache, on_prompt)
            logits = prefill_step(seq, model, cache, prefix_cache=prefix_cache)
            assert logits is not None
            while not seq.accept(logits):
                inputs = torch.tensor([[seq.next_token]], dtype=torch.long, device=device)
                logits = forward(model, inputs, cache)[0]
    return seq.result()
