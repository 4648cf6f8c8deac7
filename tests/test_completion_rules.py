"""Golden tests for the completion post-processing rules (one table per rule, then the pipeline)."""

from __future__ import annotations

import pytest

from jupyter_ds.completion.rules import (
    PIPELINE,
    CompletionContext,
    block_complete,
    drop_suffix_repeats,
    first_logical_line_count,
    indent_body_after_header,
    join_typed_whitespace,
    limit_to_line_when_midline,
    postprocess,
    stop_at_block_end,
    strip_chat_prose,
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
    case("prose-before-lone-bare-fence-opens-it", "Here it is:\n```\nx = 1\n", "", "", "x = 1\n"),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), FENCES)
def test_strip_markdown_fences(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert strip_markdown_fences(raw, ctx) == expected


PROSE = [
    case("prose-then-code", "Sure! Here is the code:\n\n    return a + b", FUNC, "",
         "    return a + b"),
    case("code-then-explanation", "return a + b\n\nThis function adds two numbers.", FUNC, "",
         "return a + b\n"),
    case("prose-only-line-is-empty", "The answer is: return a + b", FUNC, "", ""),
    case("prose-then-code-no-blank", "Here is the code:\nreturn a + b", FUNC, "", "return a + b"),
    case("two-prose-lines", "Certainly!\nHere's the fix:\nx = 1", "", "", "x = 1"),
    case("explanation-at-block-level", "x = 1\n    Note: this sets x.\n    y = 2",
         "def f():\n    ", "", "x = 1"),
    case("prose-after-typed-code-is-empty", "The answer is 42.\nx = 42", "x = ", "", ""),
    case("bare-sure-while-streaming", "Sure", FUNC, "", ""),
    case("code-starting-with-opener-kept", "I = np.eye(3)\nThis = I", "", "",
         "I = np.eye(3)\nThis = I"),
    case("keyword-joined-names-kept", "I if flag else default", "x = ", "",
         "I if flag else default"),
    case("annotation-kept", "Note: str = ''", "class A:\n    ", "", "Note: str = ''"),
    case("attribute-kept", "Note.objects.all()", "notes = ", "", "Note.objects.all()"),
    case("docstring-lines-in-completion-kept",
         '"""\n    This function adds two numbers.\n    """\n    return a + b', FUNC, "",
         '"""\n    This function adds two numbers.\n    """\n    return a + b'),
    case("comment-line-kept", "# This function adds two numbers.\nreturn a + b", FUNC, "",
         "# This function adds two numbers.\nreturn a + b"),
    case("user-in-docstring", "This function adds two numbers.\n    \"\"\"",
         'def add(a, b):\n    """', "", "This function adds two numbers.\n    \"\"\""),
    case("user-in-docstring-later-line", "This is the sum.",
         'def add(a, b):\n    """Add.\n\n    ', '\n    """', "This is the sum."),
    case("user-in-comment", "This function adds two numbers.", "def add(a, b):\n    # ", "",
         "This function adds two numbers."),
    case("user-in-comment-after-code", "The sum of both.", "    return a + b  # ", "",
         "The sum of both."),
    case("user-in-string", "The answer is 42.", 'msg = "', '"', "The answer is 42."),
    case("user-in-js-comment", "This adds them.", "function add(a, b) {\n  // ", "",
         "This adds them.", "javascript"),
    case("markdown-untouched", "This is prose.", "# Title\n\n", "", "This is prose.", "markdown"),
    case("crlf-prose", "Sure! Here it is:\r\n\r\nreturn 1", "def f():\r\n    ", "", "return 1"),
    case("empty", "", FUNC, "", ""),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), PROSE)
def test_strip_chat_prose(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert strip_chat_prose(raw, ctx) == expected


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
    case("open-bracket-continues-line", "[row for row in reader\n        if row], key=len\nx = 1",
         "def f(reader):\n    return sorted(", ")\n",
         "[row for row in reader\n        if row], key=len"),
    case("open-bracket-before-trailing-comment", "[row for row in reader\n        if row]\ny()",
         "def f(reader):\n    return ", "  # rows\n", "[row for row in reader\n        if row]"),
    case("triple-quoted-string-continues-line", '"""a\nb"""\nc', "x = f(", ")\n", '"""a\nb"""'),
    case("closes-cursor-bracket-then-break", "a, b)\nprint(x)", "print(", ")  # c", "a, b)"),
    case("inside-open-docstring-first-line-only", "one\ntwo", 'x = """', '"""', "one"),
    case("quote-opened-on-cursor-line", "a(b\nc", 'x = "', '"', "a(b"),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), MIDLINE)
def test_limit_to_line_when_midline(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert limit_to_line_when_midline(raw, ctx) == expected


CSV_READ = (
    "import csv\n\n\ndef read(path):\n    with open(path) as f:\n"
    "        reader = csv.DictReader(f)\n        return "
)
MAIN_GUARD = "def main():\n    run()\n\nif __name__ == '__main__':\n    main()"

TRY_BODY = "def load(paths):\n    for path in paths:\n        try:\n            "
BLOCKS = [
    # A try body that the file leaves without a handler keeps the model's handler (cut
    # before it, the body could not parse and the answer was lost); where the suffix has
    # the handler, the body alone is the answer.
    case("try-body-keeps-its-missing-handler",
         "fp = open(path)\n        except OSError:\n            continue\n        read(fp)",
         TRY_BODY, "\n        read(fp)\n",
         "fp = open(path)\n        except OSError:\n            continue"),
    case("try-body-cut-before-the-suffixs-handler",
         "fp = open(path)\n        except OSError:\n            continue",
         TRY_BODY, "\n        except OSError:\n            pass\n", "fp = open(path)"),
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
    case("comprehension-continuation-kept", "[row for row in reader\n                if row]\n\n\n"
         "def other():", CSV_READ, "\n", "[row for row in reader\n                if row]"),
    case("comprehension-one-item-per-line-kept",
         "[row\n            for row in reader\n            if row]\nprint(1)", CSV_READ, "\n",
         "[row\n            for row in reader\n            if row]"),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), BLOCKS)
def test_stop_at_block_end(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert stop_at_block_end(raw, ctx) == expected


LOGICAL_LINES = [
    case("one-line", "x = 1\ny = 2", "", "", 1),
    case("open-bracket", "[row for row in reader\n    if row]\nz", "return ", "", 2),
    case("still-open", "f(a,\n  b,\n", "x = ", "", 3),
    case("bracket-opened-before-cursor", "a, b)\nc", "f(", ")", 1),
    case("triple-quoted-string", 'x = """a\nb\n"""\ny', "", "", 3),
    case("inside-string-at-cursor", "a\nb", '"""', "", 1),
    case("brackets-in-a-string-ignored", "'(' + a\nb", "x = ", "", 1),
    case("crlf", "f(a,\r\n  b)\r\nc", "x = ", "\r\n", 2),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), LOGICAL_LINES)
def test_first_logical_line_count(raw: str, ctx: CompletionContext, expected: int) -> None:
    assert first_logical_line_count(raw, ctx) == expected


CLAMP = "def clamp(x, lo, hi):\n    if x > hi:\n"
CLAMP_REST = "\n    return x\n"

HEADER_BODIES = [
    case("body-already-indented", "        return hi", CLAMP, CLAMP_REST, "        return hi"),
    case("body-forgot-indentation", "return hi", CLAMP, CLAMP_REST, "        return hi"),
    case("body-forgot-indentation-empty-suffix", "return hi", CLAMP, "", "        return hi"),
    case("body-one-level-short", "    return hi", CLAMP, CLAMP_REST, "        return hi"),
    case("block-written-from-column-0", "if lo > hi:\n    raise ValueError\nreturn hi", CLAMP,
         "", "        if lo > hi:\n            raise ValueError\n        return hi"),
    case("later-lines-already-indented", "y = hi\n        return y", CLAMP, "",
         "        y = hi\n        return y"),
    case("dedent-after-first-line-kept", "return hi\n    return x", CLAMP, "",
         "        return hi\n    return x"),
    case("blank-line-first", "\nreturn hi", CLAMP, "", "\n        return hi"),
    case("top-level-header", "print(i)", "for i in range(3):\n", "", "    print(i)"),
    case("header-with-comment", "y()", "if x:  # note\n", "", "    y()"),
    case("tab-indented-file", "return 1", "def f(x):\n\tif x:\n", "", "\t\treturn 1"),
    case("two-space-file", "return 1", "def f(x):\n  if x:\n", "", "    return 1"),
    case("editor-indented-to-header-level", "y()\n    z()", "def f(x):\n    if x:\n    ", "",
         "    y()\n        z()"),
    case("string-lines-untouched", 'q = """\nSELECT 1\n"""\nreturn q', "def f():\n", "",
         '    q = """\nSELECT 1\n"""\n    return q'),
    case("not-after-header", "return x", "def f():\n    x = 1\n", "", "return x"),
    case("colon-inside-brackets-not-a-header", "1}", "d = {\n    'a':\n", "", "1}"),
    case("text-right-of-cursor-untouched", "y()", "if x:\n", "    z()\n", "y()"),
    case("other-language-untouched", "return 1;", "if (x) {\n", "", "return 1;", "javascript"),
    case("crlf", "return 1", "def f(x):\r\n    if x:\r\n", "", "        return 1"),
    case("empty", "", CLAMP, "", ""),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), HEADER_BODIES)
def test_indent_body_after_header(raw: str, ctx: CompletionContext, expected: str) -> None:
    assert indent_body_after_header(raw, ctx) == expected


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
    case("comprehension-then-next-function",
         "[row for row in reader\n                if row]\n\n\ndef other():", CSV_READ, "\n",
         "[row for row in reader\n                if row]"),
    case("midline-comprehension", "[row for row in reader\n        if row], key=len)\nx = 1",
         "def f(reader):\n    return sorted(", ")\n",
         "[row for row in reader\n        if row], key=len"),
    case("header-body-forgot-indentation", "return hi\n    return x\n", CLAMP, CLAMP_REST,
         "        return hi"),
    case("header-body-empty-suffix", "return hi", CLAMP, "", "        return hi"),
    case("prose-then-indented-code", "Sure! Here is the code:\n\n    return a + b", FUNC, "",
         "return a + b"),
    case("code-then-prose", "return a + b\n\nThis function adds two numbers.", FUNC, "",
         "return a + b"),
    case("top-level-code-then-prose", "y = 2\nThis sets y to two.", "x = 1\n", "", "y = 2"),
    case("prose-only", "The answer is: return a + b", FUNC, "", ""),
    case("prose-fence-prose", "Sure! Here's the code:\n```\nreturn a + b\n```\nThis adds them.",
         FUNC, "", "return a + b"),
    case("prose-in-docstring-kept", "Add two numbers.", 'def add(a, b):\n    """', "",
         "Add two numbers."),
    case("prose-in-comment-kept", "This function adds two numbers.", "def add(a, b):\n    # ",
         "", "This function adds two numbers."),
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
        "strip_chat_prose",
        "strip_echoed_prefix",
        "join_typed_whitespace",
        "indent_body_after_header",
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
    case("midline-bracket-still-open", "[row for row in reader\n", "return sorted(", ")", False),
    case("midline-bracket-closed-then-break", "[row for row in reader\n    if row], key=len\n",
         "return sorted(", ")", True),
    case("comprehension-continuation", "[row for row in reader\n                if", CSV_READ,
         "\n", False),
    case("prose-after-code", "y = 2\nThis sets y to two.\n", "x = 1\n", "", True),
    case("prose-line-not-finished", "y = 2\nNote.", "x = 1\n", "", False),
    case("leading-prose", "Sure! Here is the code:\n\n", FUNC, "", False),
    case("unindented-body-goes-on", "return hi\n        y", CLAMP, "", False),
    case("unindented-body-then-dedent", "return hi\n    r", CLAMP, "", True),
]


@pytest.mark.parametrize(("raw", "ctx", "expected"), BLOCK_COMPLETE)
def test_block_complete(raw: str, ctx: CompletionContext, expected: bool) -> None:
    assert block_complete(raw, ctx) is expected


@pytest.mark.parametrize(("raw", "ctx", "expected"), BLOCKS[:12])
def test_block_complete_agrees_with_stop_at_block_end(
    raw: str, ctx: CompletionContext, expected: str
) -> None:
    assert block_complete(raw, ctx) is (stop_at_block_end(raw, ctx) != raw)


@pytest.mark.parametrize(
    ("prefix", "suffix", "expected"),
    [
        ("def clamp(x, lo, hi):\n    if x > hi:\n", "\n    return x\n", "        "),
        ("def clamp(x, lo, hi):\n    if x > hi:\n    ", "\n", "    "),  # half-way there
        ("if ok:\n\tx = 1\n\tif y:\n", "", "\t\t"),  # the file's tab unit
        ("def clamp(x, lo, hi):\n    if x > hi:\n        ", "", ""),  # already there
        ("x = 1\n", "", ""),  # no header above
        ("def f():\n", "pass\n", ""),  # text right of the cursor
        ("items = [\n", "", ""),  # a bracket, not a header
    ],
    ids=["column-0", "partly-indented", "tabs", "in-body", "no-header", "text-after",
         "open-bracket"],
)
def test_missing_body_indent(prefix: str, suffix: str, expected: str) -> None:
    from jupyter_ds.completion.rules import missing_body_indent

    assert missing_body_indent(CompletionContext(prefix, suffix)) == expected


@pytest.mark.parametrize(("line", "expected"), [
    ("x = ", True), ("    ", True), ("", True), ("foo(", True), ("y = f(a, ", True),
    ("a = [", True), ("x = mod.", True), ("return ", True), ("raise ", True),
    ("if x in ", True), ("from .core import ", True), ("s = 'a' + ", True),
    ('x = "#" + ', True), ("await ", True),
    # Mid-word, after a finished operand, or where a new name is bound: not a name's start.
    ("foo", False), ("x ", False), ("foo) ", False), ("def ", False), ("class ", False),
    ("with open(f) as ", False), ("for ", False), ("lambda ", False), ("x = 1.", False),
    ("def f(a, ", False), ("async def f(", False), ("def f(a: ", True), ("def f() -> ", True),
    ("class C(", True),
    # In a string or a comment.
    ("s = 'abc ", False), ("# see ", False), ("x = 1  # see ", False),
])
def test_at_name_start(line: str, expected: bool) -> None:
    from jupyter_ds.completion.rules import at_name_start

    assert at_name_start("import os\n\n" + line) is expected


def test_at_name_start_is_false_in_a_docstring() -> None:
    from jupyter_ds.completion.rules import at_name_start

    assert not at_name_start('def f():\n    """Return the\n    ')
    assert at_name_start('def f():\n    """Return the."""\n    ')


def test_a_docstring_longer_than_the_scan_window_is_not_read_inside_out() -> None:
    """The scan of the lines above starts at a definition, never inside a long string:
    started inside this 70-line docstring, it took the closing quotes for opening ones
    and the code after them for text."""
    from jupyter_ds.completion.rules import at_name_start, open_triple_quote

    doc = 'def f():\n    """Doc.\n' + "".join(f"    line {i} of it.\n" for i in range(70))
    after = doc + '    """\n    x = 1\n    return '
    assert open_triple_quote(after) is None
    assert at_name_start(after)
    assert open_triple_quote(doc + "    more ") == '"""'  # still inside it


def test_text_in_a_docstring_that_opened_before_the_scan_window_is_left_alone() -> None:
    """A module docstring longer than the 60 lines the rules scan: its sentences are not
    a chat model's prose to strip, and a line ending with ``:`` is no block header to
    indent under (werkzeug's routing docs were cut or indented)."""
    from jupyter_ds.completion.rules import CompletionContext, postprocess

    doc = '"""Routing.\n\n' + "".join(f"Line {i} of the module's docs.\n" for i in range(70))
    header = doc + "Use it like this:\n\n"
    assert postprocess(".. code-block:: python", CompletionContext(header, "\n")) == \
        ".. code-block:: python"
    sentence = "The host header is overwritten with the value."
    assert postprocess(sentence, CompletionContext(doc + "    ", "\n")) == sentence
    # The same sentence where code stands is a chat model's prose, and goes.
    code = doc + '"""\n\n\ndef f():\n    '
    assert postprocess(sentence, CompletionContext(code, "\n")) == ""


def test_a_header_continued_with_a_backslash_keeps_its_own_indentation() -> None:
    """``if a and \\`` / ``   b:``: the body goes under the ``if``, not under the
    continuation line (mailbox.py's ``raise`` was pushed three columns too deep)."""
    from jupyter_ds.completion.rules import CompletionContext, missing_body_indent, postprocess

    header = "def f(entry, path):\n    if entry != 'new' and \\\n       os.path.isdir(path):\n"
    assert missing_body_indent(CompletionContext(header, "\n")) == " " * 8
    body = "raise ValueError(path)"
    assert postprocess(body, CompletionContext(header + " " * 8, "\n")) == body
    # A backslash at the end of a comment joins nothing.
    commented = "def f(a):  # \\\n    if a:\n"
    assert missing_body_indent(CompletionContext(commented, "\n")) == " " * 8
