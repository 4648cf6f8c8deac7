"""benchmarks/context_repository.py: which cursors it picks in a small hand-built package
(cross-file names only: imported names and ``mod.attr``, not import lines, headers,
docstrings, comments, f-strings, same-file or rebound names), the adapter-manifest check,
and a short run of its own ``main`` on that package with a tiny random model, both arms
(no network). A few seconds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from benchmark_modules import benchmark_module

pytestmark = pytest.mark.timeout(60)



@pytest.fixture(scope="module")
def cr():
    with benchmark_module("context_repository") as module:
        yield module


HELPERS = '''LIMIT = 10


def scale(value, factor=2):
    """Multiply value by factor."""
    return value * factor


def offset(value):
    return value + LIMIT
'''

CORE = '''import os
from . import helpers
from .helpers import scale
from mypkg.helpers import offset as shift
from mypkg.helpers import LIMIT as L


def local(x):
    return x * 3


def compute(value, ratio=scale):
    """Use scale(value) here."""
    # scale in a comment
    total = scale(value, 2) + local(value)
    moved = shift(total)
    limit = helpers.LIMIT + 1
    same = local(moved)
    small = L
    noted = scale(1)  # a comment after the cursor
    label = f"{scale(2)}"
    return os.path.join(str(scale(limit)), "x")
'''

VIEWS = '''from .core import compute, local


def run(x):
    result = local(x) + 1
    compute = result
    return compute(result)
'''

FILES = {
    "mypkg/__init__.py": 'from .helpers import scale\n\n__all__ = ["scale"]\n',
    "mypkg/helpers.py": HELPERS,
    "mypkg/core.py": CORE,
    "mypkg/views.py": VIEWS,
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repos" / "mypkg"  # the root, named like the package
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def end_of(text: str, before: str) -> int:
    """The offset right after the only occurrence of ``before``."""
    assert text.count(before) == 1, before
    return text.index(before) + len(before)


EXPECTED = [  # (path, line, where the prefix ends, target, name, origin, kind)
    ("mypkg/core.py", 15, end_of(CORE, "    total = "), "scale(value, 2) + local(value)",
     "scale", "mypkg/helpers.py", "import"),
    ("mypkg/core.py", 16, end_of(CORE, "    moved = "), "shift(total)", "shift",
     "mypkg/helpers.py", "import"),
    ("mypkg/core.py", 17, end_of(CORE, "    limit = helpers."), "LIMIT + 1", "LIMIT",
     "mypkg/helpers.py", "attribute"),
    ("mypkg/core.py", 22, end_of(CORE, "    return os.path.join(str("),
     'scale(limit)), "x")', "scale", "mypkg/helpers.py", "import"),
    ("mypkg/views.py", 5, end_of(VIEWS, "    result = "), "local(x) + 1", "local",
     "mypkg/core.py", "import"),
]


def test_cursors_are_cross_file_uses_only(cr, repo):
    cursors, candidates = cr.package_cursors("mypkg", repo, 40)
    assert candidates == len(EXPECTED)
    got = [(c.path, c.line, len(c.prefix), c.target, c.name, c.origin, c.kind)
           for c in cursors]
    assert got == EXPECTED
    for c in cursors:
        text = FILES[c.path]
        assert c.prefix + c.target + c.suffix == text
        assert c.suffix.startswith("\n")
        assert c.prefix.rsplit("\n", 1)[-1] + c.target == text.split("\n")[c.line - 1]
    # Not chosen: import lines (1-5), the def header with a default (12), the docstring
    # (13), the comment (14), the same-file name (18), a short target (19: "L"), a line
    # with a comment after the cursor (20), the f-string (21), and ``compute`` in views,
    # which that file binds again.
    assert {c.line for c in cursors if c.path == "mypkg/core.py"} == {15, 16, 17, 22}
    assert "compute" not in {c.name for c in cursors}
    # The sample is spread evenly and deterministic.
    two, _ = cr.package_cursors("mypkg", repo, 2)
    assert [(c.path, c.line) for c in two] == [("mypkg/core.py", 15), ("mypkg/core.py", 17)]
    assert cr.spread(list(range(10)), 3) == [0, 3, 6]
    assert cr.spread([1, 2], 5) == [1, 2]


def test_mid_line_cursors_stand_after_an_operator_in_files_with_cross_file_imports(cr, repo):
    """The set that shows what a context option costs where the typed name is mostly not
    another file's: one cursor per code line, after ``= ``, ``(``, ``return `` or ``, ``."""
    cursors, candidates = cr.package_cursors("mypkg", repo, 40, kind="mid-line")
    assert candidates == len(cursors) == 11
    got = [(c.path, c.line, c.prefix.rsplit("\n", 1)[-1], c.target) for c in cursors]
    assert got[:3] == [("mypkg/__init__.py", 3, "__all__ = ", '["scale"]'),
                       ("mypkg/core.py", 9, "    return ", "x * 3"),
                       ("mypkg/core.py", 15, "    total = ", "scale(value, 2) + local(value)")]
    for c in cursors:
        assert c.kind == "mid-line" and not c.name
        assert c.prefix + c.target + c.suffix == FILES[c.path]
    # Not chosen: helpers.py (it imports from no other file), import lines, the def header
    # (12), the docstring (13), the comment line (14), a short target (19: "L") and a line
    # with a comment after the cursor (20).
    assert "mypkg/helpers.py" not in {c.path for c in cursors}
    assert not {12, 13, 14, 19, 20} & {c.line for c in cursors if c.path == "mypkg/core.py"}


def test_manifest_overlap_is_found_and_left_out(cr, repo, tmp_path):
    files = cr.python_files(repo)
    assert files == sorted(FILES)
    manifest = tmp_path / "data_manifest.json"
    manifest.write_text(json.dumps({"root": "test", "train": [
        ["x.py", cr.digest16(CORE)]], "heldout": [["y.py", "0" * 16]]}))
    digests, note = cr.manifest_digests(manifest)
    assert note["files"] == 2 and note["root"] == "test"
    overlap = cr.in_manifest(repo, files, digests)
    assert overlap == ["mypkg/core.py"]
    cursors, _ = cr.package_cursors("mypkg", repo, 40, overlap)
    assert [c.path for c in cursors] == ["mypkg/views.py"]
    assert cr.manifest_digests(None)[0] == set()


def test_the_pinned_packages_are_not_the_stdlib(cr):
    assert len(cr.PACKAGES) >= 4
    for spec in cr.PACKAGES:
        name, version = cr.split_spec(spec)
        assert name not in sys.stdlib_module_names and version[0].isdigit()
    with pytest.raises(ValueError):
        cr.split_spec("click")


ARMS = ("none", "repository", "repository_nudged")


def test_a_short_run_of_every_arm(cr, repo, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    report = cr.main(["--local", str(repo), "--model", str(tiny_model_dir), "--adapter",
                      "none", "--quantization", "none", "--dtype", "float32",
                      "--max-tokens", "6", "--start-bias", "4", "--out", str(out)])
    assert json.loads((out / "context_repository.json").read_text())["cursors"] == 5
    table = (out / "context_repository.md").read_text()
    assert "| **total** | 5 |" in table and "| mypkg local | 5 |" in table

    assert report["arms"] == ["none", "repository", "repository_nudged"]
    assert report["settings"]["nudged_start_bias"] == 4.0
    assert report["packages"][0]["candidates"] == 5
    assert report["packages"][0]["in_adapter_manifest"] == []
    assert report["packages"][0]["index"]["files"] == 4
    assert set(report["results"]) == {"total", "mypkg"}
    rows = report["per_cursor"]
    assert [(r["path"], r["line"]) for r in rows] == [(e[0], e[1]) for e in EXPECTED]
    assert [r["order"] for r in rows[:2]] == [["none", "repository", "repository_nudged"],
                                              ["repository_nudged", "repository", "none"]]
    for row in rows:
        assert row["none"]["context"] is None  # no source asked
        ctx = row["repository"]["context"]
        assert ctx["state"] == "used", ctx
        assert ctx["tokens"] > 0 and ctx["ms"] >= 0
        if row["name"] == "scale":
            assert "mypkg/helpers.py:scale" in ctx["used"]
        # Every cursor stands where a name starts: the nudged arm nudges (not after
        # ``helpers.``: an attribute), the server's default never.
        nudged = row["repository_nudged"]["context"]
        assert (nudged.get("nudged", 0) >= 1) is (row["kind"] == "import"), row
        assert nudged["used"] == ctx["used"] and "nudged" not in ctx
        for arm in ARMS:
            assert "error" not in row[arm], row[arm]
            assert 0.0 <= row[arm]["edit_similarity"] <= 1.0 and row[arm]["ms"] > 0
    total = report["results"]["total"]
    for arm in ARMS:
        s = total[arm]
        assert s["cursors"] == 5 and s["errors"] == 0
        for metric in ("exact_match", "edit_similarity", "offered"):
            assert 0.0 <= s[metric] <= 100.0
        assert 0 < s["p50_ms"] <= s["p95_ms"]
    src = total["source"]
    assert src["states"] == {"used": 5, "empty": 0, "timeout": 0, "error": 0}
    assert src["ms_p50"] is not None and src["ms_p50"] <= src["ms_p95"]
    assert src["tokens_mean"] > 0 and src["with_definitions"] == 5
    assert src["cursor_name_defined"] >= 3  # scale, scale, LIMIT (``shift`` is ``offset``)
    gain = total["gain"]
    assert gain["exact_match_points"] == round(
        total["repository"]["exact_match"] - total["none"]["exact_match"], 1)
    assert set(report["target"]) == {"exact_match_gain", "source_latency"}
    assert report["target"]["source_latency"]["met"] in (True, False)
    assert report["adapter"] is None and report["adapter_manifest"]["files"] == 0


def test_a_short_run_on_the_mid_line_set(cr, repo, tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    report = cr.main(["--local", str(repo), "--model", str(tiny_model_dir), "--adapter",
                      "none", "--quantization", "none", "--dtype", "float32",
                      "--max-tokens", "4", "--cursors", "mid-line", "--cursors-per-package",
                      "4", "--out", str(out)])
    assert report["cursor_set"] == "mid-line" and report["cursors"] == 4
    assert report["method"].startswith("Mid-line cursors")
    assert not (out / "context_repository.json").exists()
    saved = json.loads((out / "context_repository_midline.json").read_text())
    assert [r["kind"] for r in saved["per_cursor"]] == ["mid-line"] * 4
    table = (out / "context_repository_midline.md").read_text()
    assert table.startswith("# Repository context: mid-line completion")
    assert "Not the target's cursor set" in table and "| **total** | 4 |" in table
