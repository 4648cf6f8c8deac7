"""``ds-engine info`` and ``generate`` on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ds_engine.cli import main


def test_info_prints_json(tiny_model_path: Path, capsys) -> None:
    assert main(["info", "--model-path", str(tiny_model_path), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    info = json.loads(out)
    assert info["state"] == "ready" and info["kind"] == "hf"
    assert "resolving" in err and "ready" in err  # progress goes to stderr


def test_generate_streams_to_stdout(tiny_model_path: Path, capsys) -> None:
    argv = [
        "generate",
        "--model-path",
        str(tiny_model_path),
        "--prompt",
        "x = ",
        "--max-tokens",
        "8",
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.strip()
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["token_count"] == 8 and summary["finish_reason"] == "length"


def test_bad_model_path_fails_cleanly(tmp_path: Path, capsys) -> None:
    assert main(["info", "--model-path", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err


def test_help_mentions_serve_later(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "serve" in capsys.readouterr().out
