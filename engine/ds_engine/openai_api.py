"""The OpenAI API as ``ds-engine serve`` speaks it: request checking and response shapes.

Kept apart from the HTTP layer (:mod:`ds_engine.serve`) so that the wire format is plain
data a reader can check against OpenAI's and vLLM's, and so that a client of the server
(RemoteEngine) and its tests can see in one place exactly what comes back. The server
behaves like vLLM's OpenAI server where clients notice: the same field names and
defaults, the extension fields vLLM takes (``priority``, ``min_tokens``), the same
``data: ...`` event stream ending in ``data: [DONE]``, and OpenAI error objects
``{"error": {"message", "type", "param", "code"}}``. Fields a request may carry that
the server does not know are ignored, as both OpenAI and vLLM do.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ds_engine.interface import FinishReason, Priority

# OpenAI's and vLLM's default for /v1/completions; chat defaults to what fits in the
# context window, as vLLM's does.
DEFAULT_COMPLETION_MAX_TOKENS = 16

# finish_reason on the wire. "abort" is vLLM's name for a request stopped before its end
# (a client that left, a server that shuts down); "timeout" is ds-engine's own (the
# request's ``timeout_s`` passed), which vLLM never sends.
FINISH_REASONS = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "abort",
    FinishReason.TIMEOUT: "timeout",
}

# Chat roles a chat template knows; OpenAI's newer "developer" role is the system prompt.
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user",
              "assistant": "assistant"}


class APIError(Exception):
    """A request the server answers with an OpenAI error object and ``status``.

    ``retry_after`` (seconds) becomes a ``Retry-After`` header: a client that backs off
    that long may succeed (the model is loading, the engine sheds load).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object: what the official client turns into ``APIStatusError``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param)


# ----------------------------------------------------------------- requests


@dataclass
class SamplingRequest:
    """One checked /v1/completions or /v1/chat/completions request.

    ``max_tokens`` None (chat only): as many as fit in the context window after the
    prompt. The ds-engine extensions ``timeout_s`` and ``queue_timeout_s`` carry
    :class:`ds_engine.interface.GenerationRequest`'s deadlines across the wire, so a
    stale inline completion is shed on the GPU box rather than started late; vLLM
    ignores them. ``first_token_bias`` (text -> bias in [-100, 100], at most 256 texts)
    carries :attr:`GenerationRequest.first_token_bias`: unlike OpenAI's ``logit_bias``,
    which holds for every token, it moves the first generated token only.
    """

    model: str | None
    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    priority: Priority = Priority.INTERACTIVE
    min_tokens: int = 0
    timeout_s: float | None = None
    queue_timeout_s: float | None = None
    first_token_bias: dict[str, float] = field(default_factory=dict)
    prompt: str | None = None  # completions: the rendered prompt
    messages: list[dict[str, str]] | None = None  # chat: role and text content


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise invalid(None, "the request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise invalid(None, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid(None, "the request body must be a JSON object")
    return body


def parse_completion(body: dict[str, Any]) -> SamplingRequest:
    """A /v1/completions body; ``prompt`` is the already-rendered text (as vLLM takes it):
    a string, or a list of exactly one string."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise invalid("prompt", "'prompt' must be a string (or a list of one string); "
                                "token ids and batches of prompts are not supported")
    req = _sampling(body, Priority.INTERACTIVE)
    if req.max_tokens is None:
        req.max_tokens = DEFAULT_COMPLETION_MAX_TOKENS
    req.prompt = prompt
    _check_min_tokens(req)
    return req


def parse_chat(body: dict[str, Any]) -> SamplingRequest:
    """A /v1/chat/completions body: ``messages`` with text content only.

    ``max_completion_tokens`` (OpenAI's newer name) wins over ``max_tokens``.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "'messages' must be a non-empty list of messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}]", f"messages[{i}] must be an object")
        role = message.get("role")
        role = CHAT_ROLES.get(role) if isinstance(role, str) else None
        if role is None:
            raise invalid(f"messages[{i}].role",
                          f"messages[{i}].role must be one of {', '.join(CHAT_ROLES)}")
        out.append({"role": role, "content": _content(message.get("content"), i)})
    req = _sampling(body, Priority.CHAT, max_name="max_completion_tokens")
    req.messages = out
    _check_min_tokens(req)
    return req


def _content(content: Any, i: int) -> str:
    """Message text: a string, null (an assistant turn without text), or text parts
    (joined by newlines, as vLLM joins them)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise invalid(f"messages[{i}].content",
                              f"messages[{i}].content: only text parts are supported")
            parts.append(part["text"])
        return "\n".join(parts)
    raise invalid(f"messages[{i}].content", f"messages[{i}].content must be a string")


def _sampling(body: dict[str, Any], default_priority: Priority,
              max_name: str | None = None) -> SamplingRequest:
    """The fields both endpoints share; null means "not given", as in OpenAI's API."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise invalid("model", "'model' must be a string")
    n = _integer(body, "n", 1)
    if n != 1:
        raise invalid("n", "only n=1 is supported")
    max_tokens = None
    if max_name is not None and body.get(max_name) is not None:
        max_tokens = _integer(body, max_name, None, low=1)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", None, low=1)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise invalid("stop", "'stop' must be a string or a list of strings")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid("stream", "'stream' must be a boolean")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options", "'stream_options' must be an object")
        include_usage = options.get("include_usage") is True
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("user", "'user' must be a string")
    priority = _integer(body, "priority", None)
    return SamplingRequest(
        model=model,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, low=0.0),
        top_p=_number(body, "top_p", 1.0, low=0.0, high=1.0, low_open=True),
        stop=[s for s in stop if s],
        seed=_integer(body, "seed", None, low=-(2**63), high=2**63 - 1),
        stream=stream,
        include_usage=include_usage,
        user=user or None,
        # vLLM's priority: any integer, lower first; ds-engine has three classes.
        priority=default_priority if priority is None
        else Priority(min(max(priority, Priority.INTERACTIVE), Priority.BATCH)),
        min_tokens=_integer(body, "min_tokens", 0, low=0),
        timeout_s=_number(body, "timeout_s", None, low=0.0, low_open=True),
        queue_timeout_s=_number(body, "queue_timeout_s", None, low=0.0, low_open=True),
        first_token_bias=_text_bias(body, "first_token_bias"),
    )


def _check_min_tokens(req: SamplingRequest) -> None:
    if req.max_tokens is not None and req.min_tokens > req.max_tokens:
        raise invalid("min_tokens", "'min_tokens' must not exceed 'max_tokens'")


def _integer(body: dict[str, Any], name: str, default: Any, *, low: int | None = None,
             high: int | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"'{name}' must be an integer")
    if low is not None and value < low:
        raise invalid(name, f"'{name}' must be at least {low}")
    if high is not None and value > high:
        raise invalid(name, f"'{name}' must be at most {high}")
    return value


def _number(body: dict[str, Any], key: str, default: Any, *, low: float,
            high: float | None = None, low_open: bool = False, name: str | None = None
            ) -> Any:
    """``body[key]`` checked as a number; errors name ``name`` (the field, when ``body``
    is an object inside it), else ``key``."""
    name = name or key
    shown = key if name == key else f"{name}[{key!r}]"
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
        value
    ):
        raise invalid(name, f"'{shown}' must be a number")
    if value < low or (low_open and value == low) or (high is not None and value > high):
        bound = f"> {low}" if low_open else f">= {low}"
        upper = f" and <= {high}" if high is not None else ""
        raise invalid(name, f"'{shown}' must be {bound}{upper}")
    return float(value)


#: Bounds of the ``first_token_bias`` extension: OpenAI's ``logit_bias`` range, and
#: as many texts as a completion's context shows names, with room to spare.
MAX_BIAS = 100.0
MAX_BIAS_TEXTS = 256
MAX_BIAS_TEXT_CHARS = 200


def _text_bias(body: dict[str, Any], name: str) -> dict[str, float]:
    """An object of text -> number in [-100, 100] (ds-engine's extension: a bias on the
    first token of each text, at the first generated token)."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(name, f"'{name}' must be an object of text -> number")
    if len(value) > MAX_BIAS_TEXTS:
        raise invalid(name, f"'{name}' holds at most {MAX_BIAS_TEXTS} texts")
    out: dict[str, float] = {}
    for text, bias in value.items():
        if not text or len(text) > MAX_BIAS_TEXT_CHARS:
            raise invalid(name, f"each text of '{name}' must have 1 to "
                          f"{MAX_BIAS_TEXT_CHARS} characters")
        if bias is None:
            raise invalid(name, f"'{name}[{text!r}]' must be a number")
        out[text] = _number(value, text, 0.0, low=-MAX_BIAS, high=MAX_BIAS, name=name)
    return out


# ----------------------------------------------------------------- responses


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(id: str, created: int, model: str, text: str, finish: str,
               use: dict[str, int]) -> dict[str, Any]:
    return {"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": use}


def completion_chunk(id: str, created: int, model: str, text: str, finish: str | None = None,
                     use: dict[str, int] | None = None) -> dict[str, Any]:
    """A streamed completion event: ``text`` is the new text only (a delta)."""
    return {"id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": use}


def chat_completion(id: str, created: int, model: str, text: str, finish: str,
                    use: dict[str, int]) -> dict[str, Any]:
    return {"id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish}],
            "usage": use}


def chat_chunk(id: str, created: int, model: str, delta: dict[str, str],
               finish: str | None = None, use: dict[str, int] | None = None) -> dict[str, Any]:
    """A streamed chat event; the first carries ``delta.role``, the rest new content."""
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": use}


def usage_chunk(id: str, object: str, created: int, model: str,
                use: dict[str, int]) -> dict[str, Any]:
    """OpenAI's extra last event for ``stream_options.include_usage``: no choices."""
    return {"id": id, "object": object, "created": created, "model": model, "choices": [],
            "usage": use}


def with_confidence(body: dict[str, Any], confidence: float) -> dict[str, Any]:
    """``choices[0].confidence``, a ds-engine extension on the last event (or the whole
    answer): exp(mean log-probability of the generated tokens), 0..1, the engine's own
    :attr:`ds_engine.interface.GenerationResult.confidence`. ``logprobs`` stays null:
    the engine keeps no per-token values, and inventing them would mislead other
    clients; a client that wants the figure (the completion service flags answers below
    its threshold) reads this field. OpenAI clients ignore fields they do not know."""
    body["choices"][0]["confidence"] = round(float(confidence), 4)
    return body


def model_card(id: str, created: int, root: str | None, parent: str | None,
               max_model_len: int | None) -> dict[str, Any]:
    """One entry of GET /v1/models, in vLLM's shape (adapters have the base as parent)."""
    return {"id": id, "object": "model", "created": created, "owned_by": "ds-engine",
            "root": root, "parent": parent, "max_model_len": max_model_len}


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse(obj: Any) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line (no ``event:`` names)."""
    return f"data: {dumps(obj)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"
