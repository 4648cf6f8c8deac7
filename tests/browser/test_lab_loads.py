"""JupyterLab with jupyter-ds loads in a real Chromium, without page errors."""

from __future__ import annotations

import json

import pytest

from .lab_ui import open_lab, unexpected_console_errors

pytestmark = pytest.mark.browser


def test_jupyterlab_loads_with_the_extension_and_without_errors(lab, page, console, workspace):
    open_lab(page, lab, workspace)
    page.wait_for_selector(".jp-Launcher", state="visible")
    # The prebuilt extension is served to the page ...
    config = json.loads(page.locator("#jupyter-config-data").text_content())
    names = [ext["name"] for ext in config.get("federated_extensions", [])]
    assert "jupyter-ds" in names, names
    # ... and running: its status bar item reports the model (ready: the fixture waited).
    status = page.locator("#jp-main-statusbar .jp-ds-Status")
    status.wait_for(state="visible")
    page.wait_for_function(
        "el => /ready/i.test(el.textContent)", arg=status.element_handle(), timeout=15_000
    )
    assert "jupyter-ds" in status.text_content()
    assert console.page_errors == [], console.dump()
    assert unexpected_console_errors(console) == [], console.dump()
