"""LSP round trip overhead: the same completions through ``jupyter-ds lsp`` and the REST API.

Starts a real Jupyter server with jupyter-ds (``throughput.py``'s ``running_server``; the
embedded model unless ``--engine-class``/``--engine-option`` choose another engine, e.g.
``ds_engine.testing.ScriptedEngine`` for a quick run of the machinery) and ``jupyter-ds
lsp`` as a subprocess over stdio in client mode, pointed at it (``JUPYTER_DS_URL``,
``JUPYTER_DS_TOKEN``), driven by pygls' ``LanguageClient`` (the JSON-RPC client the tests
use, without pytest).

A typing replay through a real Python file this project did not write (a standard-library
module, copied into the server's root): the editor opens the file without the stretch
about to be typed, then each cursor is the next word end (``throughput.TypingCursor``'s
points), reached by an incremental ``textDocument/didChange`` that inserts the text typed
since the previous one. At each cursor the same completion goes three ways, one request
at a time: ``POST jupyter-ds/v1/complete`` with httpx and the body the language server
sends (prefix, suffix, language, path, max_tokens), ``textDocument/inlineCompletion`` and
``textDocument/completion``; the order is reversed at every other cursor, so that each
path goes first as often as the other. Per path: p50/p95 of the client's round trip, and
the server's own time (the audit log's ``latency_ms``, the request pipeline's time, and
the answer's ``data.latency_ms``, the completion service's, for the direct path). Per
pair: the LSP's round trip minus the direct one's (p50/p95), and the same net of each
request's server time. The texts are compared (the inline items', the completion items'
``textEdit`` less the word being typed, the API's ``items``) and so are the prompt tokens
(audit log): the same request.

Two phases, each on its own server (the local engine's caches are a server setting):

* ``model``: the engine's result and prefix caches off, so the model runs in full for
  every request and the three paths ask it for the same work (with the caches on,
  whichever path asked second would be served from the first one's work). On a CPU the
  model's time for the same request varies from run to run by far more than 15 ms, so
  the raw pairs cannot resolve the target; the pairs net of server time can.
* ``cached``: the caches on, and one untimed request first at each cursor, so that the
  three timed requests are result-cache hits: no model time to vary, and the raw pairs
  are the language server's cost (and the pipeline's, the same on both paths). The
  engine keeps no result that the completion service stopped early; a cursor where the
  cache did not answer all three (``GET models``' ``result_cache_hits``, read before and
  after) is left out of this phase's times, not of its text comparison.

The target (p50 overhead <= 15 ms) is judged on the model phase's net pairs and the
cached phase's raw pairs (met when both are within it); the model phase's raw pairs are
reported beside them.

    .venv/bin/python benchmarks/lsp_overhead.py [--cursors 40] [--module pickle]
        [--phases model,cached] [--max-tokens 16]
        [--engine-class C --engine-option K=V ...] [--out-dir DIR]

JSON goes to stdout and ``<out-dir>/lsp.json``, the tables to ``<out-dir>/lsp.md``;
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from lsprotocol import types as t
from pygls.lsp.client import LanguageClient
from results_io import publish
from throughput import (
    Server,
    ServerError,
    TypingCursor,
    engine_info,
    load_average,
    module_source,
    percentile,
    running_server,
)

ROOT = Path(__file__).resolve().parent.parent
NAME = "lsp"
DEFAULT_MODULE = "pickle"  # 65 KB: an editor document of ordinary size
LOCAL_ENGINE = "ds_engine.local.LocalEngine"
# The engine's caches, off in the model phase (see the module docstring).
NO_CACHES = {"result_cache_entries": 0, "prefix_cache_entries": 0}
TARGET_MS = 15.0
TARGET = f"LSP round trip overhead over the direct API: p50 <= {TARGET_MS:g} ms"
DIRECT, INLINE, COMPLETION = "direct", "lsp_inline", "lsp_completion"
PRIME = "prime"  # the cached phase's untimed request
MODEL, CACHED = "model", "cached"  # the phases
PATHS = (DIRECT, INLINE, COMPLETION)
LSP_PATHS = (INLINE, COMPLETION)
LABELS = {
    DIRECT: "direct `POST jupyter-ds/v1/complete`",
    INLINE: "LSP `textDocument/inlineCompletion`",
    COMPLETION: "LSP `textDocument/completion`",
}
# Line breaks other than "\n" that Python's splitlines (hence pygls) and LSP disagree on.
ODD_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def log(message: str) -> None:
    print(f"[lsp] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the replay


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def position_of(text: str, offset: int) -> t.Position:
    """The LSP position (UTF-16 columns) of ``offset`` in ``text`` ("\\n" line breaks)."""
    before = text[:offset]
    line = before.count("\n")
    return t.Position(line, utf16_units(before[before.rfind("\n") + 1:]))


def word_before(prefix: str) -> str:
    """The identifier being typed at the end of ``prefix``."""
    start = len(prefix)
    while start > 0 and (prefix[start - 1].isalnum() or prefix[start - 1] == "_"):
        start -= 1
    return prefix[start:]


@dataclass
class Replay:
    """Someone typing ``source[offsets[0]:offsets[-1]]`` into a file that holds the rest.

    At cursor ``k`` the document is ``source[:offsets[k]] + source[offsets[-1]:]`` and the
    cursor is at ``offsets[k]``: the file is opened as at cursor 0, and each later cursor
    is reached by inserting ``source[offsets[k - 1]:offsets[k]]`` at the previous cursor.
    """

    path: str  # the file's name, relative to the server's root
    source: str
    offsets: list[int]

    @classmethod
    def from_text(cls, path: str, source: str, count: int) -> Replay:
        """``count`` consecutive word ends from the file's first ``def``/``class`` after
        its head on (``throughput.TypingCursor``'s points)."""
        bad = sorted({repr(c) for c in source if c in ODD_BREAKS})
        if bad:
            raise ValueError(f"{path} has line breaks other than \\n ({', '.join(bad)}): "
                             "pick another file")
        points = TypingCursor(path, source).points
        if len(points) < count:
            raise ValueError(f"{path}: {len(points)} word ends, {count} needed")
        return cls(path, source, points[:count])

    @classmethod
    def from_module(cls, name: str, count: int) -> Replay:
        path, text = module_source(name)
        return cls.from_text(path, text, count)

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def tail(self) -> str:
        return self.source[self.offsets[-1]:]

    def document(self, k: int) -> str:
        return self.source[:self.offsets[k]] + self.tail

    def cursor(self, k: int) -> t.Position:
        return position_of(self.source, self.offsets[k])

    def change(self, k: int) -> t.TextDocumentContentChangePartial:
        """The edit from the document at cursor ``k - 1`` to the one at ``k``."""
        at = position_of(self.source, self.offsets[k - 1])
        return t.TextDocumentContentChangePartial(
            range=t.Range(at, at), text=self.source[self.offsets[k - 1]:self.offsets[k]])

    def body(self, k: int, max_tokens: int | None) -> dict[str, Any]:
        """The ``complete`` body that ``jupyter-ds lsp`` sends at cursor ``k``."""
        body: dict[str, Any] = {"prefix": self.source[:self.offsets[k]], "suffix": self.tail,
                                "language": "python", "path": self.path}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return body


# --------------------------------------------------------------------------- the requests


@dataclass
class Sample:
    """One request on one path: the client's round trip, the texts it got, its id."""

    path: str
    ms: float | None = None
    ok: bool = False
    texts: list[str] = field(default_factory=list)
    request_id: str | None = None
    error: str | None = None
    model_ms: float | None = None  # data.latency_ms (the direct path only)
    server_ms: float | None = None  # the audit log's latency_ms
    prompt_tokens: int | None = None  # the audit log's tokens_in

    def as_dict(self) -> dict[str, Any]:
        return {"ms": self.ms, "ok": self.ok, "texts": self.texts,
                "request_id": self.request_id, "error": self.error,
                "model_ms": self.model_ms, "server_ms": self.server_ms,
                "prompt_tokens": self.prompt_tokens}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def direct_complete(http: httpx.AsyncClient, server: Server, body: dict[str, Any],
                          timeout: float) -> Sample:
    """``POST complete`` as the language server sends it; never raises."""
    sample = Sample(DIRECT)
    started = time.perf_counter()
    try:
        response = await http.post(server.url("complete"), json=body, headers=server.headers,
                                   timeout=timeout)
        envelope = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:300]
        return sample
    finally:
        sample.ms = _ms(time.perf_counter() - started)
    data = envelope.get("data") if isinstance(envelope, dict) else None
    if response.status_code != 200 or not isinstance(data, dict):
        error = (envelope.get("error") or {}) if isinstance(envelope, dict) else {}
        sample.error = f"HTTP {response.status_code} {error.get('code', '')}".strip()
        return sample
    sample.ok = True
    sample.texts = [i.get("insertText") or "" for i in data.get("items") or []
                    if i.get("insertText")]
    sample.request_id = data.get("request_id") or response.headers.get("X-Request-Id")
    sample.model_ms = data.get("latency_ms")
    return sample


def _inline_text(item: t.InlineCompletionItem) -> str:
    text = item.insert_text
    return text if isinstance(text, str) else text.value


def _item_request_id(argument: Any) -> str | None:
    if isinstance(argument, dict) and isinstance(argument.get("requestId"), str):
        return argument["requestId"]
    return None


async def lsp_inline(client: LanguageClient, uri: str, position: t.Position,
                     timeout: float) -> Sample:
    sample = Sample(INLINE)
    params = t.InlineCompletionParams(
        context=t.InlineCompletionContext(t.InlineCompletionTriggerKind.Automatic),
        text_document=t.TextDocumentIdentifier(uri), position=position)
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(
            client.text_document_inline_completion_async(params), timeout)
    except Exception as exc:  # a JSON-RPC error, a timeout, the process gone
        sample.ms = _ms(time.perf_counter() - started)
        sample.error = f"{type(exc).__name__}: {exc}"[:300]
        return sample
    sample.ms = _ms(time.perf_counter() - started)
    if result is None:  # what the server answers when its call failed (told, not raised)
        sample.error = "no answer (null): the server's call failed"
        return sample
    items = result.items if isinstance(result, t.InlineCompletionList) else list(result)
    sample.ok = True
    sample.texts = [_inline_text(i) for i in items]
    for item in items:
        if item.command and item.command.arguments:
            sample.request_id = _item_request_id(item.command.arguments[0])
            break
    return sample


async def lsp_completion(client: LanguageClient, uri: str, position: t.Position, word: str,
                         timeout: float) -> Sample:
    """``textDocument/completion``; the texts are the items' ``textEdit`` less ``word``
    (the edit replaces the word being typed with word + suggestion). An item that does
    not start with the word, or has no ``textEdit``, keeps its whole text: it cannot
    match, and counts as a mismatch."""
    sample = Sample(COMPLETION)
    params = t.CompletionParams(t.TextDocumentIdentifier(uri), position,
                                t.CompletionContext(t.CompletionTriggerKind.Invoked))
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(client.text_document_completion_async(params),
                                        timeout)
    except Exception as exc:
        sample.ms = _ms(time.perf_counter() - started)
        sample.error = f"{type(exc).__name__}: {exc}"[:300]
        return sample
    sample.ms = _ms(time.perf_counter() - started)
    if result is None:
        sample.error = "no answer (null)"
        return sample
    items = result.items if isinstance(result, t.CompletionList) else list(result)
    sample.ok = True
    for item in items:
        edit = item.text_edit
        new_text = edit.new_text if isinstance(edit, t.TextEdit) else (item.insert_text or "")
        ok_edit = isinstance(edit, t.TextEdit) and new_text.startswith(word)
        sample.texts.append(new_text[len(word):] if ok_edit else f"<edit {new_text!r}>")
        if sample.request_id is None:
            sample.request_id = _item_request_id(item.data)
    return sample


# --------------------------------------------------------------------------- the LSP


def client_capabilities() -> t.ClientCapabilities:
    """An editor with incremental sync, completion (plain text) and inline completion."""
    return t.ClientCapabilities(
        text_document=t.TextDocumentClientCapabilities(
            synchronization=t.TextDocumentSyncClientCapabilities(dynamic_registration=False),
            completion=t.CompletionClientCapabilities(
                completion_item=t.ClientCompletionItemOptions(snippet_support=False)),
            inline_completion=t.InlineCompletionClientCapabilities()),
        window=t.WindowClientCapabilities(work_done_progress=False))


def lsp_command(max_tokens: int | None, log_file: Path) -> list[str]:
    """``jupyter-ds lsp`` (client mode) from this venv; its log in a file (the client
    does not read the process's standard error: a full pipe would stall it)."""
    script = shutil.which("jupyter-ds", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "jupyter_ds.cli"]
    cmd += ["lsp", "--log-file", str(log_file), "--log-level", "WARNING"]
    if max_tokens is not None:
        cmd += ["--max-tokens", str(max_tokens)]
    return cmd


@contextlib.asynccontextmanager
async def lsp_session(server: Server, cmd: list[str], root: Path, timeout: float = 30.0):
    """A started and initialized ``jupyter-ds lsp`` talking to ``server``; ``(client,
    messages)``, where ``messages`` collects its ``window/showMessage`` and
    ``window/logMessage`` texts. Shut down after (killed if it does not exit)."""
    env = dict(os.environ)
    env["JUPYTER_DS_URL"] = server.base_url
    env["JUPYTER_DS_TOKEN"] = server.token
    env["JUPYTER_RUNTIME_DIR"] = str(server.root_dir.parent / "runtime")  # its runtime file
    env.pop("JUPYTER_TOKEN", None)
    client = LanguageClient("jupyter-ds-bench", "1")
    messages: list[str] = []

    @client.feature(t.WINDOW_SHOW_MESSAGE)
    def _show(params: t.ShowMessageParams) -> None:
        messages.append(f"show: {params.message}")

    @client.feature(t.WINDOW_LOG_MESSAGE)
    def _log(params: t.LogMessageParams) -> None:
        messages.append(f"log: {params.message}")

    await client.start_io(*cmd, env=env, cwd=str(root))
    process = client._server
    try:
        await asyncio.wait_for(client.initialize_async(t.InitializeParams(
            capabilities=client_capabilities(), root_uri=root.as_uri(),
            process_id=os.getpid())), timeout)
        client.initialized(t.InitializedParams())
        yield client, messages
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_async(None), 10)
            client.exit(None)
    finally:
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), 5)
            except asyncio.TimeoutError:
                process.kill()
                await asyncio.wait_for(process.wait(), 5)
        await asyncio.wait_for(client.stop(), 10)


# --------------------------------------------------------------------------- the run


async def replay_cursors(client: LanguageClient, http: httpx.AsyncClient, server: Server,
                         replay: Replay, uri: str, measured_from: int,
                         args: argparse.Namespace, prime: bool = False
                         ) -> list[dict[str, Any]]:
    """Open the document, then at every cursor the same completion on the three paths
    (rows of cursors before ``measured_from`` are marked ``warmup``). ``prime``: one
    direct request first, not timed, so that the three timed ones find its result in the
    engine's result cache."""
    client.text_document_did_open(t.DidOpenTextDocumentParams(t.TextDocumentItem(
        uri=uri, language_id="python", version=1, text=replay.document(0))))
    rows = []
    for k in range(len(replay)):
        if k:
            client.text_document_did_change(t.DidChangeTextDocumentParams(
                t.VersionedTextDocumentIdentifier(uri=uri, version=k + 1), [replay.change(k)]))
        position = replay.cursor(k)
        body = replay.body(k, args.max_tokens)
        word = word_before(body["prefix"])
        order = PATHS if k % 2 == 0 else PATHS[::-1]
        samples: dict[str, Sample] = {}
        hits_before = None
        if prime:
            samples[PRIME] = await direct_complete(http, server, body, args.request_timeout)
            hits_before = await result_cache_hits(server)
        for name in order:
            if args.pause_ms:  # a typist's pause: the last reply's telemetry settles
                await asyncio.sleep(args.pause_ms / 1000)
            if name == DIRECT:
                samples[name] = await direct_complete(http, server, body, args.request_timeout)
            elif name == INLINE:
                samples[name] = await lsp_inline(client, uri, position, args.request_timeout)
            else:
                samples[name] = await lsp_completion(client, uri, position, word,
                                                     args.request_timeout)
        row = {"cursor": k, "line": position.line + 1, "character": position.character,
               "word": word, "order": list(order), "warmup": k < measured_from,
               # the requests in the order they reached the server (the audit log's)
               "sent": ([PRIME] if prime else []) + list(order), **samples}
        if prime:  # how many of the timed requests the result cache answered (None: unknown)
            hits_after = await result_cache_hits(server)
            row["cache_hits"] = (None if hits_before is None or hits_after is None
                                 else hits_after - hits_before)
        rows.append(row)
        if k >= measured_from:
            d, i, c = (samples[n] for n in PATHS)
            log(f"cursor {k - measured_from + 1}/{len(replay) - measured_from} "
                f"(line {position.line + 1}): direct {d.ms} ms, inline {i.ms} ms, "
                f"completion {c.ms} ms" + ("" if d.texts == i.texts == c.texts
                                           else " (texts differ)"))
    return rows


async def result_cache_hits(server: Server) -> int | None:
    """The engine's result-cache hits so far (``GET models``); None when it has none."""
    value = (await engine_info(server)).get("result_cache_hits")
    return value if isinstance(value, int) else None


def audit_records(path: Path) -> list[dict[str, Any]]:
    """The server's ``complete`` audit records, in the order written (decrypted with the
    key it generated next to the log); [] when there is no log."""
    from jupyter_ds.audit import find_keyring
    from jupyter_ds.audit.errors import AuditLogMissingError
    from jupyter_ds.audit.report import read_records

    try:
        return [r for r in read_records(path, find_keyring(path))
                if r.get("endpoint") == "complete"]
    except AuditLogMissingError:
        return []


def attach_server_times(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """Give each sample its request's audit record (server time, prompt tokens).

    Requests go one at a time, so the records are in the order they were sent; that is
    used when the counts agree and every request id known on this side (an LSP answer
    without items carries none) is the record's. Otherwise by request id alone. Returns
    how they were matched."""
    sent = [row[name] for row in rows for name in row["sent"]]
    by_order = len(records) == len(sent) and all(
        s.request_id is None or s.request_id == r.get("request_id")
        for s, r in zip(sent, records, strict=False))
    by_id = {r.get("request_id"): r for r in records if r.get("request_id")}
    for i, sample in enumerate(sent):
        record = records[i] if by_order else by_id.get(sample.request_id)
        if record is None:
            continue
        latency = record.get("latency_ms")
        sample.server_ms = None if latency is None else round(float(latency), 2)
        tokens = record.get("tokens_in")
        sample.prompt_tokens = tokens if isinstance(tokens, int) else None
    return "order" if by_order else "request id"


# --------------------------------------------------------------------------- the figures


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def spread(values: list[float]) -> dict[str, Any]:
    """n, p50, p95 (nearest rank), mean, min, max; rounded to 0.1 ms."""
    return {"n": len(values), "p50_ms": _r(percentile(values, 50)),
            "p95_ms": _r(percentile(values, 95)),
            "mean_ms": _r(statistics.fmean(values)) if values else None,
            "min_ms": _r(min(values)) if values else None,
            "max_ms": _r(max(values)) if values else None}


def path_stats(samples: list[Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    out = {"requests": len(samples), "ok": len(ok), "errors": len(samples) - len(ok),
           **spread([s.ms for s in ok if s.ms is not None])}
    server = [s.server_ms for s in ok if s.server_ms is not None]
    out["server_p50_ms"] = _r(percentile(server, 50))
    out["server_p95_ms"] = _r(percentile(server, 95))
    model = [s.model_ms for s in ok if s.model_ms is not None]
    out["model_p50_ms"] = _r(percentile(model, 50))
    out["model_p95_ms"] = _r(percentile(model, 95))
    out["error_examples"] = sorted({s.error for s in samples if s.error})[:5]
    return out


def overhead_stats(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """``name`` minus direct, pair by pair; and net of each request's server time."""
    paired = [row for row in rows if row[name].ok and row[DIRECT].ok]
    diffs = [row[name].ms - row[DIRECT].ms for row in paired]
    timed = [(row[name], row[DIRECT]) for row in paired
             if row[name].server_ms is not None and row[DIRECT].server_ms is not None]
    net = [(a.ms - a.server_ms) - (b.ms - b.server_ms) for a, b in timed]
    server = [a.server_ms - b.server_ms for a, b in timed]
    lsp_first = [row[name].ms - row[DIRECT].ms for row in paired
                 if row["order"].index(name) < row["order"].index(DIRECT)]
    direct_first = [row[name].ms - row[DIRECT].ms for row in paired
                    if row["order"].index(name) > row["order"].index(DIRECT)]
    net_spread = spread(net)
    return {
        "pairs": len(paired), **spread(diffs),
        "net_n": net_spread["n"], "net_p50_ms": net_spread["p50_ms"],
        "net_p95_ms": net_spread["p95_ms"], "net_mean_ms": net_spread["mean_ms"],
        "server_diff_p50_ms": _r(percentile(server, 50)),
        "server_absdiff_p95_ms": _r(percentile([abs(x) for x in server], 95)),
        # Whether going first or second matters (it should not, with the caches off).
        "p50_ms_when_lsp_first": _r(percentile(lsp_first, 50)),
        "p50_ms_when_direct_first": _r(percentile(direct_first, 50)),
    }


def text_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How many cursors got the same texts on every path (and each LSP path against the
    direct one), how many of them non-empty, and whether the prompts were the same."""
    compared = [row for row in rows if all(row[n].ok for n in PATHS)]
    same = {n: sum(1 for row in compared if row[n].texts == row[DIRECT].texts)
            for n in LSP_PATHS}
    identical = [row for row in compared
                 if row[INLINE].texts == row[DIRECT].texts == row[COMPLETION].texts]
    tokens = [row for row in compared if all(row[n].prompt_tokens is not None for n in PATHS)]
    mismatches = [{"cursor": row["cursor"], "word": row["word"],
                   **{n: row[n].texts for n in PATHS}}
                  for row in compared
                  if not row[INLINE].texts == row[DIRECT].texts == row[COMPLETION].texts]
    return {
        "compared": len(compared),
        "identical": len(identical),
        "identical_non_empty": sum(1 for row in identical if row[DIRECT].texts),
        "mismatches": len(compared) - len(identical),
        "inline_same_as_direct": same[INLINE],
        "completion_same_as_direct": same[COMPLETION],
        "prompt_tokens_compared": len(tokens),
        "prompt_tokens_same": sum(1 for row in tokens
                                  if len({row[n].prompt_tokens for n in PATHS}) == 1),
        "mismatch_examples": mismatches[:5],
    }


def _within(values: dict[str, float | None]) -> bool | None:
    if not values or None in values.values():
        return None
    return all(v <= TARGET_MS for v in values.values())


def target_verdict(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The target, judged on the LSP's own share of the round trip, measured two ways
    that need no assumption about the model's time:

    * ``model`` phase: the paired differences net of each request's server time (the
      audit log's), which takes out the model's run-to-run noise (on a CPU it is larger
      than the target by orders of magnitude, so the raw pairs cannot resolve 15 ms);
    * ``cached`` phase: the raw paired differences, every timed request a result-cache
      hit (no model time to vary).

    Met when every figure measured is within the target for both LSP methods; the raw
    pairs of the ``model`` phase are reported beside it."""
    model, cached = phases.get(MODEL, {}), phases.get(CACHED, {})
    judged: dict[str, dict[str, float | None]] = {}
    if model:
        net = {n: model["overhead"][n]["net_p50_ms"] for n in LSP_PATHS}
        if None not in net.values():
            judged["model phase, net of server time"] = net
    if cached:
        judged["cached phase, raw pairs"] = {n: cached["overhead"][n]["p50_ms"]
                                             for n in LSP_PATHS}
    if not judged and model:  # no audit log to read: the raw pairs alone
        judged["model phase, raw pairs"] = {n: model["overhead"][n]["p50_ms"]
                                            for n in LSP_PATHS}
    verdicts = [_within(v) for v in judged.values()]
    met = None if not verdicts or None in verdicts else all(verdicts)
    raw = ({n: model["overhead"][n]["p50_ms"] for n in LSP_PATHS} if model else {})
    return {"target": TARGET, "threshold_ms": TARGET_MS, "judged_p50_ms": judged,
            "met": met, "model_raw_p50_ms": raw, "model_raw_met": _within(raw)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one phase. In the cached phase, only the cursors whose three timed
    requests were all result-cache hits count for the times (the engine keeps no result
    that the completion service stopped early, so such a cursor runs the model again on
    every path); the texts count at every cursor."""
    measured = [row for row in rows if not row["warmup"]]
    timed = [row for row in measured if row.get("cache_hits") in (None, len(PATHS))]
    paths = {n: path_stats([row[n] for row in timed]) for n in PATHS}
    overhead = {n: overhead_stats(timed, n) for n in LSP_PATHS}
    # The very first request of each path (a warm-up one when --warmup > 0): what the
    # first completion after the editor starts waits, first-call costs included.
    first = {n: _r(rows[0][n].ms) for n in PATHS} if rows else {}
    out = {"paths": paths, "overhead": overhead, "texts": text_stats(measured),
           "first_request_ms": first}
    primes = [row[PRIME] for row in measured if PRIME in row]
    if primes:
        out["prime"] = path_stats(primes)
        known = [row for row in measured if row.get("cache_hits") is not None]
        out["answered_from_cache"] = {
            "cursors": len(measured), "known": len(known),
            "all_three": sum(1 for row in known if row["cache_hits"] == len(PATHS)),
            "timed_cursors": len(timed)}
    return out


# --------------------------------------------------------------------------- the report


def cell(value: Any, suffix: str = "") -> str:
    return "–" if value is None else f"{value}{suffix}"


def signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version()}


def model_label(report: dict[str, Any]) -> str:
    m = report.get("model") or {}
    p = report["params"]
    name = m.get("name") or p.get("model_path") or "embedded model"
    if p.get("engine_class") and p["engine_class"] != LOCAL_ENGINE:
        return f"`{p['engine_class']}` ({name})"
    bits = [b for b in (m.get("device"), m.get("dtype"), m.get("quantization")) if b]
    return f"{name}" + (f" ({', '.join(str(b) for b in bits)})" if bits else "")


PHASE_TITLES = {
    MODEL: "the model runs for every request (the engine's result and prefix caches off)",
    CACHED: "every timed request answered from the engine's result cache (an untimed "
            "request first at each cursor)",
}


def phase_markdown(name: str, ph: dict[str, Any], warmup: int) -> list[str]:
    lines = [
        f"## Phase `{name}`: {PHASE_TITLES.get(name, name)}",
        "",
        "| path | requests | errors | p50 ms | p95 ms | mean ms | server p50 ms "
        "| server p95 ms | model p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path in PATHS:
        s = ph["paths"][path]
        lines.append(f"| {LABELS[path]} | {s['requests']} | {s['errors']} | {cell(s['p50_ms'])} "
                     f"| {cell(s['p95_ms'])} | {cell(s['mean_ms'])} | {cell(s['server_p50_ms'])} "
                     f"| {cell(s['server_p95_ms'])} | {cell(s['model_p50_ms'])} |")
    lines += [
        "",
        "| LSP − direct, paired | pairs | p50 ms | p95 ms | mean ms | net of server time "
        "p50 ms | net p95 ms | server time p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path in LSP_PATHS:
        o = ph["overhead"][path]
        lines.append(f"| {LABELS[path]} | {o['pairs']} | {signed(o['p50_ms'])} "
                     f"| {signed(o['p95_ms'])} | {signed(o['mean_ms'])} "
                     f"| {signed(o['net_p50_ms'])} | {signed(o['net_p95_ms'])} "
                     f"| {signed(o['server_diff_p50_ms'])} |")
    tx = ph["texts"]
    lines += [
        "",
        f"Texts: {tx['identical']} of {tx['compared']} cursors identical on the three paths "
        f"({tx['identical_non_empty']} of them non-empty), {tx['mismatches']} mismatches "
        f"(inline = direct at {tx['inline_same_as_direct']}, completion = direct at "
        f"{tx['completion_same_as_direct']}); prompt tokens the same on the three paths at "
        f"{tx['prompt_tokens_same']} of {tx['prompt_tokens_compared']}.",
    ]
    first = ph.get("first_request_ms") or {}
    if first and warmup:
        lines += ["", "First request of each path after the start (a warm-up cursor, not in "
                  "the tables): " + ", ".join(f"{LABELS[n]} {cell(first.get(n))} ms"
                                              for n in PATHS) + "."]
    if ph.get("prime"):
        fc = ph.get("answered_from_cache") or {}
        lines += ["", f"The untimed requests that filled the result cache: p50 "
                  f"{cell(ph['prime']['p50_ms'])} ms, p95 {cell(ph['prime']['p95_ms'])} ms. "
                  f"The three timed requests were all answered from it at "
                  f"{cell(fc.get('all_three'))} of {cell(fc.get('known'))} cursors (the engine "
                  f"keeps no result that the completion service stopped early); the times "
                  f"above are those of the {cell(fc.get('timed_cursors'))} cursors counted "
                  f"(all of them when the engine reports no cache hits), the texts those of "
                  f"all {cell(fc.get('cursors'))}."]
    if ph.get("lsp_messages"):
        lines += ["", "Messages from the language server: "
                  + "; ".join(f"`{m[:120]}`" for m in ph["lsp_messages"][:5]) + "."]
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    p, mc = report["params"], report["machine"]
    lines = [
        "# LSP round trip overhead over the direct API",
        "",
        f"{model_label(report)}; {mc['cpus']} CPUs ({mc['cpu']}), 1-minute load average "
        f"before and after: {p['load_average_1m']}; {report['run_seconds']} s in all. Typing "
        f"replay through stdlib `{p['file']}` ({p['document_chars']:,} characters open in the "
        f"editor), {p['cursors']} word ends (after {p['warmup']} for warm-up), at each the "
        f"same completion (max_tokens {cell(p['max_tokens'])}, greedy) one request at a time "
        f"through `POST complete` (httpx) and through `jupyter-ds lsp` (stdio, client mode, "
        f"pygls' client, incremental `didChange` to the cursor), the order reversed at every "
        f"other cursor, {p['pause_ms']:g} ms apart. *Server*: the audit log's time of the "
        f"request in the server's pipeline; *model*: the answer's `data.latency_ms` (the "
        f"completion service; only the direct path sees it); *net of server time*: each "
        f"request's round trip less its server time, LSP − direct.",
        "",
    ]
    for name, ph in report["phases"].items():
        lines += phase_markdown(name, ph, p["warmup"])
    tg = report["target"]
    verdict = {True: "**met**", False: "**not met**", None: "not judged"}[tg["met"]]
    judged = "; ".join(f"{how}: inline {signed(v.get(INLINE))} ms, completion "
                       f"{signed(v.get(COMPLETION))} ms"
                       for how, v in tg["judged_p50_ms"].items())
    lines += [f"Target: {TARGET}: {verdict} ({judged}).", "", report["conclusions"]]
    return "\n".join(lines) + "\n"


def conclusions(report: dict[str, Any]) -> str:
    """A short paragraph with this run's figures."""
    phases, tg = report["phases"], report["target"]
    parts = []
    model, cached = phases.get(MODEL), phases.get(CACHED)
    if model:
        d = model["paths"][DIRECT]
        oi, oc = model["overhead"][INLINE], model["overhead"][COMPLETION]
        text = (
            f"With the model running for every request (direct round trip p50 "
            f"{cell(d['p50_ms'])} ms, p95 {cell(d['p95_ms'])} ms), the language server's "
            f"share of the round trip, net of each request's server time, was "
            f"{signed(oi['net_p50_ms'])} ms p50 ({signed(oi['net_p95_ms'])} ms p95) for "
            f"inline completion and {signed(oc['net_p50_ms'])} ms "
            f"({signed(oc['net_p95_ms'])} ms) for the completion fallback over "
            f"{oi['pairs']} paired cursors; the raw pairs gave {signed(oi['p50_ms'])} and "
            f"{signed(oc['p50_ms'])} ms p50 (p95 {signed(oi['p95_ms'])} and "
            f"{signed(oc['p95_ms'])} ms), while the server's own time for the same request "
            f"differed between the two requests of a pair by {signed(oi['server_diff_p50_ms'])}"
            f" ms at the median inline pair and by up to {cell(oi['server_absdiff_p95_ms'])} ms "
            f"either way (p95): the model's run-to-run noise, which the net figures take out")
        srv = [model["paths"][n]["server_p50_ms"] for n in PATHS]
        if None not in srv:
            text += (f" (server time p50 {srv[0]} / {srv[1]} / {srv[2]} ms on the direct, "
                     f"inline and completion paths: the same work)")
        parts.append(text)
    if cached:
        ci, cc = cached["overhead"][INLINE], cached["overhead"][COMPLETION]
        parts.append(
            f"with every timed request a result-cache hit ("
            f"{cell((cached.get('answered_from_cache') or {}).get('timed_cursors'))} cursors; "
            f"direct p50 {cell(cached['paths'][DIRECT]['p50_ms'])} ms), the raw pairs gave "
            f"{signed(ci['p50_ms'])} ms p50 ({signed(ci['p95_ms'])} ms p95) for inline "
            f"completion and {signed(cc['p50_ms'])} ms ({signed(cc['p95_ms'])} ms) for "
            f"completion")
    verdict = {True: "is met", False: "is not met", None: "could not be judged"}[tg["met"]]
    text = "; ".join(parts)
    text = (text[0].upper() + text[1:] + ". ") if text else ""
    text += f"The target ({TARGET}) {verdict}"
    if tg.get("model_raw_met") is False and tg["met"]:
        text += (" on the LSP's own share; the raw pairs of the model phase, which carry the "
                 "model's noise, do not resolve it")
    text += "."
    texts = [(name, ph["texts"]) for name, ph in phases.items()]
    text += " Texts identical on the three paths: " + ", ".join(
        f"{tx['identical']} of {tx['compared']} cursors ({tx['mismatches']} mismatches) in the "
        f"{name} phase" for name, tx in texts) + "; prompt tokens the same at " + ", ".join(
        f"{tx['prompt_tokens_same']} of {tx['prompt_tokens_compared']}" for _, tx in texts) + "."
    first = (model or cached or {}).get("first_request_ms") or {}
    if report["params"]["warmup"] and first.get(INLINE) is not None:
        text += (f" The first inline completion after the language server started took "
                 f"{first[INLINE]:.0f} ms against {cell(first.get(DIRECT))} ms for the first "
                 f"direct request (first-call costs; a warm-up cursor, not in the figures).")
    errors = [f"{name} {path} {ph['paths'][path]['errors']}" for name, ph in phases.items()
              for path in PATHS if ph["paths"][path]["errors"]]
    if errors:
        text += " Errors: " + ", ".join(errors) + "."
    return text


# --------------------------------------------------------------------------- main


def engine_options(args: argparse.Namespace, phase: str = MODEL) -> dict[str, Any]:
    """``--engine-option`` pairs (JSON values where they parse), over the phase's cache
    settings for the local engine (off in the model phase, its defaults when cached)."""
    options: dict[str, Any] = {}
    if (args.engine_class or LOCAL_ENGINE) == LOCAL_ENGINE and phase == MODEL:
        options.update(NO_CACHES)
    for pair in args.engine_option:
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def server_args(args: argparse.Namespace, audit_path: Path, phase: str = MODEL) -> list[str]:
    extra = [f"--JupyterDsApp.audit_log_path={audit_path}"]
    if args.engine_class:
        extra.append(f"--JupyterDsApp.engine_class={args.engine_class}")
    options = engine_options(args, phase)
    if options:
        extra.append(f"--JupyterDsApp.engine_options={options!r}")
    if args.model_path:
        extra.append(f"--JupyterDsApp.model_path={args.model_path}")
    return extra + list(args.server_arg)


@dataclass
class Measured:
    """What a replay against one server gave."""

    replay: Replay
    rows: list[dict[str, Any]]
    messages: list[str]  # the language server's showMessage / logMessage texts
    matched_by: str  # how the audit records were matched to the requests


async def replay_through(server: Server, args: argparse.Namespace, audit_path: Path,
                         work: Path, phase: str = MODEL) -> Measured:
    """Against a ready ``server`` whose audit log is ``audit_path``: put the file in its
    root, start ``jupyter-ds lsp`` (its log in ``work``), replay (priming each cursor in
    the cached phase), and match this replay's audit records to its requests."""
    replay = Replay.from_module(args.module, args.warmup + args.cursors)
    document = server.root_dir / replay.path
    document.write_text(replay.source, encoding="utf-8")
    before = len(audit_records(audit_path))  # records of earlier replays on this server
    cmd = lsp_command(args.max_tokens, work / f"lsp-{phase}.log")
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.request_timeout,
                                                       connect=5.0)) as http, \
            lsp_session(server, cmd, server.root_dir) as (client, messages):
        log(f"[{phase}] jupyter-ds lsp pid {client._server.pid}: {args.warmup} warm-up "
            f"cursors, then {args.cursors} through {replay.path}")
        rows = await replay_cursors(client, http, server, replay, document.as_uri(),
                                    args.warmup, args, prime=phase == CACHED)
    records: list[dict[str, Any]] = []
    sent = sum(len(row["sent"]) for row in rows)
    for _ in range(20):  # the last request's record is written as it ends: bounded wait
        records = audit_records(audit_path)[before:]
        if len(records) >= sent:
            break
        await asyncio.sleep(0.1)
    return Measured(replay, rows, messages, attach_server_times(rows, records))


def phase_report(measured: Measured, server_arguments: list[str],
                 seconds: float) -> dict[str, Any]:
    rows = measured.rows
    return {
        "server_args": server_arguments,
        **summarize(rows),
        "server_times_matched_by": measured.matched_by,
        "lsp_messages": measured.messages[:20],
        "seconds": round(seconds, 1),
        "rows": [{**{k: v for k, v in row.items() if not isinstance(v, Sample)},
                  **{n: v.as_dict() for n, v in row.items() if isinstance(v, Sample)}}
                 for row in rows],
    }


def build_report(args: argparse.Namespace, phases: dict[str, dict[str, Any]],
                 info: dict[str, Any], load_1m: list[float | None], seconds: float,
                 replay: Replay) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": NAME,
        "params": {
            "cursors": args.cursors, "warmup": args.warmup, "module": args.module,
            "file": replay.path, "document_chars": len(replay.source),
            "max_tokens": args.max_tokens, "pause_ms": args.pause_ms,
            "phases": list(phases), "engine_class": args.engine_class or LOCAL_ENGINE,
            "engine_options": {name: engine_options(args, name) for name in phases},
            "model_path": args.model_path or None, "load_average_1m": load_1m,
        },
        "machine": machine(),
        "model": {k: info.get(k) for k in ("name", "kind", "device", "dtype", "quantization",
                                           "max_batch_size", "template")},
        "phases": phases,
        "target": target_verdict(phases),
        "run_seconds": round(seconds, 1),
        "timestamp": int(time.time()),
    }
    report["conclusions"] = conclusions(report)
    return report


async def run_phase(args: argparse.Namespace, phase: str, work: Path
                    ) -> tuple[dict[str, Any], dict[str, Any], Replay]:
    """One server for ``phase``, the replay through it: (phase report, engine info, the
    replay)."""
    started = time.monotonic()
    audit_path = work / f"audit-{phase}.log"
    extra = server_args(args, audit_path, phase)
    log(f"[{phase}] starting the server: {' '.join(extra[1:])}")
    async with running_server(extra, args.ready_timeout) as (server, health):
        info = await engine_info(server)
        log(f"[{phase}] ready in {time.monotonic() - started:.1f} s: model "
            f"{health.get('model')} on {info.get('device')}")
        measured = await replay_through(server, args, audit_path, work, phase)
    return (phase_report(measured, extra[1:], time.monotonic() - started), info,
            measured.replay)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Each phase's server, replay and figures; the report."""
    started = time.monotonic()
    load_before = load_average()
    replay = Replay.from_module(args.module, args.warmup + args.cursors)  # fails early
    work = Path(tempfile.mkdtemp(prefix="jupyter-ds-bench-lsp-"))
    phases: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {}
    try:
        for phase in args.phases:
            phases[phase], info, replay = await run_phase(args, phase, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return build_report(args, phases, info, [load_before, load_average()],
                        time.monotonic() - started, replay)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cursors", type=int, default=40,
                        help="measured cursors (word ends; default 40)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="cursors before them, not measured (default 2)")
    parser.add_argument("--module", default=DEFAULT_MODULE,
                        help=f"the standard-library module typed through ({DEFAULT_MODULE})")
    parser.add_argument("--max-tokens", type=int, default=16,
                        help="tokens per completion, given to `jupyter-ds lsp --max-tokens` "
                        "and in the direct body (default 16; 0: the server's default, "
                        "sent by neither)")
    parser.add_argument("--phases", default="",
                        help=f"comma-separated, of {MODEL} (the model runs for every request) "
                        f"and {CACHED} (every timed request a result-cache hit); default both "
                        f"for the local engine, {MODEL} for another engine class")
    parser.add_argument("--pause-ms", type=float, default=100.0,
                        help="pause before each request (default 100)")
    parser.add_argument("--engine-class", default="",
                        help=f"JupyterDsApp.engine_class (default {LOCAL_ENGINE}, the "
                        "embedded model); e.g. ds_engine.testing.ScriptedEngine")
    parser.add_argument("--engine-option", action="append", default=[], metavar="K=V",
                        help="an engine option (JSON value where it parses), repeatable")
    parser.add_argument("--model-path", default="",
                        help="JupyterDsApp.model_path (default: the embedded model)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra server argument (repeatable)")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="client-side limit of each request in seconds (default 120)")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    if args.cursors < 1 or args.warmup < 0:
        parser.error("--cursors: at least 1; --warmup: at least 0")
    if any("=" not in pair or pair.startswith("=") for pair in args.engine_option):
        parser.error("--engine-option: KEY=VALUE")
    local = (args.engine_class or LOCAL_ENGINE) == LOCAL_ENGINE
    args.phases = ([x.strip() for x in args.phases.split(",") if x.strip()]
                   or ([MODEL, CACHED] if local else [MODEL]))
    unknown = [x for x in args.phases if x not in (MODEL, CACHED)]
    if unknown or len(set(args.phases)) != len(args.phases):
        parser.error(f"--phases: each of {MODEL}, {CACHED} at most once; got {args.phases}")
    args.max_tokens = args.max_tokens or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        report = asyncio.run(measure(args))
    except ServerError as exc:
        log(f"failed: {exc}")
        return 2
    paths = publish(report, markdown(report), args.out_dir, NAME)
    log(f"wrote {paths[0]} and {paths[1]} ({report['run_seconds']} s)")
    log(report["conclusions"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
