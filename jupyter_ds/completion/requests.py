"""The completion request, as REST, the WebSocket and the CLI send it."""

from __future__ import annotations

from dataclasses import dataclass

from jupyter_ds.requests import ADAPTER_NAME, wire_field


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
