"""The fine-tuning run: a peft LoRA adapter that teaches a model to fill in the middle.

One run reads a folder into a corpus (:mod:`jupyter_ds.finetune.data`), draws FIM
examples from its training files (:mod:`jupyter_ds.finetune.fim`) and trains a plain
LoRA (no new tokens, no ``modules_to_save``, so vLLM can serve it too) with AdamW, a
warm-up and a cosine decay over the run's budget (tokens or minutes, whichever ends
first). Every ``eval_every`` training tokens it scores single-line infilling on the
held-out files (:mod:`jupyter_ds.finetune.evaluate`), and the best adapter so far is
what the output folder holds: early stopping on the held-out curve, not the last step.

Checkpoints (adapter, optimizer, data stream and counters) are written to
``OUT/checkpoint`` every few minutes and when the run is interrupted, into a fresh
folder that is then renamed over the old one, so a kill at any moment leaves the last
complete checkpoint; ``resume=True`` carries on from it with the same budget, schedule
and random stream. A checkpoint that cannot be written (a full disk) is reported and
the run goes on; the previous one stays valid.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jupyter_ds.finetune.data import Corpus, build_corpus
from jupyter_ds.finetune.fim import (
    IGNORE_INDEX,
    Example,
    ExampleBuilder,
    ExampleStream,
    FimSettings,
)

METADATA_FILE = "jupyter_ds_adapter.json"
MANIFEST_FILE = "data_manifest.json"
CHECKPOINT_DIR = "checkpoint"
METADATA_VERSION = 1

ProgressSink = Callable[[dict[str, Any]], None]


class FinetuneError(RuntimeError):
    """A run that cannot start or go on; the message says why, for a person."""


@dataclass
class FinetuneConfig:
    """Everything a run depends on; recorded in the adapter's metadata."""

    data: str
    out: str
    model_path: str | None = None
    # The adapter merged into the base first: "auto" is the shipped FIM adapter of the
    # embedded model, as the server merges it (so a repository's adapter continues from
    # a model that already fills in the middle); "none" trains on the raw weights.
    base_adapter: str = "auto"
    device: str = "auto"
    dtype: str = "auto"  # float32 on CPU, bfloat16 on CUDA
    seed: int = 0
    max_tokens: int | None = None  # training tokens (context + middle), None: no limit
    max_minutes: float | None = None
    resume: bool = False
    # A warm start: the LoRA weights of this adapter folder, with a fresh optimizer and
    # schedule (what a shipped adapter offers a later run: it has no optimizer state).
    init_adapter: str | None = None
    # The adapter (the seed's figures).
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.1
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    # Optimisation.
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    batch_size: int = 16  # examples per optimizer step
    micro_batch: int = 0  # examples per forward; 0: 1 on CPU (no padding), 8 on CUDA
    weight_decay: float = 0.0
    # Data.
    fim_format: str | None = None  # None: the model's own FIM tokens, else jupyter-ds-spm/psm
    spm_rate: float = 0.5
    heldout_share: float = 0.05
    heldout: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    fim: FimSettings = field(default_factory=FimSettings)
    # Evaluation and bookkeeping.
    eval_every: int = 150_000  # training tokens between held-out evaluations
    eval_cursors: int = 48
    checkpoint_minutes: float = 5.0
    log_seconds: float = 30.0
    threads: int | None = None
    nice: int = 10

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"], d["heldout"], d["exclude"] = (
            list(self.targets), list(self.heldout), list(self.exclude))
        return d


@dataclass
class RunState:
    """Counters that a checkpoint carries (JSON)."""

    step: int = 0
    tokens: int = 0
    examples: int = 0
    supervised_tokens: int = 0
    seconds: float = 0.0
    loss_ema: float | None = None
    next_eval: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)
    before: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    stream: Any = None


def _progress_fraction(cfg: FinetuneConfig, state: RunState) -> float:
    parts = []
    if cfg.max_tokens:
        parts.append(state.tokens / cfg.max_tokens)
    if cfg.max_minutes:
        parts.append(state.seconds / (cfg.max_minutes * 60))
    return min(1.0, max(parts)) if parts else 0.0


def learning_rate(cfg: FinetuneConfig, state: RunState) -> float:
    """Linear warm-up, then a cosine from ``lr`` to ``lr * min_lr_ratio`` over the budget."""
    warm = min(1.0, (state.step + 1) / max(1, cfg.warmup_steps))
    frac = _progress_fraction(cfg, state)
    floor = cfg.min_lr_ratio
    return cfg.lr * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def bar(fraction: float, width: int = 24) -> str:
    filled = round(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _fmt_tokens(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def eval_table(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    """The before/after table printed at the end of a run (markdown)."""
    lines = ["| held-out single-line infill | cursors | exact match | edit sim. | offered |",
             "|---|---:|---:|---:|---:|"]
    for label, r in (("raw model, prefix only", before), ("with the adapter (FIM)", after)):
        if r:
            lines.append(f"| {label} | {r.get('cursors', 0)} | {r.get('exact_match')} % | "
                         f"{r.get('edit_similarity')} | {r.get('offered')} % |")
    return "\n".join(lines)


class Trainer:
    """One run; :meth:`run` trains until the budget ends, then returns the metadata."""

    def __init__(self, cfg: FinetuneConfig, progress: ProgressSink | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.progress_sink = progress
        self.log = log or (lambda text: print(f"[finetune] {text}", file=sys.stderr, flush=True))
        self.stop_requested = False

    # ----------------------------------------------------------------- set-up

    def _setup_process(self) -> None:
        import torch

        if self.cfg.nice:
            try:
                os.nice(self.cfg.nice)
            except OSError:
                pass
        threads = self.cfg.threads or os.cpu_count() or 1
        torch.set_num_threads(max(1, threads))

    def _load(self) -> None:
        import torch
        from ds_engine.loader import load_model
        from ds_engine.templates import FIM_FORMATS, fim_format

        cfg = self.cfg
        self.log(f"loading the base model ({cfg.model_path or 'embedded default'})")
        loaded = load_model(cfg.model_path, device=cfg.device, dtype=cfg.dtype, warm_up=False,
                            adapter=cfg.base_adapter)
        if loaded.quantization != "none":
            raise FinetuneError("fine-tuning needs an unquantized base model")
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        base = loaded.template
        if cfg.fim_format:
            try:
                fim = fim_format(cfg.fim_format)
            except KeyError:
                raise FinetuneError(f"unknown FIM format {cfg.fim_format!r}: expected one of "
                                    f"{', '.join(sorted(FIM_FORMATS))}") from None
        elif base.fim is not None:
            fim = base.fim  # the model's own FIM tokens, or its merged adapter's format
        else:
            fim = fim_format("jupyter-ds-spm" if cfg.spm_rate >= 0.5 else "jupyter-ds-psm")
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in fim.sentinels if t not in vocab]
        if missing:
            raise FinetuneError(f"the model's vocabulary lacks the FIM markers {missing} of "
                                f"{fim.family}; pick another --fim-format")
        self.fim = fim
        self.end_token = "<|endoftext|>" if "<|endoftext|>" in vocab else self.tokenizer.eos_token
        self.template = base.with_fim(fim)
        self.device = loaded.device
        from ds_engine.generation import eos_token_ids

        self.stop_ids = sorted(eos_token_ids(loaded.model, self.tokenizer)
                               | {vocab[self.end_token]})
        self.pad_id = vocab[self.end_token]
        self.micro = cfg.micro_batch or (8 if self.device.type == "cuda" else 1)
        self.torch = torch

    def _corpus(self) -> Corpus:
        from jupyter_ds.finetune.data import CorpusError

        try:
            corpus = build_corpus(self.cfg.data, seed=self.cfg.seed,
                                  heldout_share=self.cfg.heldout_share,
                                  heldout=self.cfg.heldout, exclude=self.cfg.exclude)
        except CorpusError as exc:
            raise FinetuneError(str(exc)) from None
        self.log(f"corpus: {corpus.summary()}")
        return corpus

    def _peft(self, resume_from: Path | None) -> Any:
        from peft import LoraConfig, PeftModel, get_peft_model

        cfg = self.cfg
        model = self.loaded.model
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        unknown = [t for t in cfg.targets if t not in names]
        if unknown:
            raise FinetuneError(f"target modules {unknown} are not in the model "
                                f"(e.g. q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj)")
        if resume_from is not None:
            peft_model = PeftModel.from_pretrained(model, resume_from, is_trainable=True)
        else:
            lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.targets), task_type="CAUSAL_LM",
                              bias="none")
            peft_model = get_peft_model(model, lora)
        peft_model.train()
        return peft_model

    # ----------------------------------------------------------------- steps

    def _batch(self, examples: list[Example]) -> tuple[Any, Any, Any]:
        torch = self.torch
        width = max(len(e.input_ids) for e in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e.input_ids)
            ids[i, :n] = torch.tensor(e.input_ids)
            labels[i, :n] = torch.tensor(e.labels)
            mask[i, :n] = 1
        return ids.to(self.device), labels.to(self.device), mask.to(self.device)

    def _step(self, model: Any, optimizer: Any, stream: ExampleStream, state: RunState) -> float:
        """One optimizer step over ``batch_size`` examples; returns its mean loss."""
        torch = self.torch
        cfg = self.cfg
        examples = [stream.next() for _ in range(cfg.batch_size)]
        supervised = sum(e.supervised for e in examples)
        total = 0.0
        for lr_group in optimizer.param_groups:
            lr_group["lr"] = learning_rate(cfg, state)
        for i in range(0, len(examples), self.micro):
            chunk = examples[i : i + self.micro]
            ids, labels, mask = self._batch(chunk)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            # Sum over the chunk's middle tokens; divided by the step's total below, so
            # every supervised token weighs the same whatever micro-batch it fell in.
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX, reduction="sum") / supervised
            loss.backward()
            total += float(loss.detach())
            state.tokens += int(mask.sum())
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.examples += len(examples)
        state.supervised_tokens += supervised
        state.loss_ema = total if state.loss_ema is None else 0.95 * state.loss_ema + 0.05 * total
        return total

    # ----------------------------------------------------------------- evaluation

    def _evaluate(self, model: Any, cursors: list, use_fim: bool) -> dict[str, Any]:
        from jupyter_ds.finetune.evaluate import evaluate

        was_training = model.training
        model.eval()
        try:
            result = evaluate(model, self.tokenizer, self.template, cursors, use_fim=use_fim,
                              stop_token_ids=self.stop_ids,
                              context_window=self.loaded.context_window)
        finally:
            if was_training:
                model.train()
        return result

    # ----------------------------------------------------------------- saving

    def _metadata(self, corpus: Corpus, state: RunState, evaluation: dict | None) -> dict:
        cfg = self.cfg
        return {
            "format_version": METADATA_VERSION,
            "kind": "jupyter-ds fim adapter",
            "base_model": self.loaded.lineage,
            "base_model_config": {
                "model_type": getattr(self.loaded.model.config, "model_type", None),
                "hidden_size": getattr(self.loaded.model.config, "hidden_size", None),
                "num_hidden_layers": getattr(self.loaded.model.config, "num_hidden_layers", None),
                "vocab_size": getattr(self.loaded.model.config, "vocab_size", None),
            },
            "fim": {
                "family": self.fim.family,
                "template": self.fim.template,
                "sentinels": list(self.fim.sentinels),
                "order": self.fim.order,
                "end": self.end_token,
            },
            "data": {
                "digest": corpus.digest,
                "root": corpus.root,
                "train_files": len(corpus.train),
                "heldout_files": len(corpus.heldout),
                "skipped": dict(corpus.skipped),
                "manifest": MANIFEST_FILE,
            },
            "training": {
                "config": cfg.public(),
                "steps": state.step,
                "tokens": state.tokens,
                "examples": state.examples,
                "supervised_tokens": state.supervised_tokens,
                "seconds": round(state.seconds, 1),
                "tokens_per_s": round(state.tokens / state.seconds, 1) if state.seconds else None,
                "device": str(self.device),
                "dtype": str(self.loaded.dtype).removeprefix("torch."),
            },
            "eval": {
                "before": state.before,
                "after": evaluation,
                "curve": state.curve,
            },
        }

    def _save_adapter(self, model: Any, target: Path, metadata: dict, corpus: Corpus) -> None:
        """Write a peft adapter folder (plus metadata) to ``target`` atomically."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            _portable_config(tmp / "adapter_config.json", metadata["base_model"])
            (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model card
            (tmp / MANIFEST_FILE).write_text(json.dumps(corpus.manifest(), indent=1))
            (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _save_best(self, model: Any, corpus: Corpus, state: RunState, result: dict) -> bool:
        """The output folder's adapter files become this step's (the rest stays).

        A write that fails (a full disk) leaves the previous best in place; False then.
        """
        staging = self.out / ".best"
        try:
            self._save_adapter(model, staging, self._metadata(corpus, state, result), corpus)
            for item in staging.iterdir():
                os.replace(item, self.out / item.name)
        except OSError as exc:
            self.log(f"could not write the adapter ({exc.strerror or exc}); the previous "
                     f"one stays in {self.out}")
            return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return True

    def _checkpoint(self, model: Any, optimizer: Any, stream: ExampleStream, state: RunState,
                    corpus: Corpus) -> bool:
        state.stream = stream.state()
        target = self.out / CHECKPOINT_DIR
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=self.out))
            model.save_pretrained(tmp, safe_serialization=True)
            self.torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps(
                {"state": asdict(state), "config": self.cfg.public(),
                 "data_digest": corpus.digest}))
            _replace_dir(tmp, target)
            return True
        except OSError as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            self.log(f"could not write a checkpoint ({exc.strerror or exc}); the previous "
                     f"one stays valid, training goes on")
            return False

    def _restore(self, corpus: Corpus) -> tuple[Path | None, RunState, dict | None]:
        ckpt = self.out / CHECKPOINT_DIR
        if not self.cfg.resume:
            return None, RunState(), None
        old = ckpt.with_name(f".{ckpt.name}.old")
        if not (ckpt / "state.json").is_file() and (old / "state.json").is_file():
            ckpt = old  # killed between the two renames of _replace_dir
        if not (ckpt / "state.json").is_file():
            self.log(f"--resume: no checkpoint in {ckpt}; starting afresh")
            return None, RunState(), None
        saved = json.loads((ckpt / "state.json").read_text())
        if saved.get("data_digest") != corpus.digest:
            self.log("--resume: the files changed since the checkpoint; resuming anyway "
                     "(the held-out split is by path, so it holds)")
        state = RunState(**saved["state"])
        optim = self.torch.load(ckpt / "optimizer.pt", weights_only=True)
        self.log(f"resuming from step {state.step}, {_fmt_tokens(state.tokens)} tokens")
        return ckpt, state, optim

    # ----------------------------------------------------------------- the run

    def _emit(self, state: RunState, phase: str, **extra: Any) -> None:
        if self.progress_sink is None:
            return
        try:
            self.progress_sink({"phase": phase, "step": state.step, "tokens": state.tokens,
                                "seconds": round(state.seconds, 1),
                                "fraction": round(_progress_fraction(self.cfg, state), 4),
                                "loss": None if state.loss_ema is None
                                else round(state.loss_ema, 4), **extra})
        except Exception:  # a broken sink never stops training
            pass

    def run(self) -> dict[str, Any]:
        from jupyter_ds.finetune.evaluate import sample_cursors

        cfg = self.cfg
        if not cfg.max_tokens and not cfg.max_minutes:
            raise FinetuneError("give a budget: max_tokens or max_minutes")
        self._setup_process()
        corpus = self._corpus()
        self._load()
        torch = self.torch
        torch.manual_seed(cfg.seed)
        resume_from, state, optim_state = self._restore(corpus)
        if resume_from is None and cfg.init_adapter:
            if not (Path(cfg.init_adapter) / "adapter_config.json").is_file():
                raise FinetuneError(f"--init-adapter {cfg.init_adapter}: no adapter_config.json")
            resume_from = Path(cfg.init_adapter)
            self.log(f"starting from the weights of {resume_from} (fresh optimizer)")
        model = self._peft(resume_from)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.log(f"LoRA r={cfg.rank} alpha={cfg.alpha} on {', '.join(cfg.targets)}: "
                 f"{trainable / 1e6:.2f}M trainable parameters; FIM format {self.fim.family}; "
                 f"device {self.device}, {self.loaded.dtype}")
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=cfg.lr, weight_decay=cfg.weight_decay)
        if optim_state is not None:
            optimizer.load_state_dict(optim_state)
        builder = ExampleBuilder(self.tokenizer, self.fim, self.template.escape, self.end_token,
                                 _fim_settings(cfg), filename_token=self.template.filename_token)
        context = None
        fim_cfg = builder.settings
        if fim_cfg.cross_file_rate > 0 or fim_cfg.context_rate > 0:
            from jupyter_ds.finetune.context import TrainingContext

            tokenizer = self.tokenizer
            context = TrainingContext(
                corpus.train,
                lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
                budget_tokens=fim_cfg.max_context_tokens)
            self.log(f"repository context: {fim_cfg.cross_file_rate:.0%} cross-file "
                     f"cursors, {fim_cfg.context_rate:.0%} of the rest with context, "
                     f"<= {fim_cfg.max_context_tokens} tokens; {len(context.packages)} "
                     f"packages")
        stream = ExampleStream(corpus.train, builder, seed=cfg.seed, context=context)
        if state.stream is not None:
            stream.restore(state.stream)
        cursors = sample_cursors(corpus.heldout, cfg.eval_cursors, seed=cfg.seed)
        if state.before is None and cursors:
            self.log(f"scoring the raw model on {len(cursors)} held-out cursors")
            with model.disable_adapter():
                before = self._evaluate(model, cursors, use_fim=False)
            state.before = {k: v for k, v in before.items() if k != "rows"}
            self.log(f"raw model: exact {state.before['exact_match']} %, "
                     f"edit sim {state.before['edit_similarity']}, "
                     f"offered {state.before['offered']} %")
        if state.next_eval == 0:
            state.next_eval = cfg.eval_every

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread: the caller stops us through stop()
                pass
        last_ckpt = last_log = time.monotonic()
        started, seconds0, tokens0 = time.monotonic(), state.seconds, state.tokens
        self._emit(state, "training")
        try:
            while not self.stop_requested and _progress_fraction(cfg, state) < 1.0:
                self._step(model, optimizer, stream, state)
                now = time.monotonic()
                state.seconds = seconds0 + (now - started)
                if now - last_log >= cfg.log_seconds:
                    last_log = now
                    rate = (state.tokens - tokens0) / max(1e-9, now - started)
                    self._report(state, rate)
                if state.tokens >= state.next_eval and cursors:
                    state.next_eval += cfg.eval_every
                    self._eval_point(model, corpus, state, cursors)
                    self._emit(state, "training", eval=state.curve[-1])
                if now - last_ckpt >= cfg.checkpoint_minutes * 60:
                    last_ckpt = now
                    self._checkpoint(model, optimizer, stream, state, corpus)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if context is not None:
                context.close()
        self._checkpoint(model, optimizer, stream, state, corpus)
        interrupted = self.stop_requested
        if cursors and (not state.curve or state.curve[-1]["tokens"] != state.tokens) \
                and not interrupted:
            self._eval_point(model, corpus, state, cursors)
        if state.best is None:  # nothing to compare with: keep the last adapter
            self._save_best(model, corpus, state, {})
        meta_path = self.out / METADATA_FILE
        if not meta_path.is_file():
            raise FinetuneError(f"could not write the adapter to {self.out} (see the log); "
                                f"the checkpoint in {self.out / CHECKPOINT_DIR} resumes the run")
        metadata = json.loads(meta_path.read_text())
        # The adapter is the best step's; its metadata gets the run's whole curve.
        metadata["eval"]["curve"] = state.curve
        metadata["training"]["run_tokens"] = state.tokens
        metadata["training"]["run_seconds"] = round(state.seconds, 1)
        with contextlib.suppress(OSError):
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(metadata, indent=2))
            os.replace(tmp, meta_path)
        self.log(("interrupted" if interrupted else "done") +
                 f" after {state.step} steps, {_fmt_tokens(state.tokens)} tokens, "
                 f"{state.seconds / 60:.1f} min; the adapter in {self.out} is the best "
                 f"on the held-out cursors")
        self.log("\n" + eval_table(state.before, metadata["eval"]["after"]))
        self._emit(state, "interrupted" if interrupted else "done",
                   before=state.before, after=metadata["eval"]["after"])
        return metadata

    def _eval_point(self, model: Any, corpus: Corpus, state: RunState, cursors: list) -> None:
        result = self._evaluate(model, cursors, use_fim=True)
        point = {"tokens": state.tokens, "step": state.step,
                 **{k: v for k, v in result.items() if k != "rows"}}
        state.curve.append(point)
        key = (point["exact_match"], point["edit_similarity"])
        best = state.best
        improved = best is None or key > (best["exact_match"], best["edit_similarity"])
        saved = improved and self._save_best(model, corpus, state, point)
        if saved:
            state.best = point
        self.log(f"held-out at {_fmt_tokens(state.tokens)} tokens: exact "
                 f"{point['exact_match']} %, edit sim {point['edit_similarity']}, offered "
                 f"{point['offered']} %" + (" (best so far: saved)" if saved else ""))

    def _report(self, state: RunState, rate: float) -> None:
        frac = _progress_fraction(self.cfg, state)
        remaining = []
        if self.cfg.max_tokens and rate > 0:
            remaining.append((self.cfg.max_tokens - state.tokens) / rate)
        if self.cfg.max_minutes:
            remaining.append(self.cfg.max_minutes * 60 - state.seconds)
        eta = min(remaining) if remaining else 0.0
        loss = f"{state.loss_ema:.3f}" if state.loss_ema is not None else "-"
        self.log(f"{bar(frac)} {frac:5.1%} step {state.step} | {_fmt_tokens(state.tokens)} "
                 f"tokens | {rate:.0f} tok/s | loss {loss} | lr "
                 f"{learning_rate(self.cfg, state):.2e} | ETA {eta / 60:.1f} min")
        self._emit(state, "training", tokens_per_s=round(rate, 1), eta_s=round(eta))

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.log(f"signal {signum}: finishing the step, then writing a checkpoint")
        self.stop_requested = True

    def stop(self) -> None:
        self.stop_requested = True


def _fim_settings(cfg: FinetuneConfig) -> FimSettings:
    s = cfg.fim
    return FimSettings(**{**asdict(s), "spm_rate": cfg.spm_rate})


def _portable_config(path: Path, base_model: str) -> None:
    """Name the base model in peft's config, not the converted-weights cache folder of
    this machine (a path that means nothing elsewhere and tells where the home is)."""
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _replace_dir(tmp: Path, target: Path) -> None:
    """Put ``tmp`` where ``target`` is; at every moment one complete copy exists."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
