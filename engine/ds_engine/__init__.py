"""ds_engine: the model tier of jupyter-ds (no Jupyter imports here)."""

import os

# How long OpenMP's worker threads spin before they sleep between parallel regions. A
# forward pass runs hundreds of short regions, so waking a sleeping thread for each (the
# PASSIVE policy) cost a third of the decode time on 2 cores (INT8 SmolLM2-135M: 50 vs 34
# ms per token); spinning without end (ACTIVE, or libgomp's default of 300,000 spins)
# starves the server's event loop, which shares the cores: requests through the HTTP API
# took 4-10x longer. 10,000 spins (well under a millisecond) keeps the decode speed and
# leaves the cores to the event loop between forwards. libgomp also cuts spinning short
# once more OpenMP threads exist than cores, so all torch work runs on one thread at a
# time (see ``LocalEngine``). Read once, when torch loads its OpenMP runtime, so it must
# be set before the first ``import torch``; a user's own settings win.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from ds_engine.interface import (
    BackendError,
    Engine,
    EngineConfig,
    EngineCounters,
    EngineInfo,
    EngineNotReady,
    EngineOverloaded,
    EngineState,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    Priority,
    StreamChunk,
)
from ds_engine.templates import PromptTemplate

# Whether the user chose where inductor keeps compiled code: torch itself writes its
# default into the environment on first use, so this is only known before it runs
# (see ds_engine.compiled.use_inductor_cache).
USER_INDUCTOR_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")

__all__ = [
    "BackendError",
    "Engine",
    "EngineConfig",
    "EngineCounters",
    "EngineInfo",
    "EngineNotReady",
    "EngineOverloaded",
    "EngineState",
    "FinishReason",
    "GenerationRequest",
    "GenerationResult",
    "Priority",
    "PromptTemplate",
    "StreamChunk",
]
__version__ = "0.1.0"
