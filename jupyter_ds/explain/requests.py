"""The explain request."""

from __future__ import annotations

from dataclasses import dataclass

from jupyter_ds.requests import wire_field


@dataclass
class ExplainRequest:
    """``POST jupyter-ds/v1/explain``."""

    code: str = wire_field(max_chars="max_input_chars")
    language: str = wire_field("python", max_chars="max_name_chars")
    question: str | None = wire_field(None, max_chars="max_name_chars")
    stream: bool = wire_field(False)
    max_tokens: int | None = wire_field(None, min=1, max_setting="max_tokens_limit")
