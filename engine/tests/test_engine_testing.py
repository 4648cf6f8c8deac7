"""The test engines of ``ds_engine.testing`` implement the engine interface."""

from __future__ import annotations

import asyncio

import pytest
from ds_engine.interface import (
    Engine,
    EngineConfig,
    EngineInfo,
    EngineState,
    FinishReason,
    GenerationRequest,
)
from ds_engine.testing import ScriptedEngine


def test_scripted_engine_from_config_answers_from_its_options() -> None:
    engine = ScriptedEngine.from_config(EngineConfig(options={"answers": ["a", "b"]}))
    assert isinstance(engine, Engine) and engine.wait_ready() is True
    texts = [asyncio.run(engine.generate(GenerationRequest("p"))).text for _ in range(3)]
    assert texts == ["a", "b", "b"]  # the last answer repeats
    info = engine.info()
    assert isinstance(info, EngineInfo) and info.state is EngineState.READY
    assert (info.name, info.template) == ("scripted", engine.template.name)
    assert info.to_dict()["state"] == "ready"
    assert engine.cancel("any", reason=FinishReason.STOP) is False  # nothing runs


def test_scripted_engine_defaults_and_checks_its_options() -> None:
    engine = ScriptedEngine.from_config(EngineConfig(options={"name": "s"}))
    assert engine.answers == ["pass"] and engine.name == "s"
    with pytest.raises(ValueError, match="answres"):
        ScriptedEngine.from_config(EngineConfig(options={"answres": ["x"]}))
