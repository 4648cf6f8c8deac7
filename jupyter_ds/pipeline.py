"""One request pipeline for every transport: admission, parsing, errors, metrics, audit.

Why it exists: the per-request plumbing of jupyter-ds (request id and log context, rate
limit and generation slot, request parsing with its limits, the audit input sample, the
mapping of exceptions to the error envelope, metrics, the audit record) must be the same
whichever way a request comes in. The REST handlers (``jupyter_ds/handlers/base.py``), the
WebSocket completion stream (``jupyter_ds/handlers/stream.py``) and any transport to come
(an LSP server...) keep only their framing, and call this module for the rest, so a
request counts, fails and is audited alike everywhere.

It knows nothing of tornado or HTTP framing: a transport authenticates and authorizes the
caller (Jupyter's ``@authorized``, with the role authorizer of :mod:`jupyter_ds.roles`),
then drives one :class:`Call` per request::

    call = pipeline.begin("complete", "POST", user, request_id)  # log context bound
    try:
        pipeline.admit(call)             # rate limit, then a generation slot: 429s
        req = pipeline.parse(call, CompleteRequest, body)
        call.answer = await services.completion.complete(req)
        status = 200
    except Exception as exc:
        error = pipeline.error(500, exc)  # ApiError passes, EngineNotReady is 503...
        call.error_code, status = error.code, error.status
    finally:
        pipeline.finish(call, status)    # slot, metrics, audit, log context; never raises

A transport that counts a request before it can parse it and takes the slot later (the
WebSocket, which first supersedes older requests of its socket) calls
:meth:`Pipeline.rate_limit` and :meth:`Pipeline.acquire` instead of ``admit``.
"""

from __future__ import annotations

import contextvars
import http
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ds_engine import EngineNotReady

from jupyter_ds import json_logs, metrics
from jupyter_ds.errors import ApiError, engine_error
from jupyter_ds.identity import user_name
from jupyter_ds.ratelimit import GENERATION_ENDPOINTS, GenerationSlot
from jupyter_ds.requests import parse_request
from jupyter_ds.telemetry.memory import COMPLETION_ENDPOINTS

if TYPE_CHECKING:
    from jupyter_ds.services import Services

T = TypeVar("T")

#: Error codes of the HTTP statuses a transport or Jupyter may refuse a request with.
HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
}
#: Request fields that make the audit log's input sample (when samples are captured).
SAMPLE_FIELDS = ("prefix", "code", "source", "tests", "question")
#: Liveness polls (status bar, Kubernetes probes) are not audited: they would drown the log.
NOT_AUDITED = frozenset({"health"})
UNAUTHORIZED_MESSAGE = "authentication required: send 'Authorization: token <token>' or log in"

log = logging.getLogger("jupyter_ds.pipeline")


def input_sample(req: Any) -> str | None:
    """The text of a parsed request that an audit sample shows (before redaction)."""
    parts = [getattr(req, name, None) for name in SAMPLE_FIELDS]
    texts = [p for p in parts if isinstance(p, str) and p]
    return "\n".join(texts) if texts else None


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "error"


@dataclass(eq=False)
class Call:
    """One request's own state, from :meth:`Pipeline.begin` to :meth:`Pipeline.finish`.

    ``endpoint`` is the route's name (``complete``, ``git/status``...): the label of rate
    limits, metrics and audit records. ``method`` is the HTTP verb, or the transport's
    label (``WS`` for a WebSocket message). ``user`` is the identity object the transport
    authenticated (None before authentication), ``user_name`` its stable name
    (:func:`jupyter_ds.identity.user_name`). A transport sets ``answer`` (the success data,
    read by the audit record) and ``error_code`` (the envelope's code of a failure).
    """

    endpoint: str
    method: str
    user: Any
    user_name: str | None
    request_id: str
    started: float = field(default_factory=time.monotonic)
    slot: GenerationSlot | None = None
    answer: dict[str, Any] | None = None
    sample: str | None = None
    error_code: str | None = None
    counted: bool = False  # rate-limited once: admitting twice does not count twice
    #: More fields for the call's audit record (a telemetry call's counts); never text.
    audit_extra: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    binding: contextvars.Token[Any] | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class Pipeline:
    """The steps every request goes through, over one server's :class:`Services`.

    Stateless besides ``services``: all of a request's state is in its :class:`Call`, so
    one pipeline serves any number of concurrent requests and transports.
    """

    def __init__(self, services: Services):
        self.services = services

    # -- start --------------------------------------------------------------------------

    def begin(
        self,
        endpoint: str,
        method: str,
        user: Any,
        request_id: str | None = None,
        *,
        bind: bool = True,
    ) -> Call:
        """A new call of ``user`` on ``endpoint``; its request id is ``request_id`` when
        sane (a client's ``X-Request-Id``), else a new one.

        ``bind``: make it the current request of the JSON logs (:mod:`jupyter_ds.json_logs`)
        in this context and the tasks started from it, until :meth:`unbind` or
        :meth:`finish`; calls bound in one context nest, so they are unbound last begun
        first. A transport recording a request that failed before it could be begun
        properly passes False.
        """
        name = user_name(user)
        call = Call(
            endpoint=endpoint,
            method=(method or "").upper(),
            user=user,
            user_name=name,
            request_id=json_logs.request_id_from(request_id),
        )
        if bind:
            call.binding = json_logs.bind_request(call.request_id, user=name, endpoint=endpoint)
        return call

    def unbind(self, call: Call) -> None:
        """Restore the log context of before :meth:`begin`, where ``begin`` ran.

        Tasks started meanwhile keep the call's context (they copied it): a transport that
        hands the call to a task unbinds in its own context once the task is started.
        """
        token, call.binding = call.binding, None
        if token is not None:
            try:
                json_logs.reset_request(token)
            except ValueError:  # another context (a task): the binding ends with it
                pass

    # -- admission ----------------------------------------------------------------------

    def admit(self, call: Call) -> None:
        """Rate limit, then a generation slot for model endpoints: 429 ``ApiError``.

        Called once the caller is authorized (after the role check), so that a caller
        without the role gets 403 and spends nobody's budget.
        """
        self.rate_limit(call)
        self.acquire(call)

    def rate_limit(self, call: Call) -> None:
        """Count the call in its user's bucket for its endpoint; 429 when over."""
        limiter = self.services.limiter
        if call.counted or limiter is None or call.user_name is None:
            return
        call.counted = True
        limiter.check(call.user_name, call.endpoint)

    def acquire(self, call: Call) -> None:
        """A generation slot for a model endpoint's call (429 when its user has none
        left); held until :meth:`release` or :meth:`finish`."""
        limiter = self.services.limiter
        if (
            call.slot is not None
            or limiter is None
            or call.user_name is None
            or call.endpoint not in GENERATION_ENDPOINTS
        ):
            return
        call.slot = limiter.acquire(call.user_name)

    def release(self, call: Call) -> None:
        """Give the call's generation slot back now (a cancelled or superseded request);
        harmless when it holds none."""
        slot, call.slot = call.slot, None
        if slot is not None:
            slot.release()

    # -- input --------------------------------------------------------------------------

    def parse(self, call: Call, cls: type[T], body: Any) -> T:
        """``body`` (a decoded JSON object) as a ``cls`` request, within the server's
        limits (400/413 ``ApiError`` naming the field); keeps the audit input sample when
        the audit log captures samples."""
        req = parse_request(cls, body, self.services.limits)
        audit = self.services.audit
        if audit is not None and audit.capture_samples:
            call.sample = input_sample(req)
        return req

    # -- errors -------------------------------------------------------------------------

    @staticmethod
    def error(
        status: int,
        exc: BaseException | None = None,
        *,
        authenticated: bool = True,
        message: str | None = None,
        role_message: str | None = None,
    ) -> ApiError:
        """The envelope error for a failure with ``status`` caused by ``exc``.

        ``ApiError`` passes; an engine's "not now" (``EngineNotReady``, shed requests) is
        its 503/429. A 401/403 for a caller that is not ``authenticated`` (Jupyter answers
        403, often about ``_xsrf``, when no credentials came at all) says how to
        authenticate. ``message``: the transport's wording of a refusal below 500 (a
        tornado ``HTTPError``'s), replaced on a 403 by ``role_message`` when roles refused
        the caller (it names the role needed). Anything else is a bare status: a 500 never
        shows the exception, whose traceback the transport logs.
        """
        if isinstance(exc, EngineNotReady):
            exc = engine_error(exc)
        if isinstance(exc, ApiError):
            return exc
        if status in (401, 403) and not authenticated:
            return ApiError(401, "unauthorized", UNAUTHORIZED_MESSAGE)
        if message is not None and status < 500:
            if status == 403 and role_message:
                message = role_message
            return ApiError(status, HTTP_CODES.get(status, "error"), message)
        if status >= 500:
            return ApiError(status, "internal_error", "internal server error; see the server log")
        return ApiError(status, HTTP_CODES.get(status, "error"), _phrase(status))

    # -- end ----------------------------------------------------------------------------

    def finish(
        self,
        call: Call,
        status: int,
        error_code: str | None = None,
        answer: dict[str, Any] | None = None,
        *,
        seconds: float | None = None,
    ) -> None:
        """The call is answered: release its slot, record its metrics and audit record,
        unbind its log context. Once per call (later calls do nothing); never raises.

        ``seconds``: the transport's own measure of the request's time (tornado's counts
        from the first byte), else the time since :meth:`begin`.
        """
        if call.finished:
            return
        call.finished = True
        if error_code is not None:
            call.error_code = error_code
        if answer is not None:
            call.answer = answer
        took = call.seconds if seconds is None else seconds
        try:
            self.release(call)
        except Exception:
            log.exception("jupyter-ds: could not release the generation slot of %s",
                          call.endpoint)
        try:
            metrics.observe_request(
                call.endpoint or "unknown", call.method, status, took, call.error_code
            )
        except Exception:  # metrics never fail a request
            log.debug("jupyter-ds: could not record request metrics", exc_info=True)
        self._remember(call, status)
        self._audit(call, status, took)
        self.unbind(call)

    def _remember(self, call: Call, status: int) -> None:
        """Remember an answered completion for the telemetry about it (see
        :mod:`jupyter_ds.telemetry.memory`): REST and WebSocket completions both end
        here, so both can be reported on by the ``request_id`` their answer carries."""
        memory = self.services.answered
        if memory is None or status != 200 or call.endpoint not in COMPLETION_ENDPOINTS:
            return
        try:
            memory.remember_answer(call.request_id, call.user_name, call.answer)
        except Exception:  # telemetry never fails a request
            log.debug("jupyter-ds: could not remember the completion", exc_info=True)

    def _audit(self, call: Call, status: int, seconds: float) -> None:
        """Write the call's audit record, if the audit log is on.

        Never raises: the writer counts and logs its own failures, and anything before it
        (an odd answer) is logged here.
        """
        audit = self.services.audit
        if audit is None or call.endpoint in NOT_AUDITED:
            return
        try:
            from jupyter_ds.audit import AuditEvent  # the audit package loads cryptography

            answer = call.answer if isinstance(call.answer, dict) else {}
            policy = self.services.roles
            roles = policy.roles_of(call.user) if policy is not None and call.user else ()
            model, adapter = answer.get("model"), answer.get("adapter")
            tokens_in, tokens_out = answer.get("prompt_tokens"), answer.get("token_count")
            output = answer.get("output")
            audit.write(
                AuditEvent(
                    endpoint=call.endpoint or "unknown",
                    user=call.user_name,
                    role=",".join(roles) or None,
                    request_id=call.request_id,
                    model=model if isinstance(model, str) else None,
                    adapter=adapter if isinstance(adapter, str) else None,
                    tokens_in=tokens_in if isinstance(tokens_in, int) else None,
                    tokens_out=tokens_out if isinstance(tokens_out, int) else None,
                    latency_ms=seconds * 1000.0,
                    status=int(status),
                    error_code=call.error_code,
                    input_sample=call.sample,
                    output_sample=output if isinstance(output, str) else None,
                    extra={**call.audit_extra, "method": call.method},
                )
            )
        except Exception:
            log.exception("jupyter-ds: could not build the audit record of %s", call.endpoint)
