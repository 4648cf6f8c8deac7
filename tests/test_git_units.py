"""Pure helpers of the git service: ref rules, notebook diffs, commit-message shaping."""

from __future__ import annotations

import subprocess

import pytest
from gitrepos import notebook

from jupyter_ds.errors import ApiError
from jupyter_ds.git import message
from jupyter_ds.git.nbdiff import notebook_diff, render_cells
from jupyter_ds.git.validate import check_config, check_rev, ref_format_error

NAMES = ["main", "feature/x", "a.b", "v1.0", "-x", "a..b", "x@{1}", "@", "has space", "a~1",
         "a^", "a:b", "a\\b", "/a", "a/", "a//b", ".hidden", "a/.b", "x.lock", "a/b.lock/c",
         "end.", "ques?", "st*r", "br[ack", "tab\tx", "ünï", "a@b", "@{", "HEAD"]


@pytest.mark.parametrize("name", NAMES)
def test_ref_rules_agree_with_git_check_ref_format(name):
    proc = subprocess.run(["git", "check-ref-format", "--allow-onelevel", name],
                          capture_output=True)
    ours = ref_format_error(name) is None
    # git allows a leading '-' here; branch names never may (it reads as an option).
    theirs = proc.returncode == 0 and not name.startswith("-")
    assert ours == theirs, (name, ref_format_error(name))


@pytest.mark.parametrize("rev", ["HEAD", "HEAD~2", "main^", "v1^2", "abc1234", "origin/main"])
def test_revisions_with_suffixes_pass(rev):
    assert check_rev(rev, "rev") == rev


def test_config_keys_are_case_insensitive_and_whitelisted():
    assert check_config("USER.NAME", "Ada") == "user.name"
    with pytest.raises(ApiError):
        check_config("core.sshCommand", "sh")


def test_notebook_rendering_leaves_outputs_out():
    lines = render_cells(notebook(("code", "a = 1"), ("markdown", "# T"), outputs=3))
    assert "".join(lines) == "# %%\na = 1\n\n# %% [markdown]\n# T\n\n"
    assert render_cells(b"not json") is None
    text, adds, dels = notebook_diff(None, notebook(("code", "a")), "n.ipynb", "n.ipynb")
    assert "--- /dev/null" in text and adds == 3 and dels == 0
    # Only outputs changed: no diff at all.
    assert notebook_diff(notebook(("code", "a"), outputs=1), notebook(("code", "a"), outputs=2),
                         "n.ipynb", "n.ipynb") == ("", 0, 0)


def test_bound_diff_trims_the_largest_hunks_first():
    small = "diff --git a/s.py b/s.py\n@@ -1 +1 @@\n-a\n+b\n"
    big = "diff --git a/big.py b/big.py\n@@ -1,0 +1,500 @@\n" + "+x = 1\n" * 500
    text, trimmed = message.bound_diff(big + small, 800)
    assert trimmed and len(text) <= 800
    assert small in text and "lines trimmed" in text and "a/big.py" in text
    assert message.bound_diff(small, 800) == (small, False)


FILES = [{"path": "pkg/app.py", "old_path": None, "status": "M", "additions": 1,
          "deletions": 1, "binary": False}]


@pytest.mark.parametrize("raw, summary", [
    ("fix: handle empty input\n\nThe parser crashed.", "fix: handle empty input"),
    ("```\nfeat: add x\n\nbody\n```", "feat: add x"),
    ("Commit message:\n\"docs: explain y\"", "docs: explain y"),
    ("Here is the commit message:\n**refactor: split z**\nmore", "refactor: split z"),
    ("Summary: chore: bump", "chore: bump"),
    ("\x01<jupyter_output>fix: parse\ufffd dates<|im_end|>", "fix: parse dates"),
])
def test_postprocess_cleans_the_model_text(raw, summary):
    out = message.postprocess(raw, FILES)
    assert out["summary"] == summary and not out["fallback"]
    assert out["output"].split("\n", 1)[0] == summary


def test_postprocess_cuts_long_summaries_at_a_word_and_falls_back_on_junk():
    long = "feat: " + " ".join(["word"] * 40)
    out = message.postprocess(long, FILES)
    assert len(out["summary"]) <= 72 and out["summary"].endswith("word")
    for junk in ("", "   ", "```\n```", "!!! ...", "12 34"):
        out = message.postprocess(junk, FILES)
        assert out["fallback"] and out["summary"] == "Update app.py" and out["body"] == ""
    many = [{**FILES[0], "path": f"very_long_module_name_{i}.py", "status": "A"}
            for i in range(9)]
    out = message.postprocess("", many)
    assert out["summary"].startswith("Add ") and len(out["summary"]) <= 72
