"""Emacs with eglot completes a Python file with jupyter-ds, configured as README.md says.

Debian's Emacs (``emacs-nox``, 28.2 on bookworm) with its eglot package (``elpa-eglot``,
1.9), both installed by ``make setup``, runs ``eglot_complete.el`` in batch mode after
the README's eglot snippet, unchanged: opening the ``.py`` files of ``harness.CASES``
starts ``jupyter-ds lsp`` through ``eglot-ensure``; at each cursor the script requests
``textDocument/completion`` as eglot does, then runs ``completion-at-point`` (C-M-i),
which inserts the suggestion through eglot's own completion function. The language server
reaches the test's Jupyter server over HTTP with its token
(``JUPYTER_DS_URL``/``JUPYTER_DS_TOKEN``); each suggestion must be the one the REST API
gives for the same prefix and suffix, and accepting it must write exactly that.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from . import harness

EMACS = harness.find_editor("emacs")


pytestmark = pytest.mark.skipif(
    EMACS is None, reason=f"Emacs is not installed: {harness.SETUP_HINT}"
)


def require_eglot() -> None:
    """Skip unless this Emacs loads eglot (built in from Emacs 29; elpa-eglot on 28)."""
    probe = subprocess.run(
        [EMACS, "--batch", "--eval", "(require 'eglot)"],
        capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(
            f"Emacs has no eglot (Debian's elpa-eglot; {harness.SETUP_HINT}): "
            + probe.stderr.strip()[-300:]
        )


SCRIPT = harness.HERE / "eglot_complete.el"
TIMEOUT_S = 20  # each wait inside Emacs; the whole run gets 3x that


async def test_emacs_eglot_completes_with_jupyter_ds(ds_server, tmp_path: Path):
    require_eglot()
    harness.require_lsp()
    expected = [await ds_server.complete(case.prefix, case.suffix) for case in harness.CASES]
    assert all(text.strip() for text in expected), f"an empty REST suggestion: {expected}"

    work = tmp_path / "emacs"
    project = work / "project"
    project.mkdir(parents=True)
    config = work / "init.el"
    config.write_text(harness.readme_snippet("eglot"), encoding="utf-8")
    env = harness.editor_env(
        work,
        ds_server.url,
        ds_server.token,
        JDS_EDITOR_CASES=harness.cases_json(project),
        JDS_EDITOR_TIMEOUT_S=str(TIMEOUT_S),
    )
    run = await harness.run_editor(
        [EMACS, "--batch", "-l", str(config), "-l", str(SCRIPT)],
        env=env,
        cwd=project,
        timeout=3 * TIMEOUT_S,
    )
    why = run.describe()
    result = run.result or {}
    assert run.returncode == 0 and result.get("ok") is True, why
    # the snippet did its job: eglot started `jupyter-ds lsp` for python-mode
    assert result["server_command"] == ["jupyter-ds", "lsp"], why
    assert result["completion_provider"] is True, why

    assert len(result["cases"]) == len(harness.CASES), why
    for case, text, seen in zip(harness.CASES, expected, result["cases"], strict=True):
        assert seen["major_mode"] == "python-mode", why
        item = harness.check_completion(seen, case, text, why)
        # completion-at-point offers it (eglot shows insertText, filtered by the word typed)
        assert item["insertText"] in seen["capf_candidates"], why
