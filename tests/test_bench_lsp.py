"""benchmarks/lsp_overhead.py: the typing replay's edits, the text comparison, and a short
run of the benchmark's own functions (a real ``jupyter-ds lsp`` process against the test
server with the ScriptedEngine) whose report must have its shape and count the identical
texts. A few seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from benchmark_modules import benchmark_module

pytestmark = pytest.mark.timeout(60)

SCRIPTED = "ds_engine.testing.ScriptedEngine"


@pytest.fixture(scope="module")
def lb():
    with benchmark_module("lsp_overhead") as module:
        yield module


def apply(text: str, change: Any) -> str:
    """An incremental change applied as an editor would: positions in UTF-16 units."""
    lines = text.split("\n")

    def offset(position: Any) -> int:
        line = lines[position.line]
        units = 0
        column = 0
        while units < position.character:
            units += 2 if ord(line[column]) > 0xFFFF else 1
            column += 1
        return sum(len(x) + 1 for x in lines[:position.line]) + column

    start, end = offset(change.range.start), offset(change.range.end)
    return text[:start] + change.text + text[end:]


SOURCE = (
    "import os\n" + "".join(f"# line {i}\n" for i in range(30))
    + 'def größe(x):\n    s = "𝄞" + x.name\n    return len(x) + 1\n'
    + "class Box(object):\n    pass\n"
)


def test_the_replay_types_the_file_back_edit_by_edit(lb):
    replay = lb.Replay.from_text("demo.py", SOURCE, 10)
    assert replay.offsets == sorted(replay.offsets) and len(replay) == 10
    assert replay.cursor(3) == lb.t.Position(32, 21)  # 20 code points, "𝄞" is 2 units
    text = replay.document(0)
    assert text == SOURCE[:replay.offsets[0]] + SOURCE[replay.offsets[-1]:]
    for k in range(1, len(replay)):
        text = apply(text, replay.change(k))
        assert text == replay.document(k)
        body = replay.body(k, 16)
        assert body["prefix"] + body["suffix"] == text
        assert body == {"prefix": text[:replay.offsets[k]], "suffix": text[replay.offsets[k]:],
                        "language": "python", "path": "demo.py", "max_tokens": 16}
        # The cursor is where the typed text ends, counted in UTF-16 units ("𝄞" is two).
        cursor = replay.cursor(k)
        line = text.split("\n")[cursor.line]
        prefix_line = body["prefix"].split("\n")[-1]
        assert cursor.character == len(prefix_line.encode("utf-16-le")) // 2
        assert line.startswith(prefix_line)
    assert text == SOURCE  # the whole file, typed back
    assert lb.word_before("    return len") == "len"
    assert "max_tokens" not in replay.body(1, None)
    with pytest.raises(ValueError, match="line breaks"):
        lb.Replay.from_text("ff.py", SOURCE.replace("# line 3", "\x0c"), 2)


def test_text_comparison_counts_a_mismatch(lb):
    def row(k: int, direct: list[str], inline: list[str], completion: list[str]):
        return {"cursor": k, "word": "w", "order": list(lb.PATHS), "warmup": False,
                lb.DIRECT: lb.Sample(lb.DIRECT, 10.0, True, direct, server_ms=5.0),
                lb.INLINE: lb.Sample(lb.INLINE, 14.0, True, inline, server_ms=5.0),
                lb.COMPLETION: lb.Sample(lb.COMPLETION, 30.0, True, completion,
                                         server_ms=6.0)}

    rows = [row(0, ["x + 1"], ["x + 1"], ["x + 1"]), row(1, [], [], []),
            row(2, ["y"], ["y"], ["<edit 'z'>"])]
    summary = lb.summarize(rows)
    tx = summary["texts"]
    target = lb.target_verdict({"model": summary})
    assert (tx["compared"], tx["identical"], tx["mismatches"]) == (3, 2, 1)
    assert tx["identical_non_empty"] == 1 and tx["completion_same_as_direct"] == 2
    assert tx["mismatch_examples"][0]["cursor"] == 2
    over = summary["overhead"]
    assert over[lb.INLINE]["p50_ms"] == 4.0 and over[lb.INLINE]["net_p50_ms"] == 4.0
    assert over[lb.COMPLETION]["p50_ms"] == 20.0 and over[lb.COMPLETION]["net_p50_ms"] == 19.0
    assert target["met"] is False  # completion: +19 ms net
    assert target["judged_p50_ms"] == {"model phase, net of server time": {
        lb.INLINE: 4.0, lb.COMPLETION: 19.0}}


class TestAShortRun:
    @pytest.fixture
    def ds_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"engine_class": SCRIPTED, "engine_options": {"answers": ["pass"]},
                "audit_log_path": str(tmp_path / "audit.log")}

    async def test_report_shape_and_identical_texts(self, lb, ds_ready, jp_serverapp,
                                                    jp_http_port, jp_base_url, jp_root_dir,
                                                    tmp_path):
        args = lb.parse_args(["--engine-class", SCRIPTED, "--cursors", "3", "--warmup", "1",
                              "--pause-ms", "0", "--module", "tokenize",
                              "--request-timeout", "20", "--phases", "model,cached"])
        server = lb.Server(None, f"http://127.0.0.1:{jp_http_port}{jp_base_url}",
                           jp_serverapp.identity_provider.token, Path(jp_root_dir),
                           tmp_path / "server.log")
        work = tmp_path / "work"
        work.mkdir()
        phases = {}
        for phase in args.phases:  # both on this server: the second skips the first's records
            measured = await lb.replay_through(server, args, tmp_path / "audit.log", work,
                                               phase)
            assert not [m for m in measured.messages if m.startswith("show:")], measured.messages
            phases[phase] = lb.phase_report(measured, [], 1.0)
        report = lb.build_report(args, phases, {"name": "scripted"}, [None, None], 2.0,
                                 measured.replay)

        assert set(report) >= {"params", "machine", "model", "phases", "target",
                               "conclusions", "run_seconds"}
        assert report["params"]["file"] == "tokenize.py"
        # No cache options for an engine that is not the local one.
        assert report["params"]["engine_options"] == {"model": {}, "cached": {}}
        for name, ph in report["phases"].items():
            assert len(ph["rows"]) == 4 and ph["rows"][0]["warmup"]
            assert ph["server_times_matched_by"] == "order"
            for path in lb.PATHS:
                stats = ph["paths"][path]
                assert (stats["requests"], stats["ok"], stats["errors"]) == (3, 3, 0), stats
                assert stats["p50_ms"] > 0 and stats["p95_ms"] >= stats["p50_ms"]
                assert stats["server_p50_ms"] is not None  # found in the audit log
            assert ph["paths"][lb.DIRECT]["model_p50_ms"] is not None
            for path in lb.LSP_PATHS:
                over = ph["overhead"][path]
                assert over["pairs"] == 3 and over["p50_ms"] is not None
                assert over["net_p50_ms"] is not None
            tx = ph["texts"]
            assert (tx["compared"], tx["identical"], tx["mismatches"]) == (3, 3, 0), tx
            assert tx["identical_non_empty"] >= 1  # the scripted answer, not only empty ones
            assert tx["prompt_tokens_same"] == tx["prompt_tokens_compared"] == 3
            assert ("prime" in ph) == (name == "cached")
            if name == "cached":  # the scripted engine keeps no results: unknown, all timed
                assert ph["answered_from_cache"] == {"cursors": 3, "known": 0,
                                                     "all_three": 0, "timed_cursors": 3}
        assert report["phases"]["cached"]["rows"][1]["sent"][0] == "prime"
        target = report["target"]
        assert target["met"] in (True, False)
        assert set(target["judged_p50_ms"]) == {"model phase, net of server time",
                                                "cached phase, raw pairs"}
        table = lb.markdown(report)
        assert table.count("| LSP `textDocument/inlineCompletion` | 3 | 0 |") == 2
        assert "3 of 3 cursors identical" in table and report["conclusions"] in table


def test_cached_phase_times_only_cursors_answered_from_the_cache(lb):
    def row(k: int, hits: int | None, ms: float):
        return {"cursor": k, "word": "w", "order": list(lb.PATHS), "warmup": False,
                "cache_hits": hits, lb.PRIME: lb.Sample(lb.DIRECT, 500.0, True, ["a"]),
                lb.DIRECT: lb.Sample(lb.DIRECT, ms, True, ["a"]),
                lb.INLINE: lb.Sample(lb.INLINE, ms + 2, True, ["a"]),
                lb.COMPLETION: lb.Sample(lb.COMPLETION, ms + 3, True, ["a"])}

    summary = lb.summarize([row(0, 3, 10.0), row(1, 1, 900.0), row(2, 3, 12.0)])
    assert summary["answered_from_cache"] == {"cursors": 3, "known": 3, "all_three": 2,
                                              "timed_cursors": 2}
    assert summary["paths"][lb.DIRECT]["requests"] == 2
    assert summary["paths"][lb.DIRECT]["max_ms"] == 12.0  # the model's run left out
    assert summary["texts"]["compared"] == 3 and summary["texts"]["identical"] == 3
    assert summary["overhead"][lb.COMPLETION]["p50_ms"] == 3.0
