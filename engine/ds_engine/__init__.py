"""ds_engine: the model tier of jupyter-ds (no Jupyter imports here)."""

import os

# OpenMP's worker threads spin while they wait for work by default. In a server the engine
# shares the cores with the event loop (validation, HTTP), and spinning threads starve it:
# measured through the HTTP API on 2 cores, requests took 4-10x longer than the same engine
# in a bare process, and passive waiting brought them back. Read once, when torch loads its
# OpenMP runtime, so it must be set before the first ``import torch``; a user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ds_engine.interface import (
    Engine,
    EngineNotReady,
    EngineState,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    Priority,
    StreamChunk,
)
from ds_engine.templates import PromptTemplate

__all__ = [
    "Engine",
    "EngineNotReady",
    "EngineState",
    "FinishReason",
    "GenerationRequest",
    "GenerationResult",
    "Priority",
    "PromptTemplate",
    "StreamChunk",
]
__version__ = "0.1.0"
