"""Where every benchmark puts its results: JSON on stdout and in ``<out_dir>/<name>.json``,
its markdown table in ``<out_dir>/<name>.md`` (the README quotes the latest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def publish(report: dict[str, Any], table: str, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``report`` and ``table``, print the JSON; the two paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    paths = [out / f"{name}.json", out / f"{name}.md"]
    paths[0].write_text(text + "\n", encoding="utf-8")
    paths[1].write_text(table, encoding="utf-8")
    print(text)
    return paths
