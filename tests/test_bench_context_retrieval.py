"""benchmarks/context_retrieval.py: its cursors and arms on a small hand-built package
(the real run reads the standard library and the embedded tokenizer; no model runs)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from benchmark_modules import benchmark_module

from jupyter_ds.finetune.context import TrainingContext


@dataclass(frozen=True)
class File:
    path: str
    text: str


MODELS = "".join(
    f"class Model{i}:\n    '''Model number {i}.'''\n\n"
    + "".join(f"    def fit_{j}(self, data, rate={j}):\n        '''Fit {j}.'''\n"
              "        return data\n\n" for j in range(12))
    for i in range(3))
TRAIN = """from .models import Model0, Model1, Model2


def train(data):
    first = Model0()
    second = Model1()
    third = Model2()
    return first, second, third
"""


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture
def context():
    ctx = TrainingContext([File("ml/models.py", MODELS), File("ml/train.py", TRAIN)], words)
    yield ctx
    ctx.close()


def test_the_arms_ask_the_same_cursors_and_count_the_definitions_shown(context) -> None:
    with benchmark_module("context_retrieval") as cr:
        files = [File("ml/train.py", TRAIN)]
        chosen = cr.cursors(context, files, per_file=6, seed=0)
        names = {name for _, _, _, name in chosen}
        assert names and names <= {"Model0", "Model1", "Model2"}
        # A budget that whole classes overflow: one class takes it all when whole; cut to
        # their heads, each of the three fits.
        arms = cr.measure(context, files, words, per_file=6, seed=0, budget=150)
        by_arm = {a["definition_share"]: a for a in arms}
        assert len(arms) == len(cr.ARMS) and {a["cursors"] for a in arms} == {len(chosen)}
        assert by_arm[0.15]["definition_in_block"] == 100.0
        assert by_arm[1.0]["definition_in_block"] < 100.0
        table = cr.markdown({"root": "a test package", "budget_tokens": 150, "arms": arms,
                             "seconds": 0.1})
        assert table.count("\n| ") == len(arms) + 2 and "(default)" in table
