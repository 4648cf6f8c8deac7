"""Notebooks diffed by cell source, not as raw JSON.

A notebook's JSON changes in outputs, execution counts and metadata on every run; what a
reviewer wants is the code and text that changed. Each side is rendered as the "percent"
script format (``# %%`` before a code cell, ``# %% [markdown]`` before a text cell, no
outputs) and the two renderings are compared line by line, so the diff reads like a
script's diff and inserted cells show as inserted blocks.
"""

from __future__ import annotations

import difflib
import json


def render_cells(data: bytes | str | None) -> list[str] | None:
    """The notebook as lines of percent-format text; None when it is not a notebook."""
    if data is None or data in (b"", ""):
        return []
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list):
        return None
    lines: list[str] = []
    for cell in doc["cells"]:
        if not isinstance(cell, dict):
            return None
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(s for s in source if isinstance(s, str))
        if not isinstance(source, str):
            return None
        kind = cell.get("cell_type", "code")
        lines.append("# %%\n" if kind == "code" else f"# %% [{kind}]\n")
        lines.extend(line + "\n" for line in source.splitlines())
        lines.append("\n")
    return lines


def notebook_diff(
    old: bytes | str | None, new: bytes | str | None, old_path: str, new_path: str,
    context: int = 3,
) -> tuple[str, int, int] | None:
    """``(text, additions, deletions)`` of the cell-source diff; None if a side is invalid.

    ``None`` content means the file is absent on that side (added or deleted).
    """
    before, after = render_cells(old), render_cells(new)
    if before is None or after is None:
        return None
    a = f"a/{old_path}" if old is not None else "/dev/null"
    b = f"b/{new_path}" if new is not None else "/dev/null"
    body = list(difflib.unified_diff(before, after, a, b, n=context))
    if not body:
        return "", 0, 0
    adds = sum(1 for ln in body[2:] if ln.startswith("+"))
    dels = sum(1 for ln in body[2:] if ln.startswith("-"))
    head = f"diff --git a/{old_path} b/{new_path} (notebook cell sources)\n"
    text = head + "".join(ln if ln.endswith("\n") else ln + "\n" for ln in body)
    return text, adds, dels
