"""Notebook context: path safety, cell selection, budget fitting, caching, prompt format.

The last tests run on the real Jupyter server: a notebook written under the server root
reaches the prompt the tiny model sees (its ``prompt_tokens``), and a path that leaves the
root is a 400 naming ``path``.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from ds_engine.templates import PromptTemplate, detect_template
from ds_engine.testing import NoAdapters, make_tiny_tokenizer

from jupyter_ds.completion.notebook import (
    Cell,
    CountMemo,
    NotebookFormat,
    NotebookReader,
    PrecedingCells,
    fit_cells,
    notebook_context,
    parse_notebook,
    resolve_notebook_path,
)
from jupyter_ds.completion.requests import CompleteRequest, ContextCell
from jupyter_ds.completion.service import CompletionService, CompletionSettings
from jupyter_ds.errors import ApiError


def words(text: str) -> int:
    """A token counter where every whitespace-separated word is one token."""
    return len(text.split())


def notebook(*cells: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """An nbformat 4.5 notebook from (kind, source[, id]) tuples; ids default to c0, c1..."""
    out = []
    for i, cell in enumerate(cells):
        kind, source = cell[0], cell[1]
        raw: dict[str, Any] = {
            "cell_type": kind,
            "id": cell[2] if len(cell) > 2 else f"c{i}",
            "metadata": {},
            "source": source.splitlines(keepends=True),  # nbformat's list form
        }
        if kind == "code":
            raw.update(execution_count=None, outputs=[])
        out.append(raw)
    return {"cells": out, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def write_nb(path: Path, nb: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


SAMPLE = notebook(
    ("markdown", "# Load the data"),
    ("code", "import pandas as pd"),
    ("code", "df = pd.read_csv('data.csv')\n"),
    ("raw", "raw text"),
    ("code", "   \n"),  # empty: never context
    ("markdown", "Now the mean"),
    ("code", "df.head()"),
    ("code", "print(df.shape)"),  # c7: the current cell in most tests
    ("code", "after = 1"),  # below the cursor: never context
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    write_nb(r / "nb.ipynb", SAMPLE)
    return r


def assert_path_error(exc: pytest.ExceptionInfo[ApiError]) -> None:
    assert exc.value.status == 400
    assert exc.value.field == "path"
    assert "path" in exc.value.message


# ------------------------------------------------------------------------ path safety


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "/tmp/nb.ipynb",
        "\\\\server\\share\\nb.ipynb",
        "C:\\Users\\nb.ipynb",
        "..",
        "../nb.ipynb",
        "sub/../../nb.ipynb",
        "./../root/nb.ipynb",
        "",
    ],
)
def test_paths_that_leave_the_root_are_refused(root: Path, path: str):
    with pytest.raises(ApiError) as exc:
        resolve_notebook_path(root, path)
    assert_path_error(exc)
    reader = NotebookReader(root)
    with pytest.raises(ApiError) as exc:
        reader.preceding(path, "c7")
    assert_path_error(exc)
    assert reader.reads == 0


def test_symlinks_out_of_the_root_are_never_read(root: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    write_nb(outside / "secret.ipynb", SAMPLE)
    (root / "link.ipynb").symlink_to(outside / "secret.ipynb")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    reader = NotebookReader(root)
    for path in ("link.ipynb", "linkdir/secret.ipynb"):
        assert resolve_notebook_path(root, path) is None
        assert reader.preceding(path, "c7") is None  # no context, and no error either
    assert reader.reads == 0


def test_paths_inside_the_root_are_accepted(root: Path):
    write_nb(root / "sub" / "deep.ipynb", SAMPLE)
    (root / "inner.ipynb").symlink_to(root / "sub" / "deep.ipynb")
    real_root = Path(os.path.realpath(root))
    assert resolve_notebook_path(root, "nb.ipynb") == real_root / "nb.ipynb"
    assert resolve_notebook_path(root, "sub/../nb.ipynb") == real_root / "nb.ipynb"
    assert resolve_notebook_path(root, "RTC:nb.ipynb") == real_root / "nb.ipynb"
    assert resolve_notebook_path(root, "not/yet/saved.ipynb") == real_root / "not/yet/saved.ipynb"
    reader = NotebookReader(root)
    for path in ("sub/deep.ipynb", "inner.ipynb", "./nb.ipynb"):
        got = reader.preceding(path, "c7")
        assert got is not None and got.cells, path


# ------------------------------------------------------------------------ cell selection


def test_preceding_code_cells_nearest_first(root: Path):
    got = NotebookReader(root).preceding("nb.ipynb", "c7")
    assert got == PrecedingCells(
        (
            Cell("c6", "code", "df.head()"),
            Cell("c2", "code", "df = pd.read_csv('data.csv')\n"),
            Cell("c1", "code", "import pandas as pd"),
        ),
        "code",
    )


def test_markdown_cells_only_when_asked(root: Path):
    got = NotebookReader(root).preceding("nb.ipynb", "c7", include_markdown=True)
    assert got is not None
    assert [c.id for c in got.cells] == ["c6", "c5", "c2", "c1", "c0"]
    assert got.cells[1] == Cell("c5", "markdown", "Now the mean")
    current_md = NotebookReader(root).preceding("nb.ipynb", "c5", include_markdown=True)
    assert current_md is not None and current_md.current_kind == "markdown"
    assert [c.id for c in current_md.cells] == ["c2", "c1", "c0"]


def test_first_cell_and_unknown_cell_id(root: Path):
    reader = NotebookReader(root)
    first = reader.preceding("nb.ipynb", "c0")
    assert first is not None and first.cells == ()
    assert reader.preceding("nb.ipynb", "no-such-cell") is None


def test_what_gives_no_context(root: Path):
    (root / "script.py").write_text("x = 1\n")
    (root / "dir.ipynb").mkdir()
    (root / "bad.ipynb").write_text("{not json")
    (root / "binary.ipynb").write_bytes(b"\xff\xfe\x00garbage")
    (root / "list.ipynb").write_text("[1, 2]")
    (root / "badcell.ipynb").write_text(json.dumps({"cells": [{"cell_type": "code"}, 3]}))
    reader = NotebookReader(root)
    for path in ("missing.ipynb", "new/Untitled.ipynb", "script.py", "dir.ipynb", "bad.ipynb",
                 "binary.ipynb", "list.ipynb", "badcell.ipynb"):
        assert reader.preceding(path, "c7") is None, path


def test_source_as_string_or_list():
    nb = {"cells": [{"cell_type": "code", "id": "a", "source": ["x = 1\n", "y = 2"]},
                    {"cell_type": "code", "id": "b", "source": "z = 3"},
                    {"cell_type": "code", "source": ""}]}
    assert parse_notebook(json.dumps(nb).encode()) == (
        Cell("a", "code", "x = 1\ny = 2"), Cell("b", "code", "z = 3"), Cell(None, "code", ""))
    assert parse_notebook(b'{"cells": [{"cell_type": "code", "source": [1]}]}') is None


def test_huge_notebooks_give_no_context(root: Path):
    nb = notebook(("code", "x = 1"), ("code", "# pad\n" * 5000), ("code", "y"))
    write_nb(root / "big.ipynb", nb)
    size = (root / "big.ipynb").stat().st_size
    assert NotebookReader(root, max_bytes=size).preceding("big.ipynb", "c2") is not None
    small = NotebookReader(root, max_bytes=size - 1)
    assert small.preceding("big.ipynb", "c2") is None
    assert small.reads == 0


# ------------------------------------------------------------------------ caching


def test_cache_rereads_only_a_changed_notebook(root: Path):
    reader = NotebookReader(root)
    for _ in range(5):
        assert reader.preceding("nb.ipynb", "c7") is not None
    assert reader.reads == 1
    changed = notebook(("code", "import numpy as np"), ("code", "current"))
    write_nb(root / "nb.ipynb", changed)
    got = reader.preceding("nb.ipynb", "c1")
    assert got is not None and got.cells == (Cell("c0", "code", "import numpy as np"),)
    assert reader.reads == 2
    # Same size, new mtime: still re-read.
    same_size = notebook(("code", "import numpy as nq"), ("code", "current"))
    path = write_nb(root / "nb.ipynb", same_size)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    got = reader.preceding("nb.ipynb", "c1")
    assert got is not None and got.cells[0].source == "import numpy as nq"
    assert reader.reads == 3


def test_cache_is_a_small_lru(root: Path):
    for name in ("a", "b", "c"):
        write_nb(root / f"{name}.ipynb", SAMPLE)
    reader = NotebookReader(root, cache_size=2)
    for name in ("a", "b", "a", "c", "a"):
        reader.preceding(f"{name}.ipynb", "c7")
    assert reader.reads == 3  # a, b, c; the second and last "a" were hits
    reader.preceding("b.ipynb", "c7")  # evicted by c
    assert reader.reads == 4


# ------------------------------------------------------------------------ budget


def cells_of(*sizes: int) -> list[Cell]:
    """Cells (nearest first) of ``size`` words each."""
    return [Cell(f"c{i}", "code", " ".join(["w"] * n)) for i, n in enumerate(sizes)]


PLAIN = NotebookFormat()


def fit(cells: list[Cell], count=words, budget: int = 100, **kw: Any) -> int:
    pieces = [PLAIN.piece(c) for c in cells]
    return fit_cells(pieces, count, budget, tail=PLAIN.tail(), **kw)


def brute_force(cells: list[Cell], budget: int) -> int:
    best = 0
    for k in range(1, len(cells) + 1):
        if words(PLAIN.render(list(reversed(cells[:k])))) <= budget:
            best = k
        else:
            break
    return best


def test_fit_takes_whole_nearest_cells_and_drops_older_ones():
    cells = cells_of(3, 4, 5, 1)
    # Plain format: "# %%" costs two words per cell plus two for the current cell's marker.
    expected = {0: 0, 4: 0, 6: 0, 7: 1, 12: 1, 13: 2, 19: 2, 20: 3, 22: 3, 23: 4, 100: 4}
    assert {b: fit(cells, budget=b) for b in expected} == expected
    assert fit([], budget=100) == 0
    # A big nearest cell ends the selection: no hole with older cells after it.
    assert fit(cells_of(50, 1, 1), budget=20) == 0


def test_fit_matches_brute_force_with_few_count_calls():
    rng = random.Random(7)
    for _ in range(300):
        cells = cells_of(*[rng.randint(1, 40) for _ in range(rng.randint(1, 60))])
        budget = rng.randint(1, 600)
        calls: list[str] = []

        def count(text: str, calls: list[str] = calls) -> int:
            calls.append(text)
            return words(text)

        ratio = rng.choice([0.7, 2.0, 2.2, 3.0, 10.0])  # good and bad chars-per-token hints
        assert fit(cells, count, budget, chars_per_token=ratio) == brute_force(cells, budget)
        assert len(calls) <= 2 + len(cells).bit_length(), (len(cells), len(calls))


def test_fit_with_a_good_hint_costs_two_counts():
    cells = cells_of(*([10] * 40))
    calls = []

    def count(text: str) -> int:
        calls.append(text)
        return words(text)

    # A cell renders as "# %%\n" + 19 characters + "\n\n": 26 characters, 12 word-tokens.
    assert fit(cells, count, 120, chars_per_token=26 / 12) == 9
    assert len(calls) == 2
    calls.clear()
    assert fit(cells, count, 1000, chars_per_token=26 / 12) == 40  # all fit: one count
    assert len(calls) == 1


def test_count_memo_counts_a_text_once():
    calls = []
    memo = CountMemo(lambda t: calls.append(t) or words(t), size=2)
    assert [memo("a b"), memo("a b"), memo("c"), memo("a b")] == [2, 2, 1, 2]
    assert memo.calls == 2 and len(calls) == 2
    memo("d")
    memo("e")
    memo("a b")  # evicted
    assert memo.calls == 5


def test_notebook_context_fits_the_budget():
    pre = PrecedingCells(tuple(cells_of(2, 2, 2, 2)), "code")
    fmt = NotebookFormat()
    for budget in range(0, 30):
        text = notebook_context(pre, fmt, words, budget)
        assert words(text) <= budget
        if text:
            assert text.endswith("# %%\n")
    assert notebook_context(pre, fmt, words, 1000).count("# %%") == 5


# ------------------------------------------------------------------------ prompt format


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny_fim_tokenizer():
    return make_tiny_tokenizer("starcoder")


class FakeEngine(NoAdapters):
    """Just what ``CompletionService._prompt`` uses: templates, count_tokens, window."""

    def __init__(self, template: PromptTemplate, count=words, window: int = 4096):
        self.template = template
        self._count = count
        self.window = window
        self.count_calls = 0

    def count_tokens(self, text: str) -> int:
        self.count_calls += 1
        return self._count(text)

    def context_window(self) -> int:
        return self.window


def service(engine: FakeEngine, root: Path | None, max_prompt_tokens: int = 1024):
    settings = CompletionSettings(
        max_prompt_tokens=max_prompt_tokens, root_dir=None if root is None else str(root)
    )
    return CompletionService(engine, settings)  # type: ignore[arg-type]


def req(prefix: str = "df.", path: str | None = "nb.ipynb", cell_id: str | None = "c7", **kw):
    return CompleteRequest(prefix=prefix, path=path, cell_id=cell_id, **kw)


def test_prompt_in_the_models_notebook_format(root: Path, tiny_tokenizer):
    template = detect_template(tiny_tokenizer.get_vocab())
    assert {"code", "text"} <= set(template.notebook_tokens) and not template.supports_fim
    engine = FakeEngine(template, lambda t: len(tiny_tokenizer.tokenize(t)))
    prompt, _ = service(engine, root)._prompt(req())
    assert prompt == (
        "<jupyter_text># Load the data"
        "<jupyter_code>import pandas as pd\n"
        "<jupyter_code>df = pd.read_csv('data.csv')\n"
        "<jupyter_text>Now the mean"
        "<jupyter_code>df.head()\n"
        "<jupyter_code>df."
    )
    assert "after = 1" not in prompt and "print(df.shape)" not in prompt
    assert "<filename>" not in prompt  # notebooks were trained on without it


def test_prompt_with_jupyter_start_and_fim(root: Path, tiny_fim_tokenizer):
    vocab = [*tiny_fim_tokenizer.get_vocab(), "<jupyter_start>"]
    template = detect_template(vocab)
    assert template.supports_fim and template.notebook_tokens["start"] == "<jupyter_start>"
    prompt, _ = service(FakeEngine(template), root)._prompt(
        req(prefix="print(df", suffix=")\n", cell_id="c2"))
    assert prompt == (
        "<fim_prefix><jupyter_start><jupyter_text># Load the data"
        "<jupyter_code>import pandas as pd\n"
        "<jupyter_code>print(df<fim_suffix>)\n<fim_middle>"
    )


def test_prompt_as_plain_cells_without_notebook_tokens(root: Path):
    template = detect_template(["a", "b", "<|endoftext|>"])
    assert not template.notebook_tokens
    prompt, _ = service(FakeEngine(template), root)._prompt(req())
    assert prompt == (
        "# %%\nimport pandas as pd\n\n"
        "# %%\ndf = pd.read_csv('data.csv')\n\n"
        "# %%\ndf.head()\n\n"
        "# %%\ndf."
    )
    # A markdown cell cannot be continued as code: no context there.
    assert service(FakeEngine(template), root)._prompt(req(cell_id="c5"))[0] == "df."


def test_current_markdown_cell_gets_the_text_marker(root: Path, tiny_tokenizer):
    template = detect_template(tiny_tokenizer.get_vocab())
    prompt, _ = service(FakeEngine(template), root)._prompt(req(prefix="The ", cell_id="c5"))
    assert prompt.endswith("<jupyter_code>df = pd.read_csv('data.csv')\n<jupyter_text>The ")


def test_no_context_without_root_path_or_cell(root: Path, tiny_tokenizer):
    template = detect_template(tiny_tokenizer.get_vocab())
    assert service(FakeEngine(template), None)._prompt(req())[0] == "<filename>nb.ipynb\ndf."
    svc = service(FakeEngine(template), root)
    assert svc._prompt(req(cell_id=None))[0] == "<filename>nb.ipynb\ndf."
    assert svc._prompt(req(path=None))[0] == "df."
    assert svc._prompt(req(cell_id="nope"))[0] == "<filename>nb.ipynb\ndf."
    assert svc._prompt(req(path="unsaved.ipynb"))[0] == "<filename>unsaved.ipynb\ndf."
    assert svc._prompt(req(cell_id="c0"))[0] == "<filename>nb.ipynb\ndf."  # nothing above


def test_cells_sent_by_the_client_replace_the_saved_notebook(root: Path, tiny_tokenizer):
    """An editor that holds the notebook (the language server) sends its cells: they are
    the context, whether or not it is saved, and a root is not even needed."""
    template = detect_template(tiny_tokenizer.get_vocab())
    cells = [ContextCell("import numpy as np\n"), ContextCell("# Arrays", "markdown"),
             ContextCell("   "), ContextCell("a = np.ones(3)\n")]
    for root_dir in (root, None):
        prompt, _ = service(FakeEngine(template), root_dir)._prompt(
            req(prefix="a.", path="unsaved.ipynb", cell_id=None, cells=cells))
        assert prompt == ("<jupyter_code>import numpy as np\n<jupyter_text># Arrays"
                          "<jupyter_code>a = np.ones(3)\n<jupyter_code>a."), prompt
    # Sent, they win over the saved file even where it has the cell.
    prompt, _ = service(FakeEngine(template), root)._prompt(req(cells=cells[:1]))
    assert prompt == "<jupyter_code>import numpy as np\n<jupyter_code>df."
    # An empty list: no context, the saved file is not read.
    assert service(FakeEngine(template), root)._prompt(req(cells=[]))[0] == (
        "<filename>nb.ipynb\ndf.")


def test_escaping_path_is_a_400_only_when_context_is_on(root: Path):
    template = detect_template([])
    with pytest.raises(ApiError) as exc:
        service(FakeEngine(template), root)._prompt(req(path="../nb.ipynb"))
    assert_path_error(exc)
    # Without the notebook context (CLI, root unset) the path is only a label.
    assert service(FakeEngine(template), None)._prompt(req(path="../nb.ipynb"))[0] == "df."


def test_current_cell_keeps_priority_in_the_budget(root: Path):
    template = detect_template([])
    nb = notebook(*[("code", f"x{i} = {i}") for i in range(30)], ("code", "", "cur"))
    write_nb(root / "long.ipynb", nb)
    budget = 60  # the service keeps 8 tokens of slack: 52 for the prompt
    for n_words in (0, 5, 20, 40, 51, 52, 200):
        prefix = " ".join(["w"] * n_words)
        engine = FakeEngine(template)
        svc = service(engine, root, max_prompt_tokens=budget)
        prompt, _ = svc._prompt(req(prefix=prefix, path="long.ipynb", cell_id="cur"))
        assert words(prompt) <= budget - 8, n_words
        assert prompt.endswith(prefix if n_words <= 52 else " w")
        context = prompt[: len(prompt) - len(prefix)] if n_words <= 52 else ""
        # Whole cells, the nearest ones, as many as fit.
        kept = context.count("# %%") - 1 if context else 0
        if kept:
            assert "x29 = 29" in context
            assert f"x{30 - kept} = {30 - kept}" in context
            assert f"x{29 - kept} = " not in context
        # 52 tokens less the prefix and 2 of slack; 5 words a cell, 2 for the marker.
        assert kept == max(0, min(30, (52 - n_words - 2 - 2) // 5)), n_words
        # Beyond trim_context's own counts: at most a guess, its neighbour and a search.
        plain = FakeEngine(template)
        service(plain, None, max_prompt_tokens=budget)._prompt(req(prefix=prefix))
        assert engine.count_calls - plain.count_calls <= 2 + (30).bit_length(), n_words


def test_keystrokes_reuse_counts_and_the_parsed_notebook(root: Path):
    engine = FakeEngine(detect_template([]))
    svc = service(engine, root)
    svc._prompt(req(prefix="df"))
    first = engine.count_calls
    for prefix in ("df.", "df.h", "df.he"):
        svc._prompt(req(prefix=prefix))
    assert svc.notebooks is not None and svc.notebooks.reads == 1
    # Per keystroke: trim_context's counts and one for the cell; the context is memoized.
    assert engine.count_calls - first <= 3 * 3


# ------------------------------------------------------------------------ real server


API_NB = notebook(
    ("code", "import pandas as pd"),
    ("markdown", "Read the data"),
    ("code", "df = pd.read_csv('data.csv')"),
    ("code", "df.", "current-cell"),
)


def engine_of(jp_serverapp):
    return jp_serverapp.web_app.settings["jupyter_ds"].engine


async def test_api_puts_the_preceding_cells_in_the_prompt(ds_ready, jp_root_dir, jp_serverapp):
    write_nb(jp_root_dir / "work" / "analysis.ipynb", API_NB)
    body = {"prefix": "df.", "max_tokens": 2, "path": "work/analysis.ipynb",
            "cell_id": "current-cell"}
    code, env, _ = await ds_ready.post("complete", body)
    assert code == 200, env
    with_context = env["data"]["prompt_tokens"]
    code, env, _ = await ds_ready.post("complete", {**body, "cell_id": None})
    assert code == 200, env
    without = env["data"]["prompt_tokens"]
    engine = engine_of(jp_serverapp)
    # The tiny model is prefix-only with <jupyter_code>/<jupyter_text> tokens.
    expected = (
        "<jupyter_code>import pandas as pd\n"
        "<jupyter_text>Read the data"
        "<jupyter_code>df = pd.read_csv('data.csv')\n"
        "<jupyter_code>df."
    )
    assert with_context == engine.count_tokens(expected)
    assert without == engine.count_tokens("<filename>work/analysis.ipynb\ndf.")
    assert with_context > without

    # Unsaved notebook or unknown cell: the same prompt as without a cell.
    for extra in ({"path": "work/Untitled.ipynb"}, {"cell_id": "not-saved-yet"}):
        code, env, _ = await ds_ready.post("complete", {**body, **extra})
        assert code == 200, env
        path = extra.get("path", body["path"])
        assert env["data"]["prompt_tokens"] == engine.count_tokens(f"<filename>{path}\ndf.")


@pytest.mark.parametrize("path", ["../outside.ipynb", "/etc/hosts", "work/../../x.ipynb"])
async def test_api_refuses_a_path_outside_the_root(ds_ready, path):
    code, env, _ = await ds_ready.post(
        "complete", {"prefix": "x", "path": path, "cell_id": "c0", "max_tokens": 1})
    assert code == 400, env
    assert env["status"] == "error" and env["error"]["code"] == "invalid_request"
    assert env["error"]["field"] == "path" and "path" in env["error"]["message"]


class TestNotebookContextOff:
    @pytest.fixture
    def ds_config(self) -> dict[str, Any]:
        return {"notebook_context": False}

    async def test_setting_off_gives_no_context(self, ds_ready, jp_root_dir, jp_serverapp):
        write_nb(jp_root_dir / "analysis.ipynb", API_NB)
        body = {"prefix": "df.", "max_tokens": 1, "path": "analysis.ipynb",
                "cell_id": "current-cell"}
        code, env, _ = await ds_ready.post("complete", body)
        assert code == 200, env
        engine = engine_of(jp_serverapp)
        expected = engine.count_tokens("<filename>analysis.ipynb\ndf.")
        assert env["data"]["prompt_tokens"] == expected
