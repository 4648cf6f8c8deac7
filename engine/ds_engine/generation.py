"""The token loop: one forward per token with a KV cache, cancellable between tokens.

``model.generate`` cannot be interrupted from outside except through stopping criteria,
reports no per-token text, and hides the log-probabilities that the API's ``confidence``
needs. This loop forwards the prompt once, then feeds back one token at a time through a
``DynamicCache``; between two tokens it checks the request's cancel flag and deadline,
decodes the text so far (never emitting half a UTF-8 character or the start of a stop
sequence that may still complete) and reports a cumulative :class:`StreamChunk`.
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
    params = inspect.signature(model.forward).parameters
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
) -> GenerationResult:
    """Generate for ``request`` on the calling thread; see the module docstring.

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
    afterwards, also for a cancelled request once its prompt was forwarded. Greedy
    output is the same with or without it up to floating-point rounding of the attention
    over a split prompt. ``on_prompt(prompt_tokens, reused_tokens)`` is called once the
    prompt is about to be forwarded, for counters.
    """
    started = time.monotonic()
    device = next(model.parameters()).device
    eos = frozenset(stop_token_ids)
    stops = [s for s in request.stop if s]

    ids = tokenizer(request.prompt, add_special_tokens=False)["input_ids"]
    if not ids:  # an empty prompt still needs one position to condition on
        start_id = getattr(tokenizer, "bos_token_id", None)
        if start_id is None:
            start_id = getattr(tokenizer, "eos_token_id", None) or 0
        ids = [start_id]
    ids, max_new = fit_prompt(list(ids), request.max_tokens, context_window)
    prompt_tokens = len(ids)

    generator: torch.Generator | None = None
    if request.temperature > 0.0:
        generator = torch.Generator(device=device)
        generator.manual_seed(request.seed if request.seed is not None else secrets.randbits(62))

    detok = _Detokenizer(tokenizer, ids)
    output_ids: list[int] = []
    logprobs: list[float] = []
    emitted = ""
    text = ""
    pending = 0
    first_token_at: float | None = None
    finish = FinishReason.LENGTH

    def interrupted() -> FinishReason | None:
        if request.cancel_event.is_set():
            return FinishReason.CANCELLED
        deadline = request.deadline
        if deadline is not None and time.monotonic() >= deadline:
            return FinishReason.TIMEOUT
        return None

    cache_kw = _cache_kwarg(model)
    with torch.inference_mode():
        reason = interrupted()
        if reason is not None or max_new == 0:
            finish = reason or FinishReason.LENGTH
        else:
            cache = _new_cache(model)
            reused = 0
            if prefix_cache is not None:
                hit = prefix_cache.lookup(ids)
                if hit is not None:
                    fill_cache(cache, hit.layers)
                    reused = hit.length
            if on_prompt is not None:
                on_prompt(prompt_tokens, reused)
            inputs = torch.tensor([ids[reused:]], dtype=torch.long, device=device)
            while True:
                out = model(input_ids=inputs, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
                logits = out.logits[0, -1].float()
                reason = interrupted()
                if reason is not None:
                    finish = reason
                    break
                token = _choose(logits, request.temperature, request.top_p, generator)
                if first_token_at is None:
                    first_token_at = time.monotonic()
                if token in eos:
                    finish = FinishReason.STOP
                    break
                logprobs.append(float(torch.log_softmax(logits, dim=-1)[token].item()))
                output_ids.append(token)
                if on_token is not None:
                    on_token(token)

                text = detok.text(output_ids)
                if stops:
                    # From 0: the tail of earlier text can change while a multi-byte
                    # character completes, and outputs are short.
                    at = _find_stop(text, stops, 0)
                    if at != -1:
                        text = text[:at]
                        finish = FinishReason.STOP
                        break
                if text.endswith(_REPLACEMENT) and pending < _MAX_PENDING_TOKENS:
                    pending += 1  # wait for the rest of a multi-byte character
                else:
                    pending = 0
                    visible = text[: len(text) - _held_back(text, stops)] if stops else text
                    if visible.startswith(emitted) and len(visible) > len(emitted):
                        delta, emitted = visible[len(emitted) :], visible
                    else:
                        delta = ""
                    if on_chunk is not None:
                        on_chunk(StreamChunk(emitted, delta, len(output_ids)))
                if len(output_ids) >= max_new:
                    finish = FinishReason.LENGTH
                    break
                inputs = torch.tensor([[token]], dtype=torch.long, device=device)
            if prefix_cache is not None:
                # Every path out of the loop above ran the prompt forward at least once.
                layers = extract_layers(cache, prompt_tokens)
                if layers is not None:
                    prefix_cache.store(ids, layers)

    now = time.monotonic()
    confidence = math.exp(sum(logprobs) / len(logprobs)) if logprobs else 1.0
    result = GenerationResult(
        text=text,
        token_count=len(output_ids),
        prompt_tokens=prompt_tokens,
        confidence=confidence,
        finish_reason=finish,
        model=model_name,
        latency_ms=(now - min(started, request.created_at)) * 1000.0,
        time_to_first_token_ms=(
            None
            if first_token_at is None
            else (first_token_at - min(started, request.created_at)) * 1000.0
        ),
        request_id=request.request_id,
    )
    if on_chunk is not None:
        delta = text[len(emitted) :] if text.startswith(emitted) else ""
        on_chunk(StreamChunk(text, delta, len(output_ids), done=True, result=result))
    return result
