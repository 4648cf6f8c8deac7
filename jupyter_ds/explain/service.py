"""Explain: a markdown explanation of a piece of code, through the model's chat template."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ds_engine import Engine, FinishReason, GenerationRequest, Priority
from ds_engine.templates import DEFAULT_SYSTEM_PROMPT

from jupyter_ds import json_logs
from jupyter_ds.engine_calls import engine_errors, ensure_ready
from jupyter_ds.errors import timed_out
from jupyter_ds.explain.requests import ExplainAnswer, ExplainEvent, ExplainRequest


@dataclass
class ExplainSettings:
    max_tokens: int = 256
    max_code_tokens: int = 1536
    timeout_s: float = 120.0


def _fence_language(language: str) -> str:
    return "".join(ch for ch in language.lower() if ch.isalnum() or ch in "+-#") or "text"


class ExplainService:
    """Builds the chat prompt and returns (or streams) the model's markdown answer."""

    def __init__(self, engine: Engine, settings: ExplainSettings | None = None):
        self.engine = engine
        self.settings = settings or ExplainSettings()

    def _request(self, req: ExplainRequest) -> GenerationRequest:
        code = req.code
        escape = self.engine.template.escape  # counted as the prompt will hold it
        # Keep the head of long code: the definitions usually come first.
        while (
            self.engine.count_tokens(escape(code)) > self.settings.max_code_tokens
            and "\n" in code
        ):
            code = code[: code.rstrip("\n").rfind("\n")]
        fence = _fence_language(req.language)
        ask = req.question or f"Explain what this {req.language} code does, step by step."
        user = f"{ask}\n\n```{fence}\n{code.rstrip()}\n```"
        # The chat template escapes control tokens in the message (user text).
        prompt = self.engine.template.chat_prompt(
            [{"role": "user", "content": user}], system=DEFAULT_SYSTEM_PROMPT
        )
        return GenerationRequest(
            prompt=prompt,
            max_tokens=req.max_tokens or self.settings.max_tokens,
            temperature=0.0,
            stop=list(self.engine.template.chat_stop),
            timeout_s=self.settings.timeout_s,
            priority=Priority.CHAT,
            user=json_logs.current_user(),
        )

    async def explain(self, req: ExplainRequest) -> ExplainAnswer:
        ensure_ready(self.engine)
        with engine_errors():
            result = await self.engine.generate(self._request(req))
        if result.finish_reason is FinishReason.TIMEOUT:
            raise timed_out(f"explanation took longer than {self.settings.timeout_s} s")
        return {
            "output": self.engine.template.strip_special(result.text).strip(),
            "format": "markdown",
            "token_count": result.token_count,
            "confidence": round(result.confidence, 4),
            "model": result.model,
            "latency_ms": round(result.latency_ms, 1),
            "finish_reason": result.finish_reason.value,
        }

    async def stream(self, req: ExplainRequest) -> AsyncIterator[ExplainEvent]:
        """Yield cumulative markdown as it is generated; the last event has ``done``."""
        ensure_ready(self.engine)
        started = time.monotonic()
        with engine_errors():
            async for chunk in self.engine.stream(self._request(req)):
                text = self.engine.template.strip_special(chunk.text)
                event: ExplainEvent = {"text": text, "done": chunk.done}
                if chunk.done and chunk.result is not None:
                    event.update(
                        token_count=chunk.result.token_count,
                        confidence=round(chunk.result.confidence, 4),
                        model=chunk.result.model,
                        finish_reason=chunk.result.finish_reason.value,
                        latency_ms=round((time.monotonic() - started) * 1000, 1),
                    )
                yield event

