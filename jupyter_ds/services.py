"""What one jupyter-ds server runs: the engine, the services over it, and its policies.

``JupyterDsApp.initialize_settings`` (:mod:`jupyter_ds.app`) builds one :class:`Services`
and puts it in the web application's settings (``settings["jupyter_ds"]``), where every
transport finds it: the REST and WebSocket handlers (:mod:`jupyter_ds.handlers`) and the
request pipeline they share (:mod:`jupyter_ds.pipeline`). It lives in a module of its own,
away from the Jupyter application, so that code reading it can import its type without
importing the application (nor tornado), and so that every optional part is typed: a
transport checks ``services.audit is None``, it never guesses with ``getattr``.

The field types are imported for type checkers only: importing this module costs nothing
and creates no import cycle (the services import the engine, metrics, sandbox...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jupyter_ds import __version__

if TYPE_CHECKING:
    from ds_engine import Engine

    from jupyter_ds.audit import AuditLog
    from jupyter_ds.completion.service import CompletionService
    from jupyter_ds.explain.service import ExplainService
    from jupyter_ds.finetune.job import FinetuneJobs
    from jupyter_ds.git.service import GitService
    from jupyter_ds.ratelimit import RateLimiter
    from jupyter_ds.roles import RolePolicy
    from jupyter_ds.telemetry import AnsweredCompletions
    from jupyter_ds.testgen.service import TestgenService


@dataclass
class Services:
    """The server's services and request policies; ``None`` means that part is off."""

    #: The completion task's engine (the only engine without ``routes``): readiness,
    #: adapters and fine-tuning go to it.
    engine: Engine
    completion: CompletionService
    explain: ExplainService
    testgen: TestgenService
    #: Field limits of request parsing (``max_input_chars``, ``max_tokens_limit``).
    limits: dict[str, int]
    #: Largest request body (or WebSocket message), in bytes: 413 above it.
    max_body_bytes: int
    git: GitService | None = None
    version: str = __version__
    #: Rate limits and generation slots per user (``rate_limits``,
    #: ``max_concurrent_per_user``); None: no limits.
    limiter: RateLimiter | None = None
    #: The audit log writer; None when ``JupyterDsApp.audit_log`` is off.
    audit: AuditLog | None = None
    #: Who has which roles; None: roles are not known (every caller has none).
    roles: RolePolicy | None = None
    finetune: FinetuneJobs | None = None
    #: The completions answered lately, for acceptance telemetry; None: none remembered
    #: (every telemetry event is then ignored).
    answered: AnsweredCompletions | None = None
    #: Each task's engine (``completion``, ``explain``, ``tests``, ``commit_message``):
    #: one engine for all without ``JupyterDsApp.routes``, a route's pool
    #: (:class:`jupyter_ds.routing.pool.EnginePool`) for a routed task.
    engines: dict[str, Engine] = field(default_factory=dict)

    def engine_for(self, task: str) -> Engine:
        """The engine that serves ``task``; ``engine`` for a task nothing routes."""
        return self.engines.get(task, self.engine)

    def distinct_engines(self) -> list[Engine]:
        """Each engine once, the completion engine first (``GET models`` lists them)."""
        out: list[Engine] = []
        for engine in [self.engine, *self.engines.values()]:
            if all(engine is not seen for seen in out):
                out.append(engine)
        return out
