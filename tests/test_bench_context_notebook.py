"""benchmarks/context_notebook.py: which cursors a notebook gets, what a suggestion names,
the kernel's verdict on those names, and a short run of the benchmark itself on a small
notebook in a real kernel with the ScriptedEngine (no model, no network): its report
must count the made-up column and name, and only the kernel arm's prompts may hold what
the kernel knows. About 20 s (two kernels)."""

from __future__ import annotations

import json

import pytest
from benchmark_modules import benchmark_module

pd = pytest.importorskip("pandas")

pytestmark = pytest.mark.timeout(120)



@pytest.fixture(scope="module")
def cn():
    with benchmark_module("context_notebook") as module:
        yield module


CELL = '''import os
def helper(x):
    """Doc."""
    return x + df.price
total = df["price"] * qty
"a bare string"
df.describe()
y = 1 + 2
print(total)
'''


def test_cursors_are_single_line_statements_that_use_earlier_names(cn):
    cursors = cn.pick_cursors(CELL, {"df", "qty"}, cell=3)
    got = [(c.line, c.head, c.target) for c in cursors]
    # The import, the def line, the docstring, the bare string and `y = 1 + 2` (no earlier
    # name) get none; `print(total)` uses a name of this cell only.
    assert got == [
        (3, "    return ", "x + df.price"),
        (4, "total = ", 'df["price"] * qty'),
        (6, "", "df.describe()"),
    ]
    for cursor in cursors:
        assert CELL[:len(cursor.prefix)] == cursor.prefix
        line_end = len(cursor.prefix) + len(cursor.target)
        assert CELL[line_end:] == cursor.suffix
        assert cursor.cell == 3
    assert cn.pick_cursors("%matplotlib inline\nx = df\n", {"df"}, 0) == []


def test_plan_spreads_cursors_and_needs_an_earlier_binding(cn):
    cells = [{"cell_type": "code", "source": "import numpy as np\nn = 3"},
             {"cell_type": "markdown", "source": "x = np.zeros(n)"},
             *({"cell_type": "code", "source": f"a{i} = np.ones(n)"} for i in range(6))]
    chosen = cn.plan(cells, 3)
    assert sorted(chosen) == [2, 4, 6]  # 6 candidates, every second one
    assert all(len(v) == 1 and v[0].target == "np.ones(n)" for v in chosen.values())
    assert cn.plan(cells[:1], 3) == {}  # nothing before the first code cell


def test_references_of_a_suggestion(cn):
    refs = cn.references("total = ", 'df[["price", "zz"]].sum() + foo(v for v in rows)',
                         "k = 1\n")
    assert sorted(r.as_list() for r in refs) == [
        ["col", "df", "price"], ["col", "df", "zz"],
        ["name", "df", ""], ["name", "foo", ""], ["name", "rows", ""]]
    # Cut mid-call: closed before parsing; names bound earlier in the cell not asked.
    refs = cn.references("", "np.lnspace(k, df.qty", "k = 1\nfor i in x:\n")
    assert sorted(r.as_list() for r in refs) == [
        ["attr", "df", "qty"], ["attr", "np", "lnspace"], ["name", "df", ""], ["name", "np", ""]]
    assert cn.references("", "lambda q: q + z", "")[0].as_list() == ["name", "z", ""]
    assert cn.references("x = ", "}}) bad (", "") is None


@pytest.fixture
def lab(cn, tmp_path, monkeypatch, jp_asyncio_loop):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    lab = cn.Lab(tmp_path)
    yield lab
    jp_asyncio_loop.run_until_complete(lab.kernels.shutdown_all(now=True))


async def test_the_kernel_judges_names_attributes_and_columns(cn, lab):
    session = await lab.sessions.create_session(path="notebooks/j.ipynb", type="notebook",
                                                kernel_name="python3", name="j")
    kernel = cn.NotebookKernel(lab.kernels.get_kernel(session["kernel"]["id"]), "j")
    try:
        await kernel.ready()
        reply = await kernel.run("import pandas as pd\n"
                                 "df = pd.DataFrame({'price': [1.0], 'qty': [2]})", 60)
        assert reply["status"] == "ok"
        row = cn.Row("j", 1, 0, "x")
        row.refs = {
            "none": [["name", "df", ""], ["name", "nope", ""], ["col", "df", "price"],
                     ["col", "df", "cost"], ["attr", "pd", "DataFrame"]],
            "kernel": [["name", "len", ""], ["attr", "pd", "DataFramez"],
                       ["attr", "df", "qty"], ["attr", "unknown", "x"]],
        }
        await cn.judge(kernel, row)
        assert row.missing == {
            "none": [["name", "nope", ""], ["col", "df", "cost"]],
            "kernel": [["attr", "pd", "DataFramez"]]}
        # The judging defined nothing in the user's namespace.
        names = await kernel.expression(
            "__import__('json').dumps(sorted(k for k in get_ipython().user_ns "
            "if not k.startswith('_')))")
        assert "nope" not in names and "checks" not in names
    finally:
        kernel.close()


NOTEBOOK = {"cells": [
    {"cell_type": "code", "source": ["import pandas as pd\n",
                                     "sales = pd.DataFrame({'price_eur': [1.5, 2.0], "
                                     "'units_sold': [3, 4]})"]},
    {"cell_type": "markdown", "source": "Revenue per row:"},
    {"cell_type": "code", "source": "revenue = sales['price_eur'] * sales['units_sold']"},
    {"cell_type": "code", "source": "print(revenue.sum())"},
]}


async def test_a_short_run_counts_made_up_columns_in_each_arm(cn, tmp_path, monkeypatch):
    from ds_engine.testing import ScriptedEngine

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # run() sets both
    monkeypatch.setenv("MPLBACKEND", "Agg")
    engine = ScriptedEngine(["sales['price'] * sales['units_sold']"])
    args = cn.parse_args(["--cache", str(tmp_path / "cache"), "--cursors-per-notebook", "4",
                          "--cell-timeout", "60", "--rows"])
    report = await cn.run(args, books={"shop.ipynb": NOTEBOOK}, engine=engine)
    assert report["cursors"] == 2 and report["notebooks_used"] == 1
    assert report["per_notebook"]["shop.ipynb"]["stopped"] is None
    none, kernel = report["arms"]["none"], report["arms"]["kernel"]
    prompt_only = report["arms"]["kernel_prompt"]
    for figures in (none, kernel, prompt_only):
        assert figures["cursors"] == 2 and figures["offered"] == 100.0
        assert figures["judged"] == 2
    # Without the kernel both answers name the made-up column `price`; with it, the
    # kernel's columns correct the key (grounding), and the first cursor matches.
    assert none["hallucinated"] == 100.0 and none["hallucinated_columns"] == 100.0
    assert none["exact_match"] == 0.0
    assert kernel["hallucinated"] == 0.0 and kernel["exact_match"] == 50.0
    assert prompt_only["hallucinated"] == 100.0  # the same answer, not checked
    assert report["hallucination_ratio"] == {"kernel_prompt": 1.0, "kernel": 0.0}
    assert report["kernel_context"]["states"] == {"used": 2}
    rows = report["rows"]
    assert [r["target"] for r in rows] == ["sales['price_eur'] * sales['units_sold']",
                                           "print(revenue.sum())"]
    assert rows[0]["missing"] == {"none": [["col", "sales", "price"]], "kernel": [],
                                  "kernel_prompt": [["col", "sales", "price"]]}
    assert rows[0]["context"]["grounding"] == {"fixed": ["price -> price_eur"]}
    # Six prompts: for each cursor one per arm; only the kernel arm's name the columns
    # of `sales` as the kernel holds them (not in any cell's text: `units_sold` is, but
    # its dtype is not).
    with_kernel = [p for p in engine.prompts if "int64" in p]
    assert len(engine.prompts) == 6 and len(with_kernel) == 4
    assert all("price_eur" in p for p in with_kernel)
    json.dumps(report)  # the report is JSON as it stands
