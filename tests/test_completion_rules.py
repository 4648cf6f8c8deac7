"""Golden tests for the completion post-processing rules (one table per rule, then the pipeline)."""

from __future__ import annotations

import pytest

from jupyter_ds.completion.rules import (
    PIPELINE,
    CompletionContext,
    block_complete,
    drop_suffix_repeats,
    join_typed_whitespace,
    limit_to_line_when_midline,
    postprocess,
    stop_at_block_end,
    strip_echoed_prefix,
    strip_markdown_fences,
    trim_trailing_whitespace,
)


def case(id_: str, raw: str, prefix: str, suffix: str, expected: str, language: str = "python"):
    return pytest.param(raw, CompletionContext(prefix, suffix, language), expected, id=id_)


FUNC = "def add(a, b):\n    "

FENCES = [
    case("python-fence", "```python\nreturn a + b\n```", FUNC, "", "return a + b"),
    case("bare-fence", "```\nreturn a + b\n```\n", FUNC, "", "return a + b"),
    case("py-tag-fence-then-chat", "```py\nx = 1\n```\nThis sets x.", "", "", "x = 1"),
    case("prose-before-tagged-fence", "Here it is:\n```python\nx = 1\n```", "", "", "x = 1"),
    case("lone-opening-fence", "```python\nreturn a + b\n", FUNC, "", "return a + b\n"),
    case("lone-closing-fence", "a + b\n```\nExplanation follows", FUNC + "return ", "", "a + b"),
    case("fence-glued-to-code", "return a + b```", FUNC, "", "return a + b"),
    case("indented-fence", "  ```python\n  x = 1\n  ```", "", "", "  x = 1"),
    case("no-fence", "return a + b", FUNC, "", "return a + b"),
    case("markdown-language-untouched", "```python\nx\n```", "# Title\n", "", "```python\nx\n```",
         "markdown"),
    case("user-writes-fence-in-docstring", "```\n    \"\"\"", '"""Example:\n\n```python\nf()\n',
         "", "```\n    \"\"\""),
    case("fence-in-docstring-far-above", "```python\nreturn 1\n```",
         'def f():\n    """Usage:\n\n    ```python\n    f()\n    ```\n    """\n    ', "",
         "return 1"),
    case("javascript-fence", "```js\nreturn a + b;\n```", "function add(a, b) {\n  ", "",
         "return a + b;", "javascript"),
    case("empty", "", FUNC, "", ""),
    case("crlf-fence", "```python\r\nx = 1\r\ny = 2\r\n```", "import os\r\n", "", "x = 1\r\ny = 2"),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), FENCES)
def test_strip_markdown_fences(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert strip_markdown_fences(raw, ctx) == expected


ECHOES = [
    case("echoed-current-line", "    return a + b", "def add(a, b):\n    return a", "", " + b"),
    case("echoed-current-line-unindented", "return a + b", "def add(a, b):\n    return a", "",
         " + b"),
    case("echoed-multiline-prefix", "def add(a, b):\n    return a + b",
         "import os\n\ndef add(a, b):\n    ", "", "return a + b"),
    case("echoed-last-full-lines", "x = 1\ny = 2\nz = 3", "import os\nx = 1\ny = 2\n", "",
         "z = 3"),
    case("echoed-indentation", "    return a + b", FUNC, "", "return a + b"),
    case("echoed-indentation-tabs", "\treturn a + b", "def add(a, b):\n\t", "", "return a + b"),
    case("missing-level-after-colon-kept", "    return 1", "def f():\n", "", "    return 1"),
    case("editor-did-not-indent-kept", "    y()", "    if x:\n    ", "", "    y()"),
    case("short-cursor-line-kept", "x = 1", "x", "", "x = 1"),
    case("echoed-keyword-unindented", "if x:", "def f(x):\n    if", "", " x:"),
    case("one-char-cursor-line-kept", "return x", "def f(x):\n    r", "", "return x"),
    case("plain-continuation", "(a, b)", "print", "", "(a, b)"),
    case("no-echo-of-other-text", "return b", "def f(a, b):\n    return a\n\ndef g(a, b):\n    ",
         "", "return b"),
    case("unicode-identifier-echo", "größe = länge * 2", "länge = 3\ngrö", "", "ße = länge * 2"),
    case("crlf-echo", "def f():\r\n    return 1", "import os\r\n\r\ndef f():\r\n    ", "",
         "return 1"),
    case("empty", "", FUNC, "", ""),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), ECHOES)
def test_strip_echoed_prefix(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert strip_echoed_prefix(raw, ctx) == expected


MIDLINE = [
    case("paren-in-suffix", "a, b)\nprint(x)", "print(", ")", "a, b)"),
    case("text-in-suffix", "1\ny = 2", "x = ", " + z\n", "1"),
    case("end-of-line", "1\ny = 2", "x = ", "\nz = 3", "1\ny = 2"),
    case("blank-rest-of-line", "1\ny = 2", "x = ", "   \nz = 3", "1\ny = 2"),
    case("crlf-suffix", "a)\r\nb", "f(", ")\r\n", "a)"),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), MIDLINE)
def test_limit_to_line_when_midline(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert limit_to_line_when_midline(raw, ctx) == expected


MAIN_GUARD = "def main():\n    run()\n\nif __name__ == '__main__':\n    main()"

BLOCKS = [
    case("runs-into-second-function", "return a + b\n\ndef sub(a, b):\n    return a - b",
         FUNC, "", "return a + b\n"),
    case("after-colon-one-level-deeper", "\n    return 1\n\nprint(f())", "def f():", "",
         "\n    return 1\n"),
    case("top-level-second-def", "g():\n    pass\n\n\ndef h():\n    pass", "def ", "",
         "g():\n    pass\n\n"),
    case("top-level-decorated-second-def", "def g():\n    pass\n\n@cache\ndef h():\n    pass",
         "import os\n\n", "", "def g():\n    pass\n"),
    case("top-level-decorator-then-def-kept", "@cache\ndef g():\n    pass\n",
         "import os\n\n", "", "@cache\ndef g():\n    pass\n"),
    case("top-level-statements-kept", "x = 1\ny = 2\nprint(x + y)", "import os\n", "",
         "x = 1\ny = 2\nprint(x + y)"),
    case("nested-block-dedent", "total += i\n    return total",
         "def f(xs):\n    total = 0\n    for i in xs:\n        ", "", "total += i"),
    case("nested-block-after-colon", "\n        total += i\n    return total",
         "def f(xs):\n    total = 0\n    for i in xs:", "", "\n        total += i"),
    case("method-then-next-method-kept", "return self.x\n\n    def g(self):\n        pass",
         "class A:\n    def f(self):\n        ", "", "return self.x\n"),
    case("comment-colon", "\n    return 1\nx = 2", "def f():  # note", "", "\n    return 1"),
    case("open-bracket-continuation", "b,\n    c,\n)\nnext_statement()",
         "def f():\n    call(\n        a,\n        ", "", "b,\n    c,\n)"),
    case("closing-bracket-line-kept", "b,\n)\ny = 2", "    x = call(\n        a,\n        ", "",
         "b,\n)"),
    case("docstring-lines-kept", 'Doc.\n\nMore text at column 0.\n"""\n    return 1\nz = 3',
         'def f():\n    """', "", 'Doc.\n\nMore text at column 0.\n"""\n    return 1'),
    case("class-body-second-method",
         "def area(self):\n        return 1\n\n    def perimeter(self):\n        return 2",
         "class Rect:\n    ", "", "def area(self):\n        return 1\n"),
    case("class-body-decorated-second-method",
         "def area(self):\n        return 1\n\n    @property\n    def perimeter(self):",
         "class Rect:\n    ", "", "def area(self):\n        return 1\n"),
    case("nested-def-kept", "def inner():\n        return 1\n    return inner",
         "def outer():\n    ", "", "def inner():\n        return 1\n    return inner"),
    case("midline-def-header-then-second-method",
         "a(self):\n        return 1\n\n    def b(self):\n        return 2",
         "class A:\n    def are", "", "a(self):\n        return 1\n"),
    case("decorator-line-then-def", "\ndef index():\n    return 'hi'\n\n@app.route('/b')\ndef b():",
         "@app.route('/')", "", "\ndef index():\n    return 'hi'\n"),
    case("main-guard-after-def-kept", MAIN_GUARD, "import sys\n\n", "", MAIN_GUARD),
    case("tabs", "x = 1\n\treturn x\ny = 2", "def f():\n\t", "", "x = 1\n\treturn x"),
    case("tab-vs-spaces-width", "a()\n    b()", "if x:\n\t", "", "a()"),
    case("slice-colon-not-a-block", "]\ny = 2", "x = a[1:", "", "]"),
    case("midstatement-ends-with-the-statement", "100\n# This is a test\n# This is a test",
         "x = ", "", "100"),
    case("midstatement-brackets-close-first", "1,\n     2)\nprint(y)", "y = max(", "",
         "1,\n     2)"),
    case("midstatement-return", "a + b\n\nprint(add(1, 2))", "def add(a, b):\n    return ",
         "", "a + b"),
    case("midstatement-header-keeps-body", "x in xs:\n        yield x\n    return",
         "def f(xs):\n    for ", "", "x in xs:\n        yield x"),
    case("docstring-opener-not-a-statement", 'Add.\n    """\n    return a + b',
         'def add(a, b):\n    """', "", 'Add.\n    """\n    return a + b'),
    case("other-language-untouched", "a;\n}\nint g() {}", "int f() {\n    ", "",
         "a;\n}\nint g() {}", "javascript"),
    case("ipython-language", "return 1\nx = 2", "def f():\n    ", "", "return 1", "ipython"),
    case("crlf", "return 1\r\nx = 2", "def f():\r\n    ", "", "return 1"),
    case("single-line", "return 1", "def f():\n    ", "", "return 1"),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), BLOCKS)
def test_stop_at_block_end(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert stop_at_block_end(raw, ctx) == expected


REPEATS = [
    case("repeated-suffix-lines", "    y = 2\n    return y", "def f():\n    x = 1\n",
         "    return y\n", "    y = 2"),
    case("repeated-two-suffix-lines", "y = 2\n    z = 3\n    return z\n",
         "def f():\n    ", "\n    z = 3\n    return z\n\nprint(f())", "y = 2"),
    case("rewrote-suffix-and-went-on", "b = 2\nc = 3\nd = 4\nextra()", "a = 1\n",
         "c = 3\nd = 4\ne = 5\n", "b = 2"),
    case("closing-paren-duplicated", "a, b)", "print(", ")", "a, b"),
    case("balanced-paren-kept", "foo(x)", "print(", ")", "foo(x)"),
    case("extra-paren-dropped", "foo(x))", "print(", ")", "foo(x)"),
    case("two-parens-duplicated", "b, c))", "f(g(a, ", "))", "b, c"),
    case("bracket-and-paren", "1, 2])", "f([0, ", "])\n", "1, 2"),
    case("quote-duplicated", 'lo"', 'x = "hel', '"', "lo"),
    case("string-arg-kept", '"abc"', "f(", ")", '"abc"'),
    case("no-overlap", "x + 1", "f(", ")", "x + 1"),
    case("first-line-is-cursor-line", ")\nnext()", "f(x", "\n)\n", ")\nnext()"),
    case("no-suffix", "return 1", "def f():\n    ", "", "return 1"),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), REPEATS)
def test_drop_suffix_repeats(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert drop_suffix_repeats(raw, ctx) == expected


TRIMS = [
    case("trailing-blank-lines", "return 1\n\n\n", FUNC, "", "return 1"),
    case("trailing-spaces", "x = 1   \ny = 2  ", "", "", "x = 1\ny = 2"),
    case("leading-newline-kept", "\n    return 1\n", "def f():", "", "\n    return 1"),
    case("leading-space-kept", " + b  ", "x = a", "", " + b"),
    case("only-whitespace", "  \n \n", "", "", ""),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), TRIMS)
def test_trim_trailing_whitespace(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert trim_trailing_whitespace(raw, ctx) == expected


PIPELINE_CASES = [
    case("fenced-full-function", "```python\ndef add(a, b):\n    return a + b\n```",
         "def add(a, b):\n    ", "", "return a + b"),
    case("fenced-echo-then-second-function",
         "```python\ndef add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n```",
         "import math\n\ndef add(a, b):\n    ", "", "return a + b"),
    case("bare-fence-and-chat", "```\nreturn a + b\n```\nThis returns the sum.", FUNC, "",
         "return a + b"),
    case("midline-paren", "x, y)\nprint(z)", "result = max(", ")", "x, y"),
    case("midline-echo", "result = max(x, y)", "result = max(", ")", "x, y"),
    case("repeated-suffix-after-block", "y = x * 2\n    return y\n\nprint(1)",
         "def f(x):\n    ", "\n    return y\n", "y = x * 2"),
    case("nested-if-body", "print(i)\n    else:\n        pass",
         "for i in range(3):\n    if i:\n        ", "", "print(i)"),
    case("notebook-magic-prefix", "plt.plot(xs)\nplt.show()",
         "%matplotlib inline\nimport matplotlib.pyplot as plt\n", "", "plt.plot(xs)\nplt.show()"),
    case("crlf-document", "    return a + b\r\n\r\ndef g():\r\n    pass\r\n",
         "def add(a, b):\r\n    ", "\r\n", "return a + b"),
    case("crlf-document-lf-model", "return 1\ny = 2\nz = 3", "x = 0\r\n", "",
         "return 1\r\ny = 2\r\nz = 3"),
    case("tabs-echo-and-block", "\treturn a + b\nprint(add(1, 2))", "def add(a, b):\n\t", "",
         "return a + b"),
    case("unicode", "return größe * 2\n\nπ = 3", "def doppelt(größe):\n    ", "",
         "return größe * 2"),
    case("empty", "", FUNC, "", ""),
    case("whitespace-only", "   \n\n", FUNC, "", ""),
    case("javascript-multiline-kept", "a + b;\n}", "function add(a, b) {\n  return ", "",
         "a + b;\n}", "javascript"),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), PIPELINE_CASES)
def test_postprocess(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert postprocess(raw, ctx) == expected


BODY = "def f(xs):\n    result = []\n    for n in xs:\n        "
TYPED = [
    case("one-stray-space", " result.append(n)", BODY, "", "result.append(n)"),
    case("three-stray-spaces", "   x = 1", "x = ", "", "x = 1"),
    case("deliberate-indent-kept", "    pass", "if x:\n    ", "", "    pass"),
    case("tab-kept", "\tpass", "if x:\n    ", "", "\tpass"),
    case("break-then-indent", "\n        result.append(n)\n    return", BODY, "",
         "result.append(n)\n    return"),
    case("break-then-shallower", "\n    return result", BODY, "", "return result"),
    case("break-then-deeper", "\n            y = 2", BODY, "", "    y = 2"),
    case("only-breaks-untouched", "\n\n", BODY, "", "\n\n"),
    case("nothing-typed", " x", "y =", "", " x"),
    case("break-after-code-kept", "\n    y = 2", "x = 1 ", "", "\n    y = 2"),
    case("crlf", "\r\n        z()", BODY.replace("\n", "\r\n"), "", "z()"),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), TYPED)
def test_join_typed_whitespace(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert join_typed_whitespace(raw, ctx) == expected


def test_pipeline_order() -> None:
    assert [rule.__name__ for rule in PIPELINE] == [
        "strip_markdown_fences",
        "strip_echoed_prefix",
        "join_typed_whitespace",
        "limit_to_line_when_midline",
        "stop_at_block_end",
        "drop_suffix_repeats",
        "trim_trailing_whitespace",
    ]


def test_context_is_frozen() -> None:
    ctx = CompletionContext("x")
    assert (ctx.suffix, ctx.language) == ("", "python")
    with pytest.raises(AttributeError):
        ctx.prefix = "y"  # type: ignore[misc]


BLOCK_COMPLETE = [
    case("still-in-block", "return a + b\n", FUNC, "", False),
    case("dedent-seen", "return a + b\n\ndef", FUNC, "", True),
    case("dedent-partial-line", "return a + b\nx", FUNC, "", True),
    case("indentation-not-yet-known", "return a + b\n   ", FUNC, "", False),
    case("top-level-second-def", "def g():\n    pass\n\ndef h", "", "", True),
    case("top-level-def-not-yet-complete", "def g():\n    pass\n\nde", "", "", False),
    case("midline-newline", "a, b)\n", "f(", ")", True),
    case("midline-same-line", "a, b", "f(", ")", False),
    case("fence-closed", "```python\nreturn a + b\n```\n", FUNC, "", True),
    case("fence-open", "```python\nreturn a + b\n", FUNC, "", False),
    case("bare-fence-open", "```\nreturn a + b\n", FUNC, "", False),
    case("bare-fence-closing", "return a + b\n```\n", FUNC, "", True),
    case("fence-line-not-finished", "return a + b\n```", FUNC, "", False),
    case("echo-in-progress", "import os\n\ndef add(a, b):\n", "import os\n\ndef add(a, b):\n    ",
         "", False),
    case("echo-complete-then-dedent", "import os\n\ndef add(a, b):\n    return 1\nx",
         "import os\n\ndef add(a, b):\n    ", "", True),
    case("other-language", "a;\n}\n", "f() {\n  ", "", False, "javascript"),
    case("crlf", "return 1\r\nx", "def f():\r\n    ", "", True),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), BLOCK_COMPLETE)
def test_block_complete(raw: str, ctx: CompletionContext, expected: bool) -> None:
    assert block_complete(raw, ctx) is expected


@pytest.mark.parametrize(("raw", "ctx", "expected"), BLOCKS[:10])
def test_block_complete_agrees_with_stop_at_block_end(
    raw: str, ctx: CompletionContext, expected: str
) -> None:
    assert block_complete(raw, ctx) is (stop_at_block_end(raw, ctx) != raw)
