"""The jupyter-ds server extension: configuration, services and routes."""

from __future__ import annotations

import os
import threading
from typing import Any

from ds_engine import Engine, EngineConfig
from ds_engine.factory import DEFAULT_ENGINE_CLASS, engine_class, make_engine
from ds_engine.openai_api import MAX_BIAS
from jupyter_server.extension.application import ExtensionApp
from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)

from jupyter_ds import metrics
from jupyter_ds.completion.service import (
    DEFAULT_START_BIAS,
    CompletionService,
    CompletionSettings,
)
from jupyter_ds.context import ContextGatherer
from jupyter_ds.context.kernel import KernelContext
from jupyter_ds.context.repository import RepositoryContext
from jupyter_ds.explain.service import ExplainService, ExplainSettings
from jupyter_ds.finetune.job import FinetuneJobs
from jupyter_ds.git.service import GitService, GitSettings
from jupyter_ds.handlers import ROUTES, endpoint_of, handlers
from jupyter_ds.json_logs import install_for_server as install_json_logs
from jupyter_ds.paths import DEFAULT_EXCLUDE
from jupyter_ds.ratelimit import RateLimiter, parse_limits
from jupyter_ds.roles import RolePolicy, parse_mapping
from jupyter_ds.roles import install as install_roles
from jupyter_ds.routing import TASKS, build_pool, parse_routes, route_of_task
from jupyter_ds.services import Services
from jupyter_ds.telemetry import AnsweredCompletions
from jupyter_ds.testgen.sandbox import detect_sandbox
from jupyter_ds.testgen.service import (
    SandboxCapacity,
    TestgenService,
    TestgenSettings,
    default_sandbox_concurrency,
)


def known_endpoints() -> list[str]:
    """Route names, as used in rate_limits, metrics and audit records."""
    return [endpoint_of(path, cls) for path, cls in ROUTES]


def check_parsed_setting(name: str, value: Any) -> None:
    """Parse a structured setting as the server will use it; ValueError naming it."""
    if name in ("roles", "group_roles"):
        parse_mapping(name, value)
    elif name == "default_roles":
        if value is not None:
            parse_mapping("default_roles", {"*": value})
    elif name == "rate_limits":
        parse_limits(value, known_endpoints())
    elif name == "engine_class":
        engine_class(value)
    elif name == "routes":
        parse_routes(value)


class JupyterDsApp(ExtensionApp):
    """Serves inline completion and explain from a local code LLM."""

    name = "jupyter_ds"
    description = __doc__

    engine_class = Unicode(
        DEFAULT_ENGINE_CLASS,
        config=True,
        help=(
            "The engine that serves the model, as a dotted path to a class implementing "
            "ds_engine.interface.Engine with a from_config(EngineConfig) classmethod: the "
            "in-process ds_engine.local.LocalEngine by default."
        ),
    )
    engine_options = Dict(
        default_value={},
        config=True,
        help=(
            "Settings of the engine class beyond the common ones below, passed to it as "
            "EngineConfig.options (the in-process engine takes e.g. num_threads, "
            "prefix_cache_entries, result_cache_entries)."
        ),
    )
    routes = Dict(
        default_value={},
        config=True,
        help=(
            "Model servers per task: task -> {'engine_class' (default "
            "ds_engine.remote.RemoteEngine), 'endpoints': [URL, ...], 'options': {...}, "
            "and optionally affinity_slack, failure_threshold, cooldown_s, max_cooldown_s, "
            "max_attempts, health_interval_s, stall_grace_s}. Tasks: completion, explain, "
            "tests, commit_message; 'chat' stands for the last three (a task's own route "
            "wins). Each endpoint gets an engine built with options + its url; requests "
            "are spread over them with file affinity, failover and circuit breakers. A "
            "task with no route uses engine_class. Empty: one engine_class engine for all."
        ),
    )
    model_path = Unicode(
        "",
        config=True,
        help=(
            "Local model: a Hugging Face directory or a GGUF file. Empty means the "
            "DEEPSEEK_MODEL_PATH environment variable, else the embedded SmolLM2-135M."
        ),
    )
    device = Unicode("auto", config=True, help="cpu, cuda, cuda:N, mps, or auto.")
    dtype = CaselessStrEnum(
        ["auto", "float32", "bfloat16", "float16"],
        default_value="auto",
        config=True,
        help=(
            "Weights dtype; auto picks bfloat16 on CUDA and float32 on CPU (bfloat16 on CPU "
            "with quantization=int8, whose kernel takes bfloat16 activations)."
        ),
    )
    quantization = CaselessStrEnum(
        ["auto", "none", "int8", "int4"],
        default_value="auto",
        config=True,
        help=(
            "int8: 8-bit weights for the Linear layers, one scale per output channel (CPU: "
            "weight-only, bfloat16 activations; CUDA: needs bitsandbytes). Embeddings, norms "
            "and the output layer stay floating point. int4 (CPU only): 4-bit weights in "
            "groups of 32 inputs with a scale and an offset each, half int8's bytes a token. "
            "auto: int8 on CPU, none on GPUs."
        ),
    )
    max_batch_size = Int(
        8,
        config=True,
        help=(
            "Most generations run together in one decode batch (fewer if memory is short: "
            "free memory / model size). 1 runs one request at a time."
        ),
    )
    max_queued = Int(
        64,
        config=True,
        help=(
            "Load shedding: most requests of each priority (completion, explanation, "
            "background) that wait for a batch slot; the next is answered 503 with "
            "Retry-After at once (0: no bound). A request whose estimated start is past "
            "its start deadline is shed the same way, and a user holding more than a fair "
            "share of a busy queue gets 429."
        ),
    )
    load_shedding = Bool(
        True,
        config=True,
        help=(
            "Shed requests the model cannot start in time (max_queued, "
            "completion_queue_timeout): 503/429 'overloaded' at once with Retry-After. "
            "False: every request waits, until its timeout if need be (504)."
        ),
    )
    completion_queue_timeout = Float(
        5.0,
        config=True,
        help=(
            "Seconds a completion may wait for the model before it is shed (503 + "
            "Retry-After) instead of started late: by then the user has typed on."
        ),
    )
    prefill_chunk = Int(
        256,
        config=True,
        help="Prompt tokens forwarded per step, so a long prompt never stalls a keystroke.",
    )
    warmup = Bool(
        True, config=True, help="Run a short generation while loading (first-call costs)."
    )
    default_adapter = Unicode(
        "auto",
        config=True,
        help=(
            "LoRA adapter merged into the model's weights at load: 'auto' is the FIM adapter "
            "shipped for the embedded model (none for other models), 'none' serves the raw "
            "model, anything else is an adapter folder."
        ),
    )
    adapters = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value={},
        config=True,
        help=(
            "Adapters attached once the model is ready: name -> folder (absolute, or "
            "relative to adapters_dir). A request picks one with its 'adapter' field."
        ),
    )
    folder_adapters = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value={},
        config=True,
        help=(
            "Folder under the server root ('' for every file) -> the adapter its "
            "completions use when a request names none; the deepest folder wins."
        ),
    )
    adapters_dir = Unicode(
        "",
        config=True,
        help=(
            "Where fine-tuning jobs write adapters (one folder per name); empty: "
            "<jupyter data dir>/jupyter_ds/adapters."
        ),
    )
    finetune_threads = Int(
        0, config=True, help="Threads of a fine-tuning job; 0: all cores but one."
    )
    finetune_nice = Int(
        10, config=True, help="Niceness of a fine-tuning job, so completion keeps the CPU."
    )
    cache_dir = Unicode(
        "", config=True, help="Where converted GGUF weights are cached (default ~/.cache)."
    )
    load_on_start = Bool(
        True, config=True, help="Load the model in the background when the server starts."
    )
    max_tokens = Int(64, config=True, help="Default completion length in tokens.")
    max_tokens_limit = Int(1024, config=True, help="Largest max_tokens a request may ask.")
    max_prompt_tokens = Int(
        1024, config=True, help="Prompt budget for completion context (prefix + suffix)."
    )
    explain_max_tokens = Int(256, config=True, help="Default explanation length in tokens.")
    confidence_threshold = Float(
        0.7, config=True, help="Completions below this confidence are flagged low_confidence."
    )
    completion_timeout = Float(30.0, config=True, help="Seconds before a completion is 504.")
    explain_timeout = Float(120.0, config=True, help="Seconds before an explanation is 504.")
    testgen_runs = Int(
        5, config=True, help="A kept generated test passes this many runs out of as many."
    )
    testgen_max_tokens = Int(320, config=True, help="Tokens the model writes per round of tests.")
    # The sandbox's own capacity: its runs never take the threads git and the rest share.
    sandbox_max_concurrent = Int(
        config=True, help="Sandbox runs at once, all users together (default: cores, min 2)."
    )
    sandbox_max_per_user = Int(
        2,
        config=True,
        help="tests/run and test-generation calls one user may run at once (429 above "
        "it); 0: no per-user cap.",
    )
    sandbox_queue_size = Int(
        8, config=True, help="Runs that may wait for a sandbox slot (503 beyond them)."
    )
    sandbox_queue_timeout = Float(
        10.0, config=True, help="Seconds a run waits for a sandbox slot before 503."
    )
    sandbox_call_timeout = Float(
        120.0,
        config=True,
        help="Seconds all the runs of one tests/run call may take together; the run it "
        "cuts short is a timeout and no further run starts.",
    )

    @default("sandbox_max_concurrent")
    def _default_sandbox_max_concurrent(self) -> int:
        return default_sandbox_concurrency()

    @validate("sandbox_max_concurrent", "sandbox_max_per_user", "sandbox_queue_size",
              "sandbox_queue_timeout", "sandbox_call_timeout")
    def _valid_sandbox_capacity(self, proposal: Any) -> Any:
        name, value = proposal.trait.name, proposal.value
        least = 1 if name in ("sandbox_max_concurrent", "sandbox_call_timeout") else 0
        if value < least:
            raise TraitError(f"JupyterDsApp.{name} must be at least {least}, got {value}")
        return value

    max_input_chars = Int(200_000, config=True, help="Largest code/prefix/suffix field.")
    max_body_bytes = Int(1_048_576, config=True, help="Largest request body (413 above).")
    notebook_context = Bool(
        True,
        config=True,
        help=(
            "Add the cells above the current one (read from the saved notebook under the "
            "server root, by the request's path and cell_id) to completion prompts."
        ),
    )
    notebook_max_bytes = Int(
        20 * 1024 * 1024, config=True, help="Notebooks larger than this give no context."
    )
    _repository_context: RepositoryContext | None = None
    _kernel_context: KernelContext | None = None
    kernel_context = Bool(
        True, config=True,
        help="Add what the notebook's live kernel holds (names with short types, DataFrame "
        "columns and dtypes, array shapes, signatures) to completion prompts; read without "
        "side effects, from idle Python kernels only.")
    kernel_context_timeout = Float(
        0.1, config=True,
        help="Seconds a completion waits for the kernel's answer; answers are cached until "
        "the kernel runs other code, and a busy kernel gives none.")
    kernel_context_max_names = Int(
        200, config=True,
        help="Names the kernel describes at most (data, functions, classes and modules "
        "first, then the most recently defined).")
    kernel_grounding = Bool(
        True, config=True,
        help="Check suggestions against the kernel's answer: a made-up DataFrame column "
        "becomes the real one it resembles, and a suggestion stops before a name that "
        "exists neither in the kernel nor in the notebook's text.")
    repository_context = Bool(
        True, config=True,
        help="Add the signatures and docstrings of imported local modules and similar "
        "snippets of other files under the server root to completion prompts.")
    repository_context_max_files = Int(
        5000, config=True,
        help="Python files the repository index holds at most; more are skipped, counted "
        "and logged once.")
    repository_context_max_bytes = Int(
        10_000_000, config=True,
        help="Bytes of source the repository index holds at most (its memory is about 8 "
        "times this).")
    repository_context_max_file_bytes = Int(
        1_000_000, config=True,
        help="Python files larger than this are left out of the repository index.")
    repository_context_timeout = Float(
        0.05, config=True,
        help="Seconds the repository context may take per completion; a slower answer is "
        "left out.")
    repository_context_refresh_interval = Float(
        5.0, config=True,
        help="Seconds between re-scans of the server root for changed files (only while "
        "completions ask).")
    context_start_bias = Float(
        DEFAULT_START_BIAS, config=True,
        help="At a mid-line cursor where a name starts (after an operator, a bracket, a "
        "comma, `return`...; not at a statement's start, not after a dot), add this to the "
        "first token's logits for each name whose definition the repository context "
        "shows; 0 turns it off. The rest of the suggestion is the model's own. At most 100.")
    context_tokens = Int(
        384, config=True,
        help="Tokens that kernel and repository context may add to the prompt at most "
        "(never more than a third of max_prompt_tokens), on top of the cursor's own text.")
    git_exclude = List(
        Unicode(),
        default_value=list(DEFAULT_EXCLUDE),
        config=True,
        help=(
            "Glob patterns refused by the git API: a pattern without '/' matches any path "
            "component (.ssh, *.pem), one with '/' the path relative to the server root."
        ),
    )
    git_timeout = Float(
        60.0, config=True, help="Seconds before a git command is killed (504)."
    )
    git_commit_hooks = Bool(
        False,
        config=True,
        help=(
            "Run a repository's pre-commit and commit-msg hooks on git/commit, in the test "
            "sandbox (bubblewrap; the repository read-only); a failing hook refuses the "
            "commit (409). Off: git never runs a repository's hooks. Without bubblewrap, "
            "a commit in a repository that has such a hook is refused (409)."
        ),
    )

    json_logs = Bool(
        False,
        config=True,
        help=(
            "Write the server's log as one JSON object per line (time, level, logger, "
            "message, request_id, user, endpoint, exception), for ELK or Loki."
        ),
    )

    roles = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        default_value={},
        config=True,
        help=(
            "User name -> roles (developer, admin, auditor), e.g. "
            "{'alice': ['developer'], 'bob': ['auditor']}. Once this or group_roles is "
            "set, a user neither names gets default_roles (none unless set)."
        ),
    )
    group_roles = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        default_value={},
        config=True,
        help=(
            "Group -> roles, for the groups the identity provider gives a user "
            "(user.groups; JupyterHub's hub_user groups)."
        ),
    )
    default_roles = List(
        Unicode(),
        default_value=None,
        allow_none=True,
        config=True,
        help=(
            "Roles of a user that roles and group_roles give none. Unset: "
            "['developer', 'admin'] when neither mapping is configured (the server's "
            "owner keeps full access), else [] (no role, no access)."
        ),
    )
    enforce_roles = Bool(
        True,
        config=True,
        help=(
            "Wrap the server's authorizer so the jupyter_ds:* resources also need a role; "
            "off leaves them to ServerApp.authorizer_class alone."
        ),
    )
    rate_limits = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value={},
        config=True,
        help=(
            "Token bucket per user and endpoint: endpoint (or 'git/*', or '*') -> "
            "'<count>/<s|m|h|d>[ burst <n>]' or 'off', e.g. {'complete': '20/s burst 40', "
            "'*': '5/s'}. Over it: 429 with Retry-After. The WebSocket stream counts "
            "each request against 'complete'."
        ),
    )
    max_concurrent_per_user = Int(
        16,
        config=True,
        help="Generations one user may run at once (429 above it); 0: no limit.",
    )

    audit_log = Bool(
        True,
        config=True,
        help=(
            "Write one JSON line per request (time, request id, user, role, endpoint, "
            "model, tokens in/out, latency, status, error code) to audit_log_path."
        ),
    )
    audit_log_path = Unicode(
        "",
        config=True,
        help=(
            "The audit log file; empty: $JUPYTER_DS_AUDIT_LOG, else "
            "<jupyter data dir>/jupyter_ds/audit-<server id>.log, one per server (the id "
            "hashes the real root_dir and port). Rotated at audit_max_bytes."
        ),
    )
    audit_capture_samples = Bool(
        False,
        config=True,
        help=(
            "Also write each request's input and output text, with PII and secrets "
            "redacted and cut to audit_sample_chars."
        ),
    )
    audit_sample_chars = Int(2000, config=True, help="Longest input/output sample kept.")
    audit_max_bytes = Int(
        100 * 1024 * 1024, config=True, help="Rotate the audit log above this size; 0: never."
    )
    audit_key_file = Unicode(
        "",
        config=True,
        help=(
            "File with the AES-256-GCM key(s) that encrypt the audit log: current key "
            "first, older ones after (rotation). Empty: audit_key_env."
        ),
    )
    audit_key_env = Unicode(
        "JUPYTER_DS_AUDIT_KEY",
        config=True,
        help=(
            "Environment variable with the current audit key (older ones in "
            "JUPYTER_DS_AUDIT_OLD_KEYS). No key configured: see audit_encrypt."
        ),
    )
    audit_encrypt = Bool(
        True,
        config=True,
        help=(
            "With no audit_key_file and no key in audit_key_env, generate a key at first "
            "start (audit.key next to the log, 0600; refused if looser) and reuse it. "
            "False: plain JSON lines instead, only where the log is protected otherwise. "
            "A configured key always encrypts."
        ),
    )

    @validate("roles", "group_roles", "default_roles", "rate_limits", "engine_class",
              "routes")
    def _valid_parsed(self, proposal: Any) -> Any:
        """Settings whose parser names what is wrong: a mistake stops the start."""
        try:
            check_parsed_setting(proposal.trait.name, proposal.value)
        except ValueError as exc:
            raise TraitError(f"JupyterDsApp.{exc}") from None
        return proposal.value

    @validate("context_start_bias")
    def _valid_start_bias(self, proposal: Any) -> Any:
        value = proposal.value
        if not 0.0 <= value <= MAX_BIAS:
            raise TraitError(f"JupyterDsApp.context_start_bias must be between 0 and "
                             f"{MAX_BIAS:g}, got {value}")
        return value

    @validate("max_concurrent_per_user")
    def _valid_max_concurrent(self, proposal: Any) -> Any:
        if proposal.value < 0:
            raise TraitError("JupyterDsApp.max_concurrent_per_user must be 0 (no limit) or more")
        return proposal.value

    def open_audit(self) -> Any:
        """The audit log writer, or None when it is off; a bad key raises here (at start)."""
        if not self.audit_log:
            return None
        from jupyter_ds.audit import open_audit_log

        return open_audit_log(
            self.audit_log_path or None,
            key_file=self.audit_key_file or None,
            key_env=self.audit_key_env,
            encrypt=self.audit_encrypt,
            server=self.audit_server_id(),
            capture_samples=self.audit_capture_samples,
            sample_chars=self.audit_sample_chars,
            max_bytes=self.audit_max_bytes,
        )

    def audit_server_id(self) -> str | None:
        """This server's id in audit records and the default log's name: root and port."""
        server = getattr(self, "serverapp", None)
        if server is None:
            return None
        from jupyter_ds.audit import server_id

        return server_id(server.root_dir, server.sock or server.port)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Runs once the port is bound: port_retries may have moved it since
        initialize_settings, and a second server on the same folder must not keep writing
        to the first one's log."""
        services: Services | None = self.settings.get("jupyter_ds")
        audit = services.audit if services is not None else None
        server = self.audit_server_id()
        if audit is None or server == audit.server:
            return
        from jupyter_ds.audit import default_log_path

        audit.move(self.audit_log_path or default_log_path(server), server)
        self.log.info("jupyter-ds: audit log now %s (the server's final port)", audit.path)

    def role_policy(self) -> RolePolicy:
        return RolePolicy.from_config(self.roles, self.group_roles, self.default_roles)

    def make_limiter(self) -> RateLimiter:
        return RateLimiter(
            self.rate_limits, self.max_concurrent_per_user, known_endpoints=known_endpoints()
        )

    engine = None  # set in initialize_settings; tests may read it
    engines: dict[str, Any] | None = None  # task -> engine, likewise
    _undo_json_logs = None

    def engine_config(self) -> EngineConfig:
        """What the configured engine class is built from (see ``engine_class``)."""
        return EngineConfig(
            model_path=self.model_path or None,
            device=self.device,
            dtype=self.dtype,
            cache_dir=self.cache_dir or None,
            quantization=self.quantization.lower(),
            max_batch_size=self.max_batch_size,
            prefill_chunk=self.prefill_chunk,
            warmup=self.warmup,
            default_adapter=self.default_adapter,
            max_queued=self.max_queued,
            load_shedding=self.load_shedding,
            options=dict(self.engine_options),
        )

    def make_engine(self) -> Engine:
        return make_engine(self.engine_class, self.engine_config())

    def make_task_engines(self) -> dict[str, Engine]:
        """task -> its engine, each wrapped once for metrics (``metrics.instrument``).

        Without ``routes`` every task shares the one ``engine_class`` engine, as always;
        a routed task gets its route's pool (tasks of one route share it), and the
        ``engine_class`` engine is built only if some task is left to it. Generation
        metrics are process-wide counters, so each engine's wrapper adds to the same.
        """
        routes = parse_routes(self.routes)
        by_task = route_of_task(routes)
        built: dict[str, Engine] = {}
        engines: dict[str, Engine] = {}
        pools: list[Engine] = []
        for task in TASKS:
            key = by_task.get(task, "")  # "": the engine_class engine
            if key not in built:
                if key:
                    try:
                        raw = build_pool(routes[key])
                    except ValueError as exc:
                        raise TraitError(f"JupyterDsApp.{exc}") from exc
                else:
                    raw = self.make_engine()
                built[key] = metrics.instrument(raw)
                if key:
                    pools.append(raw)
            engines[task] = built[key]
        metrics.register_route_pools(pools)  # each endpoint's state in /metrics
        return engines

    def adapters_path(self) -> str:
        if self.adapters_dir:
            return self.adapters_dir
        from jupyter_core.paths import jupyter_data_dir

        return os.path.join(jupyter_data_dir(), "jupyter_ds", "adapters")

    def _attach_configured_adapters(self, engine: Engine) -> None:
        """Attach ``adapters`` once the model is ready; a bad one is logged, not fatal."""
        if not engine.wait_ready():
            return
        for name, folder in self.adapters.items():
            path = os.path.join(self.adapters_path(), os.path.expanduser(folder))
            try:
                engine.load_adapter(name, path)
                self.log.info("jupyter-ds: adapter %s attached from %s", name, path)
            except Exception as exc:
                self.log.error("jupyter-ds: adapter %s (%s) not attached: %s", name, path,
                               getattr(exc, "message", exc))

    def initialize_settings(self) -> None:
        if self.json_logs and self._undo_json_logs is None:
            self._undo_json_logs = install_json_logs(self.serverapp)
        # Generations, client cancellations and timeouts are recorded by the wrapper;
        # queue depth, caches and model state are read from engine.info() at each scrape
        # (the completion engine's: with routes, its pool sums its replicas' counters).
        engines = self.make_task_engines()
        engine = engines["completion"]
        metrics.register_engine_collector(engine)
        self.engine = engine
        self.engines = engines
        # One capacity for every sandbox run: tests/run, test generation, commit hooks.
        sandbox_capacity = SandboxCapacity(
            self.sandbox_max_concurrent,
            self.sandbox_max_per_user,
            self.sandbox_queue_size,
            self.sandbox_queue_timeout,
        )
        self._repository_context = RepositoryContext.for_root(
            self.serverapp.root_dir, enabled=self.repository_context,
            max_files=self.repository_context_max_files,
            max_total_bytes=self.repository_context_max_bytes,
            max_file_bytes=self.repository_context_max_file_bytes,
            timeout_s=self.repository_context_timeout,
            refresh_s=self.repository_context_refresh_interval)
        self._kernel_context = KernelContext(
            self.serverapp.session_manager, self.serverapp.kernel_manager,
            timeout_s=self.kernel_context_timeout, max_names=self.kernel_context_max_names,
            logger=self.log) if self.kernel_context else None
        # The kernel's lines last: nearest the code.
        contexts = ContextGatherer([s for s in (self._repository_context, self._kernel_context)
                                    if s is not None])
        services = Services(
            engine=engine,
            engines=engines,
            completion=CompletionService(
                engines["completion"],
                CompletionSettings(
                    max_tokens=self.max_tokens,
                    max_prompt_tokens=self.max_prompt_tokens,
                    confidence_threshold=self.confidence_threshold,
                    timeout_s=self.completion_timeout,
                    queue_timeout_s=(self.completion_queue_timeout or None)
                    if self.load_shedding else None,
                    root_dir=self.serverapp.root_dir if self.notebook_context else None,
                    notebook_max_bytes=self.notebook_max_bytes,
                    folder_adapters=dict(self.folder_adapters),
                    context_tokens=self.context_tokens,
                    kernel_grounding=self.kernel_grounding,
                    context_start_bias=self.context_start_bias,
                ),
                contexts,
            ),
            explain=ExplainService(
                engines["explain"],
                ExplainSettings(max_tokens=self.explain_max_tokens, timeout_s=self.explain_timeout),
            ),
            testgen=TestgenService(
                engines["tests"],
                TestgenSettings(
                    runs=self.testgen_runs,
                    max_tokens=self.testgen_max_tokens,
                    root_dir=self.serverapp.root_dir if self.serverapp else None,
                    call_timeout_s=self.sandbox_call_timeout,
                    exclude=tuple(self.git_exclude),
                ),
                capacity=sandbox_capacity,
            ),
            limits={
                "max_input_chars": self.max_input_chars,
                "max_tokens_limit": self.max_tokens_limit,
            },
            max_body_bytes=self.max_body_bytes,
            git=GitService(
                self.serverapp.root_dir,
                engines["commit_message"],
                GitSettings(timeout_s=self.git_timeout, exclude=tuple(self.git_exclude),
                            commit_hooks=self.git_commit_hooks),
                sandbox_capacity=sandbox_capacity,
            ),
        )
        services.finetune = FinetuneJobs(
            self.serverapp.root_dir, self.adapters_path(), engine,
            threads=self.finetune_threads or None, nice=self.finetune_nice,
        )
        services.limiter = self.make_limiter()
        services.answered = AnsweredCompletions()  # for acceptance telemetry
        services.audit = self.open_audit()
        if services.audit is not None:
            # plaintext is only ever asked for (audit_encrypt=False): say so loudly
            (self.log.info if services.audit.encrypted else self.log.warning)(
                "jupyter-ds: audit log %s (%s%s)",
                services.audit.path,
                "encrypted" if services.audit.encrypted else "plain JSON",
                ", with redacted samples" if services.audit.capture_samples else "",
            )
        services.roles = self.role_policy()
        if self.enforce_roles:
            # Handlers read the authorizer from the web app's settings, which this dict
            # is merged into: every handler of the server, Jupyter's own included, now goes
            # through the role authorizer, which leaves non-jupyter_ds resources alone.
            install_roles(self.serverapp, services.roles, self.settings)
        self.settings.update({"jupyter_ds": services})
        # Probe bubblewrap once, off the event loop; health and results report the mode.
        threading.Thread(target=detect_sandbox, name="jupyter-ds-sandbox-probe",
                         daemon=True).start()
        if self.load_on_start:
            self.log.info("jupyter-ds: loading the model in the background")
            for each in services.distinct_engines():
                each.start_loading()  # a pool starts its endpoints and health checks
        routes = parse_routes(self.routes)
        for task, route in route_of_task(routes).items():
            self.log.info("jupyter-ds: %s is served by route %s (%s)", task, route,
                          ", ".join(routes[route].endpoints))
        if self.adapters:
            threading.Thread(target=self._attach_configured_adapters, args=(engine,),
                             name="jupyter-ds-adapters", daemon=True).start()

    def initialize_handlers(self) -> None:
        # ExtensionApp prefixes the server's base URL (JupyterHub-style URLs work).
        self.handlers.extend(handlers("/"))

    async def stop_extension(self) -> None:
        services = self.settings.get("jupyter_ds")
        if services is not None and services.finetune is not None:
            await services.finetune.close()
        if services is not None:
            services.testgen.close()  # kill the sandbox runs still going
        if self._repository_context is not None:
            self._repository_context.close()  # its indexing thread
        if self._kernel_context is not None:
            self._kernel_context.close()  # its kernel clients
        metrics.unregister_engine_collector(self.engine)
        metrics.register_route_pools([])
        closing = services.distinct_engines() if services is not None else [self.engine]
        for engine in closing:  # a pool stops its health thread and closes its replicas
            close: Any = getattr(engine, "close", None)
            if callable(close):
                close()
        # JSON logs stay on to the end of the process: shutdown lines are logs too.
