"""Context sources around a completion: asked at once, bounded in time, commented into
the prompt before the code, reported in ``data.context``; a slow or failing source adds
nothing and never fails or delays the completion past its budget."""

from __future__ import annotations

import asyncio
import time

from ds_engine.testing import ScriptedEngine

from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.completion.service import CompletionService, CompletionSettings
from jupyter_ds.context import (
    DEFAULT_CONTEXT_TOKENS,
    ContextBlock,
    ContextGatherer,
    ContextQuery,
    as_comments,
)


class Source:
    def __init__(self, name: str, text: str = "", *, delay: float = 0.0,
                 fail: bool = False, timeout_s: float = 0.2) -> None:
        self.name, self.text, self.delay, self.fail = name, text, delay, fail
        self.timeout_s = timeout_s
        self.queries: list[tuple[ContextQuery, int]] = []

    async def gather(self, query, budget_tokens, count):
        self.queries.append((query, budget_tokens))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the kernel died")
        return ContextBlock(self.name, self.text, used=[self.name + "-thing"]) if (
            self.text) else None


def service(*sources: Source, context_tokens: int = 384) -> tuple[CompletionService,
                                                                 ScriptedEngine]:
    engine = ScriptedEngine(["x + 1"])
    settings = CompletionSettings(context_tokens=context_tokens)
    return CompletionService(engine, settings, ContextGatherer(sources)), engine


async def test_sources_go_before_the_code_in_order_and_are_reported():
    kernel = Source("kernel", "df: DataFrame[a: int64, b: object]\n", delay=0.05)
    repo = Source("repository", "Path: pkg/util.py\ndef helper(x: int) -> str\n")
    svc, engine = service(kernel, repo)
    answer = await svc.complete(CompleteRequest(prefix="y = ", path="nb.py"))
    assert answer["output"] == "x + 1"
    prompt = engine.prompts[-1]
    head = ("# df: DataFrame[a: int64, b: object]\n# Path: pkg/util.py\n"
            "# def helper(x: int) -> str\n")
    assert head in prompt and prompt.index(head) < prompt.index("y = ")
    report = {e["source"]: e for e in answer["context"]}
    assert report["kernel"]["state"] == "used" and report["kernel"]["used"] == [
        "kernel-thing"]
    assert report["kernel"]["tokens"] > 0 and report["kernel"]["ms"] >= 40
    assert report["repository"]["state"] == "used"
    query, budget = kernel.queries[-1]
    assert (query.path, query.prefix, query.language) == ("nb.py", "y = ", "python")
    assert 0 < budget <= 384
    # The budget fine-tuning builds its blocks within is this one (at the defaults).
    assert budget == DEFAULT_CONTEXT_TOKENS


async def test_context_comes_on_top_of_the_cursors_own_text():
    """The block is added to the prompt: the file keeps all of ``max_prompt_tokens``
    (as fine-tuning builds its examples), and only the context window bounds the sum."""
    prefix = "".join(f"value_{i} = compute({i})\n" for i in range(400)) + "y = "
    block = "".join(f"def helper_{i}(x: int) -> int\n" for i in range(40))

    async def prompt(*sources: Source, window: int | None = None) -> str:
        engine = ScriptedEngine(["x"])
        if window is not None:
            engine.context_window = lambda: window  # type: ignore[method-assign]
        svc = CompletionService(engine, CompletionSettings(max_prompt_tokens=600),
                                ContextGatherer(sources))
        await svc.complete(CompleteRequest(prefix=prefix, path="a.py"))
        return engine.prompts[-1]

    plain = await prompt()
    with_block = await prompt(Source("repository", block))
    start = plain.index("value_")
    own = plain[start:]
    assert own in with_block and "# def helper_0(x: int) -> int" in with_block
    assert len(own) < len(prefix) - 1000  # the file was trimmed to its budget
    # A window too small for both: the file gives way, the whole prompt still fits it.
    tight = await prompt(Source("repository", block), window=700)
    assert "# def helper_0(x: int) -> int" in tight
    kept = tight[tight.index("value_"):]
    assert len(kept) < len(own) and own.endswith(kept)


async def test_a_slow_or_failing_source_adds_nothing_and_does_not_delay():
    slow = Source("kernel", "never shown", delay=5.0, timeout_s=0.1)
    broken = Source("repository", "never shown either", fail=True)
    svc, engine = service(slow, broken)
    started = time.monotonic()
    answer = await svc.complete(CompleteRequest(prefix="y = "))
    assert time.monotonic() - started < 2
    assert answer["output"] == "x + 1" and "never shown" not in engine.prompts[-1]
    states = {e["source"]: (e["state"], e["tokens"]) for e in answer["context"]}
    assert states == {"kernel": ("timeout", 0), "repository": ("error", 0)}


async def test_streamed_completions_carry_the_context_too():
    svc, engine = service(Source("kernel", "n: int\n"))
    events = [e async for e in svc.stream(CompleteRequest(prefix="y = "))]
    assert events[-1]["done"] and events[-1]["context"][0]["state"] == "used"
    assert "# n: int\n" in engine.prompts[-1]


async def test_no_sources_no_context_and_a_zero_budget_asks_none():
    svc, engine = service()
    answer = await svc.complete(CompleteRequest(prefix="y = "))
    assert answer["context"] == [] and engine.prompts[-1].endswith("y = ")
    kernel = Source("kernel", "n: int\n")
    svc, _ = service(kernel, context_tokens=0)
    assert (await svc.complete(CompleteRequest(prefix="y = ")))["context"] == []
    assert kernel.queries == []


def test_comments_are_the_languages_line_comments():
    assert as_comments("a\n\nb\n", "python") == "# a\n#\n# b\n"


async def test_the_server_adds_repository_context_and_reports_it(ds_ready, jp_root_dir):
    """Through the real server: a file importing a local module gets the imported
    function's signature (once the background index has it) and data.context says so."""
    pkg = jp_root_dir / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "units.py").write_text(
        'def to_celsius(fahrenheit: float) -> float:\n'
        '    """Degrees Fahrenheit in degrees Celsius."""\n'
        '    return (fahrenheit - 32) * 5 / 9\n')
    body = {"prefix": "from pkg.units import to_celsius\n\nt = ", "path": "app.py",
            "max_tokens": 2}
    entry: dict = {}
    for _ in range(100):  # the first completions may come before the first indexing
        code, env, _ = await ds_ready.post("complete", body)
        assert code == 200, env
        entry = {e["source"]: e for e in env["data"]["context"]}["repository"]
        # Signatures are parsed in the background once a cursor imports their module.
        if entry["state"] == "used" and any("to_celsius" in u for u in entry["used"]):
            break
        await asyncio.sleep(0.1)
    assert entry["state"] == "used", entry
    assert any("to_celsius" in u for u in entry["used"]) and entry["tokens"] > 0, entry["used"]
    # ``t = |`` is where a name starts: the server's default nudges toward it.
    from jupyter_ds.completion.service import DEFAULT_START_BIAS

    assert entry.get("nudged") == (1 if DEFAULT_START_BIAS > 0 else None), entry
