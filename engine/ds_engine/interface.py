"""The narrow interface between the routing tier and a model engine.

The routing tier (``jupyter_ds``) only ever talks to an :class:`Engine`: the in-process
:class:`ds_engine.local.LocalEngine` today, an HTTP client of ``ds-engine serve`` or of
vLLM's OpenAI-compatible server later, chosen with ``engine_class``
(:mod:`ds_engine.factory`). Nothing here assumes the model is in this process: prompts
are rendered through the engine's :class:`PromptTemplate`, tokens are counted by the
engine, a request is stopped only through :meth:`Engine.cancel` with its id (its stop
state lives in the engine), and :meth:`Engine.info` is a typed record.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, fields
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


class BackendError(RuntimeError):
    """A model server behind a remote engine failed: unreachable, refused the credentials,
    answered something that is not the OpenAI API (malformed JSON or SSE), or broke off
    mid-stream. ``backend`` names it (its URL, never its key); the routing tier answers
    502 naming the backend. ``retryable``: nothing was generated yet, so another replica
    may take the request (a failure after the first token never is).
    """

    def __init__(self, backend: str, message: str, *, retryable: bool = False):
        super().__init__(f"{backend}: {message}")
        self.backend = backend
        self.retryable = retryable


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
    # Text -> logit bias added to the first token of that text, at the first generated
    # token only: where the caller knows the likely starts (the names whose definitions
    # the prompt shows, at a cursor where a name begins) and a small model, shown them
    # hundreds of tokens back, would not reach for them on its own. Later tokens are
    # the model's own.
    first_token_bias: dict[str, float] = field(default_factory=dict)
    # Seconds the request may wait for the model before it is shed (EngineOverloaded)
    # rather than started late: a completion that starts after the user typed on is
    # stale. None: it may wait until its deadline.
    queue_timeout_s: float | None = None
    # Who asked (the server's stable user name): fair shares of the queue are per user.
    user: str | None = None
    # Requests with the same key go to the same replica when there are several (the
    # file being edited: its KV prefix is cached there). None: any replica.
    affinity_key: str | None = None
    # The id to stop it by (``Engine.cancel``): its stop state lives in the engine.
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = field(default_factory=time.monotonic, repr=False)

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


@dataclass
class EngineCounters:
    """What an engine has done since it started, and what it holds now.

    Counters (``*_total``, hits, misses) only grow; the others are gauges read at the
    moment of :meth:`Engine.info`. None: the engine does not know (a remote engine that
    does not report it, a mean over no steps yet).
    """

    requests_total: int = 0
    tokens_generated_total: int = 0
    active_requests: int = 0  # left the queue, not finished yet
    queued_requests: int = 0
    cancelled_total: int = 0
    shed_total: int = 0
    max_queued: int | None = None
    service_time_s: float | None = None
    max_batch_size: int | None = None
    batch_steps_total: int = 0
    mean_batch_size: float | None = None
    max_batch_size_seen: int = 0
    prefix_cache_hits: int = 0
    prefix_cache_misses: int = 0
    prefix_cache_entries: int = 0
    prompt_tokens_total: int = 0
    prompt_tokens_reused_total: int = 0
    result_cache_hits: int = 0
    result_cache_entries: int = 0
    # Speculative decoding from the prompt (ds_engine.speculative): forwards that carried
    # a draft, tokens drafted, drafted tokens the model kept.
    draft_steps_total: int = 0
    draft_tokens_total: int = 0
    draft_tokens_accepted_total: int = 0
    # Decode steps run by the compiled step over a static KV cache (ds_engine.compiled).
    compiled_steps_total: int = 0


@dataclass
class EngineInfo:
    """What an engine says about itself: the model, its state, and its counters.

    Typed, so that the routing tier reads ``info.state`` rather than guessing keys;
    :meth:`to_dict` is the JSON the API shows (``GET models``) and the metrics read, one
    flat object as before.
    """

    name: str | None
    state: EngineState
    error: str | None = None
    source: str | None = None
    kind: str | None = None  # "hf" | "gguf" | "remote" ...
    device: str | None = None
    dtype: str | None = None
    loading_stage: str | None = None
    loading_progress: float | None = None
    template: str | None = None
    supports_fim: bool | None = None
    context_window: int | None = None
    load_time_s: float | None = None
    warmup_s: float | None = None
    from_cache: bool | None = None
    quantization: str | None = None
    model_memory_bytes: int | None = None
    # The adapter merged into the weights (the model as served answers with it).
    adapter: str | None = None
    adapters_attached: int = 0
    # None: the engine keeps no counters (a test engine, a server that does not report
    # them); the metrics then show none rather than zeros an autoscaler would trust.
    counters: EngineCounters | None = None

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object: every field, ``state`` as its value, counters inline."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "counters"}
        out["state"] = self.state.value
        if self.counters is not None:
            out.update(asdict(self.counters))
        return out


@dataclass
class EngineConfig:
    """What the server knows about the model it wants; every engine class is built from
    it with ``from_config`` (the ``engine_class`` setting picks the class).

    The common fields are read by the in-process engine; a remote engine reads what it
    needs (``model_path`` as the served model's name, ``options`` for its URL, token,
    template and tokenizer file) and ignores the rest. ``options`` carries each engine
    class's own settings (``engine_options`` in the server's configuration).
    """

    model_path: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: str | None = None
    quantization: str = "auto"
    max_batch_size: int = 8
    prefill_chunk: int = 256
    warmup: bool = True
    default_adapter: str | None = "auto"
    max_queued: int = 64
    load_shedding: bool = True
    options: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What every engine offers: load state, generate, stream, cancel, info."""

    @property
    def state(self) -> EngineState: ...

    @property
    def template(self) -> PromptTemplate:
        """Prompt template of the model as served (FIM family, chat format, control
        tokens): callers render prompts only through it, never with literal tokens. A
        remote engine builds it from configuration (``templates.configured_template``)."""
        ...

    def start_loading(self) -> None:
        """Begin loading the model in the background; returns at once."""
        ...

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loading settles (or ``timeout``); True if the model is READY."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` takes in the model's tokenizer.

        Local work in every engine, never a round trip: the in-process engine asks its
        tokenizer, a remote one a tokenizer file named in its configuration (or an
        estimate it documents). Context budgets are counted with it.
        """
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

    def cancel(self, request_id: str, *, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        """Stop a queued or running request, by id (the only way to stop one); True if
        it was known.

        ``CANCELLED``: its client gave up (a newer keystroke, a closed socket).
        ``STOP``: the caller has what it needs (completion stops once a block is
        complete); the generation ends as a normal finish, with the text so far.
        Leaving a :meth:`stream` early, or cancelling the task awaiting
        :meth:`generate`, cancels the request too.
        """
        ...

    def info(self) -> EngineInfo:
        """The model, its state and counters (``.to_dict()`` for JSON)."""
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
