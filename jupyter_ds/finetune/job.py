"""The admin fine-tuning job behind ``POST/GET/DELETE jupyter-ds/v1/finetune``.

One job at a time per server (a second ``POST`` while one runs is a 409). The job runs
``jupyter-ds finetune`` in a child process: training holds the GIL and both cores for
hours, and the server must keep answering completions meanwhile, so the child gets fewer
threads than the machine has cores and a lower priority (``nice``), and dies with its
own checkpoint on ``DELETE`` (SIGTERM: it finishes the step and writes the checkpoint).
Progress comes back through the JSON-lines file the child appends to. When the run ends
well the adapter is attached to the engine under the job's name (``load``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_ds.errors import ApiError, adapter_error, bad_request
from jupyter_ds.finetune.data import CorpusError, build_corpus
from jupyter_ds.finetune.requests import FinetuneRequest
from jupyter_ds.paths import resolve_under_root

log = logging.getLogger(__name__)
PROGRESS_FILE = "progress.jsonl"
LOG_FILE = "finetune.log"
RESULT_FILE = "result.json"  # the child's JSON envelope


@dataclass
class Job:
    """One run's state, as ``GET jupyter-ds/v1/finetune`` shows it."""

    name: str
    path: str
    out: Path
    state: str = "starting"  # running | done | failed | cancelled
    started: float = field(default_factory=time.time)
    ended: float | None = None
    error: str | None = None
    returncode: int | None = None
    loaded: bool = False
    files: dict[str, int] = field(default_factory=dict)
    process: Any = field(default=None, repr=False)

    def progress(self) -> dict[str, Any] | None:
        """The child's last progress event (phase, tokens, loss, ETA, held-out figures)."""
        path = self.out / PROGRESS_FILE
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 8192))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    return event
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "state": self.state,
            "started": self.started,
            "ended": self.ended,
            "error": self.error,
            "returncode": self.returncode,
            "loaded": self.loaded,
            "files": self.files,
            "progress": self.progress(),
        }


class FinetuneJobs:
    """Starts, watches and cancels the server's fine-tuning job."""

    def __init__(self, root_dir: str, adapters_dir: str | Path, engine: Any,
                 threads: int | None = None, nice: int = 10) -> None:
        self.root_dir = root_dir
        self.adapters_dir = Path(adapters_dir)
        self.engine = engine
        cores = os.cpu_count() or 1
        # Leave a core to the server (completion p50 during training is in the README).
        self.threads = threads or max(1, cores - 1)
        self.nice = nice
        self.job: Job | None = None
        self._watch: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.state in ("starting", "running")

    async def start(self, req: FinetuneRequest) -> dict[str, Any]:
        if self.running:
            assert self.job is not None
            raise ApiError(409, "conflict", f"a fine-tuning job ({self.job.name!r}) is running; "
                                            f"cancel it (DELETE) or wait for it to end")
        if req.max_minutes is None and req.max_tokens is None:
            raise bad_request("give a budget: max_minutes or max_tokens", "max_minutes")
        folder = resolve_under_root(self.root_dir, req.path, "path", allow_root=True)
        if not folder.exists():
            raise ApiError(404, "not_found", f"no such folder: {req.path}", field="path")
        if not folder.is_dir():
            raise bad_request(f"{req.path} is not a folder", "path")
        out = self.adapters_dir / req.name
        if out.exists() and not req.resume:
            raise ApiError(409, "conflict", f"adapter {req.name!r} exists in {self.adapters_dir}; "
                                            f"resume it (resume: true) or choose another name",
                           field="name")
        loop = asyncio.get_running_loop()
        try:
            corpus = await loop.run_in_executor(None, build_corpus, str(folder))
        except CorpusError as exc:
            raise bad_request(str(exc), "path") from None
        out.mkdir(parents=True, exist_ok=True)
        job = Job(name=req.name, path=req.path, out=out,
                  files={"train": len(corpus.train), "heldout": len(corpus.heldout)})
        args = [sys.executable, "-m", "jupyter_ds.cli", "finetune", str(folder), "--out",
                str(out), "--progress-json", str(out / PROGRESS_FILE), "--threads",
                str(self.threads), "--nice", str(self.nice), "--seed", str(req.seed),
                "--rank", str(req.rank), "--alpha", str(2 * req.rank), "--targets",
                req.targets, "--spm-rate", str(req.spm_rate), "--log-seconds", "10"]
        if req.max_minutes is not None:
            args += ["--max-minutes", str(req.max_minutes)]
        if req.max_tokens is not None:
            args += ["--max-tokens", str(req.max_tokens)]
        if req.resume:
            args.append("--resume")
        model_path = getattr(self.engine, "model_path", None)
        if model_path:
            args += ["--model-path", str(model_path)]
        # The same base as the server's (its merged default adapter included), so that
        # the adapter's lineage matches and it can be attached when the job ends.
        base_adapter = getattr(self.engine, "default_adapter", None)
        if isinstance(base_adapter, str) and base_adapter:
            args += ["--base-adapter", base_adapter]
        with (out / LOG_FILE).open("ab") as logfile, (out / RESULT_FILE).open("wb") as result:
            job.process = await asyncio.create_subprocess_exec(
                *args, stdout=result, stderr=logfile,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        job.state = "running"
        self.job = job
        self._watch = asyncio.ensure_future(self._wait(job, req.load))
        log.info("jupyter-ds: fine-tuning %s on %s (pid %s)", job.name, folder, job.process.pid)
        return job.to_dict()

    async def _wait(self, job: Job, load: bool) -> None:
        code = await job.process.wait()
        job.returncode = code
        job.ended = time.time()
        if job.state == "cancelled":
            return
        if code != 0:
            job.state = "failed"
            job.error = _child_error(job.out) or f"exited with status {code}"
            return
        if load:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, self.engine.load_adapter, job.name,
                                           str(job.out))
                job.loaded = True
            except Exception as exc:
                api = adapter_error(exc)
                job.error = f"trained, but could not be loaded: {api.message}"
        job.state = "done"

    def status(self) -> dict[str, Any]:
        if self.job is None:
            raise ApiError(404, "not_found", "no fine-tuning job has run on this server")
        return self.job.to_dict()

    async def cancel(self) -> dict[str, Any]:
        if not self.running:
            raise ApiError(404, "not_found", "no fine-tuning job is running")
        job = self.job
        assert job is not None and job.process is not None
        job.state = "cancelled"
        with contextlib.suppress(ProcessLookupError):
            job.process.send_signal(signal.SIGTERM)  # it checkpoints, then exits
        try:
            await asyncio.wait_for(asyncio.shield(job.process.wait()), timeout=60)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                job.process.kill()
        return job.to_dict()

    async def close(self) -> None:
        """Server shutdown: the child stops with a checkpoint, resumable later."""
        if self.running:
            await self.cancel()


def _child_error(out: Path) -> str | None:
    """The child's error message: its envelope's message, else its last log line."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        envelope = json.loads((out / RESULT_FILE).read_text("utf-8"))
        return str(envelope["error"]["message"])
    try:
        lines = (out / LOG_FILE).read_text("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.strip() and not line.startswith(("  ", "\t")):
            return line.strip()[:500]
    return None
