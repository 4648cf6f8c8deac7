"""ds_engine: the model tier of jupyter-ds (no Jupyter imports here)."""

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
