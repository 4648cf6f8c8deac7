"""The model runner: every forward pass of the engine, on its one worker thread.

It carries out what :class:`ds_engine.scheduler.Scheduler` decided for a step
(:class:`~ds_engine.scheduler.SchedulerOutput`): requests that finish without a forward,
prefills started from the KV-prefix cache (:mod:`ds_engine.prefix_cache`) and forwarded
one chunk at a time so that a long prompt does not stall the others, and one forward of
the decode batch (:mod:`ds_engine.batch`) per token, each under the model lock with the
request's adapter active. It holds the tensors (KV caches, the batch) and nothing else:
no queue, no asyncio. What happened comes back as one
:class:`~ds_engine.scheduler.RunnerOutput` per stage of the step, so that the engine
answers a request that ended early in a step (dropped, or its first token an end)
before the step's remaining forwards.

Results of greedy requests are kept in a :class:`ResultCache` for identical repeats.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ds_engine.adapters import AdapterSet
from ds_engine.batch import DecodeBatch
from ds_engine.compiled import StaticDecoder
from ds_engine.generation import SequenceState, prefill_step, start_prefill
from ds_engine.interface import FinishReason, GenerationRequest, GenerationResult
from ds_engine.loader import LoadedModel
from ds_engine.prefix_cache import PrefixCache
from ds_engine.scheduler import RequestState, RunnerOutput, SchedulerOutput
from ds_engine.speculative import DraftStats, draft

log = logging.getLogger(__name__)

# Finish reasons whose result depends on when the request was stopped, not on its input.
_UNCACHEABLE = frozenset({FinishReason.CANCELLED, FinishReason.TIMEOUT})
_WARMUP_PROMPTS = ("def add(a, b):\n    return", "import os\n\n\ndef main():\n    path = ")


class ResultCache:
    """Results of greedy requests, for identical repeated ones (LRU, ``entries`` at most;
    0 disables it).

    A repeated keystroke or a re-run cell asks the same thing twice; answering from here
    costs no model work. Looked up on the callers' loop and filled on the worker, so it
    has its own lock.
    """

    def __init__(self, entries: int) -> None:
        self.entries = max(0, entries)
        self.hits = 0
        self._lock = threading.Lock()
        self._results: OrderedDict[str, GenerationResult] = OrderedDict()

    def __len__(self) -> int:
        return len(self._results)

    def key(
        self, request: GenerationRequest, model: str | None, adapter_digest: str | None
    ) -> str | None:
        """Cache key of a deterministic (greedy) request, or None if not cacheable."""
        if self.entries == 0 or request.temperature > 0.0:
            return None
        material = json.dumps(
            [model, request.prompt, request.max_tokens, list(request.stop),
             request.temperature, request.adapter, adapter_digest, request.min_tokens,
             sorted(request.first_token_bias.items())]
        )
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def get(self, key: str) -> GenerationResult | None:
        """The stored result (counted as a hit), or None."""
        with self._lock:
            cached = self._results.get(key)
            if cached is None:
                return None
            self._results.move_to_end(key)
            self.hits += 1
            return cached

    def put(self, key: str, result: GenerationResult) -> None:
        with self._lock:
            self._results[key] = result
            self._results.move_to_end(key)
            while len(self._results) > self.entries:
                self._results.popitem(last=False)


def warm_up(loaded: LoadedModel) -> bool:
    """Pay first-call costs before the model is served: a prefill, and a 2-sequence
    decode batch. Returns whether the model's KV cache can be batched at all."""
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
    batchable = True
    with torch.inference_mode():
        for seq in seqs:
            cache = start_prefill(seq, loaded.model)
            logits = prefill_step(seq, loaded.model, cache)
            assert logits is not None
            seq.accept(logits)
            if not batch.can_join(cache, seq.prompt_tokens):
                batchable = False
                break
            batch.add(seq, cache)
        for _ in range(2):
            batch.step()
    return batchable


@dataclass(eq=False)
class _Slot:
    """A request the runner holds outside the decode batch, with its own KV cache."""

    state: RequestState
    seq: SequenceState
    cache: Any


class ModelRunner:
    """Runs the forwards of a loaded model for the scheduler (see the module docstring).

    Used by one thread only (the engine's worker); its counters are read by others.
    ``model_lock`` is held for every forward and by whoever attaches or detaches an
    adapter, so an adapter never changes under a forward.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        eos: frozenset[int],
        adapters: AdapterSet,
        model_lock: threading.RLock,
        prefix_cache: PrefixCache | None,
        results: ResultCache,
        prefill_chunk: int,
        speculative_tokens: int = 0,
        static: StaticDecoder | None = None,
    ) -> None:
        self.loaded = loaded
        self.eos = eos
        self.adapters = adapters
        self.model_lock = model_lock
        self.prefix_cache = prefix_cache
        self.results = results
        self.prefill_chunk = max(1, prefill_chunk)
        # A lone request decodes through the compiled step of ``static`` (ds_engine.compiled).
        self.batch = DecodeBatch(loaded.model, static)
        # Tokens drafted from the context per decode step of a lone greedy request
        # (ds_engine.speculative); 0: none.
        self.speculative_tokens = max(0, speculative_tokens)
        self.drafts = DraftStats()
        self._prefilling: dict[str, _Slot] = {}  # admitted, prompt not all forwarded
        self._held: dict[str, _Slot] = {}  # prefilled, kept out of the batch
        self._decoding: dict[str, RequestState] = {}  # in the batch
        self._tokens = 0
        self.prefix_hits = 0
        self.prefix_misses = 0
        self.prompt_tokens_total = 0
        self.prompt_tokens_reused_total = 0

    # ---------------------------------------------------------------- the step

    def execute(self, plan: SchedulerOutput) -> Iterator[RunnerOutput]:
        """Carry out ``plan``, yielding what each stage did as soon as it is done."""
        stages: list[Callable[[], RunnerOutput]] = []
        if plan.dropped:
            stages.append(lambda: self._drop(plan.dropped))
        if plan.admitted:
            stages.append(lambda: self._start(plan.admitted))
        if plan.prefill:
            stages.append(lambda: self._prefill(plan.prefill))
        if plan.resume:
            stages.append(lambda: self._resume(plan.resume))
        if plan.decode:
            stages.append(self._decode)
        for stage in stages:
            before = self._tokens
            out = stage()
            out.tokens = self._tokens - before
            yield out

    def result_key(self, request: GenerationRequest) -> str | None:
        """The :class:`ResultCache` key of ``request`` on this model and its adapter."""
        adapter = self.adapters.adapters.get(request.adapter) if request.adapter else None
        return self.results.key(
            request, self.loaded.name, adapter.digest if adapter is not None else None
        )

    # ---------------------------------------------------------------- stages

    @torch.inference_mode()
    def _drop(self, dropped: list[tuple[RequestState, FinishReason]]) -> RunnerOutput:
        """Finish requests that never start (cancelled, expired, the engine closing)."""
        out = RunnerOutput()
        for state, reason in dropped:
            def drop(state: RequestState = state, reason: FinishReason = reason) -> None:
                seq = self._sequence(state)
                if not seq.check_start():
                    seq.stop(reason)
                self._finish(state, seq, out)

            self._guard(state, out, drop)
        return out

    @torch.inference_mode()
    def _start(self, admitted: list[RequestState]) -> RunnerOutput:
        """Give each admitted request its KV cache, from the longest stored prefix."""
        out = RunnerOutput()
        for state in admitted:
            def start(state: RequestState = state) -> None:
                seq = self._sequence(state)
                if seq.check_start():  # stopped meanwhile, or asked for 0 tokens
                    self._finish(state, seq, out)
                    return
                out.started.append(state)
                cache = start_prefill(
                    seq, self.loaded.model, self.prefix_cache, self._count_prompt
                )
                self._prefilling[state.request_id] = _Slot(state, seq, cache)

            self._guard(state, out, start)
        return out

    @torch.inference_mode()
    def _prefill(self, candidates: list[RequestState]) -> RunnerOutput:
        """One prompt chunk of the first candidate still prefilling; once its prompt is
        in, its first token, then the decode batch (or held back from it)."""
        out = RunnerOutput()
        slot = next(
            (self._prefilling[s.request_id] for s in candidates
             if s.request_id in self._prefilling),
            None,
        )
        if slot is None:
            return out
        ok = self._guard(slot.state, out, lambda: self._prefill_chunk(slot, out))
        seq = slot.seq
        if not ok or seq.finished or seq.prefilled >= seq.prompt_tokens:
            self._prefilling.pop(slot.state.request_id, None)
        return out

    def _prefill_chunk(self, slot: _Slot, out: RunnerOutput) -> None:
        state, seq = slot.state, slot.seq
        reason = seq.interrupted()
        if reason is not None:
            seq.stop(reason)
            self._finish(state, seq, out)
            return
        with self.model_lock:
            self.adapters.activate(seq.request.adapter)
            logits = prefill_step(
                seq, self.loaded.model, slot.cache, chunk=self.prefill_chunk,
                prefix_cache=self.prefix_cache,
            )
        if logits is None:
            return
        batch = self.batch
        if seq.accept(logits):
            self._finish(state, seq, out)
        elif batch and batch.seqs[0].request.adapter != seq.request.adapter:
            self._hold(slot, out)  # one adapter per decode batch: wait for it to drain
        elif batch.can_join(slot.cache, seq.prompt_tokens):
            self._join(slot, out)
        else:
            out.unbatchable = True
            self._hold(slot, out)

    @torch.inference_mode()
    def _resume(self, held: list[RequestState]) -> RunnerOutput:
        """Start an empty decode batch from held requests (of one adapter), in order."""
        out = RunnerOutput()
        if self.batch:
            return out  # the prefill chunk just started it
        for state in held:
            slot = self._held.get(state.request_id)
            if slot is None:
                continue
            if self.batch and not self.batch.can_join(slot.cache, slot.seq.prompt_tokens):
                break
            del self._held[state.request_id]
            self._guard(state, out, lambda slot=slot: self._join(slot, out))
        return out

    @torch.inference_mode()
    def _decode(self) -> RunnerOutput:
        """One decode step of the whole batch; finished requests leave it at once."""
        out = RunnerOutput()
        batch = self.batch
        if not batch:
            return out
        done: list[SequenceState] = []
        for seq in batch.seqs:
            reason = seq.interrupted()
            if reason is not None:  # stopped: free the slot before paying for a step
                seq.stop(reason)
                done.append(seq)
        batch.remove(done)
        if batch:
            size = len(batch)
            proposal: list[int] = []
            try:
                with self.model_lock:
                    self.adapters.activate(batch.seqs[0].request.adapter)
                    if batch.static is not None and self.adapters.wrapped:
                        batch.use_eager()  # the graphs were compiled without adapters
                    if batch.can_speculate():
                        proposal = self._draft(batch.seqs[0])
                    logits = batch.step_draft(proposal) if proposal else batch.step()
            except Exception as exc:
                log.exception("a decode step failed; failing its %d requests", size)
                for seq in batch.seqs:
                    out.failed.append((self._decoding.pop(seq.request.request_id), exc))
                batch.clear()
            else:
                out.batch_size = size
                if proposal:
                    finished = self._accept_draft(batch.seqs[0], logits, proposal)
                else:
                    finished = [s for s, row in batch.live_logits(logits) if s.accept(row)]
                batch.remove(finished)
                done += finished
        for seq in done:
            state = self._decoding[seq.request.request_id]
            self._guard(state, out, lambda s=state, q=seq: self._finish(s, q, out))
        return out

    def _draft(self, seq: SequenceState) -> list[int]:
        """Tokens drafted from ``seq``'s own context for one forward; [] when it samples
        (a draft is verified against the greedy choice) or has no room left."""
        room = seq.max_new - len(seq.output_ids) - 1  # a step yields up to k + 1 tokens
        k = min(self.speculative_tokens, room)
        if k <= 0 or seq.request.temperature > 0.0:
            return []
        return draft(seq.prompt_ids + seq.output_ids, k)

    def _accept_draft(self, seq: SequenceState, logits: torch.Tensor,
                      proposal: list[int]) -> list[SequenceState]:
        """Accept the model's own choices after the last token and each drafted one, up
        to the first that differs from the draft (that choice, a correction, is kept
        too); forget the drafted positions past it. Returns ``[seq]`` if it finished."""
        accepted = 0
        finished = False
        for i in range(len(proposal) + 1):
            if seq.accept(logits[i]):
                finished = True
                break
            if i == len(proposal) or seq.next_token != proposal[i]:
                break
            accepted += 1
        self.batch.rewind(len(proposal) - accepted)
        self.drafts.steps += 1
        self.drafts.drafted += len(proposal)
        self.drafts.accepted += accepted
        return [seq] if finished else []

    # ---------------------------------------------------------------- helpers

    def _sequence(self, state: RequestState) -> SequenceState:
        loaded = self.loaded
        return SequenceState(
            state.request,
            loaded.tokenizer,
            context_window=loaded.context_window,
            stop_token_ids=self.eos,
            on_chunk=state.on_chunk,
            on_token=self._count_token,
            model_name=loaded.name,
            device=loaded.device,
            stop=state.flag,
        )

    def _hold(self, slot: _Slot, out: RunnerOutput) -> None:
        self._held[slot.state.request_id] = slot
        out.held.append(slot.state)

    def _join(self, slot: _Slot, out: RunnerOutput) -> None:
        self.batch.add(slot.seq, slot.cache)
        slot.cache = None
        self._decoding[slot.state.request_id] = slot.state
        out.joined.append(slot.state)

    def _finish(self, state: RequestState, seq: SequenceState, out: RunnerOutput) -> None:
        """Build the result, keep it if it depends on the request alone (not cancelled,
        not timed out, not ended by a caller's STOP), then send the final stream chunk.

        Kept first: a stream's consumer that has the final chunk may ask the same again
        at once, and may leave (cancelling) before the engine has settled the request,
        which must change nothing any more."""
        result = seq.result(send=False)
        reason = result.finish_reason
        stopped = state.flag.reason is FinishReason.STOP and reason is FinishReason.STOP
        if reason not in _UNCACHEABLE and not stopped:
            key = self.result_key(state.request)
            if key is not None:
                self.results.put(key, result)
        seq.send_result(result)
        self._discard(state)
        out.finished.append((state, result))

    def _guard(self, state: RequestState, out: RunnerOutput, action: Callable[[], None]) -> bool:
        """Run ``action``; on an exception fail ``state``'s request instead of the worker."""
        try:
            action()
        except Exception as exc:
            log.exception("request %s failed", state.request_id)
            self._discard(state)
            out.failed.append((state, exc))
            return False
        return True

    def _discard(self, state: RequestState) -> None:
        rid = state.request_id
        self._prefilling.pop(rid, None)
        self._held.pop(rid, None)
        self._decoding.pop(rid, None)

    def _count_token(self, _token: int) -> None:
        self._tokens += 1

    def _count_prompt(self, prompt_tokens: int, reused: int) -> None:
        self.prompt_tokens_total += prompt_tokens
        self.prompt_tokens_reused_total += reused
        if self.prefix_cache is not None:
            if reused:
                self.prefix_hits += 1
            else:
                self.prefix_misses += 1
