"""The "jupyter-ds: Explain" command, run from the command palette, renders a side panel."""

from __future__ import annotations

import pytest

from .lab_ui import (
    ARTIFACTS_DIR,
    EXTENSION_NAMES,
    cell_editor,
    extension_console_errors,
    open_notebook,
    run_from_palette,
    write_notebook,
)

pytestmark = pytest.mark.browser

CODE = "print(sum(x * x for x in range(10)))"
PANEL = "#jupyter-ds-explain"


def test_explain_from_the_palette_renders_a_panel_with_text(lab, page, console, workspace):
    filename = write_notebook(lab.root_dir, "explain", [CODE])
    open_notebook(page, lab, workspace, filename)
    cell_editor(page).click()  # the active cell is what gets explained

    run_from_palette(page, "jupyter-ds: Explain")

    panel = page.locator(PANEL)
    panel.wait_for(state="visible")
    # The explanation streams in; wait for its end (or its failure, reported below).
    page.locator(f"{PANEL}[data-state='done'], {PANEL}[data-state='error']").wait_for(
        timeout=60_000
    )
    header = panel.locator(".jp-ds-ExplainPanel-header").text_content()
    assert panel.get_attribute("data-state") == "done", header
    assert "cell" in header, header  # "Explanation of cell (python)"
    markdown = panel.locator(".jp-ds-ExplainPanel-markdown")
    assert markdown.is_visible()
    assert markdown.inner_text().strip(), "the Explain panel rendered no text"
    # It sits in the right sidebar, and its tab is the active one there.
    assert page.locator(f"#jp-right-stack {PANEL}").count() == 1
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS_DIR / "explain-panel.png"))

    assert extension_console_errors(console, EXTENSION_NAMES) == [], console.dump()
