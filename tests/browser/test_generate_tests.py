"""The "jupyter-ds: Generate tests" command on a .py file: candidates, verdicts, sandbox."""

from __future__ import annotations

import pytest

from .lab_ui import (
    ARTIFACTS_DIR,
    EXTENSION_NAMES,
    extension_console_errors,
    open_lab,
    run_from_palette,
)

pytestmark = pytest.mark.browser

SOURCE = "def double(x):\n    if x is None:\n        return 0\n    return 2 * x\n"
PANEL = "#jupyter-ds-tests"


def test_generate_tests_shows_each_candidate_with_its_verdict(lab, page, console, workspace):
    (lab.root_dir / "calc.py").write_text(SOURCE)
    open_lab(page, lab, workspace, "calc.py")
    editor = page.locator(".jp-FileEditor .cm-content")
    editor.wait_for(state="visible", timeout=60_000)
    editor.click()

    run_from_palette(page, "jupyter-ds: Generate tests")

    panel = page.locator(PANEL)
    panel.wait_for(state="visible")
    page.locator(f"{PANEL}[data-state='done'], {PANEL}[data-state='error']").wait_for(
        timeout=120_000
    )
    header = panel.locator(".jp-ds-TestsPanel-header").inner_text()
    assert panel.get_attribute("data-state") == "done", header
    assert "double" in header, header
    # Every candidate the tiny model wrote has a verdict (kept or rejected with a reason).
    items = panel.locator("li.jp-ds-TestsPanel-test")
    assert items.count() >= 1, header
    for i in range(items.count()):
        item = items.nth(i)
        assert item.get_attribute("data-status") in ("kept", "rejected")
        assert item.get_attribute("data-reason")
        assert item.locator(".jp-ds-TestsPanel-verdict").inner_text().strip()
    # The sandbox that ran them is named, never silently downgraded.
    sandbox = panel.locator(".jp-ds-TestsPanel-sandbox")
    mode = sandbox.get_attribute("data-mode")
    assert mode in ("bwrap", "limits-only")
    if mode == "limits-only":
        assert sandbox.locator(".jp-ds-TestsPanel-warning").is_visible()
    # A saved .py file can take the kept tests: the Insert button is there (enabled only
    # when something was kept).
    insert = panel.locator("button.jp-ds-TestsPanel-insert")
    assert insert.is_visible()
    kept = panel.locator("li.jp-ds-TestsPanel-test[data-status='kept']").count()
    assert insert.is_enabled() == (kept > 0)
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS_DIR / "tests-panel.png"))
    assert extension_console_errors(console, EXTENSION_NAMES) == [], console.dump()
