"""The test-writing prompt: the module as one file, the test file as the next one.

Code models, small ones above all, write tests best as a continuation of a test file that
follows the code it tests (the layout of their training repositories), not as an answer
to an instruction. So the prompt is the function and what it needs, a file separator, and
the start of ``tests/test_<module>.py`` ending inside a new ``def test_...``; tests kept
in earlier rounds and the failures of the last round are part of that file, so each round
builds on the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass

from ds_engine.templates import PromptTemplate

from jupyter_ds.testgen.context import TargetContext


@dataclass(frozen=True)
class Failure:
    """A test of an earlier round that failed, fed back so the model corrects course."""

    name: str
    message: str


def _comment(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat[:limit] + ("..." if len(flat) > limit else "")


def test_file_start(ctx: TargetContext) -> str:
    """The name the model is asked to continue: ``def test_<function>``."""
    return f"def test_{ctx.function.split('.')[-1].lower()}"


def build_prompt(
    template: PromptTemplate,
    ctx: TargetContext,
    kept: list[str] | None = None,
    failures: list[Failure] | None = None,
) -> tuple[str, str]:
    """(prompt, head): the prompt text and the text it ends with, which starts the answer."""
    module_file = f"{ctx.module}.py"
    test_file = f"tests/test_{ctx.module}.py"
    parts = [*ctx.imports, "", *ctx.callee_signatures, "", ctx.source.rstrip(), ""]
    module_text = "\n".join(p for p in parts if p is not None).strip() + "\n"
    lines = ["import pytest", "", ctx.import_line, "", ""]
    for test in [*ctx.existing_tests, *(kept or [])]:
        lines += [test.rstrip(), "", ""]
    for failure in failures or []:
        lines.append(f"# {failure.name} was wrong: {_comment(failure.message)}")
    if failures:
        lines.append("")
    head = test_file_start(ctx)
    # Everything above is user text (or the model's own, from earlier rounds): the
    # template escapes control tokens in it, so only its own separators act as tokens.
    prompt = template.files_prompt(
        [(module_file, module_text), (test_file, "\n".join(lines) + head)]
    )
    return prompt, head
