r"""What crosses the wire for an explanation: the request and the answer's shapes
(``TypedDict``\ s: plain JSON objects at run time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NotRequired, TypedDict

from jupyter_ds.requests import wire_field


@dataclass
class ExplainRequest:
    """``POST jupyter-ds/v1/explain``."""

    code: str = wire_field(max_chars="max_input_chars")
    language: str = wire_field("python", max_chars="max_name_chars")
    question: str | None = wire_field(None, max_chars="max_name_chars")
    stream: bool = wire_field(False)
    max_tokens: int | None = wire_field(None, min=1, max_setting="max_tokens_limit")


class ExplainAnswer(TypedDict):
    """``data`` of ``POST jupyter-ds/v1/explain``: markdown."""

    output: str
    format: str
    token_count: int
    confidence: float
    model: str
    latency_ms: float
    finish_reason: str


class ExplainEvent(TypedDict):
    """One event of a streamed explanation: cumulative markdown; figures when ``done``."""

    text: str
    done: bool
    token_count: NotRequired[int]
    confidence: NotRequired[float]
    model: NotRequired[str]
    finish_reason: NotRequired[str]
    latency_ms: NotRequired[float]
