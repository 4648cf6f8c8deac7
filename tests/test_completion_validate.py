"""Golden tests for completion syntax validation, and the rules + validation end to end."""

from __future__ import annotations

import time

import pytest

from jupyter_ds.completion.rules import CompletionContext, postprocess
from jupyter_ds.completion.validate import longest_valid, mask_ipython, needs_code, parses

PARSES = [
    pytest.param("x = 1\n", True, id="simple"),
    pytest.param("", True, id="empty"),
    pytest.param("x = (1,\n", False, id="unbalanced-paren"),
    pytest.param("def f(:\n    pass\n", False, id="bad-def"),
    pytest.param("return 1\n", False, id="return-outside-function-compile-only"),
    pytest.param("x = 1\0\n", False, id="null-byte"),
    pytest.param("(" * 300 + ")" * 300, False, id="too-deeply-nested"),
    pytest.param("@property\n", False, id="decorator-without-def"),
    pytest.param("@property\ndef f(self):\n    return 1\n", True, id="decorated-def"),
    pytest.param("%matplotlib inline\nimport os\n", True, id="line-magic"),
    pytest.param("!pip install x\nimport x\n", True, id="shell-escape"),
    pytest.param("files = !ls\nprint(files)\n", True, id="shell-assignment"),
    pytest.param("a, b = %who_ls\n", True, id="magic-assignment"),
    pytest.param("for i in range(3):\n    %timeit f(i)\n", True, id="indented-magic"),
    pytest.param("if x:\n    !echo hi\n", True, id="indented-shell"),
    pytest.param("os.path?\n", True, id="help"),
    pytest.param("os.path.join??\n", True, id="help-source"),
    pytest.param("?os\n", True, id="help-leading"),
    pytest.param("%matplotlib inline\nx = (\n", False, id="magic-then-broken"),
    pytest.param("x = (a\n     % b)\n", True, id="modulo-continuation-not-a-magic"),
    pytest.param("y = (a\n     != b)\n", True, id="not-equal-continuation-not-shell"),
    pytest.param("x = a % b\n", True, id="modulo"),
    pytest.param("%%bash\nls -la (((\n", True, id="bash-cell"),
    pytest.param("%%html\n<div>\n", True, id="html-cell"),
    pytest.param("%%time\nx = sum(range(10))\n", True, id="time-cell-valid"),
    pytest.param("%%time\nx = sum(range(10)\n", False, id="time-cell-body-checked"),
    pytest.param("if x:\n\ty = 1\n", True, id="tabs"),
    pytest.param("if x:\n\ty = 1\n        z = 2\n", False, id="inconsistent-tabs"),
    pytest.param("größe = 1\nπ = größe\n", True, id="unicode-identifiers"),
    pytest.param("x = 1\r\nif x:\r\n    y = 2\r\n", True, id="crlf"),
    pytest.param("%matplotlib inline\r\nx = 1\r\n", True, id="crlf-magic"),
    pytest.param('s = "\\d"\n', True, id="invalid-escape-warning-is-not-an-error"),
    pytest.param("data = await fetch()\n", True, id="top-level-await-autoawait"),
]


@pytest.mark.parametrize(("code", "expected"), PARSES)
def test_parses(code: str, expected: bool) -> None:
    assert parses(code) is expected


MASKS = [
    pytest.param("%matplotlib inline\nx = 1", "pass\nx = 1", id="line-magic"),
    pytest.param("if a:\n    !ls -la\n", "if a:\n    pass\n", id="indented-shell"),
    pytest.param("files = !ls\n", "pass\n", id="shell-assignment"),
    pytest.param("obj?\n", "pass\n", id="help"),
    pytest.param("%%time\nx = 1\n", "pass\nx = 1\n", id="time-cell"),
    pytest.param("%%bash\nls\n", None, id="bash-cell"),
    pytest.param("x = a % b\n", "x = a % b\n", id="modulo-untouched"),
    pytest.param("%env A=1\r\nx = 1\r\n", "pass\r\nx = 1\r\n", id="crlf"),
]


@pytest.mark.parametrize(("code", "expected"), MASKS)
def test_mask_ipython(code: str, expected: str | None) -> None:
    assert mask_ipython(code) == expected


def valid(id_: str, completion: str, prefix: str, suffix: str, expected: str | None,
          language: str = "python"):
    return pytest.param(completion, prefix, suffix, language, expected, id=id_)


BROKEN_ABOVE = "def broken(:\n    pass\n\n\n"
SQL = 'QUERY = """\nSELECT *\nFROM t\n"""\n\n'

LONGEST = [
    valid("whole-valid", "return a + b", "def add(a, b):\n    ", "\n", "return a + b"),
    valid("unbalanced-line-dropped", "x = foo(1)\ny = bar(", "", "\n", "x = foo(1)"),
    valid("unbalanced-brackets-trimmed-back", ", 3]]", "x = [1, 2", "\n", ", 3]"),
    valid("midline-paren-in-suffix", "a, b)", "print(", ")\n", "a, b"),
    valid("midline-identifier-cut", "total) + oops((", "print(", ")\n", "total"),
    valid("runs-into-broken-second-function", "return 1\n\ndef g(:\n    pass",
          "def f():\n    ", "\n", "return 1"),
    valid("dangling-decorator", "def f(self):\n        return 1\n\n    @property",
          "class A:\n    ", "\n", "def f(self):\n        return 1"),
    valid("decorated-function-window", "return 'hi'", "@app.route('/')\ndef index():\n    ",
          "\n", "return 'hi'"),
    valid("column-0-lines-of-a-docstring-above", "from __future__ import annotations",
          '"""A server.\n' + "".join(f"line {i} of the docstring\n" for i in range(8))
          + '.. code-block:: python\n\n    run()\n"""\n\n', "\n\nimport os\n",
          "from __future__ import annotations"),
    valid("column-0-lines-of-a-template-below", "total = a + b",
          "class A:\n    def f(self, a, b):\n        ", "\n        return total\n\n"
          '    def g(self):\n        return f"""\\\n' + "".join(f"--line {i}\\r\n"
                                                         for i in range(8))
          + '"""\n', "total = a + b"),
    valid("cursor-in-a-docstring-above-column-0-text", "Return the total.",
          'def f(a, b):\n    """', '\n    """\n    return a + b\n\n\nT = """\n'
          + "".join(f"text {i}\n" for i in range(8)) + '"""\n', "Return the total."),
    valid("completion-opens-the-module-docstring", '"""', "",
          '\nA module.\n\nIt does things.\n"""\n\nimport os\n', '"""'),
    valid("completion-opens-a-template-ending-in-a-backslash", 'X = """\\', "",
          '\n<html>\n</html>\n"""\n\nY = 1\n', 'X = """\\'),
    valid("top-level-decorator-before-def", "property", "import os\n\n\n@",
          "\ndef f():\n    return 1\n\n\ndef g():\n    pass\n", "property"),
    valid("top-level-decorator-before-decorated-class", "attrs(slots=True)", "x = 1\n\n\n@",
          "\n@other\n# why\nclass A:\n    pass\n\ny = 2\n", "attrs(slots=True)"),
    valid("top-level-decorator-line-written-whole", "@pytest.fixture", "import pytest\n\n\n",
          "\ndef db():\n    return 1\n", "@pytest.fixture"),
    valid("top-level-decorator-before-no-def", "property", "x = 1\n\n\n@", "\ny = 2\n",
          None),
    valid("nested-block-dangling-else", "if x:\n            yield x\n        else:",
          "def f(xs):\n    for x in xs:\n        ", "\n", "if x:\n            yield x"),
    valid("suffix-else-kept-in-window", "a = 1", "if x:\n    ", "\nelse:\n    pass\n", "a = 1"),
    valid("trailing-whitespace-stripped", "return 1   \n\n", "def f():\n    ", "\n", "return 1"),
    valid("matplotlib-inline-cell", "x = np.arange(10)\nplt.plot(x",
          "%matplotlib inline\nimport numpy as np\n", "", "x = np.arange(10)"),
    valid("pip-install-cell", "import requests\nrequests.get(", "!pip install requests\n", "",
          "import requests"),
    valid("completion-is-shell", "!pip install requests", "", "", "!pip install requests"),
    valid("shell-assignment-cell", "for f in files:\n    print(f)", "files = !ls\n", "",
          "for f in files:\n    print(f)"),
    valid("time-cell-body", "total = sum(range(10))\nprint(total", "%%time\n", "",
          "total = sum(range(10))"),
    valid("bash-cell-unchecked", "ls -la | grep (", "%%bash\n", "", "ls -la | grep ("),
    valid("tabs", "return (1,\n\t\t2", "def f():\n\t", "\n", "return"),
    valid("tabs-valid", "x = 1\n\treturn x", "def f():\n\t", "\n", "x = 1\n\treturn x"),
    valid("unicode-identifiers", "fläche = größe ** 2\nprint(fläche", "größe = 2\n", "",
          "fläche = größe ** 2"),
    valid("crlf", "a = 1\r\n    b = 2\r\n    c = (", "def f():\r\n    ", "\r\n",
          "a = 1\r\n    b = 2"),
    valid("nothing-valid", ")))", "def f():\n    ", "\n", None),
    valid("empty", "", "x = ", "\n", None),
    valid("whitespace-only", "  \n ", "x = ", "\n", None),
    valid("unrelated-error-above", "return 1", BROKEN_ABOVE + "def f():\n    ", "\n",
          "return 1"),
    valid("unrelated-error-below", "return 1", "def f():\n    ", "\n\n\ndef g(:\n    pass\n",
          "return 1"),
    valid("unrelated-errors-around", "return 1",
          "x = 1\n" + BROKEN_ABOVE + "y = 2\n\ndef f():\n    ",
          "\n\ndef g(:\n    pass\n\ndef h():\n    pass\n", "return 1"),
    valid("column-0-list-items", "3]", "x = [\n1,\n2,\n", "\n", "3]"),
    valid("column-0-string-lines-above", "return QUERY", SQL + "def f():\n    ", "\n",
          "return QUERY"),
    valid("cursor-after-column-0-string-lines", 'FROM u\n"""', 'def f():\n    q = """\nSELECT *\n',
          "\n    return q\n", 'FROM u\n"""'),
    valid("trimmed-prefix-fragment", "return total", "    total = 0\n    for x in xs:\n"
          "        total += x\n    ", "\n", "return total"),
    valid("trimmed-prefix-fragment-nested", "y = (1,\n", "        a = 1\n    b = 2\n    ", "\n",
          "y"),
    valid("trimmed-prefix-fragment-async", "await asyncio.sleep(1)\n    return x",
          "    x = 1\n    ", "\n", "await asyncio.sleep(1)\n    return x"),
    valid("trimmed-suffix-mid-call", "return 1", "def f():\n    ", "\n    g(a,\n      b,",
          "return 1"),
    valid("cursor-in-docstring-of-last-function", "Return one.",
          'def f():\n    """', '\n    """\n    return 1\n', "Return one."),
    valid("notebook-top-level-await-above", "print(data)",
          "data = await fetch()\n\nx = 1\n\ndef f():\n    pass\n\n", "", "print(data)"),
    valid("cursor-inside-string-with-column-0-lines", "y = 2", 'def f():\n    s = """\nx = 1\n',
          '\n"""\n    return s\n', "y = 2"),
    valid("first-logical-line-cut", "[row for row in reader\n        if row] + more(",
          "def f(reader):\n    return ", "\n", "[row for row in reader\n        if row] + more"),
    valid("first-logical-line-cut-midline", "[row for row in reader\n        if row], key=len), x",
          "def f(reader):\n    return sorted(", ")\n",
          "[row for row in reader\n        if row], key=len"),
    valid("javascript-unchecked", "foo(", "const x = ", "", "foo(", "javascript"),
    valid("javascript-empty", "", "const x = ", "", None, "javascript"),
]


@pytest.mark.parametrize(("completion", "prefix", "suffix", "language", "expected"), LONGEST)
def test_longest_valid(
    completion: str, prefix: str, suffix: str, language: str, expected: str | None
) -> None:
    assert longest_valid(completion, prefix, suffix, language) == expected


def e2e(id_: str, raw: str, prefix: str, suffix: str, expected: str | None,
        language: str = "python"):
    return pytest.param(raw, CompletionContext(prefix, suffix, language), expected, id=id_)


CSV_READ = (
    "import csv\n\n\ndef read(path):\n    with open(path) as f:\n"
    "        reader = csv.DictReader(f)\n        return "
)
CLAMP = "def clamp(x, lo, hi):\n    if x > hi:\n"
FUNC = "def add(a, b):\n    "

AREA = "@property\n    def area(self):\n        return self.w * self.h"

END_TO_END = [
    e2e("fenced-python", "```python\ndef add(a, b):\n    return a + b\n```",
        "def add(a, b):\n    ", "\n", "return a + b"),
    e2e("bare-fence-and-chat", "```\nreturn a + b\n```\nThis adds the numbers.",
        "def add(a, b):\n    ", "\n", "return a + b"),
    e2e("echoed-line", "    return sum(xs) / len(xs)", "def mean(xs):\n    return sum(", "\n",
        "xs) / len(xs)"),
    e2e("echoed-multiline-prefix", "import os\n\ndef ls(path):\n    return os.listdir(path)",
        "import os\n\ndef ls(path):\n    ", "\n", "return os.listdir(path)"),
    e2e("into-second-function", "return a - b\n\n\ndef mul(a, b):\n    return a * b\n",
        "def sub(a, b):\n    ", "\n", "return a - b"),
    e2e("midline-paren", "x, key=len))\nprint(y)", "y = max(", ")\n", "x, key=len"),
    e2e("repeated-suffix", "y = x + 1\n    return y\n", "def f(x):\n    ", "\n    return y\n",
        "y = x + 1"),
    e2e("unbalanced-call-cut-to-name", "x = compute(a,\n    b", "", "\n", "x = compute"),
    e2e("unbalanced-lines-trimmed", "a = 1\nb = [a,\n", "", "\n", "a = 1"),
    e2e("unbalanced-first-line-cut", "(a, b), c(", "pairs = [", "]\n", "(a, b), c"),
    e2e("decorated-method", AREA + "\n\n    def perimeter(self):\n        return 0",
        "class Rect:\n    ", "\n", AREA),
    e2e("notebook-cell", "df = pd.read_csv(path)\ndf.head()",
        "%matplotlib inline\nimport pandas as pd\n!pip install x\n", "",
        "df = pd.read_csv(path)\ndf.head()"),
    e2e("time-cell", "sum(range(10**6))\n", "%%time\n", "", "sum(range(10**6))"),
    e2e("shell-assignment", "print(len(files))", "files = !ls\n", "", "print(len(files))"),
    e2e("tabs", "\treturn a + b\nprint(1)", "def add(a, b):\n\t", "\n", "return a + b"),
    e2e("unicode", "return größe * 2", "def doppelt(größe):\n    ", "\n", "return größe * 2"),
    e2e("crlf", "```python\r\nreturn 1\r\n```", "def f():\r\n    ", "\r\n", "return 1"),
    e2e("empty", "", "def f():\n    ", "\n", None),
    e2e("only-a-fence", "```python\n```", "def f():\n    ", "\n", None),
    e2e("javascript", "a + b;\n}", "function add(a, b) {\n  return ", "\n", "a + b;\n}",
        "javascript"),
    e2e("comprehension-continuation",
        "[row for row in reader\n                if row]\n\n\ndef other():", CSV_READ, "\n",
        "[row for row in reader\n                if row]"),
    e2e("comprehension-one-item-per-line",
        "[row\n            for row in reader\n            if row]", CSV_READ, "\n",
        "[row\n            for row in reader\n            if row]"),
    e2e("midline-comprehension", "[row for row in reader\n        if row], key=len)\nx = 1",
        "def f(reader):\n    return sorted(", ")\n",
        "[row for row in reader\n        if row], key=len"),
    e2e("midline-comprehension-before-comment", "[row for row in reader\n        if row]\ny()",
        "def f(reader):\n    return ", "  # rows\n", "[row for row in reader\n        if row]"),
    e2e("header-body-indented", "        return hi", CLAMP, "\n    return x\n",
        "        return hi"),
    e2e("header-body-forgot-indentation", "return hi", CLAMP, "\n    return x\n",
        "        return hi"),
    e2e("header-body-forgot-indentation-then-dedent", "return hi\n    return x\n", CLAMP,
        "\n    return x\n", "        return hi"),
    e2e("header-body-empty-suffix", "return hi", CLAMP, "", "        return hi"),
    e2e("header-body-tabs", "return 1", "def f(x):\n\tif x:\n", "\n\treturn 0\n", "\t\treturn 1"),
    e2e("prose-then-code", "Sure! Here is the code:\n\n    return a + b", FUNC, "\n",
        "return a + b"),
    e2e("code-then-prose", "return a + b\n\nThis function adds two numbers.", FUNC, "\n",
        "return a + b"),
    e2e("top-level-code-then-prose", "y = 2\nThis sets y to two.", "x = 1\n", "\n", "y = 2"),
    e2e("prose-only", "The answer is: return a + b", FUNC, "\n", None),
    e2e("prose-before-bare-fence", "Here it is:\n```\nreturn a + b\n", FUNC, "\n",
        "return a + b"),
    e2e("prose-in-docstring-kept", "Add two numbers.", 'def add(a, b):\n    """',
        '\n    """\n    return a + b\n', "Add two numbers."),
    e2e("prose-in-comment-kept", "This function adds two numbers.", "def add(a, b):\n    # ",
        "\n    return a + b\n", "This function adds two numbers."),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), END_TO_END)
def test_postprocess_then_longest_valid(
    raw: str, ctx: CompletionContext, expected: str | None
) -> None:
    shown = longest_valid(postprocess(raw, ctx), ctx.prefix, ctx.suffix, ctx.language)
    assert shown == expected


def _function(i: int) -> str:
    return (
        f"def func_{i}(a, b=1):\n"
        f'    """Return a number {i}."""\n'
        "    total = a + b\n"
        "    for k in range(10):\n"
        f"        total += k * {i}\n"
        "    if total > 3:\n"
        "        return total\n"
        f"    return [total, (a, b), {{'k': {i}}}]\n"
        "\n"
    )


def test_large_file_is_fast() -> None:
    prefix = "".join(_function(i) for i in range(110)) + "def target(x):\n    "
    suffix = "\n\n" + "".join(_function(i) for i in range(110, 222))
    assert (prefix + suffix).count("\n") >= 2000
    body = "".join(f"    v{i} = x + {i}\n" for i in range(59)).lstrip()
    completion = body + "    return (v0"  # 60 lines, the last one unbalanced
    start = time.perf_counter()
    result = longest_valid(completion, prefix, suffix)
    elapsed = time.perf_counter() - start
    assert result == body.rstrip()
    assert elapsed < 1.0, f"validation took {elapsed * 1000:.0f} ms"


NEEDS_CODE = [
    pytest.param("x = ", "\n", True, "python", id="assignment"),
    pytest.param("x = 1", "\n", False, "python", id="finished-line"),
    pytest.param("import os\n\n\n@", "\ndef f():\n    pass\n", True, "python", id="decorator"),
    pytest.param("try:\n    pass\nexcept ", "\n    pass\n", True, "python", id="except"),
    pytest.param("foo(a, ", "\n", True, "python", id="open-call"),
    pytest.param("foo(a, ", ")\n", False, "python", id="call-closed-after-cursor"),
    pytest.param("def f():\n    return ", "\n", False, "python", id="bare-return"),
    pytest.param("def f():\n    x = ", "\n    return x\n", True, "python", id="in-a-function"),
    pytest.param("x = ", "\n", False, "javascript", id="no-validator"),
    pytest.param("%%bash\nls ", "\n", False, "python", id="bash-cell"),
    pytest.param("def broken(:\n    pass\n\n\nx = 1", "\n", False, "python",
                 id="error-above"),
    # compile reports the first error only: one above hides the cursor's (no min token).
    pytest.param("def broken(:\n    pass\n\n\nx = ", "\n", False, "python",
                 id="error-above-hides-the-cursors"),
    pytest.param("lf = ", "\n    value, mode)\n", True, "python", id="continuation-below"),
]


@pytest.mark.parametrize(("prefix", "suffix", "expected", "language"), NEEDS_CODE)
def test_needs_code(prefix: str, suffix: str, expected: bool, language: str) -> None:
    assert needs_code(prefix, suffix, language) is expected


@pytest.mark.parametrize(
    ("prefix", "suffix", "wanted"),
    [
        ("def f(x):\n    ", "\n    return x\n", 1),  # a fresh, indented line
        ("def f(x):\n", "\n    return x\n", 1),  # column 0 after a header
        ("", "", 1),  # an empty document
        ("def f(x):\n    return ", "\n", 0),  # inside a line: ending at once is an answer
        ("def f(x):\n    ", "x = 1\n", 0),  # text right of the cursor
        ("def f(x):\n    y = ", "\n    return y\n", 1),  # unfinished without an answer
        ("@", "\ndef f(x):\n    return x\n", 1),  # a decorator being typed
    ],
    ids=["blank-indented", "after-header", "empty", "mid-line", "text-after", "unfinished",
         "decorator"],
)
async def test_a_blank_or_unfinished_line_always_gets_a_suggestion(prefix, suffix, wanted):
    """The service asks the engine for at least one token where the line is blank or the
    code cannot stand without one."""
    from ds_engine.testing import ScriptedEngine

    from jupyter_ds.completion.requests import CompleteRequest
    from jupyter_ds.completion.service import CompletionService

    engine = ScriptedEngine(["return x"])
    await CompletionService(engine).complete(CompleteRequest(prefix=prefix, suffix=suffix))
    assert engine.requests[-1].min_tokens == wanted


async def test_the_prompt_stands_in_the_body_at_column_0_under_a_header():
    """The model is prompted from the body's indentation and its answer gets it too."""
    from ds_engine.testing import ScriptedEngine

    from jupyter_ds.completion.requests import CompleteRequest
    from jupyter_ds.completion.service import CompletionService

    prefix, suffix = "def clamp(x, lo, hi):\n    if x > hi:\n", "\n    return x\n"
    engine = ScriptedEngine(["return hi"])
    data = await CompletionService(engine).complete(CompleteRequest(prefix=prefix,
                                                                    suffix=suffix))
    assert engine.prompts[-1].endswith("    if x > hi:\n        ")
    assert data["output"] == "        return hi"
    assert parses(prefix + data["output"] + suffix)


def test_the_true_rest_of_a_line_survives_the_rules_and_validation() -> None:
    """On real code written elsewhere (a seeded sample of the standard library), a model
    that answered exactly what the file holds must be shown it: postprocess + validation
    may change at most 1 % of such answers, at a line's indentation and after its first
    ``=``, ``(`` or ``,``. Broken window edges (a docstring's column-0 lines, a decorator
    parted from its def, a backslash continuation) each failed many of them."""
    import random
    import sysconfig
    from pathlib import Path

    rng = random.Random(0)
    modules = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    changed, total = [], 0
    for path in rng.sample(modules, 40):
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line) + 1)
        for i in rng.sample(range(len(lines)), min(15, len(lines))):
            line = lines[i]
            if not line.strip():
                continue
            cols = [len(line) - len(line.lstrip())]
            cols += [j + 1 for j, ch in enumerate(line[:-1]) if ch in "=(,"][:1]
            for col in cols:
                prefix, target = text[: offsets[i] + col], line[col:]
                suffix = text[offsets[i] + len(line):]
                total += 1
                ctx = CompletionContext(prefix, suffix, "python")
                got = longest_valid(postprocess(target, ctx), prefix, suffix)
                if (got or "").rstrip() != target.rstrip():
                    changed.append(f"{path.name}:{i + 1}:{col} {target!r} -> {got!r}")
    assert total > 700
    assert len(changed) <= total // 100, "\n".join(changed)
