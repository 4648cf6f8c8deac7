r"""What crosses the wire for a completion: the request (as REST, the WebSocket and the CLI
send it) and the answer's shapes (``data`` of ``POST complete``, the WebSocket's events).

The answers are ``TypedDict``\ s: plain JSON objects at run time, typed for the code that
builds and reads them (``docs/openapi.yaml`` and ``docs/websocket.md`` say the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from jupyter_ds.requests import ADAPTER_NAME, wire_field


@dataclass
class ContextCell:
    """A notebook cell above the cursor's cell, as an editor holds it (saved or not)."""

    source: str = wire_field(max_chars="max_input_chars")
    cell_type: str = wire_field("code", choices=("code", "markdown", "raw"))


@dataclass
class CompleteRequest:
    """``POST jupyter-ds/v1/complete`` and one WebSocket completion request."""

    prefix: str = wire_field(max_chars="max_input_chars")
    suffix: str = wire_field("", max_chars="max_input_chars")
    language: str = wire_field("python", max_chars="max_name_chars")
    path: str | None = wire_field(None, max_chars="max_name_chars")
    cell_id: str | None = wire_field(None, max_chars="max_name_chars")
    max_tokens: int | None = wire_field(None, min=1, max_setting="max_tokens_limit")
    temperature: float | None = wire_field(None, min=0.0, max=2.0)
    n: int = wire_field(1, min=1, max=5)
    # A loaded LoRA adapter by name; absent: the folder's default, else the server's.
    adapter: str | None = wire_field(None, max_chars="max_name_chars", pattern=ADAPTER_NAME)
    # The cells above the cursor's cell, in notebook order (the nearest last), from a
    # client that holds the notebook (the language server's notebook sync): they replace
    # reading the saved .ipynb at ``path``, which may be stale or absent.
    cells: list[ContextCell] | None = wire_field(  # noqa: RUF009 (a dataclasses.field)
        None, max_items=1000, total_chars=True)


class CompletionItem(TypedDict):
    """One suggestion: valid in its context (it parses, for Python)."""

    insertText: str
    confidence: float
    low_confidence: bool
    token_count: int


class CompletionAnswer(TypedDict):
    """``data`` of ``POST jupyter-ds/v1/complete``: the first item's figures, and all items."""

    adapter: str | None
    output: str
    token_count: int
    confidence: float
    model: str
    latency_ms: float
    prompt_tokens: int
    items: list[CompletionItem]
    # Per context source asked (kernel, repository): its state, ms, tokens, what it used.
    context: NotRequired[list[dict[str, Any]]]
    # The request's id (its X-Request-Id), set by the transport: what telemetry
    # (POST jupyter-ds/v1/telemetry) names the completion by.
    request_id: NotRequired[str]


class CompletionEvent(TypedDict):
    """One event of a streamed completion: ``text`` is cumulative and post-processed; the
    last event (``done``) carries the validated text and the figures."""

    text: str
    done: bool
    token_count: int
    cancelled: NotRequired[bool]
    finish_reason: NotRequired[str]
    confidence: NotRequired[float]
    low_confidence: NotRequired[bool]
    prompt_tokens: NotRequired[int]
    model: NotRequired[str]
    latency_ms: NotRequired[float]
    adapter: NotRequired[str | None]
    # On the WebSocket's final event only, set by the transport (see CompletionAnswer).
    request_id: NotRequired[str]
    context: NotRequired[list[dict[str, Any]]]  # the final event: as CompletionAnswer
