"""An engine for the language-server tests: a fixed answer, word by word, ``delay_s``
apart, that records its prompts and the requests cancelled (the server-side stop that an
editor's ``$/cancelRequest`` must reach)."""

from __future__ import annotations

import asyncio

from ds_engine import (
    EngineConfig,
    EngineInfo,
    EngineState,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from ds_engine.templates import detect_template
from ds_engine.testing import BASE_SPECIAL_TOKENS, CHATML_TEMPLATE, NoAdapters


class SlowEngine(NoAdapters):
    """``engine_options``: ``answer`` (default ``x + 1``), ``delay_s`` between words."""

    instances: list[SlowEngine] = []  # noqa: RUF012 - the tests read the served one

    def __init__(self, answer: str = "x + 1", delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self._template = detect_template(BASE_SPECIAL_TOKENS, CHATML_TEMPLATE)
        self.prompts: list[str] = []
        self.cancelled: list[str] = []
        self._cancels: dict[str, FinishReason] = {}
        SlowEngine.instances.append(self)

    @classmethod
    def from_config(cls, config: EngineConfig) -> SlowEngine:
        return cls(config.options.get("answer", "x + 1"), config.options.get("delay_s", 0.0))

    state = EngineState.READY

    @property
    def template(self):  # type: ignore[override]
        return self._template

    def start_loading(self) -> None:
        return None

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def context_window(self) -> int:
        return 4096

    def _result(self, request: GenerationRequest, text: str, reason: FinishReason):
        return GenerationResult(
            text=text, token_count=len(text.split()), prompt_tokens=len(request.prompt.split()),
            confidence=0.9, finish_reason=reason, model="slow", latency_ms=1.0,
            request_id=request.request_id)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = None
        async for chunk in self.stream(request):
            result = chunk.result
        assert result is not None
        return result

    async def stream(self, request: GenerationRequest):
        self.prompts.append(request.prompt)
        words = self.answer.split(" ")
        try:
            for i in range(1, len(words) + 1):
                reason = self._cancels.get(request.request_id)
                if reason is not None:
                    text = " ".join(words[: i - 1])
                    yield StreamChunk(text, "", i - 1, True, self._result(request, text, reason))
                    return
                await asyncio.sleep(self.delay_s)
                yield StreamChunk(" ".join(words[:i]), words[i - 1], i)
        except asyncio.CancelledError:
            self.cancelled.append(request.request_id)
            raise
        yield StreamChunk(self.answer, "", len(words), True,
                          self._result(request, self.answer, FinishReason.STOP))

    def cancel(self, request_id: str, *, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        self._cancels.setdefault(request_id, reason)
        if reason is FinishReason.CANCELLED:
            self.cancelled.append(request_id)
        return True

    def info(self) -> EngineInfo:
        return EngineInfo(name="slow", state=EngineState.READY, kind="toy",
                          template=self._template.name)
