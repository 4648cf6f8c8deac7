"""The git side panel ("jupyter-ds: Git status") on a real repository in the lab's root.

The repository has a committed file that is then modified (Changes) and a new file that
is staged (Staged). The panel lists them in those sections, "Draft message" fills the
commit textarea from the staged diff (the tiny random model writes gibberish, or the
server falls back to a message of its own: either way it is not empty and nothing is
committed), and the + button of the modified file moves it to Staged; "jupyter-ds: Draft
commit message" from the palette drafts again.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .lab_ui import (
    ARTIFACTS_DIR,
    EXTENSION_NAMES,
    extension_console_errors,
    open_lab,
    run_from_palette,
    wait_until,
)

pytestmark = pytest.mark.browser

PANEL = "#jupyter-ds-git"
REPO = "gitrepo"  # a folder of the lab's root: the file browser is opened on it


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, timeout=30
    )
    return result.stdout


def _make_repo(root: Path) -> Path:
    repo = root / REPO
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Browser Test")
    _git(repo, "config", "user.email", "browser-test@example.invalid")
    _git(repo, "config", "commit.gpgsign", "false")
    (repo / "calc.py").write_text("def double(x):\n    return 2 * x\n")
    _git(repo, "add", "calc.py")
    _git(repo, "commit", "-q", "-m", "Add double()")
    # A change left in the working tree, and a new file staged.
    (repo / "calc.py").write_text(
        "def double(x):\n    return x + x\n\n\ndef triple(x):\n    return 3 * x\n"
    )
    (repo / "stats.py").write_text("def mean(xs):\n    return sum(xs) / len(xs)\n")
    _git(repo, "add", "stats.py")
    return repo


def _file(panel, section: str, path: str):
    return panel.locator(f".jp-ds-GitPanel-section[data-section='{section}']").locator(
        f"li.jp-ds-GitPanel-file[data-path='{path}']"
    )


def test_git_panel_lists_changes_drafts_a_message_and_stages(lab, page, console, workspace):
    repo = _make_repo(lab.root_dir)
    head_before = _git(repo, "rev-parse", "HEAD").strip()
    open_lab(page, lab, workspace, REPO)  # the file browser shows the repository's folder
    page.locator(".jp-FileBrowser .jp-DirListing-item[title*='calc.py']").first.wait_for()

    run_from_palette(page, "jupyter-ds: Git status")

    panel = page.locator(PANEL)
    panel.wait_for(state="visible")
    page.locator(f"{PANEL}[data-state='ready'], {PANEL}[data-state='error']").wait_for(
        timeout=30_000
    )
    error = panel.locator(".jp-ds-GitPanel-error").text_content()
    assert panel.get_attribute("data-state") == "ready", error
    assert panel.get_attribute("data-repo") == REPO
    branch = panel.locator(".jp-ds-GitPanel-branch")
    assert branch.get_attribute("data-branch") == "main"
    assert "main" in branch.inner_text()

    # The staged new file and the modified one, each in its section.
    staged_new = _file(panel, "staged", "stats.py")
    staged_new.wait_for()
    changed = _file(panel, "changes", "calc.py")
    assert changed.is_visible()
    assert _file(panel, "staged", "calc.py").count() == 0
    assert staged_new.locator("button.jp-ds-GitPanel-unstage").is_visible()
    assert changed.locator("button.jp-ds-GitPanel-stage").is_visible()
    assert changed.locator("button.jp-ds-GitPanel-discard").is_visible()
    # The first commit is in the recent-commits list.
    assert "Add double()" in panel.locator(".jp-ds-GitPanel-log").inner_text()

    # Commit is disabled while the message is empty.
    message = panel.locator("textarea.jp-ds-GitPanel-message")
    commit = panel.locator("button.jp-ds-GitPanel-commit")
    assert message.input_value() == ""
    assert commit.is_disabled()

    # "Draft message" fills the textarea from the staged diff, for editing.
    draft = panel.locator("button.jp-ds-GitPanel-draft")
    draft.click()
    text = wait_until(message.input_value, lambda value: value.strip() != "", timeout_s=120)
    draft_error = panel.locator(".jp-ds-GitPanel-commitError").text_content()
    assert text.strip(), draft_error
    assert not draft_error
    wait_until(draft.is_enabled, bool, timeout_s=30)
    info = panel.locator(".jp-ds-GitPanel-draftInfo").inner_text()
    assert "edit it before committing" in info, info
    assert commit.is_enabled()
    # Drafting never commits.
    assert _git(repo, "rev-parse", "HEAD").strip() == head_before

    # Stage the modified file with its + button: it moves to Staged.
    changed.locator("button.jp-ds-GitPanel-stage").click()
    _file(panel, "staged", "calc.py").wait_for(timeout=30_000)
    _file(panel, "changes", "calc.py").wait_for(state="detached", timeout=30_000)
    assert "calc.py" in _git(repo, "diff", "--cached", "--name-only")
    # The message being edited stays.
    assert message.input_value() == text

    # "jupyter-ds: Draft commit message" drafts again, now from both staged files.
    message.fill("")
    assert commit.is_disabled()
    run_from_palette(page, "jupyter-ds: Draft commit message")
    again = wait_until(message.input_value, lambda value: value.strip() != "", timeout_s=120)
    assert again.strip(), panel.locator(".jp-ds-GitPanel-commitError").text_content()
    assert _git(repo, "rev-parse", "HEAD").strip() == head_before

    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS_DIR / "git-panel.png"))
    assert extension_console_errors(console, EXTENSION_NAMES) == [], console.dump()
