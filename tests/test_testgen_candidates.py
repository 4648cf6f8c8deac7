"""Golden tests: a model's answer -> validated test candidates, and the sandbox's module."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from jupyter_ds.testgen.candidates import (
    REASONS,
    Candidate,
    CandidateSet,
    build_test_module,
    extract_candidates,
)

FENCE = "```"


def fenced(code: str, language: str = "python") -> str:
    return f"{FENCE}{language}\n{code}{FENCE}\n"


@dataclass(frozen=True)
class Case:
    """An answer and what must come out of it (names, kinds and rejection reasons)."""

    id: str
    answer: str
    tests: list[str] = field(default_factory=list)
    fixtures: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    rejected: list[tuple[str | None, str]] = field(default_factory=list)
    existing: str | None = None
    truncated: bool | None = None


def summary(result: CandidateSet) -> dict[str, object]:
    return {
        "tests": [test.name for test in result.tests],
        "fixtures": [fixture.name for fixture in result.fixtures],
        "imports": result.imports,
        "rejected": [(rejected.name, rejected.reason) for rejected in result.rejected],
    }


SIMPLE = "def test_add():\n    assert add(1, 2) == 3\n"

CASES = [
    # --- where the code is --------------------------------------------------------------
    Case(
        "fence-with-prose",
        "Here are tests for `add`:\n\n"
        + fenced("from calc import add\n\n\n" + SIMPLE)
        + "\nThey cover the basic case.\n",
        tests=["test_add"],
        imports=["from calc import add"],
    ),
    Case(
        "no-fence-plain-code",
        "from calc import add\n\n" + SIMPLE,
        ["test_add"],
        [],
        ["from calc import add"],
    ),
    Case(
        # The model continues the prompt's test file, then closes a fence and explains.
        "code-then-closing-fence-then-prose",
        SIMPLE + "\n\ndef test_sub():\n    assert sub(2, 1) == 1\n```\n\nThese check it.\n",
        tests=["test_add", "test_sub"],
    ),
    Case(
        "prose-then-bare-fence-is-still-an-opening-fence",
        "Here are the tests:\n```\n" + SIMPLE + "```\n",
        tests=["test_add"],
    ),
    Case(
        "no-fence-prose-around-code",
        "Sure! Here are the tests:\n\n" + SIMPLE + "\nThese check addition.\n",
        tests=["test_add"],
    ),
    Case(
        "several-blocks-other-languages-skipped",
        "First:\n"
        + fenced("import pytest\n\n" + SIMPLE)
        + "Run them with:\n"
        + fenced("pytest -q\n", "bash")
        + "Then:\n"
        + fenced("def test_sub():\n    assert sub(2, 1) == 1\n", "py"),
        tests=["test_add", "test_sub"],
        imports=["import pytest"],
    ),
    Case(
        "tilde-fence-and-untagged-fence",
        "~~~\n" + SIMPLE + "~~~\n" + fenced("def test_b():\n    assert True\n", ""),
        tests=["test_add", "test_b"],
    ),
    Case(
        "indented-fence-in-a-list",
        "1. A test:\n\n   ```python\n   def test_a():\n       assert 1 + 1 == 2\n   ```\n",
        tests=["test_a"],
    ),
    Case("crlf-answer", fenced(SIMPLE).replace("\n", "\r\n"), ["test_add"]),
    Case("prose-only", "I cannot write tests for this function.", []),
    Case(
        "module-docstring-and-pass-ignored",
        fenced('"""Tests for calc."""\npass\n\n' + SIMPLE),
        tests=["test_add"],
    ),
    Case(
        "multiline-string-with-column-0-lines-in-broken-block",
        fenced(
            'def test_text():\n    s = """\nline at column 0\n"""\n    assert s\n\n'
            "def test_broken(:\n    pass\n\n"
            "def test_after():\n    assert 1\n"
        ),
        tests=["test_text", "test_after"],
        rejected=[("test_broken", "does_not_parse")],
    ),
    # --- truncation and syntax errors ---------------------------------------------------
    Case(
        "truncated-last-function-open-fence",
        "```python\n" + SIMPLE + "\ndef test_cut():\n    assert add(1,",
        tests=["test_add"],
        rejected=[("test_cut", "truncated")],
    ),
    Case(
        "truncated-last-function-no-fence",
        SIMPLE + "\ndef test_cut():\n    x = [1, 2,\n",
        tests=["test_add"],
        rejected=[("test_cut", "truncated")],
    ),
    Case(
        "truncated-flag-drops-a-parsing-last-function",
        "```python\n" + SIMPLE + "\ndef test_half():\n    x = compute()\n",
        tests=["test_add"],
        rejected=[("test_half", "truncated")],
        truncated=True,
    ),
    Case(
        "not-truncated-flag-blames-syntax",
        "```python\n" + SIMPLE + "\ndef test_cut():\n    assert add(1,",
        tests=["test_add"],
        rejected=[("test_cut", "does_not_parse")],
        truncated=False,
    ),
    Case(
        "syntax-error-in-closed-block",
        fenced("def test_bad()\n    assert 1\n\n" + SIMPLE),
        tests=["test_add"],
        rejected=[("test_bad", "does_not_parse")],
    ),
    Case(
        "break-outside-loop-does-not-compile",
        fenced("def test_a():\n    break\n\n" + SIMPLE),
        tests=["test_add"],
        rejected=[("test_a", "does_not_compile")],
    ),
    Case(
        "await-in-sync-test-does-not-compile",
        fenced("def test_a():\n    await thing()\n"),
        rejected=[("test_a", "does_not_compile")],
    ),
    Case(
        "top-level-return-does-not-compile",
        fenced("return 1\n" + SIMPLE),
        tests=["test_add"],
        rejected=[(None, "does_not_compile")],
    ),
    # --- what a test module may hold ----------------------------------------------------
    Case(
        "test-class",
        fenced(
            "class TestAdd:\n"
            '    """Addition."""\n\n'
            "    TOLERANCE = 1e-9\n\n"
            "    def setup_method(self):\n        self.x = 1\n\n"
            "    @pytest.fixture\n    def y(self):\n        return 2\n\n"
            "    def test_one(self, y):\n        assert add(self.x, y) == 3\n"
        ),
        tests=["TestAdd"],
    ),
    Case(
        "unittest-style-class",
        fenced(
            "import unittest\n\n\nclass TestAdd(unittest.TestCase):\n"
            "    def setUp(self):\n        self.a = 1\n\n"
            "    def test_a(self):\n        self.assertEqual(self.a, 1)\n"
        ),
        tests=["TestAdd"],
        imports=["import unittest"],
    ),
    Case(
        "class-with-helper-method",
        fenced(
            "class TestA:\n    def make(self):\n        return 1\n\n"
            "    def test_a(self):\n        pass\n"
        ),
        rejected=[("TestA", "not_a_test")],
    ),
    Case(
        "class-with-init",
        fenced(
            "class TestA:\n    def __init__(self):\n        pass\n\n"
            "    def test_a(self):\n        pass\n"
        ),
        rejected=[("TestA", "not_a_test")],
    ),
    Case(
        "class-without-tests",
        fenced("class TestA:\n    def setup_method(self):\n        pass\n"),
        rejected=[("TestA", "not_a_test")],
    ),
    Case(
        "class-not-named-test",
        fenced("class Helper:\n    def test_a(self):\n        pass\n"),
        rejected=[("Helper", "not_a_test")],
    ),
    Case(
        "class-body-call",
        fenced("class TestA:\n    print('loaded')\n\n    def test_a(self):\n        pass\n"),
        rejected=[("TestA", "side_effect")],
    ),
    Case(
        "fixtures-three-spellings",
        fenced(
            "import pytest\nfrom pytest import fixture\n\n\n"
            "@pytest.fixture\ndef a():\n    return 1\n\n\n"
            "@pytest.fixture(scope='module')\ndef b():\n    yield 2\n\n\n"
            "@fixture\ndef c():\n    return 3\n\n\n"
            "def test_abc(a, b, c):\n    assert a + b == c\n"
        ),
        tests=["test_abc"],
        fixtures=["a", "b", "c"],
        imports=["import pytest", "from pytest import fixture"],
    ),
    Case(
        "async-tests",
        fenced(
            "import pytest\n\n\n@pytest.mark.asyncio\nasync def test_fetch():\n"
            "    assert await fetch() == 1\n\n\n"
            "async def test_plain_async():\n    assert True\n"
        ),
        tests=["test_fetch", "test_plain_async"],
        imports=["import pytest"],
    ),
    Case(
        "helper-function",
        fenced("def make_input():\n    return [1]\n\n\n" + SIMPLE),
        tests=["test_add"],
        rejected=[("make_input", "not_a_test")],
    ),
    Case(
        "module-xunit-hook",
        fenced("def setup_module(module):\n    pass\n\n\n" + SIMPLE),
        tests=["test_add"],
        fixtures=["setup_module"],
    ),
    Case(
        "literal-constants-allowed",
        fenced("EPS = 1e-9\nCASES: list = [(1, 2), (-1, -2)]\nNAME = 'x' * 2\n\n" + SIMPLE),
        tests=["test_add"],
        fixtures=["EPS", "CASES"],
        rejected=[(None, "side_effect")],
    ),
    # --- imports ------------------------------------------------------------------------
    Case(
        "imports-merged-without-duplicates",
        fenced("import os\nimport numpy as np\nfrom calc import add\n" + SIMPLE)
        + fenced("import os\nfrom calc import sub, add\nfrom calc import mul as m\n"),
        tests=["test_add"],
        imports=["import os", "import numpy as np", "from calc import add, sub, mul as m"],
    ),
    Case(
        "import-of-module-under-test-and-future",
        fenced("from __future__ import annotations\nimport calc\nfrom calc import add\n" + SIMPLE),
        tests=["test_add"],
        imports=["from __future__ import annotations", "import calc", "from calc import add"],
    ),
    Case(
        "star-import",
        fenced("from calc import *\n\n" + SIMPLE),
        tests=["test_add"],
        rejected=[(None, "star_import")],
    ),
    Case(
        "relative-import",
        fenced("from .calc import add\n\n" + SIMPLE),
        tests=["test_add"],
        rejected=[(None, "relative_import")],
    ),
    # --- duplicates and names -----------------------------------------------------------
    Case(
        "duplicate-same-body-different-name",
        fenced(SIMPLE + "\n\ndef test_add_again():\n    assert add(1, 2) == 3\n"),
        tests=["test_add"],
        rejected=[("test_add_again", "duplicate")],
    ),
    Case(
        "duplicate-ignores-docstring-comments-spacing",
        fenced(
            SIMPLE
            + '\n\ndef test_other():\n    """Same thing."""\n    # again\n    assert add(1,2)==3\n'
        ),
        tests=["test_add"],
        rejected=[("test_other", "duplicate")],
    ),
    Case(
        "same-body-different-parametrize-kept",
        fenced(
            "@pytest.mark.parametrize('x', [1])\ndef test_a(x):\n    assert x\n\n\n"
            "@pytest.mark.parametrize('x', [2])\ndef test_b(x):\n    assert x\n"
        ),
        tests=["test_a", "test_b"],
    ),
    Case(
        "duplicate-of-existing-test",
        fenced("def test_new_name():\n    assert add(1, 2) == 3\n"),
        existing="from calc import add\n\n\n" + SIMPLE,
        rejected=[("test_new_name", "duplicate")],
    ),
    Case(
        "name-taken-by-existing-test-renamed",
        fenced("def test_add():\n    assert add(0, 0) == 0\n"),
        existing=SIMPLE + "\n\ndef test_add_2():\n    assert add(2, 2) == 4\n",
        tests=["test_add_3"],
    ),
    Case(
        "name-taken-within-answer-renamed",
        fenced(SIMPLE + "\n\ndef test_add():\n    assert add(0, 0) == 0\n"),
        tests=["test_add", "test_add_2"],
    ),
    Case(
        "fixture-clash-and-duplicate",
        fenced(
            "@pytest.fixture\ndef data():\n    return [2]\n\n\n"
            "@pytest.fixture\ndef same():\n    return 1\n\n\n" + SIMPLE
        ),
        existing="@pytest.fixture\ndef data():\n    return [1]\n\n\n"
        "@pytest.fixture\ndef same():\n    return 1\n",
        tests=["test_add"],
        rejected=[("data", "name_collision"), ("same", "duplicate")],
    ),
    Case(
        "constants-duplicate-and-clash-fixture-same-body-new-name-kept",
        fenced(
            "EPS = 1e-9\nTOL = 1\n\n\n"
            "@pytest.fixture\ndef other_data():\n    return [1]\n\n\n" + SIMPLE
        ),
        existing="EPS = 1e-9\nTOL = 2\n\n\n@pytest.fixture\ndef data():\n    return [1]\n",
        tests=["test_add"],
        fixtures=["other_data"],
        rejected=[("EPS", "duplicate"), ("TOL", "name_collision")],
    ),
    Case(
        "existing-file-that-does-not-parse-is-ignored",
        fenced(SIMPLE),
        existing="def test_add(:\n",
        tests=["test_add"],
    ),
    Case(
        "unicode",
        fenced('def test_ünïcode():\n    assert "é".upper() == "É"  # ✓\n'),
        tests=["test_ünïcode"],
    ),
]

SIDE_EFFECTS = {
    "bare-call": "print('hello')",
    "os-system": "os.system('rm -rf /')",
    "sys-exit": "sys.exit(0)",
    "assign-call": "DATA = load_data()",
    "assign-attribute": "pytestmark = pytest.mark.slow",
    "augmented-assign": "COUNT += 1",
    "main-guard": "if __name__ == '__main__':\n    pytest.main()",
    "for-loop": "for i in range(3):\n    print(i)",
    "while-loop": "while True:\n    pass",
    "with-block": "with open('x', 'w') as f:\n    f.write('x')",
    "try-import": "try:\n    import numpy\nexcept ImportError:\n    numpy = None",
    "top-level-assert": "assert add(1, 1) == 2",
    "delete": "del sys.modules['calc']",
    "import-then-call-one-line": "import os; os.system('ls')",
    "decorator-calls-os-system": "@os.system('ls')\ndef test_x():\n    pass",
    "default-calls-open": "def test_x(f=open('/etc/passwd')):\n    pass",
    "parametrize-calls-sys-exit": (
        "@pytest.mark.parametrize('x', [sys.exit(0)])\ndef test_x(x):\n    pass"
    ),
    "class-base-calls-subprocess": (
        "class TestX(subprocess.check_output('id')):\n    def test_a(self):\n        pass"
    ),
}

CASES += [
    Case(
        f"side-effect-{key}",
        fenced(code + "\n\n\n" + SIMPLE),
        ["test_add"],
        rejected=[(None, "side_effect")],
    )
    for key, code in SIDE_EFFECTS.items()
]


def expected_rejections(case: Case) -> list[tuple[str | None, str]]:
    """Decorated hostile definitions carry their name; bare statements do not."""
    if not case.id.startswith("side-effect-"):
        return case.rejected
    name = "TestX" if "class" in case.id else "test_x"
    named = ("decorator", "default", "parametrize", "class-base")
    return [(name if any(part in case.id for part in named) else None, "side_effect")]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_extract_candidates(case: Case) -> None:
    result = extract_candidates(case.answer, case.existing, truncated=case.truncated)
    assert summary(result) == {
        "tests": case.tests,
        "fixtures": case.fixtures,
        "imports": case.imports,
        "rejected": expected_rejections(case),
    }
    assert all(rejected.reason in REASONS and rejected.message for rejected in result.rejected)


def test_sources_keep_decorators_and_comments() -> None:
    answer = fenced(
        "import pytest\n\n\n"
        "# Edge case: empty input.\n"
        "@pytest.mark.parametrize('xs', [[]])\n"
        "def test_empty(xs):\n"
        "    assert total(xs) == 0  # nothing to add\n"
    )
    [test] = extract_candidates(answer).tests
    assert test == Candidate(
        "test_empty",
        "# Edge case: empty input.\n"
        "@pytest.mark.parametrize('xs', [[]])\n"
        "def test_empty(xs):\n"
        "    assert total(xs) == 0  # nothing to add\n",
        "test",
    )


def test_renamed_source_keeps_indentation_and_decorators() -> None:
    answer = fenced("@pytest.mark.slow\ndef test_add():\n  assert add(0, 0) == 0\n")
    [test] = extract_candidates(answer, existing=SIMPLE).tests
    assert test.source == "@pytest.mark.slow\ndef test_add_2():\n  assert add(0, 0) == 0\n"


def test_rejection_keeps_the_offending_source() -> None:
    answer = fenced("os.system('rm -rf /')\n\n" + SIMPLE)
    [rejected] = extract_candidates(answer).rejected
    assert rejected.source == "os.system('rm -rf /')\n"
    assert "os.system" in rejected.message


BUILD_CASES = [
    pytest.param(
        ["import pytest", "from calc import add"],
        [Candidate("nums", "@pytest.fixture\ndef nums():\n    return [1, 2]\n", "fixture")],
        [Candidate("test_add", SIMPLE, "test")],
        "import calc",
        "import pytest\nfrom calc import add\nimport calc\n\n\n"
        "@pytest.fixture\ndef nums():\n    return [1, 2]\n\n\n" + SIMPLE,
        id="imports-then-module-then-fixtures-then-tests",
    ),
    pytest.param(
        ["import os", "import os", "from calc import add", "from __future__ import annotations"],
        [],
        [SIMPLE, "def test_b():\n    assert 1\n"],
        "from calc import add, sub",
        "from __future__ import annotations\n\nimport os\nfrom calc import add, sub\n\n\n"
        + SIMPLE
        + "\n\ndef test_b():\n    assert 1\n",
        id="duplicates-merged-future-first",
    ),
    pytest.param([], [], [SIMPLE], "", SIMPLE, id="no-imports"),
]


@pytest.mark.parametrize(("imports", "fixtures", "tests", "module_import", "expected"), BUILD_CASES)
def test_build_test_module(
    imports: list[str],
    fixtures: list[Candidate],
    tests: list[Candidate | str],
    module_import: str,
    expected: str,
) -> None:
    text = build_test_module(imports, fixtures, tests, module_import)
    assert text == expected
    compile(text, "<module>", "exec")


def test_build_test_module_refuses_non_imports() -> None:
    with pytest.raises(ValueError, match="not an import"):
        build_test_module(["import os\nos.system('ls')"], [], [SIMPLE], "import calc")


def test_round_trip_extract_then_build() -> None:
    answer = fenced(
        "import pytest\nfrom calc import add\n\n\n@pytest.fixture\ndef two():\n    return 2\n\n\n"
        "def test_two(two):\n    assert add(1, 1) == two\n"
    )
    result = extract_candidates(answer)
    text = build_test_module(result.imports, result.fixtures, result.tests, "import calc")
    again = extract_candidates(text)
    assert summary(again) == {
        "tests": ["test_two"],
        "fixtures": ["two"],
        "imports": ["import pytest", "from calc import add", "import calc"],
        "rejected": [],
    }
