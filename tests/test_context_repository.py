"""Repository context on real folders and git repositories: imported local modules'
signatures and docstrings, BM25 snippets from other files, within the token budget; the
index honours .gitignore, skips and counts what it must not read, refreshes only what
changed, stays within its limits, and never raises or blocks a completion."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from pathlib import Path

import pytest
from ds_engine.testing import ScriptedEngine
from gitrepos import RepoFactory, isolate_git_config, write_files

from jupyter_ds.completion.requests import CompleteRequest
from jupyter_ds.completion.service import CompletionService, CompletionSettings
from jupyter_ds.context import ContextBlock, ContextGatherer, ContextQuery
from jupyter_ds.context import repo_files as repo_files_module
from jupyter_ds.context.bm25 import BM25Index, chunk_file, identifiers
from jupyter_ds.context.imports import import_at_cursor, parse_imports
from jupyter_ds.context.repository import IndexLimits, RepositoryContext, RepositoryIndex
from jupyter_ds.context.symbols import module_symbols


def count(text: str) -> int:
    """ScriptedEngine's tokenizer: whitespace-separated words."""
    return len(text.split())


PACKAGE = {
    "pkg/__init__.py": "from .core import load_frame\n__all__ = ['load_frame']\n",
    "pkg/core.py": (
        "def load_frame(path: str, *, sep: str = ',') -> 'Frame':\n"
        '    """Read a frame from a CSV file.\n\n    Details nobody needs.\n    """\n'
        "    return Frame(path)\n\n\n"
        "def _private():\n    pass\n"),
    "pkg/util.py": (
        "LIMIT: int = 10\n\n\n"
        "def helper(x: int) -> str:\n"
        '    """Turn x into text."""\n'
        "    return str(x) * LIMIT\n\n\n"
        "class Thing(Base):\n"
        '    """A thing with a size."""\n\n'
        "    size: int = 0\n\n"
        "    def grow(self, by: int = 1) -> None:\n        self.size += by\n"),
    "pkg/sub/__init__.py": "",
    "pkg/sub/sibling.py": (
        "def near(a, b=2):\n"
        '    """Add b to a."""\n'
        "    return a + b\n"),
    "pkg/space/leaf.py": "def leafy() -> int:\n    return 1\n",  # a namespace package
}


def make_tree(root: Path, files: dict[str, str | bytes] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return write_files(root, {**PACKAGE, **(files or {})})


def source(root: Path, **limits) -> RepositoryContext:
    return RepositoryContext(RepositoryIndex(root, IndexLimits(**limits)), timeout_s=5.0,
                             refresh_s=0.0)


async def gather(ctx: RepositoryContext, path: str | None, prefix: str, suffix: str = "",
                 budget: int = 400, language: str = "python") -> ContextBlock | None:
    """Ask until the background work (first indexing, libcst parses) has caught up."""
    query = ContextQuery(path=path, prefix=prefix, suffix=suffix, language=language)
    block = None
    for _ in range(4):
        block = await ctx.gather(query, budget, count)
        assert ctx.wait_idle(10)
    return block


@pytest.fixture
def ctx_close():
    made: list[RepositoryContext] = []
    yield made.append
    for ctx in made:
        ctx.close()


# -- imported local modules ------------------------------------------------------------


async def test_imports_absolute_relative_and_from_package_give_signatures_and_docs(
        tmp_path, ctx_close):
    root = make_tree(tmp_path / "root")
    ctx = source(root)
    ctx_close(ctx)
    prefix = (
        "import pkg.util as u\n"
        "from pkg import load_frame\n"            # re-exported by pkg/__init__.py
        "from . import sibling\n"                  # a submodule, relative
        "from ..util import Thing\n"               # a name, two levels up
        "from ..space import leaf\n"               # a namespace package's module
        "import numpy as np\n"                     # not local: nothing
        "\n"
        "df = load_frame('a.csv')\n"
        "x = u.helper(3)\n"
    )
    block = await gather(ctx, "pkg/sub/mod.py", prefix)
    assert block is not None and block.source == "repository"
    text = block.text
    assert "Path: pkg/core.py\ndef load_frame(path: str, *, sep: str = ',') -> 'Frame':\n" \
        '    """Read a frame from a CSV file."""\n' in text
    assert "Details nobody needs" not in text and "return Frame" not in text
    assert "def helper(x: int) -> str:\n    \"\"\"Turn x into text.\"\"\"\n" in text
    assert "LIMIT: int = 10\n" in text  # import pkg.util: the module's public names
    assert "class Thing(Base):\n    \"\"\"A thing with a size.\"\"\"\n    size: int = 0\n" \
        "    def grow(self, by: int = 1) -> None: ...\n" in text
    assert "def near(a, b=2):\n    \"\"\"Add b to a.\"\"\"\n" in text
    assert "def leafy() -> int: ..." in text
    assert "_private" not in text and "numpy" not in text
    for used in ("pkg/core.py:load_frame", "pkg/util.py:helper", "pkg/util.py:Thing",
                 "pkg/sub/sibling.py:near", "pkg/space/leaf.py:leafy"):
        assert used in block.used, block.used
    # Nearest use first: helper (last line) before load_frame before the unused ones.
    defs = [u for u in block.used if ":L" not in u]
    assert defs.index("pkg/util.py:helper") < defs.index("pkg/core.py:load_frame") \
        < defs.index("pkg/sub/sibling.py:near")


async def test_the_typed_import_src_layouts_and_notebooks(tmp_path, ctx_close):
    root = make_tree(tmp_path / "root", {
        "proj/src/mylib/__init__.py": "",
        "proj/src/mylib/tools.py": "def sharpen(blade: str) -> str:\n    return blade\n",
    })
    ctx = source(root)
    ctx_close(ctx)
    # A test beside a src layout imports the package as its test runner would find it.
    block = await gather(ctx, "proj/tests/test_tools.py",
                         "from mylib.tools import sharpen\n\ndef test_it():\n    ")
    assert block is not None and "def sharpen(blade: str) -> str: ..." in block.text
    block = await gather(ctx, "work/analysis.py", "from pkg.util import ")
    assert block is not None
    assert {"pkg/util.py:helper", "pkg/util.py:Thing", "pkg/util.py:LIMIT"} <= set(
        block.used)
    # A notebook at the root imports from its own folder, as its kernel would.
    block = await gather(ctx, "analysis.ipynb", "from pkg.util import helper\nhelper(")
    assert block is not None and "pkg/util.py:helper" in block.used
    assert import_at_cursor("from ..a import (b,\n    c") == ("a", 2)
    assert import_at_cursor("from a import b\n") is None


async def test_nothing_for_paths_outside_the_root_or_not_python(tmp_path, ctx_close):
    root = make_tree(tmp_path / "root")
    ctx = source(root)
    ctx_close(ctx)
    prefix = "from pkg.util import helper\nhelper("
    assert await gather(ctx, "main.py", prefix) is not None  # the control
    for path in ("/etc/main.py", "../main.py", "pkg/../../main.py", "notes.txt", None, ""):
        assert await gather(ctx, path, prefix) is None, path
    assert await gather(ctx, "main.py", prefix, language="r") is None


# -- similar snippets ------------------------------------------------------------------


async def test_bm25_picks_the_snippet_sharing_identifiers_not_the_cursors_file(
        tmp_path, ctx_close):
    shipping = ("def shipping_cost(parcel_weight_kg, zone_rate_table, express):\n"
                "    base = zone_rate_table[parcel_weight_kg // 5]\n"
                "    return base * (2 if express else 1)\n")
    filler = "".join(f"def unrelated_{i}(alpha, beta):\n    return alpha * beta + {i}\n\n"
                     for i in range(8))
    root = make_tree(tmp_path / "root", {
        "orders/shipping.py": shipping,
        "orders/other.py": filler,
        # The cursor's own file shares every identifier: it must never be offered.
        "orders/checkout.py": shipping.replace("shipping_cost", "own_copy") * 2,
    })
    ctx = source(root)
    ctx_close(ctx)
    prefix = ("def checkout(cart, zone_rate_table):\n"
              "    parcel_weight_kg = sum(item.weight for item in cart)\n"
              "    express = cart.express\n    total = ")
    block = await gather(ctx, "orders/checkout.py", prefix)
    assert block is not None
    snippets = [u for u in block.used if ":L" in u]
    assert snippets and snippets[0].startswith("orders/shipping.py:L1-L3"), block.used
    assert not any(u.startswith("orders/checkout.py") for u in block.used)
    assert "Path: orders/shipping.py (lines 1-3)\ndef shipping_cost(" in block.text
    assert "unrelated_" not in block.text


def test_bm25_index_adds_removes_and_bounds_its_query():
    index = BM25Index()
    index.add_file("a.py", chunk_file("alpha_value = compute_total(beta_rate)\n" * 3))
    index.add_file("b.py", chunk_file("gamma = delta + epsilon_rate * zeta\n" * 3))
    assert [h.path for h in index.search(identifiers("compute_total beta_rate"), 3)] == [
        "a.py"]
    assert index.search(identifiers("compute_total beta_rate"), 3, exclude="a.py") == []
    index.add_file("a.py", chunk_file("nothing_here = other_thing(more_words)\n"))
    assert index.search(identifiers("compute_total beta_rate"), 3) == []
    index.remove_file("a.py")
    index.remove_file("b.py")
    assert len(index) == 0 and index.postings == {} and index.total_len == 0


# -- budget ----------------------------------------------------------------------------


async def test_the_block_stays_within_the_budget(tmp_path, ctx_close):
    many = "".join(f"def function_{i}(value_{i}: int) -> int:\n"
                   f'    """Doubles value_{i} for the {i}th time."""\n'
                   f"    return value_{i} * 2\n\n" for i in range(40))
    root = make_tree(tmp_path / "root", {"lib/many.py": many})
    ctx = source(root)
    ctx_close(ctx)
    prefix = "from lib.many import *\nimport lib.many\nx = function_7(value_7)\n"
    await gather(ctx, "main.py", prefix)  # warm: indexed and parsed
    sizes = []
    for budget in (12, 40, 120, 400):
        block = await ctx.gather(ContextQuery("main.py", prefix, "", "python"), budget,
                                 count)
        assert block is None or count(block.text) <= budget, budget
        sizes.append(0 if block is None else count(block.text))
    assert sizes == sorted(sizes) and sizes[-1] > 200  # a bigger budget is used
    small = await ctx.gather(ContextQuery("main.py", prefix, "", "python"), 40, count)
    assert small is not None and small.used[0] == "lib/many.py:function_7"  # nearest


# -- what the index reads --------------------------------------------------------------


@pytest.fixture
def git_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate_git_config(monkeypatch, tmp_path)
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


@pytest.mark.parametrize("with_git", [True, False])
def test_gitignored_hidden_and_virtualenv_files_are_never_read(git_root, monkeypatch,
                                                                with_git):
    files = {
        **PACKAGE,
        ".gitignore": "secret/\ngenerated_*.py\n!generated_keep.py\n",
        "secret/keys.py": "TOKEN = 'x'\n",
        "generated_big.py": "x = 1\n",
        "generated_keep.py": "y = 2\n",
        "pkg/.hidden/inner.py": "z = 3\n",
        ".venv/lib/site.py": "w = 4\n",
        "node_modules/m/x.py": "v = 5\n",
        "pkg/__pycache__/core.py": "u = 6\n",
    }
    # The server root holds the project: git lists it (a working tree), or it is walked.
    if with_git:
        repos = RepoFactory(git_root)
        repo = repos.init("proj", commit=False)
        repos.commit(repo, files, "initial")
        repos.write(repo, {"untracked_new.py": "def fresh(): ...\n"})  # --others
    else:
        write_files(git_root / "proj", {**files, "untracked_new.py": "q = 1\n"})
    opened: list[str] = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    index = RepositoryIndex(git_root)
    monkeypatch.setattr("builtins.open", spy)
    stats = index.refresh()
    monkeypatch.undo()
    names = set(index.files)
    assert names == {f"proj/{f}" for f in (*PACKAGE, "generated_keep.py",
                                            "untracked_new.py")}, names
    assert not [f for f in opened if any(part in f for part in (
        "secret", "generated_big", ".hidden", ".venv", "node_modules", "__pycache__"))]
    assert stats.read == len(names) and index.reads == len(names)


def test_symlink_loops_and_links_out_of_the_root_are_skipped_and_counted(tmp_path):
    root = make_tree(tmp_path / "root")
    outside = write_files(tmp_path / "outside", {"stolen.py": "SECRET = 1\n",
                                                 "pkg/leak.py": "LEAK = 2\n"})
    (root / "pkg" / "loop").symlink_to(root / "pkg", target_is_directory=True)  # a cycle
    (root / "up").symlink_to(root, target_is_directory=True)
    (root / "out_dir").symlink_to(outside / "pkg", target_is_directory=True)
    (root / "stolen.py").symlink_to(outside / "stolen.py")
    (root / "a.py").symlink_to(root / "b.py")  # a file loop: a -> b -> a
    (root / "b.py").symlink_to(root / "a.py")
    (root / "alias.py").symlink_to(root / "pkg" / "util.py")  # same file, inside
    index = RepositoryIndex(root)
    stats = index.refresh()
    assert stats.skipped.get("symlink_loop", 0) >= 4  # pkg/loop, up, a.py, b.py
    assert stats.skipped.get("symlink_outside", 0) == 2  # out_dir, stolen.py
    assert set(index.files) == set(PACKAGE), sorted(index.files)  # alias read once
    assert not any("SECRET" in e.text or "LEAK" in e.text for e in index.files.values())


def test_a_git_repository_linking_out_of_the_root_is_counted_too(git_root):
    repos = RepoFactory(git_root)
    repo = repos.init("proj")
    outside = write_files(git_root.parent / "outside", {"stolen.py": "SECRET = 1\n"})
    (repo / "stolen.py").symlink_to(outside / "stolen.py")
    repos.commit(repo, {"pkg/util.py": PACKAGE["pkg/util.py"]}, "link")
    index = RepositoryIndex(git_root)
    stats = index.refresh()
    assert stats.skipped == {"symlink_outside": 1}
    assert set(index.files) == {"proj/app.py", "proj/pkg/util.py"}


async def test_huge_binary_and_non_utf8_files_are_skipped_counted_and_not_reread(
        tmp_path, ctx_close):
    root = make_tree(tmp_path / "root", {
        "huge.py": "x = 1\n" * 400,  # 2,400 bytes, over the 2,000 allowed below
        "binary.py": b"def f():\x00\x01 return 1\n",
        "latin1.py": "name = 'caf\u00e9'\n".encode("latin-1"),
    })
    ctx = source(root, max_file_bytes=2000)
    ctx_close(ctx)
    stats = ctx.index.refresh()
    assert stats.skipped == {"binary": 1, "huge": 1, "not_utf8": 1}
    assert {"huge.py", "binary.py", "latin1.py"}.isdisjoint(ctx.index.files)
    reads = ctx.index.reads
    assert ctx.index.refresh().skipped == stats.skipped and ctx.index.reads == reads
    block = await gather(ctx, "main.py", "from pkg.util import helper\nhelper(")
    assert block is not None and block.skipped == {"binary": 1, "huge": 1, "not_utf8": 1}


def test_refresh_rereads_only_changed_files_and_drops_deleted_ones(tmp_path):
    root = make_tree(tmp_path / "root")
    index = RepositoryIndex(root)
    first = index.refresh()
    assert first.read == len(PACKAGE) == index.reads
    assert index.refresh().read == 0 and index.reads == len(PACKAGE)  # nothing changed
    util = root / "pkg" / "util.py"
    util.write_text("def renamed_helper(weight: float) -> float:\n"
                    "    return weight * scale_factor\n")
    stamp = util.stat().st_mtime_ns + 2_000_000_000
    os.utime(util, ns=(stamp, stamp))  # a new mtime, whatever the clock's resolution
    (root / "pkg" / "sub" / "sibling.py").unlink()
    again = index.refresh()
    assert (again.read, again.removed) == (1, 1) and index.reads == len(PACKAGE) + 1
    assert "renamed_helper" in index.files["pkg/util.py"].text
    assert "pkg/sub/sibling.py" not in index.files
    hits = index.search(identifiers("renamed_helper(weight)"), 3, exclude=None)
    assert [h.path for h in hits] == ["pkg/util.py"]
    assert index.search(identifiers("near sibling"), 3, exclude=None) == []


def test_limits_on_files_and_bytes_are_honoured_and_logged_once(tmp_path, caplog):
    root = make_tree(tmp_path / "root", {f"extra/deep/m{i}.py": f"v{i} = {i}\n"
                                         for i in range(5)})
    index = RepositoryIndex(root, IndexLimits(max_files=4))
    with caplog.at_level(logging.WARNING, logger="jupyter_ds.context.repository"):
        stats = index.refresh()
        index.refresh()
    assert len(index.files) == 4 and stats.skipped == {"over_limit": len(PACKAGE) + 5 - 4}
    # Shallow paths first: the package's own modules before deeper ones.
    assert set(index.files) == {"pkg/__init__.py", "pkg/core.py", "pkg/util.py",
                                "extra/deep/m0.py"}
    assert len([r for r in caplog.records if "left" in r.getMessage()]) == 1
    total = sum(len(v.encode()) for v in PACKAGE.values())
    index = RepositoryIndex(root, IndexLimits(max_total_bytes=total // 2))
    index.refresh()
    assert 0 < sum(e.size for e in index.files.values()) <= total // 2
    assert index.skipped["over_limit"] >= 1


# -- never in the way ------------------------------------------------------------------


@pytest.fixture
def slow_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing the files takes half a second: the first indexing is surely running
    when the first completion asks."""
    real = repo_files_module.list_python_files

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr("jupyter_ds.context.repository.list_python_files", slow)


async def test_a_completion_never_waits_for_the_indexing(tmp_path, slow_listing, ctx_close):
    root = make_tree(tmp_path / "root")
    ctx = RepositoryContext.for_root(root, timeout_s=0.05, refresh_s=0.0)
    assert ctx is not None
    ctx_close(ctx)
    query = ContextQuery("main.py", "from pkg.util import helper\nhelper(", "", "python")
    started = time.monotonic()
    assert await ctx.gather(query, 200, count) is None  # the first indexing is running
    assert time.monotonic() - started < 0.25
    assert not ctx.index.ready and ctx.wait_idle(10) and ctx.index.ready
    assert RepositoryContext.for_root(root, enabled=False) is None


async def test_a_completion_carries_the_imported_signature_and_reports_it(
        tmp_path, slow_listing, ctx_close):
    root = make_tree(tmp_path / "root")
    ctx = RepositoryContext.for_root(root, refresh_s=0.0)
    assert ctx is not None
    ctx_close(ctx)
    engine = ScriptedEngine(["'x'"])
    svc = CompletionService(engine, CompletionSettings(context_tokens=300),
                            ContextGatherer([ctx]))
    req = CompleteRequest(prefix="from pkg.util import helper\n\nvalue = helper(",
                          suffix=")\n", path="app/main.py")
    first = await svc.complete(req)
    assert first["context"][0]["source"] == "repository"
    assert first["context"][0]["state"] == "empty"  # indexing had only just started
    for _ in range(3):  # indexed, then the imported module parsed, in the background
        assert ctx.wait_idle(10)
        answer = await svc.complete(req)
    prompt = engine.prompts[-1]
    head = ("# Path: pkg/util.py\n# def helper(x: int) -> str:\n"
            '#     """Turn x into text."""\n')
    assert head in prompt and prompt.index(head) < prompt.index("value = helper(")
    [report] = answer["context"]
    assert report["source"] == "repository" and report["state"] == "used"
    assert "pkg/util.py:helper" in report["used"] and 0 < report["tokens"] <= 300
    assert report["ms"] < 1000


def test_the_index_never_raises_on_garbage(tmp_path):
    rng = random.Random(19)
    alphabet = "def class import from ( ) [ ] { } : , . \\ \n \t ' \" # @ = -> async * x y"
    garbage = {f"junk/g{i}.py": " ".join(rng.choice(alphabet.split(" ")) or " "
                                          for _ in range(rng.randint(0, 400)))
               for i in range(12)}
    garbage.update({
        # Valid or nearly: libcst's native parser crashes the process on these.
        "junk/deep.py": "x = " + "(" * 3000 + ")" * 3000 + "\n",
        "junk/long_sum.py": "x = " + "+".join(["1"] * 10_000) + "\n",
        "junk/unary.py": "x = " + "-" * 10_000 + "1\n",
        "junk/attrs.py": "x = a" + ".b" * 10_000 + "\n",
        "junk/nested_defs.py": "".join("    " * i + f"def f{i}():\n" for i in range(90)),
        "junk/empty.py": "",
        "junk/cr_only.py": "a = 1\rb = 2\r",
        "junk/surrogates.py": "s = '\ud800'\n".encode("utf-8", "surrogatepass"),
        "junk/bom.py": "\ufeffdef bom() -> None: ...\n",
    })
    root = make_tree(tmp_path / "root", garbage)
    index = RepositoryIndex(root)
    index.refresh()
    for rel in list(index.files):
        index.parse_symbols(rel)
        assert index.symbols(rel) is not None
    for deep in ("junk/deep.py", "junk/long_sum.py", "junk/unary.py", "junk/attrs.py"):
        assert not index.symbols(deep).ok
    for text in [*garbage.values(), "from . import (", "import", "from .. import *\\\n",
                 "from a.b import (c as"]:
        if isinstance(text, str):
            parse_imports(text)
            import_at_cursor(text)
            module_symbols(text)

    async def ask() -> None:
        ctx = RepositoryContext(index, refresh_s=3600)
        try:
            for text in garbage.values():
                if isinstance(text, str):
                    await ctx.gather(ContextQuery("junk/g0.py", text, text, "python"), 64,
                                     count)
        finally:
            ctx.close()

    asyncio.run(ask())


async def test_a_class_too_big_for_the_budget_gives_its_first_lines(tmp_path, ctx_close):
    """Not nothing: the header, the docstring and the first members, then ``...``."""
    methods = "".join(f"    def method_{i}(self, value_{i}: int) -> int:\n"
                      f'        """Adds {i} to value_{i}."""\n'
                      f"        return value_{i} + {i}\n\n" for i in range(16))
    big = ('class Session:\n    """Holds the connection pool and the cookies."""\n\n'
           "    def __init__(self, retries: int = 3) -> None:\n"
           "        self.retries = retries\n\n" + methods)
    root = make_tree(tmp_path / "root", {"lib/big.py": big})
    ctx = source(root)
    ctx_close(ctx)
    prefix = "from lib.big import Session\n\ns = "
    full = await gather(ctx, "main.py", prefix, budget=2000)
    assert full is not None and "method_14" in full.text
    small = await ctx.gather(ContextQuery("main.py", prefix, "", "python"), 60, count)
    assert small is not None and "lib/big.py:Session" in small.used
    assert count(small.text) <= 60
    assert "class Session:" in small.text and "Holds the connection pool" in small.text
    assert "method_14" not in small.text and small.text.rstrip().endswith("...")
    assert await ctx.gather(ContextQuery("main.py", prefix, "", "python"), 4, count) is None


async def test_one_big_definition_does_not_crowd_out_the_others(tmp_path, ctx_close):
    """Each definition gets at most ``definition_share`` of the budget, so the names
    used next still fit; with whole definitions the big class used nearest takes it all
    (benchmarks/context_retrieval.py measures what that costs)."""
    methods = "".join(f"    def method_{i}(self, value_{i}: int) -> int:\n"
                      f'        """Adds {i} to value_{i}."""\n'
                      f"        return value_{i} + {i}\n\n" for i in range(16))
    root = make_tree(tmp_path / "root", {
        "lib/big.py": 'class Session:\n    """Holds the pool."""\n\n' + methods,
        "lib/small.py": "def retry_later(seconds: float) -> None:\n"
                        '    """Sleep, then try again."""\n',
    })
    ctx = source(root)
    ctx_close(ctx)
    prefix = ("from lib.small import retry_later\nfrom lib.big import Session\n\n"
              "s = Session()\n")
    await gather(ctx, "main.py", prefix)  # warm: indexed and parsed
    query = ContextQuery("main.py", prefix, "", "python")
    ctx.snippets = 0  # definitions only: what they leave each other
    capped = await ctx.gather(query, 80, count)
    assert capped is not None and count(capped.text) <= 80
    assert capped.used[:2] == ["lib/big.py:Session", "lib/small.py:retry_later"]
    assert "def retry_later(seconds: float)" in capped.text and "    ..." in capped.text
    ctx.definition_share = 1.0
    whole = await ctx.gather(query, 80, count)
    assert whole is not None and "lib/small.py:retry_later" not in whole.used


async def test_the_names_shown_are_nudged_at_a_name_start_only(tmp_path, ctx_close):
    """The block's definitions become the first token's bias (``context_start_bias``)
    where a name starts, and never mid-word, in a string, or with the setting off."""
    root = make_tree(tmp_path / "root")
    ctx = source(root)
    ctx_close(ctx)
    block = await gather(ctx, "app/main.py", "from pkg.util import helper, Thing\n\nvalue = ")
    assert block is not None and set(block.starts) == {"helper", "Thing"}
    # A name imported under another one starts as the file writes it.
    aliased = await gather(ctx, "app/main.py", "from pkg.util import helper as h\n\nv = ")
    assert aliased is not None and aliased.starts == ["h"]
    assert all(u.endswith(tuple(":" + n for n in block.starts)) for u in block.used
               if ":L" not in u)

    engine = ScriptedEngine(["helper(1)"])
    on = CompletionService(engine, CompletionSettings(context_tokens=300,
                                                      context_start_bias=3.0),
                           ContextGatherer([ctx]))
    off = CompletionService(engine, CompletionSettings(context_tokens=300),
                            ContextGatherer([ctx]))
    head = "from pkg.util import helper, Thing\n\n"
    for prefix, service, expected in [
        (head + "value = ", on, {"helper": 3.0, "Thing": 3.0}),
        (head + "value = hel", on, {}),  # mid-word: the model's own continuation
        (head + "value = 'a ", on, {}),  # in a string
        (head + "def ", on, {}),  # a new name
        (head + "    ", on, {}),  # a statement's start: keywords and locals come there too
        (head + "value = helper.", on, {}),  # an attribute
        (head + "value = ", off, {}),  # the default: off
    ]:
        answer = await service.complete(CompleteRequest(prefix=prefix, suffix="\n",
                                                        path="app/main.py"))
        assert engine.requests[-1].first_token_bias == expected, prefix
        [report] = answer["context"]
        assert report.get("nudged") == (len(expected) or None), prefix
    # A file with no context gets no bias either.
    await on.complete(CompleteRequest(prefix="value = ", suffix="\n", path="app/other.txt"))
    assert engine.requests[-1].first_token_bias == {}


@pytest.mark.parametrize("bad", [-0.5, 100.5, float("nan")])
def test_a_bad_start_bias_is_a_clear_error_at_startup(bad):
    from traitlets import TraitError

    from jupyter_ds.app import JupyterDsApp

    with pytest.raises(TraitError, match=r"JupyterDsApp\.context_start_bias must be between"):
        JupyterDsApp(context_start_bias=bad)
    assert JupyterDsApp(context_start_bias=2.5).context_start_bias == 2.5
