"""How often the repository block holds the definition of the name the user is about to type.

A development set for the repository source's retrieval (``jupyter_ds/context/
repository.py``), kept apart from ``context_repository.py``'s packages so that settings
are never chosen on the benchmark that reports their effect. The code is this Python's
standard library: its packages (``asyncio/``, ``email/``, ``xml/``...), tests and tools
left out, as the default adapter's fine-tuning reads it. The cursors are the fine-tuning's
cross-file cursors (:meth:`jupyter_ds.finetune.context.TrainingContext.cross_file_cursor`):
before the first name of a line whose definition in another file of the package the
file's imports reach. Each arm asks the same source with other budget settings, within
the budget the completion service gives repository context at its defaults, and
counts the cursors whose name's definition is in the block. No model runs: this
measures retrieval only.

    python benchmarks/context_retrieval.py [--cursors-per-file 3] [--seed 1]
        [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import random
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from results_io import publish
from sampling import percent, quantile

from jupyter_ds.context import DEFAULT_CONTEXT_TOKENS, IDENTIFIER, ContextQuery
from jupyter_ds.finetune.context import TrainingContext, package_of
from jupyter_ds.finetune.data import build_corpus
from jupyter_ds.finetune.fim import SpanSampler

# As `make finetune-default` reads the standard library.
EXCLUDE = ("test/", "**/test/", "**/tests/", "**/idle_test/", "idlelib/", "lib2to3/",
           "turtledemo/", "ensurepip/", "config-3*/", "__phello__/", "pydoc_data/",
           "encodings/")
# (label, definitions_share, definition_share): the settings before this benchmark,
# then the defaults it chose.
ARMS = (
    ("whole definitions, 60 % for definitions", 0.6, 1.0),
    ("whole definitions, 80 %", 0.8, 1.0),
    ("each definition <= 25 % of the budget, 80 %", 0.8, 0.25),
    ("each definition <= 15 % of the budget, 80 % (default)", 0.8, 0.15),
)


def log(text: str) -> None:
    print(f"[context-retrieval] {text}", file=sys.stderr, flush=True)


def tokenizer() -> Any:
    """The embedded model's tokenizer (its converted cache, made on first use)."""
    from ds_engine.loader import load_model

    return load_model(device="cpu", warm_up=False).tokenizer


def cursors(context: TrainingContext, files: Sequence[Any], per_file: int,
            seed: int) -> list[tuple[Any, int, int, str]]:
    rng = random.Random(seed)
    out = []
    for f in files:
        starts = SpanSampler(f.text).line_starts
        found: set[int] = set()
        for _ in range(per_file):
            span = context.cross_file_cursor(f.path, f.text, starts, rng, tries=16)
            if span is None:
                break
            if span[0] in found:
                continue
            found.add(span[0])
            name = IDENTIFIER.match(f.text, span[0]).group(0)
            out.append((f, span[0], span[1], name))
    return out


def measure(context: TrainingContext, files: Sequence[Any], count: Any, per_file: int,
            seed: int, budget: int = DEFAULT_CONTEXT_TOKENS) -> list[dict[str, Any]]:
    """One row per arm of :data:`ARMS`, on the same cursors of ``files``."""
    chosen = cursors(context, files, per_file, seed)
    log(f"{len(chosen)} cross-file cursors in {len(files)} package files")
    arms = []
    for label, share, each in ARMS:
        hits, tokens, ms = [], [], []
        for f, start, end, name in chosen:
            source = context._source(package_of(f.path))
            source.definitions_share, source.definition_share = share, each
            query = ContextQuery(path=f.path, prefix=f.text[:start], suffix=f.text[end:],
                                 language="python")
            t0 = time.perf_counter()
            block = source.collect(query, budget, count)
            ms.append(1000 * (time.perf_counter() - t0))
            hits.append(block is not None and any(
                u.rsplit(":", 1)[1] == name for u in block.used))
            tokens.append(count(block.text) if block is not None else 0)
        arm = {"arm": label, "definitions_share": share, "definition_share": each,
               "cursors": len(chosen), "definition_in_block": percent(hits),
               "tokens_mean": round(sum(tokens) / max(1, len(tokens)), 1),
               "ms_p50": quantile(ms, 0.5), "ms_p95": quantile(ms, 0.95)}
        log(f"{label}: {arm['definition_in_block']} %")
        arms.append(arm)
    return arms


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    root = sysconfig.get_paths()["stdlib"]
    corpus = build_corpus(root, seed=0, heldout_share=0, heldout=(), exclude=EXCLUDE)
    tok = tokenizer()

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    context = TrainingContext(corpus.train, count)
    try:
        files = [f for f in corpus.train if package_of(f.path) and f.path.endswith(".py")]
        arms = measure(context, files, count, args.cursors_per_file, args.seed)
    finally:
        context.close()
    return {"benchmark": "context_retrieval", "root": "the standard library of CPython "
            f"{sys.version.split()[0]} (packages only; {len(EXCLUDE)} exclusions)",
            "budget_tokens": DEFAULT_CONTEXT_TOKENS, "seed": args.seed,
            "cursors_per_file": args.cursors_per_file, "arms": arms,
            "seconds": round(time.monotonic() - started, 1)}


def markdown(report: dict[str, Any]) -> str:
    rows = [f"| {a['arm']} | {a['cursors']} | {a['definition_in_block']} | "
            f"{a['tokens_mean']} | {a['ms_p50']} / {a['ms_p95']} |" for a in report["arms"]]
    return "\n".join([
        f"# Repository context retrieval on a development set ({report['root']})",
        "",
        "Cross-file cursors (before the first name of a line that another file of the "
        "package defines); the share whose name's definition is in the repository block, "
        f"within {report['budget_tokens']} tokens. No model runs.",
        "",
        "| arm | cursors | definition in block % | block tokens (mean) | ms p50 / p95 |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Run: {report['seconds']} s (ms include the first parse of each module).",
        "",
    ])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cursors-per-file", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    publish(report, markdown(report), args.out, "context_retrieval")
    return report


if __name__ == "__main__":
    main()
