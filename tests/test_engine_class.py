"""A new engine is one small class, chosen with ``engine_class``: the whole pipeline runs.

``EchoEngine`` below is the complete engine: it answers every request with the text of
its configuration, word by word. Selected through ``JupyterDsApp.engine_class``, it is
served by a real Jupyter server over REST and the WebSocket, with the same
authentication, rate limits, metrics and audit records as the in-process engine, and its
answers go through the same post-processing and validation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from ds_engine import (
    EngineConfig,
    EngineInfo,
    EngineState,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamChunk,
)
from ds_engine.factory import engine_class, make_engine
from ds_engine.templates import detect_template
from ds_engine.testing import BASE_SPECIAL_TOKENS, CHATML_TEMPLATE, NoAdapters
from prometheus_client import REGISTRY
from test_audit_api import records
from traitlets import TraitError

from jupyter_ds.app import JupyterDsApp

ANSWER = "(f - 32) * 5 / 9"
PREFIX = "def fahrenheit_to_celsius(f):\n    return "


class EchoEngine(NoAdapters):
    """An engine whose model is a fixed answer (``engine_options: {"answer": ...}``)."""

    instances: list[EchoEngine] = []  # noqa: RUF012 - the test reads the served one

    def __init__(self, answer: str, delay_s: float = 0.0) -> None:
        self.answer = answer
        self.delay_s = delay_s
        self._template = detect_template(BASE_SPECIAL_TOKENS, CHATML_TEMPLATE)
        self.prompts: list[str] = []
        self.cancels: dict[str, FinishReason] = {}
        EchoEngine.instances.append(self)

    @classmethod
    def from_config(cls, config: EngineConfig) -> EchoEngine:
        return cls(config.options.get("answer", "pass"), config.options.get("delay_s", 0.0))

    state = EngineState.READY

    @property
    def template(self):  # type: ignore[override]
        return self._template

    def start_loading(self) -> None:
        return None

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def context_window(self) -> int:
        return 4096

    def _result(self, request: GenerationRequest, text: str, reason: FinishReason):
        return GenerationResult(
            text=text, token_count=len(text.split()), prompt_tokens=len(request.prompt.split()),
            confidence=0.9, finish_reason=reason, model="echo", latency_ms=1.0,
            request_id=request.request_id,
        )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.prompts.append(request.prompt)
        return self._result(request, self.answer, FinishReason.STOP)

    async def stream(self, request: GenerationRequest):
        self.prompts.append(request.prompt)
        words = self.answer.split(" ")
        for i in range(1, len(words) + 1):
            reason = self.cancels.get(request.request_id)
            if reason is not None:
                text = " ".join(words[: i - 1])
                yield StreamChunk(text, "", i - 1, True, self._result(request, text, reason))
                return
            text = " ".join(words[:i])
            yield StreamChunk(text, words[i - 1], i)
            await asyncio.sleep(self.delay_s)
        yield StreamChunk(self.answer, "", len(words), True,
                          self._result(request, self.answer, FinishReason.STOP))

    def cancel(self, request_id: str, *, reason: FinishReason = FinishReason.CANCELLED) -> bool:
        self.cancels.setdefault(request_id, reason)
        return True

    def info(self) -> EngineInfo:
        return EngineInfo(name="echo", state=EngineState.READY, kind="toy",
                          template=self._template.name)


SPEC = f"{__name__}.EchoEngine"


def counted(endpoint: str, status: str) -> float:
    return REGISTRY.get_sample_value(
        "jupyter_ds_requests_total", {"endpoint": endpoint, "status": status}) or 0.0


@pytest.fixture
def ds_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "engine_class": SPEC,
        "engine_options": {"answer": ANSWER, "delay_s": 0.01},
        "rate_limits": {"complete": "4/m"},
        "audit_log_path": str(tmp_path / "audit.log"),
    }


async def test_a_toy_engine_serves_the_whole_pipeline(ds_ready, jp_ws_fetch, tmp_path):
    _, env, _ = await ds_ready.get("models")
    assert env["data"]["models"][0]["name"] == "echo"
    assert env["data"]["models"][0]["kind"] == "toy"
    engine = EchoEngine.instances[-1]
    ok_before = counted("complete", "200") + counted("complete/stream", "200")

    # REST: the answer comes back post-processed and validated, in the envelope
    code, env, _ = await ds_ready.post("complete", {"prefix": PREFIX, "language": "python"})
    assert code == 200, env
    assert env["data"]["output"] == ANSWER and env["data"]["model"] == "echo"
    assert engine.prompts[-1].endswith(PREFIX)  # rendered through the engine's template

    # WebSocket: streamed chunks, then done; a cancel reaches the engine by request id
    conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream")
    conn.write_message(json.dumps({"number": 1, "prefix": PREFIX, "stream": True}))
    replies = []
    while not (replies and replies[-1].get("done")):
        replies.append(json.loads(await asyncio.wait_for(conn.read_message(), 10)))
    assert replies[-1]["response"]["insertText"] == ANSWER
    assert replies[-1]["finish_reason"] == "stop"

    # explain goes through the chat template of the same engine
    code, env, _ = await ds_ready.post("explain", {"code": "x = 1"})
    assert code == 200 and env["data"]["output"] == ANSWER, env

    # the same limits for both transports: 4 completions a minute in all
    conn.write_message(json.dumps({"number": 2, "prefix": PREFIX, "stream": True}))
    first = json.loads(await asyncio.wait_for(conn.read_message(), 10))
    assert first["type"] == "inline_completion"
    while not json.loads(await asyncio.wait_for(conn.read_message(), 10)).get("done"):
        pass
    code, env, headers = await ds_ready.post("complete", {"prefix": PREFIX})
    assert code == 200, env
    code, env, headers = await ds_ready.post("complete", {"prefix": PREFIX})
    assert code == 429 and "Retry-After" in headers, env
    conn.write_message(json.dumps({"number": 3, "prefix": PREFIX, "stream": True}))
    refused = json.loads(await asyncio.wait_for(conn.read_message(), 10))
    assert refused["type"] == "error" and refused["error"]["code"] == "rate_limited"
    conn.close()

    # counted and audited alike
    ok_after = counted("complete", "200") + counted("complete/stream", "200")
    assert ok_after - ok_before == 4
    recs = records(tmp_path / "audit.log")
    kinds = [(r["endpoint"], r["status"]) for r in recs if r["endpoint"].startswith("complete")]
    assert kinds.count(("complete", 200)) == 2 and kinds.count(("complete/stream", 200)) == 2
    assert ("complete", 429) in kinds and ("complete/stream", 429) in kinds
    assert len({r["user"] for r in recs}) == 1


async def test_a_websocket_cancel_reaches_the_engine_by_request_id(ds_ready, jp_ws_fetch):
    engine = EchoEngine.instances[-1]
    engine.answer = " ".join(["word"] * 200)
    engine.delay_s = 0.05
    conn = await jp_ws_fetch("jupyter-ds", "v1", "complete", "stream")
    conn.write_message(json.dumps({"number": 5, "prefix": "notes:\n", "language": "text",
                                   "stream": True}))
    while True:
        msg = json.loads(await asyncio.wait_for(conn.read_message(), 10))
        if msg["type"] == "stream":
            break
    conn.write_message(json.dumps({"type": "cancel", "number": 5}))
    while not msg.get("done"):
        msg = json.loads(await asyncio.wait_for(conn.read_message(), 10))
    conn.close()
    assert msg["cancelled"] is True and msg["finish_reason"] == "cancelled"
    assert FinishReason.CANCELLED in engine.cancels.values()


def test_the_engine_class_is_checked_when_it_is_set():
    app = JupyterDsApp()
    with pytest.raises(TraitError, match="cannot be imported"):
        app.engine_class = "no_such_module.Engine"
    with pytest.raises(TraitError, match="missing"):
        app.engine_class = "collections.OrderedDict"
    with pytest.raises(TraitError, match="dotted path"):
        app.engine_class = "LocalEngine"
    app.engine_class = SPEC
    assert engine_class(SPEC) is EchoEngine
    built = make_engine(SPEC, EngineConfig(options={"answer": "x"}))
    assert isinstance(built, EchoEngine) and built.answer == "x"
