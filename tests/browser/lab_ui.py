"""What a user does in JupyterLab, as Playwright steps (sync API), for the browser tests."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"  # gitignored
# The extension's npm name (as `jupyter labextension list` prints it), the server
# extension's module and the URL prefix of its API: how its console messages are told apart.
EXTENSION_NAMES = ("jupyter-ds", "jupyter_ds")
# The model behind the test lab: the tiny random test model unless JUPYTER_DS_BROWSER_MODEL
# says "embedded" (the default SmolLM2-135M, to measure the ghost-text latency a user sees;
# it starts slower) or names a model directory or GGUF file.
BROWSER_MODEL = os.environ.get("JUPYTER_DS_BROWSER_MODEL", "tiny")

# JupyterLab 4's inline completer draws its suggestion as a CodeMirror widget with this
# class (@jupyterlab/completer, ghost.ts).
GHOST_TEXT = ".jp-GhostText"
NOTEBOOK_CELL_EDITOR = ".jp-Notebook .jp-Cell .jp-InputArea-editor .cm-content"
PALETTE_INPUT = ".lm-CommandPalette-input"

# Console errors of JupyterLab itself, unrelated to jupyter-ds, that the tests tolerate
# (each pattern with its reason; anything that mentions jupyter-ds is never ignored).
# None so far with JupyterLab 4.6: the only candidates, the news feed and the update check
# that fail on a closed network, are switched off by the lab fixture instead. Seen in the
# console and not errors: JupyterLab's "[debug] Starting application in workspace" and
# "Starting WebSocket" lines.
IGNORED_CONSOLE_ERRORS: tuple[re.Pattern[str], ...] = ()


def write_notebook(root_dir: Path, name: str, sources: list[str]) -> str:
    """Writes a Python notebook of code cells into the server's root; returns its name."""
    notebook = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": f"cell-{index}",
                "metadata": {},
                "outputs": [],
                "source": source,
            }
            for index, source in enumerate(sources)
        ],
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    filename = f"{name}.ipynb"
    (root_dir / filename).write_text(json.dumps(notebook, indent=1))
    return filename


def wait_for_lab(page: Any) -> None:
    """Waits until JupyterLab has replaced its splash screen with the shell."""
    page.wait_for_selector("#jp-main-dock-panel", state="visible", timeout=60_000)
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=60_000)


def open_lab(page: Any, lab: Any, workspace: str, path: str = "") -> None:
    """Opens JupyterLab (and ``path`` in it) in a workspace of its own.

    Each test has its own workspace: the default one would restore what an earlier test
    left open (its notebooks, its kernels) instead of the launcher.
    """
    url = f"lab/workspaces/{workspace}" + (f"/tree/{path}" if path else "")
    page.goto(lab.lab_url(url))
    wait_for_lab(page)


def open_notebook(page: Any, lab: Any, workspace: str, filename: str) -> None:
    """Opens a notebook by URL and waits until its first cell's editor is there."""
    open_lab(page, lab, workspace, filename)
    page.wait_for_selector(NOTEBOOK_CELL_EDITOR, state="visible", timeout=60_000)
    # The kernel is not needed, but its start-up re-renders the toolbar; wait it out so
    # clicks and keystrokes land where they are aimed.
    page.locator("#jp-main-statusbar").get_by_text("| Idle").wait_for(timeout=60_000)


def cell_editor(page: Any, index: int = 0) -> Any:
    return page.locator(NOTEBOOK_CELL_EDITOR).nth(index)


def cell_text(page: Any, index: int = 0) -> str:
    """The text of a cell's editor, lines joined with newlines, without any ghost text.

    The ghost text is a widget inside the editor's line, so the suggestion that JupyterLab
    shows again right after an accept would otherwise read as cell text.
    """
    return cell_editor(page, index).evaluate(
        """el => {
            const copy = el.cloneNode(true);
            copy.querySelectorAll('.jp-GhostText, .cm-widgetBuffer').forEach(n => n.remove());
            return Array.from(copy.querySelectorAll('.cm-line'))
                .map(line => line.textContent).join('\\n');
        }"""
    )


def ghost_text(page: Any) -> str:
    """The suggestion shown as ghost text, hidden lines included.

    JupyterLab draws its line breaks as <br> and puts a "⇓" expander before hidden lines.
    """
    return page.locator(GHOST_TEXT).first.evaluate(
        """el => {
            const copy = el.cloneNode(true);
            copy.querySelectorAll('br').forEach(br => br.replaceWith('\\n'));
            copy.querySelectorAll('.jp-GhostText-expandHidden').forEach(n => n.remove());
            return copy.textContent;
        }"""
    )


# Installed before typing: on the page's own clock (performance.now()), so that Playwright's
# round trips are not measured, the time of the last keydown (lastKey), of the ghost-text
# widget after it (widget: perhaps only its streaming indicator), of its first text (first:
# the first streamed characters on screen) and of the finished suggestion (final: no
# streaming indicator any more); ghostBeforeLastKey flags a suggestion shown mid-typing.
INSTALL_GHOST_TIMER = """
() => {
  const t = (window.__dsTimes = {
    lastKey: 0, widget: 0, first: 0, final: 0, ghostBeforeLastKey: 0
  });
  document.addEventListener('keydown', () => {
    if (t.first) t.ghostBeforeLastKey = t.first;
    Object.assign(t, { lastKey: performance.now(), widget: 0, first: 0, final: 0 });
  }, true);
  const seen = () => {
    const el = document.querySelector('.jp-GhostText');
    if (!el || !t.lastKey) return;
    const now = performance.now();
    if (!t.widget) t.widget = now;
    if (!el.textContent.replace('\\u21d3', '').length) return;
    if (!t.first) t.first = now;
    if (!t.final && !el.querySelector('.jp-GhostText-streamingIndicator')) t.final = now;
  };
  new MutationObserver(seen).observe(document.body, {
    subtree: true, childList: true, characterData: true
  });
}
"""


def run_from_palette(page: Any, label: str) -> None:
    """Runs a command the way a user does: Ctrl+Shift+C, type its label, Enter."""
    page.keyboard.press("Control+Shift+C")
    palette = page.locator(PALETTE_INPUT)
    palette.wait_for(state="visible")
    palette.fill(label)
    # The best match is highlighted first; make sure it is the one we asked for.
    page.locator(".lm-CommandPalette-item.lm-mod-active").filter(has_text=label).wait_for()
    page.keyboard.press("Enter")


def extension_console_errors(console: Any, names: tuple[str, ...]) -> list[str]:
    """Console errors and page errors that mention the extension (by name or URL)."""
    found = []
    for kind, text, url in console.messages:
        if kind != "error":
            continue
        if any(name in text or name in url for name in names):
            found.append(f"{text} ({url})")
    found += [err for err in console.page_errors if any(name in err for name in names)]
    return found


def unexpected_console_errors(console: Any) -> list[str]:
    """All console errors and page errors but the known JupyterLab noise."""
    found = []
    for kind, text, url in console.messages:
        if kind == "error" and not any(p.search(text) for p in IGNORED_CONSOLE_ERRORS):
            found.append(f"{text} ({url})")
    return found + list(console.page_errors)


def wait_until(read: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 10.0) -> T:
    """Polls ``read()`` until ``done`` holds for its value; returns the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
