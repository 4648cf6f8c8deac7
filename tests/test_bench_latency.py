"""The typing replay's keystrokes (benchmarks/latency.py): what the cursor sees."""

from __future__ import annotations

from benchmark_modules import benchmark_module

SOURCE = "def f(a, b):\n    total = a + b\n    return total\n\n\nx = f(1, 2)\n"


def test_writing_a_line_keeps_its_suffix_at_every_keystroke() -> None:
    """While a line is written the rest of it is not there yet: every point of the line
    has the same suffix, what follows the line, so the suffix-first prompt stays the same."""
    with benchmark_module("latency") as latency:
        points = latency.typing_points(SOURCE, 1, 2)
    line_1 = [p for p in points if p.line == 1]
    assert [p.kind for p in line_1] == ["mid_line", "mid_line", "line_end"]
    assert {p.suffix for p in line_1} == {"\n    return total\n\n\nx = f(1, 2)\n"}
    assert [p.prefix.rsplit("\n", 1)[1] for p in line_1] == [
        "    total", "    total = a", "    total = a + b"]
    assert line_1[0].prefix == "def f(a, b):\n    total"
    assert all(p.prefix + p.suffix != SOURCE for p in line_1 if p.kind == "mid_line")
    assert line_1[-1].prefix + line_1[-1].suffix == SOURCE


def test_moving_through_existing_lines_keeps_the_rest_of_the_line() -> None:
    with benchmark_module("latency") as latency:
        points = latency.typing_points(SOURCE, 1, 2, writing=False)
    assert points and all(p.prefix + p.suffix == SOURCE for p in points)
    assert points[0].suffix.startswith(" = a + b\n")


def test_decode_speed_counts_time_per_token_between_the_first_and_the_last() -> None:
    """benchmarks/decode_speed.py: decode ms/token is (last token - first token) /
    (tokens - 1), without what the caller does after the stream (the full time has it);
    a one-token answer has no decode time to count."""
    with benchmark_module("decode_speed") as decode:
        samples = [decode.Sample(0.1, 0.4, 16, "a", last_s=0.25),  # 10 ms (20 from full)
                   decode.Sample(0.2, 0.5, 4, "b"),  # no last token time: 100 ms from full
                   decode.Sample(0.3, 0.3, 1, "c"),  # one token: none
                   decode.Sample(0.1, 0.6, 11, "d", last_s=0.2)]  # 10 ms (50 from full)
        row = decode._summary(samples)
    assert row["decode_ms_per_token_p50"] == 10.0
    assert row["ttft_p50_ms"] == 200.0 and row["full_p50_ms"] == 500.0
    assert row["mean_tokens"] == 8.0
