"""Inline completion: context trimming, prompt, generation, post-processing, validation.

Used alike by the REST handler, the WebSocket handler and the CLI. Every item this
service returns has passed the post-processing rules and, for Python, parses in its
context (prefix + item + suffix); an item that cannot be made valid is dropped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ds_engine import Engine, FinishReason, GenerationRequest
from ds_engine.templates import PromptTemplate

from jupyter_ds import json_logs
from jupyter_ds.completion.context import CountTokens, trim_context
from jupyter_ds.completion.notebook import (
    MAX_NOTEBOOK_BYTES,
    CountMemo,
    NotebookFormat,
    NotebookReader,
    PrecedingCells,
    given_cells,
    notebook_context,
)
from jupyter_ds.completion.requests import (
    CompleteRequest,
    CompletionAnswer,
    CompletionEvent,
    CompletionItem,
)
from jupyter_ds.completion.rules import (
    CompletionContext,
    at_name_start,
    block_complete,
    missing_body_indent,
    postprocess,
)
from jupyter_ds.completion.validate import longest_valid, needs_code
from jupyter_ds.context import (
    PYTHON_LANGUAGES,
    ContextGatherer,
    ContextQuery,
    Gathered,
    as_comments,
)
from jupyter_ds.context.grounding import ground
from jupyter_ds.engine_calls import engine_errors, ensure_ready
from jupyter_ds.errors import timed_out

#: ``context_start_bias``'s default (see :meth:`CompletionService._start_bias`).
DEFAULT_START_BIAS = 0.0


@dataclass
class CompletionSettings:
    """Knobs of the completion pipeline (set from the server's traitlets)."""

    max_tokens: int = 64
    max_prompt_tokens: int = 1024
    suffix_share: float = 0.25
    # Start the trimmed prefix on a multiple of this many lines: a cache-friendly window
    # that does not slide with every line typed (the engine reuses its KV prefix).
    anchor_lines: int = 32
    confidence_threshold: float = 0.7
    timeout_s: float = 30.0
    # Seconds a completion may wait for the model before it is shed (503 + Retry-After):
    # one that starts later than this is stale, the user has typed on.
    queue_timeout_s: float | None = 5.0
    sample_temperature: float = 0.6  # used for items after the first when n > 1
    # Server root for notebook context (path + cell_id of a request); None turns it off.
    root_dir: str | None = None
    notebook_max_bytes: int = MAX_NOTEBOOK_BYTES
    # Folder under the root ("" for all) -> the adapter its files complete with, when a
    # request names none; the deepest folder wins.
    folder_adapters: dict[str, str] = field(default_factory=dict)
    # Tokens that kernel and repository context may add to the prompt at most (and never
    # more than a third of max_prompt_tokens), before the cursor's own text, which keeps
    # its max_prompt_tokens.
    context_tokens: int = 384
    # Check suggestions against the kernel's names and columns (context/grounding.py).
    kernel_grounding: bool = True
    # Logit bias toward the first token of the names whose definitions the context shows,
    # at a mid-line cursor where a name starts (_start_bias); 0 turns it off.
    context_start_bias: float = DEFAULT_START_BIAS


def on_blank_line(prefix: str, suffix: str) -> bool:
    """Whether the cursor's line holds nothing but whitespace, before and after it."""
    return not prefix.rsplit("\n", 1)[-1].strip() and not suffix.split("\n", 1)[0].strip()


class CompletionService:
    """Turns a :class:`CompleteRequest` into validated completion items."""

    def __init__(self, engine: Engine, settings: CompletionSettings | None = None,
                 contexts: ContextGatherer | None = None):
        self.engine = engine
        self.settings = settings or CompletionSettings()
        self.contexts = contexts or ContextGatherer()
        self.notebooks: NotebookReader | None = None
        if self.settings.root_dir is not None:
            self.notebooks = NotebookReader(
                self.settings.root_dir, max_bytes=self.settings.notebook_max_bytes
            )
        # Rendered notebook context repeats from keystroke to keystroke: count it once.
        self._count_context = CountMemo(lambda text: self.engine.count_tokens(text))

    def _notebook_context(
        self, req: CompleteRequest, prefix: str, suffix: str, budget: int, count: CountTokens
    ) -> str:
        """The preceding cells of the request's notebook that fit what the cell left over.

        The current cell keeps priority: cells are added only when its whole prefix fits,
        and only into the budget that its prefix and suffix leave.
        """
        template = self.engine.template
        fmt = NotebookFormat.from_tokens(template.notebook_tokens, template.escape)
        if req.cells is not None:  # the client holds the notebook: its cells, as they are
            preceding: PrecedingCells | None = given_cells(
                req.cells, include_markdown=fmt.includes_markdown)
        elif self.notebooks is None or not req.path or not req.cell_id:
            return ""
        else:
            # A path that leaves the root is a 400 here, before anything is read.
            preceding = self.notebooks.preceding(
                req.path, req.cell_id, include_markdown=fmt.includes_markdown
            )
        if preceding is None or not preceding.cells or prefix != req.prefix:
            return ""
        used = (count(prefix) if prefix else 0) + (count(suffix) if suffix else 0)
        left = budget - used - 2  # the template's own sentinels around the context
        if left <= 0:
            return ""
        chars_per_token = len(prefix + suffix) / used if used else 3.0
        return notebook_context(
            preceding, fmt, self._count_context, left, chars_per_token=chars_per_token
        )

    def adapter_for(self, req: CompleteRequest) -> str | None:
        """The request's adapter, else its folder's default, else None (the model as
        served, with its merged default adapter if it has one)."""
        if req.adapter:
            return req.adapter
        if not self.settings.folder_adapters:
            return None
        parts = [p for p in (req.path or "").replace("\\", "/").split("/") if p not in ("", ".")]
        best: tuple[int, str | None] = (-1, None)
        for folder, name in self.settings.folder_adapters.items():
            fparts = [p for p in folder.replace("\\", "/").split("/") if p not in ("", ".")]
            if parts[: len(fparts)] == fparts and len(fparts) > best[0]:
                best = (len(fparts), name)
        return best[1]

    def template_for(self, adapter: str | None) -> PromptTemplate:
        """The prompt template of ``adapter`` (404 when the engine does not serve it)."""
        with engine_errors():
            return self.engine.template_for(adapter)

    def _budget(self, req: CompleteRequest) -> tuple[int, int]:
        """The prompt's token budget and the request's max tokens."""
        max_tokens = req.max_tokens or self.settings.max_tokens
        budget = max(
            16,
            min(self.settings.max_prompt_tokens, self.engine.context_window() - max_tokens) - 8,
        )
        return budget, max_tokens

    async def _gather(self, req: CompleteRequest) -> Gathered:
        """Kernel and repository context for this cursor, within their budgets."""
        if not self.contexts.sources:
            return Gathered()
        budget, _ = self._budget(req)
        tokens = min(self.settings.context_tokens, budget // 3)
        query = ContextQuery(path=req.path, prefix=req.prefix, suffix=req.suffix,
                             language=req.language, cell_id=req.cell_id,
                             user=json_logs.current_user())
        return await self.contexts.gather(query, tokens, self._count_context)

    def _prompt(self, req: CompleteRequest, adapter: str | None = None,
                extra: Gathered | None = None) -> tuple[str, int]:
        budget, max_tokens = self._budget(req)
        counts: dict[str, int] = {}  # trim_context has counted what fits: reuse it
        template = self.template_for(adapter)
        # Kernel and repository context, commented out, before everything else; the
        # cursor's text gets what it leaves.
        head = template.escape(as_comments(extra.text(), req.language)) if (
            extra is not None and extra.blocks) else ""
        if head:
            # The context comes on top of the cursor's own text, as in fine-tuning
            # (finetune/fim.py): taking its room from the file cost more than it gave. On
            # cross-file cursors of packages apart from the benchmark's, a block that took
            # the room of the file's farthest lines matched 8 of 60 against 9 without it;
            # on top, 9 (11 with context_start_bias 4). Only the context window bounds it.
            room = self.engine.context_window() - max_tokens - 8 - self._count_context(head)
            budget = max(16, min(budget, room))

        def count(text: str) -> int:
            # Counted as the prompt will hold it: control tokens in the user's text are
            # escaped there, and take several tokens each instead of one.
            if text not in counts:
                counts[text] = self.engine.count_tokens(template.escape(text))
            return counts[text]

        prefix, suffix = trim_context(
            req.prefix,
            req.suffix if template.supports_fim else "",
            count,
            budget,
            suffix_share=self.settings.suffix_share,
            anchor_lines=self.settings.anchor_lines,
        )
        context = self._notebook_context(req, prefix, suffix, budget, count)
        path = req.path
        if context and "code" in template.notebook_tokens:
            path = None  # notebooks were trained on without a <filename> line
        # The template escapes prefix, suffix and path; the context escaped its cells.
        return template.completion_prompt(prefix, suffix, path, context=head + context), \
            max_tokens

    def _generation(
        self, req: CompleteRequest, index: int = 0, request_id: str | None = None,
        extra: Gathered | None = None,
    ) -> GenerationRequest:
        adapter = self.adapter_for(req)
        # At column 0 under a block header the prompt ends with the body's indentation
        # (_run puts it in front of the answer): the model continues where a body starts.
        pad = missing_body_indent(CompletionContext(req.prefix, req.suffix, req.language))
        prompt_req = dataclasses.replace(req, prefix=req.prefix + pad) if pad else req
        prompt, max_tokens = self._prompt(prompt_req, adapter, extra)
        temperature = req.temperature if req.temperature is not None else 0.0
        if index > 0 and temperature == 0.0:
            temperature = self.settings.sample_temperature
        gen = GenerationRequest(
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=list(self.template_for(adapter).stop),
            timeout_s=self.settings.timeout_s,
            queue_timeout_s=self.settings.queue_timeout_s,
            user=json_logs.current_user(),
            affinity_key=req.path or None,  # the same file, the same replica's KV cache
            seed=index,
            adapter=adapter,
            # On a blank line, or where the code is unfinished without it (``x = |``,
            # ``@|``), the user waits for code: "nothing" is never the answer there (an FIM
            # model learns to end at once where a line is already complete).
            min_tokens=1 if on_blank_line(req.prefix, req.suffix)
            or needs_code(req.prefix, req.suffix, req.language) else 0,
            first_token_bias=self._start_bias(req, extra),
        )
        if request_id:
            gen.request_id = request_id
        return gen

    def _start_bias(self, req: CompleteRequest, extra: Gathered | None) -> dict[str, float]:
        """The names the context shows, nudged at a cursor where a name starts.

        A small model shown a definition hundreds of tokens back seldom reaches for it: on
        cross-file cursors it began with the typed name as often with the definition in
        its prompt as without (26 against 27 of 73 cursors). A bias on the first token
        only leaves the rest of the suggestion to the model."""
        bias = self.settings.context_start_bias
        if bias <= 0 or extra is None or req.language.lower() not in PYTHON_LANGUAGES:
            return {}
        names = extra.starts()
        line = req.prefix.rsplit("\n", 1)[-1]
        # Not at a statement's start (a keyword, ``self`` or a new variable comes there as
        # often) nor after a dot (an attribute of an object, not a module's name): on
        # line-start cursors of those packages the bias lost 1 match of 72 and won none.
        if not names or not line.strip() or line.endswith(".") or not at_name_start(
                req.prefix):
            return {}
        for block in extra.blocks:
            if block.starts:
                extra.note(block.source, nudged=len(block.starts))
        return {name: bias for name in names}

    def _admit(self) -> None:
        """Shed an overloaded completion now, before its prompt is tokenized: under a
        flood that work, not the model, is what would keep the answer from being quick."""
        probe = GenerationRequest(
            prompt="",
            timeout_s=self.settings.timeout_s,
            queue_timeout_s=self.settings.queue_timeout_s,
            user=json_logs.current_user(),
        )
        with engine_errors():
            self.engine.check_admission(probe)

    async def complete(self, req: CompleteRequest) -> CompletionAnswer:
        """Generate ``req.n`` candidates and return the API's ``data`` object."""
        ensure_ready(self.engine)
        self._admit()
        started = time.monotonic()
        items: list[CompletionItem] = []
        token_count = 0
        model = ""
        confidence = 0.0
        prompt_tokens = 0
        gathered = await self._gather(req)
        for index in range(req.n):
            gen = self._generation(req, index, extra=gathered)
            async for event in self._run(req, gen, partial=False, gathered=gathered):
                if not event["done"]:
                    continue
                token_count += event["token_count"]
                prompt_tokens = prompt_tokens or event["prompt_tokens"]
                model = event["model"]
                confidence = confidence if index else event["confidence"]
                text = event["text"]
                if text and all(i["insertText"] != text for i in items):
                    items.append(
                        {
                            "insertText": text,
                            "confidence": event["confidence"],
                            "low_confidence": event["low_confidence"],
                            "token_count": event["token_count"],
                        }
                    )
        first = items[0] if items else None
        return {
            "adapter": self._adapter_label(self.adapter_for(req)),
            "output": first["insertText"] if first else "",
            "token_count": token_count,
            "confidence": first["confidence"] if first else confidence,
            "model": model,
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
            "prompt_tokens": prompt_tokens,
            "items": items,
            "context": gathered.report(self._count_context),
        }

    def stream(
        self, req: CompleteRequest, request_id: str | None = None
    ) -> AsyncIterator[CompletionEvent]:
        """Yield ``{"text", "done", ...}`` events with the cumulative post-processed text.

        The last event (``done: True``) carries the validated text, which may be shorter
        than the last streamed one, or empty when nothing valid could be made.
        """
        ensure_ready(self.engine)
        self._admit()
        return self._stream(req, request_id)

    async def _stream(self, req: CompleteRequest, request_id: str | None
                      ) -> AsyncIterator[CompletionEvent]:
        gathered = await self._gather(req)
        gen = self._generation(req, 0, request_id, gathered)
        async for event in self._run(req, gen, gathered=gathered):
            if event["done"]:
                event["context"] = gathered.report(self._count_context)
            yield event

    async def _run(
        self, req: CompleteRequest, gen: GenerationRequest, partial: bool = True,
        gathered: Gathered | None = None,
    ) -> AsyncIterator[CompletionEvent]:
        """One generation, post-processed as it streams and validated at the end.

        Generation is cancelled as soon as the rules say the block is complete, so a
        suggestion costs no more tokens than it can show. ``partial`` events (the text
        so far, checked with ``compile`` only) are made for streaming clients alone:
        validation runs on the server's event loop, whose GIL the engine thread needs.
        """
        ctx = CompletionContext(prefix=req.prefix, suffix=req.suffix, language=req.language)
        template = self.template_for(gen.adapter)
        pad = missing_body_indent(ctx)  # what _generation added to the prompt's prefix
        checked = self._grounding(req, gen, gathered)
        shown = ""
        stopped_early = False
        started = time.monotonic()
        with engine_errors():  # an adapter may be unloaded between prompt and run
            async for chunk in self.engine.stream(gen):
                # A control token the model writes (a new cell, file or turn) ends the
                # completion; it and what follows are never shown.
                cut = template.cut_special(chunk.text)
                raw = pad + cut
                if not chunk.done:
                    if not stopped_early and (
                        len(cut) < len(chunk.text) or block_complete(raw, ctx)
                    ):
                        stopped_early = True
                        # The rest would be cut anyway: stop paying for it (a normal finish).
                        self.engine.cancel(gen.request_id, reason=FinishReason.STOP)
                    if not partial:
                        continue
                    # Only ever show text that is valid in its context, even mid-stream.
                    text = longest_valid(
                        checked(postprocess(raw, ctx), False), req.prefix, req.suffix,
                        req.language, strict=False
                    ) or ""
                    if text != shown:
                        shown = text
                        yield {"text": text, "done": False, "token_count": chunk.token_count}
                    continue
                result = chunk.result
                assert result is not None
                if result.finish_reason is FinishReason.TIMEOUT:
                    raise timed_out(f"generation took longer than {self.settings.timeout_s} s")
                reason = result.finish_reason
                final = longest_valid(checked(postprocess(raw, ctx), True), req.prefix,
                                      req.suffix, req.language)
                yield {
                    "text": final or "",
                    "done": True,
                    "cancelled": reason is FinishReason.CANCELLED,
                    "finish_reason": reason.value,
                    "confidence": round(result.confidence, 4),
                    "low_confidence": result.confidence < self.settings.confidence_threshold,
                    "token_count": result.token_count,
                    "prompt_tokens": result.prompt_tokens,
                    "model": result.model,
                    "latency_ms": round((time.monotonic() - started) * 1000, 1),
                    "adapter": self._adapter_label(gen.adapter),
                }
                return

    def _grounding(self, req: CompleteRequest, gen: GenerationRequest,
                   gathered: Gathered | None) -> Callable[[str, bool], str]:
        """``(text, final) -> text`` checked against the kernel's names and columns (the
        identity without a kernel answer); a final change is noted in ``data.context``."""
        known = gathered.known() if gathered is not None and \
            self.settings.kernel_grounding else None
        if gathered is None or known is None:
            return lambda text, final: text
        source, names = known
        seen = "\n".join([gen.prompt, req.suffix, *(c.source for c in req.cells or ())])

        def check(text: str, final: bool) -> str:
            result = ground(text, req.prefix, names, seen, req.language)
            if final and (result.cut_at or result.fixed):
                facts: dict[str, Any] = {}
                if result.cut_at is not None:
                    facts["cut_at"] = result.cut_at
                if result.fixed:
                    facts["fixed"] = result.fixed
                gathered.note(source, grounding=facts)
            return result.text

        return check

    def _adapter_label(self, adapter: str | None) -> str | None:
        """The adapter that answered: the request's, else the model's merged default."""
        if adapter is not None:
            return adapter
        return self.engine.info().adapter

    def cancel(self, request_id: str) -> bool:
        """Stop the generation ``request_id`` (a stream's): it ends at its next token,
        reported as cancelled. False when the engine does not know it (already ended).

        Transports cancel through the service rather than the engine: the service owns
        the generations it starts (see ``jupyter_ds/handlers/stream.py``)."""
        return self.engine.cancel(request_id)
