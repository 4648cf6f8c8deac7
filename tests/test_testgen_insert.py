"""Golden tests: kept tests written into a test file, the rest of the file left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_ds.testgen import insert
from jupyter_ds.testgen.insert import find_test_file, insert_tests

# Imported under other names: pytest would collect ``test_*`` functions as tests.
candidate_test_files = insert.test_file_candidates

NEW_TEST = "def test_new():\n    assert add(2, 2) == 4\n"
FIXTURE = "@pytest.fixture\ndef two():\n    return 2\n"

INSERT_CASES = [
    pytest.param(
        None,
        ["import pytest", "from calc import add"],
        [FIXTURE, NEW_TEST],
        "import pytest\nfrom calc import add\n\n\n" + FIXTURE + "\n\n" + NEW_TEST,
        id="no-file",
    ),
    pytest.param(
        "",
        ["from calc import add"],
        [NEW_TEST],
        "from calc import add\n\n\n" + NEW_TEST,
        id="empty-file",
    ),
    pytest.param(
        "\n\n",
        ["from calc import add"],
        [NEW_TEST],
        "from calc import add\n\n\n" + NEW_TEST,
        id="blank-file",
    ),
    pytest.param(
        '"""Tests for calc."""\nfrom __future__ import annotations\n\n\n'
        "def test_old():\n    assert True\n",
        ["from calc import add"],
        [NEW_TEST],
        '"""Tests for calc."""\nfrom __future__ import annotations\n\n'
        "from calc import add\n\n\n"
        "def test_old():\n    assert True\n\n\n" + NEW_TEST,
        id="docstring-and-future-no-imports",
    ),
    pytest.param(
        '"""Tests for calc."""\n\nimport os\n\n\ndef test_old():\n    assert os\n',
        ["from __future__ import annotations", "import os"],
        [NEW_TEST],
        '"""Tests for calc."""\n\nfrom __future__ import annotations\n\nimport os\n\n\n'
        "def test_old():\n    assert os\n\n\n" + NEW_TEST,
        id="new-future-import-after-docstring",
    ),
    pytest.param(
        "import os\nfrom calc import add  # the function under test\n\n\n"
        "def test_old():\n    assert add(1, 1) == 2\n",
        ["import os", "from calc import add, sub", "import numpy as np", "import pytest"],
        [NEW_TEST],
        "import os\nfrom calc import add  # the function under test\n"
        "from calc import sub\nimport numpy as np\nimport pytest\n\n\n"
        "def test_old():\n    assert add(1, 1) == 2\n\n\n" + NEW_TEST,
        id="overlapping-imports",
    ),
    pytest.param(
        "import numpy as np\nfrom calc import (\n    add,\n    sub,\n)\n\n\n"
        "def test_old():\n    assert np\n",
        ["import numpy", "from calc import sub", "from calc import add as plus"],
        [NEW_TEST],
        "import numpy as np\nfrom calc import (\n    add,\n    sub,\n)\n"
        "import numpy\nfrom calc import add as plus\n\n\n"
        "def test_old():\n    assert np\n\n\n" + NEW_TEST,
        id="aliases-and-parenthesised-import",
    ),
    pytest.param(
        "import os\n\n\ndef test_old():\n    assert os\n",
        ["import os"],
        [],
        "import os\n\n\ndef test_old():\n    assert os\n",
        id="nothing-to-add-is-a-no-op",
    ),
    pytest.param(
        "import os\r\n\r\n\r\ndef test_old():\r\n    assert os\r\n",
        ["import sys"],
        [NEW_TEST],
        "import os\r\nimport sys\r\n\r\n\r\ndef test_old():\r\n    assert os\r\n\r\n\r\n"
        "def test_new():\r\n    assert add(2, 2) == 4\r\n",
        id="crlf",
    ),
    pytest.param(
        "import os\n\n\ndef test_old():\n    assert os",
        [],
        [NEW_TEST],
        "import os\n\n\ndef test_old():\n    assert os\n\n\n" + NEW_TEST,
        id="no-trailing-newline",
    ),
    pytest.param(
        "import pytest\n\n\ndef test_old():\n    pass\n\n\n"
        '# Run directly.\nif __name__ == "__main__":\n    pytest.main([__file__])\n',
        ["import pytest"],
        [NEW_TEST],
        "import pytest\n\n\ndef test_old():\n    pass\n\n\n"
        + NEW_TEST
        + '\n\n# Run directly.\nif __name__ == "__main__":\n    pytest.main([__file__])\n',
        id="main-block-at-end",
    ),
    pytest.param(
        '# Ünïcode header: ✓\nfrom calc import add\n\n\ndef test_café():\n    assert "é" != "e"\n',
        ["from calc import add"],
        ['def test_naïve():\n    assert "ñ".upper() == "Ñ"\n'],
        '# Ünïcode header: ✓\nfrom calc import add\n\n\ndef test_café():\n    assert "é" != "e"\n'
        '\n\ndef test_naïve():\n    assert "ñ".upper() == "Ñ"\n',
        id="unicode",
    ),
    pytest.param(
        "import os\n\ndef test_a():\n    pass\n\ndef test_b():\n    pass\n",
        [],
        [NEW_TEST, FIXTURE],
        "import os\n\ndef test_a():\n    pass\n\ndef test_b():\n    pass\n\n"
        + NEW_TEST
        + "\n"
        + FIXTURE,
        id="file-uses-one-blank-line",
    ),
    pytest.param(
        "# Tests for calc.\n\n@pytest.mark.slow\ndef test_old():\n    pass\n",
        ["import pytest"],
        [NEW_TEST],
        "# Tests for calc.\n\nimport pytest\n\n\n@pytest.mark.slow\ndef test_old():\n    pass\n\n\n"
        + NEW_TEST,
        id="no-imports-header-comment-and-decorator",
    ),
    pytest.param(
        "# Helpers first.\ndef test_old():\n    pass\n",
        ["import pytest"],
        [NEW_TEST],
        "import pytest\n\n\n# Helpers first.\ndef test_old():\n    pass\n\n\n" + NEW_TEST,
        id="comment-attached-to-first-def-stays-with-it",
    ),
    pytest.param(
        "import os\n\n\ndef test_old():\n    pass\n\n\n\n",
        [],
        [NEW_TEST],
        "import os\n\n\ndef test_old():\n    pass\n\n\n\n" + NEW_TEST,
        id="extra-trailing-blank-lines-kept",
    ),
    pytest.param(
        "# Only a comment\n",
        ["from calc import add"],
        [NEW_TEST],
        "# Only a comment\n\nfrom calc import add\n\n\n" + NEW_TEST,
        id="comment-only-file",
    ),
    pytest.param(
        '"""Doc."""\nimport sys\nsys.path.insert(0, \'.\')\nimport calc\n\n'
        "pytestmark = pytest.mark.slow\n\n\ndef test_old():\n    pass\n",
        ["import pytest"],
        [NEW_TEST],
        '"""Doc."""\nimport sys\nsys.path.insert(0, \'.\')\nimport calc\nimport pytest\n\n'
        "pytestmark = pytest.mark.slow\n\n\ndef test_old():\n    pass\n\n\n" + NEW_TEST,
        id="imports-after-the-last-header-import",
    ),
]


def is_subsequence(needles: list[str], haystack: list[str]) -> bool:
    remaining = iter(haystack)
    return all(any(line == candidate for candidate in remaining) for line in needles)


@pytest.mark.parametrize(("existing", "imports", "tests", "expected"), INSERT_CASES)
def test_insert_tests(
    existing: str | None, imports: list[str], tests: list[str], expected: str
) -> None:
    result = insert_tests(existing, imports, tests)
    assert result == expected
    compile(result, "<test file>", "exec")
    if existing:
        # Every original line is still there, unchanged and in order (the last one may
        # have gained its newline); nothing else but imports, tests and blanks was added.
        assert is_subsequence(existing.split("\n"), result.split("\n"))


@pytest.mark.parametrize(
    "existing",
    [
        pytest.param(case.values[0], id=case.id)
        for case in INSERT_CASES
        if case.values[0] and case.values[0].strip()
    ],
)
def test_only_imports_blanks_and_tests_are_added(existing: str) -> None:
    imports = ["import pytest", "from calc import add, sub"]
    result = insert_tests(existing, imports, [NEW_TEST])
    original = existing.replace("\r\n", "\n").split("\n")
    added = list(result.replace("\r\n", "\n").split("\n"))
    for line in original:
        added.remove(line)
    allowed = {"", "import pytest", "from calc import add", "from calc import sub"}
    allowed |= {"from calc import add, sub", *NEW_TEST.split("\n")}
    assert set(added) <= allowed


def test_insert_is_stable_when_repeated() -> None:
    once = insert_tests(None, ["from calc import add"], [NEW_TEST])
    twice = insert_tests(once, ["from calc import add"], ["def test_more():\n    assert 1\n"])
    assert twice == once + "\n\ndef test_more():\n    assert 1\n"


@pytest.mark.parametrize(
    ("existing", "imports", "tests", "message"),
    [
        pytest.param("def test_a(:\n", [], [NEW_TEST], "existing test file", id="file-broken"),
        pytest.param("", ["os.system('x')"], [NEW_TEST], "not an import", id="import-not-import"),
        pytest.param("import os\n", [], ["def test_x(:\n"], "do not fit", id="test-broken"),
    ],
)
def test_insert_refuses(existing: str, imports: list[str], tests: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        insert_tests(existing, imports, tests)


PATH_CASES = [
    pytest.param("calc.py", [], "tests/test_calc.py", id="root-module-default"),
    pytest.param("pkg/calc.py", [], "tests/test_calc.py", id="package-module-default"),
    pytest.param("pkg/calc.py", ["pkg/test_calc.py"], "pkg/test_calc.py", id="next-to-it"),
    pytest.param(
        "pkg/calc.py",
        ["tests/test_calc.py", "pkg/tests/test_calc.py"],
        "pkg/tests/test_calc.py",
        id="package-tests-folder-beats-flat",
    ),
    pytest.param(
        "src/pkg/calc.py", ["tests/pkg/test_calc.py"], "tests/pkg/test_calc.py", id="mirror-src"
    ),
    pytest.param("pkg/calc.py", ["./tests/test_calc.py"], "tests/test_calc.py", id="dot-slash"),
    pytest.param("pkg/__init__.py", [], "tests/test_pkg.py", id="package-init"),
    pytest.param("my-script.py", [], "tests/test_my_script.py", id="dash-in-name"),
    pytest.param("analysis.ipynb", [], "tests/test_analysis.py", id="notebook"),
    pytest.param("pkg\\calc.py", ["pkg/test_calc.py"], "pkg/test_calc.py", id="backslashes"),
]


@pytest.mark.parametrize(("source", "existing", "expected"), PATH_CASES)
def test_test_path_for(source: str, existing: list[str], expected: str) -> None:
    assert insert.test_path_for(source, existing) == expected


def test_candidates_order() -> None:
    assert candidate_test_files("pkg/sub/calc.py") == [
        "pkg/sub/test_calc.py",
        "pkg/sub/tests/test_calc.py",
        "tests/pkg/sub/test_calc.py",
        "tests/test_calc.py",
    ]


def test_find_test_file_on_disk(tmp_path: Path) -> None:
    assert find_test_file("pkg/calc.py", tmp_path) is None
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_calc.py").write_text("")
    assert find_test_file("pkg/calc.py", tmp_path) == "tests/test_calc.py"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "test_calc.py").write_text("")
    assert find_test_file("pkg/calc.py", tmp_path) == "pkg/test_calc.py"
