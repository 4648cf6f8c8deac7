"""Integration tests on the embedded SmolLM2-135M: completions of real code parse in context.

The code comes from the standard library (not written in this project); the cursor is put
at the start of statements inside function bodies, as when a user types a new line.
"""

from __future__ import annotations

import ast
import inspect
import json
import statistics
import textwrap

import pytest
from ds_engine.local import LocalEngine

from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.completion.service import CompletionService
from jupyter_ds.completion.validate import parses
from jupyter_ds.explain.requests import ExplainRequest
from jupyter_ds.explain.service import ExplainService

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def engine(model_cache_dir):
    eng = LocalEngine(cache_dir=model_cache_dir)  # the embedded default
    eng.load()
    yield eng
    eng.close()


def cursor_cases(module, limit: int) -> list[tuple[str, str, str]]:
    """(name, prefix, suffix): the cursor after the indentation of a body statement."""
    source = inspect.getsource(module)
    lines = source.splitlines(keepends=True)
    cases = []
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef) or len(node.body) < 3:
            continue
        stmt = node.body[len(node.body) // 2]
        line = lines[stmt.lineno - 1]
        indent = line[: len(line) - len(line.lstrip())]
        offset = sum(len(x) for x in lines[: stmt.lineno - 1]) + len(indent)
        cases.append((f"{module.__name__}.{node.name}", source[:offset], source[offset:]))
        if len(cases) == limit:
            break
    return cases


CASES = cursor_cases(statistics, 3) + cursor_cases(textwrap, 2)


@pytest.mark.parametrize("name, prefix, suffix", CASES, ids=[c[0] for c in CASES])
async def test_completions_of_real_code_parse_in_context(engine, name, prefix, suffix):
    service = CompletionService(engine)
    data = await service.complete(
        CompleteRequest(prefix=prefix, suffix=suffix, path=f"{name}.py", max_tokens=24)
    )
    assert data["token_count"] > 0
    for item in data["items"]:
        assert parses(prefix + item["insertText"] + suffix), item


async def test_the_embedded_model_serves_its_fim_adapter(engine):
    """The shipped FIM adapter is merged: the suffix is in the prompt, and a blank line in
    a block gets a body (the issue's clamp example offered nothing before)."""
    info = engine.info().to_dict()
    assert info["adapter"] == "default-fim" and engine.template.fim.family == "jupyter-ds-spm"
    prefix = "def clamp(x, lo, hi):\n    if x > hi:\n        "
    suffix = "\n    return x\n"
    data = await CompletionService(engine).complete(
        CompleteRequest(prefix=prefix, suffix=suffix, max_tokens=16)
    )
    assert data["output"].strip() and data["adapter"] == "default-fim", data
    assert parses(prefix + data["output"] + suffix)
    assert data["prompt_tokens"] > engine.count_tokens(prefix)  # the suffix is in the prompt


async def test_a_simple_function_gets_a_useful_completion(engine):
    prefix = "def add(a, b):\n    return "
    data = await CompletionService(engine).complete(
        CompleteRequest(prefix=prefix, max_tokens=16)
    )
    assert data["items"], data
    assert "a" in data["output"] and "b" in data["output"], data
    assert parses(prefix + data["output"])


async def test_explain_mentions_what_the_code_does(engine):
    data = await ExplainService(engine).explain(
        ExplainRequest(code="def add(a, b):\n    return a + b\n", max_tokens=60)
    )
    assert data["token_count"] > 5
    assert "add" in data["output"].lower() or "sum" in data["output"].lower(), data


@pytest.fixture
def jp_server_config(model_cache_dir):
    # No model_path: the server uses the embedded default (converted once, then cached).
    return {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_ds": True, "jupyter_server_terminals": False},
            "allow_unauthenticated_access": False,
        },
        "JupyterDsApp": {"cache_dir": str(model_cache_dir)},
    }


async def test_server_answers_the_readme_curl_on_the_embedded_model(ds_client):
    await ds_client.wait_ready(timeout=240)
    code, env, _ = await ds_client.post(
        "complete", {"prefix": "def mean(xs):\n    return ", "language": "python"}
    )
    assert code == 200, env
    data = env["data"]
    assert data["model"].startswith("SmolLM2")
    assert data["token_count"] > 0
    assert json.dumps(env)  # serialisable
    code, env, _ = await ds_client.post(
        "explain", {"code": "print(sorted({3, 1, 2}))", "max_tokens": 40}
    )
    assert code == 200 and env["data"]["output"], env


async def test_generated_tests_on_the_embedded_model_prove_themselves(engine):
    from jupyter_ds.testgen.requests import TestsRequest, TestsRunRequest
    from jupyter_ds.testgen.service import TestgenService

    source = (
        "def clamp(x, low, high):\n"
        "    if x < low:\n        return low\n"
        "    if x > high:\n        return high\n"
        "    return x\n"
    )
    service = TestgenService(engine)
    data = await service.generate(
        TestsRequest(source=source, path="clamp.py", rounds=1, max_tokens=160)
    )
    funnel = data["funnel"]
    assert funnel["candidates"] >= 1  # the model wrote something test-shaped
    assert funnel["candidates"] == len(data["verdicts"])
    assert funnel["candidates"] >= funnel["parse"] >= funnel["pass"] >= funnel["kept"]
    if data["kept"]:  # whatever was kept passes again, every time
        check = await service.run_tests(
            TestsRunRequest(tests=data["test_file"], source=source, path="clamp.py", runs=2)
        )
        assert all(t["passed_runs"] == 2 for t in check["tests"]), check
        assert data["coverage"]["after"]["lines"] > 0
