"""Headless Neovim completes Python files with jupyter-ds, configured as README.md says.

Debian's Neovim (0.7.2 on bookworm, installed by ``make setup``) runs
``nvim_lsp_complete.lua``: it loads the README's Neovim snippet unchanged and opens each
``.py`` file of ``harness.CASES`` (the snippet's FileType autocommand starts
``jupyter-ds lsp`` once and attaches it to each buffer), requests
``textDocument/completion`` at the cursor through Neovim's own LSP client, lists what
``<C-x><C-o>`` offers, and applies the jupyter-ds item. The language server is a separate
process that reaches the test's Jupyter server over HTTP with its token
(``JUPYTER_DS_URL``/``JUPYTER_DS_TOKEN``). Each suggestion must be the one the REST API
gives for the same prefix and suffix, and accepting it must write exactly that.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import harness

NVIM = harness.find_editor("nvim")
pytestmark = pytest.mark.skipif(
    NVIM is None, reason=f"Neovim (nvim) is not installed: {harness.SETUP_HINT}"
)

SCRIPT = harness.HERE / "nvim_lsp_complete.lua"
TIMEOUT_S = 20  # each wait inside Neovim; the whole run gets 3x that


async def test_neovim_completes_with_jupyter_ds(ds_server, tmp_path: Path):
    harness.require_lsp()
    expected = [await ds_server.complete(case.prefix, case.suffix) for case in harness.CASES]
    assert all(text.strip() for text in expected), f"an empty REST suggestion: {expected}"

    work = tmp_path / "nvim"
    project = work / "project"
    project.mkdir(parents=True)
    config = work / "init.lua"
    config.write_text(harness.readme_snippet("nvim"), encoding="utf-8")
    env = harness.editor_env(
        work,
        ds_server.url,
        ds_server.token,
        JDS_EDITOR_CONFIG=str(config),
        JDS_EDITOR_CASES=harness.cases_json(project),
        JDS_EDITOR_TIMEOUT_MS=str(TIMEOUT_S * 1000),
    )
    run = await harness.run_editor(
        [NVIM, "--headless", "--clean", "-n", "-c", f"luafile {SCRIPT}"],
        env=env,
        cwd=project,
        timeout=3 * TIMEOUT_S,
        # Neovim writes the language server's stderr and its own LSP errors here.
        logs={"nvim lsp.log": work / "home" / "cache" / "nvim" / "lsp.log"},
    )
    why = run.describe()
    result = run.result or {}
    assert run.returncode == 0 and result.get("ok"), why
    assert result["capabilities"]["completion"], why

    assert len(result["cases"]) == len(harness.CASES), why
    for case, text, seen in zip(harness.CASES, expected, result["cases"], strict=True):
        # the snippet did its job: a Python buffer with the LSP omnifunc
        assert seen["filetype"] == "python", why
        assert seen["omnifunc"] == "v:lua.vim.lsp.omnifunc", why
        item = harness.check_completion(seen, case, text, why)
        # <C-x><C-o> offers it (after its own filtering by the word typed so far)
        assert item["textEdit"]["newText"] in seen["omni_words"], why
