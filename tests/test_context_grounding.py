"""Grounding rule golden cases (jupyter_ds/context/grounding.py): what a suggestion
becomes when checked against the kernel's names and DataFrame columns."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from jupyter_ds.context.grounding import KnownNames, ground
from jupyter_ds.context.kernel import KernelName, Snapshot

KNOWN = KnownNames(
    names=frozenset({"sales", "pd", "np", "res", "model"}),
    complete=True,
    columns={"sales": ("price_eur", "units_sold", "region")},
)
PROMPT = "import numpy as np\n# sales: DataFrame\nbeta = np.ones(3)\n"

CASES = [
    # (line before the cursor, suggestion, result, cut at, fixed)
    ("total = ", "sales['price'] * sales['units_sold']",
     "sales['price_eur'] * sales['units_sold']", None, ["price -> price_eur"]),
    # The user typed part of the key: the fix continues what was typed.
    ("total = sales['pr", "ice'] * 2", "ice_eur'] * 2", None, ["price -> price_eur"]),
    ("", "sales[['regoin', 'units_sld']].mean()", "sales[['region', 'units_sold']].mean()",
     None, ["regoin -> region", "units_sld -> units_sold"]),
    # Nothing like it: stop before the key (the validator then cuts to what parses).
    ("x = ", "sales['weather'].mean()", "sales[", "weather", []),
    # The typed key is not a column and nothing that starts with it is: nothing offered.
    ("x = sales['zz", "z']", "", "zzz", []),
    ("x = ", "np.dot(X, beta)", "np.dot(", "X", []),
    ("", "for i, row in enumerate(rows): print(i)", "for i, row in enumerate(", "rows", []),
    ("y = ", "lambda q: q + zz", "lambda q: q +", "zz", []),
    ("", "[v for v in range(3)] + foo(a=1)", "[v for v in range(3)] +", "foo", []),
    ("", "print(f'{res.params}', yhat)", "print(f'{res.params}',", "yhat", []),
    # Bound by the suggestion, builtins, IPython's names, attributes, keyword arguments,
    # names the prompt holds and _-names are never cut.
    ("", "(n := len(sales)) + n", "(n := len(sales)) + n", None, []),
    ("a, b = ", "c, d = 1, 2", "c, d = 1, 2", None, []),
    ("", "display(model.fit(beta, verbose=True).summary())",
     "display(model.fit(beta, verbose=True).summary())", None, []),
    ("", "sales.groupby('region')['price_eur'].sum() + _",
     "sales.groupby('region')['price_eur'].sum() + _", None, []),
    ("def f(", "x, y=2):\n    return x + y + z", "x, y=2):\n    return x + y +", "z", []),
    # Prose in a docstring that began lines above is no code.
    ('def f():\n    """Sums\n    the ', "values of all rows.", "values of all rows.", None, []),
    # Import and magic lines are left alone.
    ("import ", "madeup_module", "madeup_module", None, []),
    ("%", "timeit nothing_here", "timeit nothing_here", None, []),
]


@pytest.mark.parametrize(("head", "text", "result", "cut_at", "fixed"), CASES)
def test_golden(head: str, text: str, result: str, cut_at: str | None, fixed: list[str]):
    grounded = ground(text, PROMPT + head, KNOWN, PROMPT)
    assert (grounded.text, grounded.cut_at, grounded.fixed) == (result, cut_at, fixed)


def test_names_are_only_judged_when_the_kernel_listed_them_all():
    partial = KnownNames(names=KNOWN.names, complete=False, columns=KNOWN.columns)
    grounded = ground("np.dot(X, sales['price'])", "x = ", partial, "")
    # Unknown names stay (the kernel had more than it listed); columns are still checked.
    assert grounded.text == "np.dot(X, sales['price_eur'])" and grounded.cut_at is None


def test_other_languages_are_left_alone():
    assert ground("undefined_thing", "x <- ", KNOWN, "", language="r").text == \
        "undefined_thing"


def test_known_names_from_a_snapshot_keep_only_whole_column_lists():
    names = [
        KernelName("df", "frame", "DataFrame", ncols=2,
                   columns=(("a", "int64"), ("b", "float64"))),
        KernelName("wide", "frame", "DataFrame", ncols=5000, columns=(("c0", "float64"),)),
        KernelName("mixed", "frame", "DataFrame", ncols=2,
                   columns=((0, "int64"), ("b", "float64"))),
        KernelName("np", "module", module="numpy"),
    ]
    known = KnownNames.from_snapshot(Snapshot(names=names, execution_count=3, generation=0))
    assert known.names == {"df", "wide", "mixed", "np"} and known.complete
    assert dict(known.columns) == {"df": ("a", "b")}
    more = KnownNames.from_snapshot(SimpleNamespace(names=names, more=4, partial=False))
    assert not more.complete
