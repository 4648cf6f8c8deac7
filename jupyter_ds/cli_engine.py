"""The engine of a ``jupyter-ds`` command: its options, and loading it in the foreground.

Every command that needs the model (``complete``, ``explain``, ``tests generate``,
``git commit-message``) takes the same options and builds its engine here, through the
same ``engine_class`` choice as the server (:mod:`ds_engine.factory`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ds_engine import Engine, EngineConfig
from ds_engine.factory import DEFAULT_ENGINE_CLASS, make_engine

from jupyter_ds.errors import ApiError, bad_request


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """``--model-path``, ``--device``, ``--dtype`` and ``--engine-class``."""
    parser.add_argument("--model-path", default=None, help="HF directory or GGUF file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--engine-class",
        default=DEFAULT_ENGINE_CLASS,
        help=f"dotted path of the engine class (default: {DEFAULT_ENGINE_CLASS})",
    )


def _progress(stage: str, fraction: float) -> None:
    print(f"[jupyter-ds] {stage} {fraction:4.0%}", file=sys.stderr, flush=True)


def open_engine(args: argparse.Namespace) -> Engine:
    """The command's engine, loaded; a model that cannot load is a 503 envelope."""
    options: dict[str, Any] = {}
    spec = getattr(args, "engine_class", DEFAULT_ENGINE_CLASS)
    if spec == DEFAULT_ENGINE_CLASS:
        options["progress"] = _progress  # the in-process engine reports its stages
    config = EngineConfig(
        model_path=args.model_path, device=args.device, dtype=args.dtype,
        quantization="auto", options=options,  # as the server
    )
    try:
        engine = make_engine(spec, config)
    except ValueError as exc:
        raise bad_request(str(exc), "engine_class") from None
    engine.start_loading()
    if not engine.wait_ready():
        error = engine.info().error or "unknown error"
        raise ApiError(503, "model_failed", f"model failed to load: {error}")
    return engine
