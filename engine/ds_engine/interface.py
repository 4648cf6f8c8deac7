"""The narrow interface between the routing tier and a model engine.

The routing tier (``jupyter_ds``) only ever talks to an :class:`Engine`: the in-process
:class:`ds_engine.local.LocalEngine` today, an HTTP client of ``ds-engine serve`` or of
vLLM's OpenAI-compatible server later. Requests carry their own state (cancel flag,
deadline, produced tokens) so that cancellation and timeouts need no registry lookups
in the hot loop.
"""

from __future__ import annotations

import enum
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ds_engine.templates import PromptTemplate


class EngineState(str, enum.Enum):
    """Lifecycle of the model behind an engine."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class FinishReason(str, enum.Enum):
    """Why a generation stopped."""

    LENGTH = "length"  # max_tokens reached
    STOP = "stop"  # a stop sequence or the end-of-sequence token
    CANCELLED = "cancelled"  # cancel() or a newer request replaced it
    TIMEOUT = "timeout"  # the request's deadline passed


class Priority(enum.IntEnum):
    """Scheduling class of a request; lower runs first.

    Inline completion is typed against and must never wait behind a long explanation or
    a test-generation round, so it has its own class and reserved batch capacity.
    """

    INTERACTIVE = 0  # inline completion
    CHAT = 1  # explanations
    BATCH = 2  # test generation, commit messages and other background work


class EngineNotReady(RuntimeError):
    """Raised when a request reaches an engine whose model is not loaded (yet)."""

    def __init__(self, state: EngineState, message: str = "", retry_after: int = 5):
        super().__init__(message or f"model is {state.value}")
        self.state = state
        self.retry_after = retry_after


class EngineOverloaded(EngineNotReady):
    """The engine sheds this request: it could not start before its start deadline, or
    the queue of its priority is full.

    A kind of :class:`EngineNotReady` (the model cannot take the request now; come back
    after ``retry_after`` seconds), so every caller that answers "not now" already
    answers this, and quickly: shedding happens before any model work. ``over_share``
    says the requester itself holds more than a fair share of the queue (429 for that
    user) rather than the engine being busy for everyone (503).
    """

    def __init__(self, message: str, retry_after: int = 1, *, over_share: bool = False):
        super().__init__(EngineState.READY, message, retry_after)
        self.over_share = over_share


@dataclass
class GenerationRequest:
    """One generation: the prompt text and the sampling parameters.

    ``prompt`` is already formatted (FIM or chat) by the caller through the engine's
    :class:`PromptTemplate`. ``stop`` sequences are matched on the decoded text and are
    not included in the output.
    """

    prompt: str
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    timeout_s: float | None = None
    seed: int | None = None
    priority: Priority = Priority.INTERACTIVE
    # A LoRA adapter loaded in the engine, by name; None: the model as served by default.
    adapter: str | None = None
    # Tokens generated before the end-of-sequence token or a one-token stop (such as
    # "<|endoftext|>") may end the output: a fresh line of code wants a suggestion, even
    # where the model would rather offer nothing.
    min_tokens: int = 0
    # Seconds the request may wait for the model before it is shed (EngineOverloaded)
    # rather than started late: a completion that starts after the user typed on is
    # stale. None: it may wait until its deadline.
    queue_timeout_s: float | None = None
    # Who asked (the server's stable user name): fair shares of the queue are per user.
    user: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Mutable state, owned by the engine while the request runs.
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    created_at: float = field(default_factory=time.monotonic, repr=False)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def deadline(self) -> float | None:
        return None if self.timeout_s is None else self.created_at + self.timeout_s

    @property
    def start_deadline(self) -> float | None:
        """When the request must have started: its queue timeout, bounded by its deadline."""
        ends = [self.deadline]
        if self.queue_timeout_s is not None:
            ends.append(self.created_at + self.queue_timeout_s)
        known = [t for t in ends if t is not None]
        return min(known) if known else None


@dataclass
class StreamChunk:
    """One step of a streamed generation; ``text`` is cumulative, ``delta`` is new."""

    text: str
    delta: str
    token_count: int
    done: bool = False
    result: GenerationResult | None = None


@dataclass
class GenerationResult:
    """The outcome of a generation, as the API reports it."""

    text: str
    token_count: int
    prompt_tokens: int
    confidence: float  # exp(mean log-probability of the generated tokens), 0..1
    finish_reason: FinishReason
    model: str
    latency_ms: float
    time_to_first_token_ms: float | None = None
    request_id: str = ""


@runtime_checkable
class Engine(Protocol):
    """What every engine offers: load state, generate, stream, cancel, info."""

    @property
    def state(self) -> EngineState: ...

    @property
    def template(self) -> PromptTemplate:
        """Prompt template of the loaded model (FIM family and chat format)."""
        ...

    def start_loading(self) -> None:
        """Begin loading the model in the background; returns at once."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` takes in the model's tokenizer."""
        ...

    def check_admission(self, request: GenerationRequest) -> None:
        """Raise :class:`EngineOverloaded` now if ``request`` (its priority, user and
        deadlines; the prompt is not needed) would be shed, before a caller builds it."""
        ...

    def context_window(self) -> int:
        """Maximum prompt + output tokens the model accepts."""
        ...

    async def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]: ...

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running request; True if it was known."""
        ...

    def info(self) -> dict[str, Any]:
        """JSON-ready description: model name, source, device, dtype, state, counters."""
        ...

    def template_for(self, adapter: str | None) -> PromptTemplate:
        """The template for requests with ``adapter`` (its FIM format, if it has one);
        raises :class:`ds_engine.adapters.AdapterError` (404) for an unknown name."""
        ...

    def adapters(self) -> list[dict[str, Any]]:
        """The adapters the engine serves: the merged default and the attached ones."""
        ...

    def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        """Check and attach the adapter folder at ``path`` as ``name`` (replacing one of
        that name); :class:`ds_engine.adapters.AdapterError` (422) if it is unusable."""
        ...

    def unload_adapter(self, name: str) -> dict[str, Any]:
        """Detach ``name`` once its running requests end (404 unknown, 409 merged)."""
        ...
