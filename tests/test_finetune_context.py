"""Repository context in fine-tuning examples (jupyter_ds/finetune/context.py)."""

from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import dataclass

import pytest
from ds_engine.templates import fim_format, neutralize
from ds_engine.testing import make_tiny_tokenizer

from jupyter_ds.context import ContextQuery
from jupyter_ds.context.repository import InlineWorker, RepositoryContext, RepositoryIndex
from jupyter_ds.finetune.context import TrainingContext, package_of
from jupyter_ds.finetune.fim import IGNORE_INDEX, ExampleBuilder, ExampleStream, FimSettings

SPM = fim_format("jupyter-ds-spm")

SHAPES = '''"""Shapes."""


def polygon_area(points, scale=1.0):
    """The area of a simple polygon, by the shoelace formula."""
    total = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        total += x0 * y1 - x1 * y0
    return abs(total) * scale / 2


class Triangle:
    """Three points."""

    def __init__(self, a, b, c):
        self.points = [a, b, c]
'''

DRAWING = '''"""Drawing."""
from .shapes import Triangle, polygon_area


def report(points):
    size = len(points)
    area = polygon_area(points, scale=2.0)
    return size, area


def make(a, b, c):
    shape = Triangle(a, b, c)
    return shape
'''

SECRET = '''def held_out_only():
    return "never in an example"
'''


@dataclass(frozen=True)
class File:
    path: str
    text: str


FILES = [File("geo/shapes.py", SHAPES), File("geo/drawing.py", DRAWING),
         File("lone.py", "x = 1\n")]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer("jupyter-ds-spm")


def count_with(tokenizer):
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture
def context(tokenizer):
    ctx = TrainingContext(FILES, count_with(tokenizer))
    yield ctx
    ctx.close()


def test_package_of() -> None:
    assert package_of("asyncio/events.py") == "asyncio"
    assert package_of("xml/dom/minidom.py") == "xml"
    assert package_of("shutil.py") == ""


def test_block_is_what_a_completion_gets_and_holds_training_files_only(context) -> None:
    cursor = DRAWING.index("polygon_area(points, scale")
    block = context.block("geo/drawing.py", DRAWING[:cursor], DRAWING[cursor:])
    lines = block.splitlines()
    assert lines and all(line.startswith("#") for line in lines)  # commented, as served
    assert "# def polygon_area(points, scale=1.0):" in lines
    assert "# Path: geo/shapes.py" in lines
    assert "never in an example" not in block
    # A lone file at the root is no repository; a notebook or other file gets nothing.
    assert context.block("lone.py", "", "x = 1\n") == ""
    assert context.block("geo/notes.txt", DRAWING[:cursor], "") == ""
    # Only the training files were indexed: a held-out file beside them is not there.
    source = context._source("geo")
    assert sorted(source.index.files) == ["geo/drawing.py", "geo/shapes.py"]


def test_cross_file_cursor_stands_before_a_name_another_file_defines(context) -> None:
    from jupyter_ds.finetune.fim import SpanSampler

    starts = SpanSampler(DRAWING).line_starts
    seen = set()
    rng = random.Random(0)
    for _ in range(40):
        span = context.cross_file_cursor("geo/drawing.py", DRAWING, starts, rng)
        assert span is not None
        start, end = span
        middle = DRAWING[start:end]
        assert "\n" not in middle and DRAWING[end] == "\n"
        seen.add(middle)
    # The rest of each line from its first name defined in shapes.py, never an import.
    assert seen == {"polygon_area(points, scale=2.0)", "Triangle(a, b, c)"}
    # No other file defines anything this one uses: no cursor.
    assert context.cross_file_cursor("geo/shapes.py", SHAPES,
                                     SpanSampler(SHAPES).line_starts, rng) is None


def test_examples_carry_the_block_before_the_prefix(tokenizer, context) -> None:
    specials = (*SPM.sentinels, "<|endoftext|>")
    settings = FimSettings(spm_rate=1.0, filename_rate=0.0, cross_file_rate=1.0,
                           max_prefix_tokens=512)
    builder = ExampleBuilder(tokenizer, SPM, lambda t: neutralize(t, specials),
                             "<|endoftext|>", settings)
    stream = ExampleStream([FILES[1]], builder, seed=3, context=context)
    example = stream.next()
    assert example.kind == "cross_file"
    ids = example.input_ids
    mid = builder.ids["mid"]
    shown = tokenizer.decode(ids[ids.index(mid) + 1: len(ids) - example.supervised])
    # [<issue_closed>] block, then the file's own text up to the cursor.
    assert shown.startswith("# Path: geo/shapes.py") and "\n# def polygon_area(" in shown
    assert shown.endswith(DRAWING[: DRAWING.index(example.middle)])
    # The loss is still on the middle and its end token only.
    target = [t for t, label in zip(ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(target[:-1]) == example.middle
    # Without context the same stream draws plain examples, as before this option.
    plain = ExampleStream([FILES[1]], builder, seed=3)
    assert all(plain.next().kind != "cross_file" for _ in range(30))


def test_the_mix_follows_the_rates_and_resumes(tokenizer, context) -> None:
    specials = (*SPM.sentinels, "<|endoftext|>")
    settings = FimSettings(cross_file_rate=0.5, context_rate=0.5)
    builder = ExampleBuilder(tokenizer, SPM, lambda t: neutralize(t, specials),
                             "<|endoftext|>", settings)
    stream = ExampleStream(FILES[:2], builder, seed=5, context=context)
    examples = [stream.next() for _ in range(200)]
    cross = sum(e.kind == "cross_file" for e in examples)
    with_block = sum("# Path: geo/" in tokenizer.decode(e.input_ids) for e in examples)
    assert 40 <= cross <= 110  # half asked for; shapes.py has no cross-file cursor
    assert cross < with_block < 200  # some plain examples got a block, not all
    state = json.loads(json.dumps(stream.state()))
    expected = [stream.next().input_ids for _ in range(10)]
    again = ExampleStream(FILES[:2], builder, seed=99, context=context)
    again.restore(state)
    assert [again.next().input_ids for _ in range(10)] == expected


def test_collect_is_gather_and_the_inline_worker_parses_at_once(tmp_path) -> None:
    for f in FILES[:2]:
        (tmp_path / f.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f.path).write_text(f.text)
    index = RepositoryIndex(tmp_path)
    index.refresh()
    source = RepositoryContext(index, worker=InlineWorker())
    cursor = DRAWING.index("Triangle(a, b, c)")
    query = ContextQuery(path="geo/drawing.py", prefix=DRAWING[:cursor],
                         suffix=DRAWING[cursor:], language="python")
    def count(text: str) -> int:
        return len(text.split())

    collected = source.collect(query, 400, count)
    # The first ask already has the definitions: the parse ran inline, not queued.
    assert collected is not None and "geo/shapes.py:Triangle" in collected.used
    gathered = asyncio.run(source.gather(query, 400, count))
    assert gathered is not None and gathered.text == collected.text
    assert source.defined_names(query) == {"Triangle", "polygon_area"}
    assert re.search(r"class Triangle", collected.text)
