"""``jupyter-ds finetune PATH --out DIR``: train a FIM LoRA adapter on a folder of code.

    jupyter-ds finetune PATH --out DIR [--max-minutes M | --max-tokens N] [--resume]
        [--init-adapter DIR]
        [--seed S] [--rank 16] [--alpha 32] [--dropout 0.1] [--targets q_proj,v_proj]
        [--lr 2e-4] [--batch-size 16] [--spm-rate 0.5] [--fim-format NAME]
        [--heldout MODULE ...] [--exclude PREFIX ...] [--eval-every TOKENS]
        [--progress-json FILE] [--model-path P] [--device auto] [--dtype auto]

Progress (a bar, tokens/s, loss, ETA) goes to stderr; the adapter's metadata, with the
before/after figures on the held-out files, is printed as the JSON envelope at the end.
Exit status 0 when done, 1 on an error (the envelope says which), 130 when interrupted
(the checkpoint is written: run again with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from jupyter_ds.finetune.fim import FimSettings


def add_parser(sub: Any) -> None:
    p = sub.add_parser("finetune", help="train a fill-in-the-middle LoRA adapter on a folder")
    p.add_argument("data", help="a folder of Python files and notebooks")
    p.add_argument("--out", required=True, help="the adapter folder to write")
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="carry on from OUT/checkpoint")
    p.add_argument("--init-adapter", default=None,
                   help="start from this adapter's weights (fresh optimizer and schedule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--targets", default="q_proj,v_proj", help="comma-separated module names")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16, help="examples per optimizer step")
    p.add_argument("--micro-batch", type=int, default=0, help="examples per forward (0: auto)")
    p.add_argument("--spm-rate", type=float, default=0.5, help="share of SPM examples")
    p.add_argument("--fim-format", default=None, help="e.g. jupyter-ds-spm (default: auto)")
    p.add_argument("--heldout-share", type=float, default=0.05)
    p.add_argument("--heldout", nargs="*", default=[], help="paths always held out")
    p.add_argument("--exclude", nargs="*", default=[],
                   help=".gitignore-style patterns to leave out")
    p.add_argument("--max-prefix-tokens", type=int, default=FimSettings.max_prefix_tokens)
    p.add_argument("--max-suffix-tokens", type=int, default=FimSettings.max_suffix_tokens)
    p.add_argument("--cross-file-rate", type=float, default=FimSettings.cross_file_rate,
                   help="share of examples at a cursor before a name another file defines, "
                        "with repository context")
    p.add_argument("--context-rate", type=float, default=FimSettings.context_rate,
                   help="share of the other examples with repository context")
    p.add_argument("--context-tokens", type=int, default=FimSettings.max_context_tokens,
                   help="repository context budget in tokens")
    p.add_argument("--eval-every", type=int, default=150_000, help="training tokens")
    p.add_argument("--eval-cursors", type=int, default=48)
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--log-seconds", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--nice", type=int, default=10)
    p.add_argument("--progress-json", default=None, help="append progress events here")
    p.add_argument("--model-path", default=None, help="HF directory or GGUF file")
    p.add_argument("--base-adapter", default="auto",
                   help="adapter merged into the base first (auto: the server's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")


def config_from_args(args: argparse.Namespace) -> Any:
    from jupyter_ds.errors import bad_request
    from jupyter_ds.finetune.train import FinetuneConfig

    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    checks = (
        (args.max_minutes is None and args.max_tokens is None,
         "give a budget: --max-minutes or --max-tokens", "max_minutes"),
        (args.max_minutes is not None and args.max_minutes <= 0,
         "--max-minutes must be > 0", "max_minutes"),
        (args.max_tokens is not None and args.max_tokens <= 0,
         "--max-tokens must be > 0", "max_tokens"),
        (not targets, "--targets names no module", "targets"),
        (args.rank < 1, "--rank must be >= 1", "rank"),
        (not 0 <= args.spm_rate <= 1, "--spm-rate must be within 0..1", "spm_rate"),
        (not 0 <= args.cross_file_rate <= 1, "--cross-file-rate must be within 0..1",
         "cross_file_rate"),
        (not 0 <= args.context_rate <= 1, "--context-rate must be within 0..1",
         "context_rate"),
        (args.context_tokens < 1, "--context-tokens must be >= 1", "context_tokens"),
        (not 0 <= args.heldout_share < 1, "--heldout-share must be within 0..1", "heldout_share"),
        (args.batch_size < 1, "--batch-size must be >= 1", "batch_size"),
        (not 0 < args.lr < 1, "--lr must be within 0..1", "lr"),
    )
    for failed, message, field in checks:
        if failed:
            raise bad_request(message, field)
    return FinetuneConfig(
        data=args.data, out=args.out, model_path=args.model_path,
        base_adapter=args.base_adapter, device=args.device,
        dtype=args.dtype, seed=args.seed, max_tokens=args.max_tokens,
        max_minutes=args.max_minutes, resume=args.resume, init_adapter=args.init_adapter,
        rank=args.rank, alpha=args.alpha,
        dropout=args.dropout, targets=targets, lr=args.lr, warmup_steps=args.warmup_steps,
        batch_size=args.batch_size, micro_batch=args.micro_batch, fim_format=args.fim_format,
        spm_rate=args.spm_rate, heldout_share=args.heldout_share, heldout=tuple(args.heldout),
        exclude=tuple(args.exclude),
        fim=FimSettings(max_prefix_tokens=args.max_prefix_tokens,
                        max_suffix_tokens=args.max_suffix_tokens,
                        cross_file_rate=args.cross_file_rate,
                        context_rate=args.context_rate,
                        max_context_tokens=args.context_tokens),
        eval_every=args.eval_every, eval_cursors=args.eval_cursors,
        checkpoint_minutes=args.checkpoint_minutes, log_seconds=args.log_seconds,
        threads=args.threads, nice=args.nice,
    )


def run(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Train; returns (the adapter's metadata, whether the run was interrupted)."""
    from jupyter_ds.errors import ApiError
    from jupyter_ds.finetune.train import FinetuneError, Trainer

    cfg = config_from_args(args)
    sink = None
    if args.progress_json:
        path = Path(args.progress_json)

        def sink(event: dict[str, Any]) -> None:
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")

    trainer = Trainer(cfg, progress=sink)
    try:
        metadata = trainer.run()
    except FinetuneError as exc:
        raise ApiError(400, "invalid_request", str(exc), field="data") from None
    return metadata, trainer.stop_requested


def main(args: argparse.Namespace) -> int:
    from jupyter_ds.envelope import failure, success
    from jupyter_ds.errors import ApiError

    try:
        metadata, interrupted = run(args)
    except ApiError as exc:
        print(json.dumps(failure(exc), indent=2))
        return 1
    print(json.dumps(success({"adapter": args.out, **metadata}), indent=2))
    sys.stdout.flush()
    return 130 if interrupted else 0
