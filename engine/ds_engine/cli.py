"""``ds-engine``: load a model and inspect it or generate from the command line.

Useful to check a model directory, a GGUF or the embedded default (and to fill the
converted-model cache) without starting Jupyter. ``serve`` runs the engine as an
OpenAI-compatible HTTP server for a team's GPU node (:mod:`ds_engine.serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from ds_engine.interface import EngineConfig, GenerationRequest
from ds_engine.local import LocalEngine


def _progress(stage: str, fraction: float) -> None:
    print(f"[ds-engine] {stage} ({fraction:.0%})", file=sys.stderr, flush=True)


def _engine(args: argparse.Namespace) -> LocalEngine:
    # The constructor's own defaults (quantization "none"), not the server's: this
    # command checks a model as it is.
    return LocalEngine.from_config(EngineConfig(
        model_path=args.model_path,
        device=args.device,
        dtype=args.dtype,
        cache_dir=args.cache_dir,
        quantization="none",
        options={"num_threads": args.threads, "progress": _progress},
    ))


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-path",
        help="HF model directory, .gguf file, or directory with one .gguf "
        "(default: $DEEPSEEK_MODEL_PATH, else the embedded SmolLM2-135M)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument(
        "--cache-dir",
        help="converted-model cache (default: $JUPYTER_DS_CACHE_DIR, "
        "else ~/.cache/jupyter-ds/models)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ds-engine",
        description="Model tier of jupyter-ds: load a local code LLM, inspect it, generate.",
        epilog="`ds-engine serve` runs the engine as an OpenAI-compatible HTTP server.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="load the model and print its description as JSON")
    _add_model_args(info)
    gen = sub.add_parser("generate", help="load the model and stream a completion to stdout")
    _add_model_args(gen)
    gen.add_argument("--prompt", required=True, help="prompt text (already formatted)")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    _add_serve_parser(sub)
    return parser


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    """``serve``: vLLM's option names where vLLM has the option, so that a deployment
    switches between the two servers by changing the command, not its arguments."""
    serve = sub.add_parser(
        "serve",
        help="serve the engine as an OpenAI-compatible HTTP server (/v1/completions, "
        "/v1/chat/completions, /v1/models, /health, /metrics)",
    )
    _add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    serve.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on /v1/* (default: $DS_ENGINE_API_KEY; "
        "prefer the variable: arguments are visible to other users of the machine)",
    )
    serve.add_argument(
        "--engine-class",
        help="engine class as package.module.Class (default: ds_engine.local.LocalEngine)",
    )
    serve.add_argument(
        "--engine-option", action="append", default=[], metavar="KEY=VALUE",
        help="an option of the engine class (EngineConfig.options; VALUE is JSON if it "
        "parses, else a string); repeatable",
    )
    serve.add_argument(
        "--served-model-name",
        help="the model name clients send (default: --model-path as given, else the "
        "loaded model's name)",
    )
    serve.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=PATH",
        help="attach the LoRA adapter folder PATH, served as model NAME; repeatable",
    )
    serve.add_argument(
        "--default-adapter", default="auto",
        help="adapter merged into the weights at load: auto, none or a folder",
    )
    serve.add_argument("--quantization", default="auto", help="auto, none, int8 or int4 (CPU)")
    serve.add_argument("--max-batch-size", type=int, default=8,
                       help="requests decoded together at most")
    serve.add_argument("--max-queued", type=int, default=64,
                       help="requests of each priority that may wait (0: no bound)")


async def _generate(engine: LocalEngine, args: argparse.Namespace) -> dict[str, object]:
    request = GenerationRequest(
        prompt=args.prompt,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=list(args.stop),
    )
    summary: dict[str, object] = {}
    async for chunk in engine.stream(request):
        sys.stdout.write(chunk.delta)
        sys.stdout.flush()
        if chunk.done and chunk.result is not None:
            r = chunk.result
            summary = {
                "token_count": r.token_count,
                "prompt_tokens": r.prompt_tokens,
                "confidence": round(r.confidence, 4),
                "finish_reason": r.finish_reason.value,
                "latency_ms": round(r.latency_ms, 1),
                "tokens_per_s": round(r.token_count / max(r.latency_ms / 1000, 1e-9), 1),
            }
    sys.stdout.write("\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        from ds_engine.serve import serve_command

        return serve_command(args)
    engine = _engine(args)
    try:
        engine.load()
    except Exception as exc:
        print(f"ds-engine: could not load the model: {exc}", file=sys.stderr)
        return 1
    try:
        if args.command == "info":
            print(json.dumps(engine.info().to_dict(), indent=2))
        else:
            summary = asyncio.run(_generate(engine, args))
            print(json.dumps(summary), file=sys.stderr)
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
