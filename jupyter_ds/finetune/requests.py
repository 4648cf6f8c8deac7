"""Adapter loading and fine-tuning job requests."""

from __future__ import annotations

from dataclasses import dataclass

from jupyter_ds.requests import ADAPTER_NAME, wire_field


@dataclass
class AdapterLoadRequest:
    """``POST jupyter-ds/v1/adapters/<name>``: attach the adapter folder at ``path``."""

    path: str = wire_field(max_chars="max_name_chars")


@dataclass
class FinetuneRequest:
    """``POST jupyter-ds/v1/finetune``: train an adapter on a folder under the root.

    ``name`` is the adapter's name (and its folder under the adapters directory); with
    ``load`` the finished adapter is attached under it.
    """

    path: str = wire_field(max_chars="max_name_chars")
    name: str = wire_field(max_chars="max_name_chars", pattern=ADAPTER_NAME)
    max_minutes: float | None = wire_field(None, min=0.1, max=24 * 60)
    max_tokens: int | None = wire_field(None, min=1000, max=10**10)
    resume: bool = wire_field(False)
    seed: int = wire_field(0, min=0, max=2**31 - 1)
    rank: int = wire_field(16, min=1, max=256)
    targets: str = wire_field("q_proj,v_proj", max_chars="max_name_chars",
                          pattern=r"[A-Za-z0-9_]+(,[A-Za-z0-9_]+)*")
    spm_rate: float = wire_field(0.5, min=0.0, max=1.0)
    load: bool = wire_field(True)
