"""Counting tokens without the model: a local ``tokenizer.json``, or an estimate.

The routing tier budgets prompts with ``Engine.count_tokens`` on every request, so a
remote engine must count locally, never with a round trip. With the served model's
``tokenizer.json`` (the file every Hugging Face model directory has; read with the
``tokenizers`` package, no transformers, no torch) the count is exact. Without it the
count is an estimate, ``ceil(characters / 3.2)``: on this repository's own Python
sources the embedded SmolLM2 tokenizer (a StarCoder-style byte-level BPE, like those of
DeepSeek-Coder and Qwen2.5-Coder) averages 3.6 characters per token, and 90% of the
files take 3.3 or more, so dividing by 3.2 over-counts typical code by about 10% and
budgets built on it keep a margin. It under-counts dense text (short numeric literals,
non-Latin scripts run 1-2 characters per token), which is why a tokenizer file should be
configured where prompts run close to the context window.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

#: Characters per token assumed when no tokenizer file is configured (see above).
CHARS_PER_TOKEN = 3.2
# The shape of a control marker (as ds_engine.templates reads added tokens).
_CONTROL_SHAPE = re.compile(r"<[^<>\s]{1,60}>|\[/?[A-Z][A-Z_]{1,30}\]")


def estimate_tokens(text: str) -> int:
    """The documented estimate: ``ceil(len(text) / CHARS_PER_TOKEN)``."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


class TokenCounter:
    """Counts tokens with a ``tokenizer.json`` (exact) or the estimate (``exact`` False)."""

    def __init__(self, path: str | Path | None = None) -> None:
        """``path``: a ``tokenizer.json`` file, or a model directory holding one; None:
        estimate. A missing or unreadable file is a ValueError now, not a wrong count
        later."""
        self.path: Path | None = None
        self._tokenizer: Any = None
        if path is None:
            return
        file = Path(path).expanduser()
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise ValueError(f"tokenizer file {str(file)!r} does not exist")
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(file))
        except Exception as exc:  # the library raises a bare Exception for bad JSON
            raise ValueError(f"tokenizer file {str(file)!r} cannot be read: {exc}") from None
        self.path = file

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count(self, text: str) -> int:
        if self._tokenizer is None:
            return estimate_tokens(text)
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def control_tokens(self) -> tuple[str, ...]:
        """The tokenizer's added tokens that are control markers (flagged special or
        shaped ``<...>``): what prompts must escape in user text. Empty when estimating."""
        if self._tokenizer is None:
            return ()
        found = set()
        for added in self._tokenizer.get_added_tokens_decoder().values():
            content = added.content
            if len(content) >= 2 and (added.special or _CONTROL_SHAPE.fullmatch(content)):
                found.add(content)
        return tuple(sorted(found))
