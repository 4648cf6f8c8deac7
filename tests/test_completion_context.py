"""Context trimming keeps the text nearest the cursor within the token budget."""

from __future__ import annotations

import pytest

from jupyter_ds.completion.context import trim_context


def words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word (exact and cheap)."""
    return len(text.split())


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        return words(text)


PREFIX = "".join(f"line{i} a b\n" for i in range(10)) + "    return "
SUFFIX = "".join(f"after{i} c\n" for i in range(10))


@pytest.mark.parametrize(
    "budget, share, want_prefix, want_suffix",
    [
        (1000, 0.25, PREFIX, SUFFIX),  # everything fits
        (10, 0.0, "line7 a b\nline8 a b\nline9 a b\n    return ", ""),  # 3 lines + "return"
        (10, 0.5, "line9 a b\n    return ", "after0 c\nafter1 c\n"),
        # the suffix gives back what it does not use
        (14, 0.5, "line8 a b\nline9 a b\n    return ", "after0 c\nafter1 c\nafter2 c\n"),
    ],
)
def test_keeps_prefix_tail_and_suffix_head(budget, share, want_prefix, want_suffix):
    prefix, suffix = trim_context(PREFIX, SUFFIX, words, budget, suffix_share=share)
    assert (prefix, suffix) == (want_prefix, want_suffix)
    assert words(prefix) + words(suffix) <= budget


def test_single_long_line_is_cut_by_characters():
    line = " ".join(f"w{i}" for i in range(100))
    prefix, suffix = trim_context(line, "", words, 5)
    assert prefix == " w95 w96 w97 w98 w99"  # the longest tail that fits
    assert suffix == ""


def test_suffix_single_long_line_is_cut_from_its_start():
    line = " ".join(f"s{i}" for i in range(100))
    _, suffix = trim_context("x", line, words, 8, suffix_share=0.5)
    assert suffix == "s0 s1 s2 s3 "


def test_few_tokenizer_calls_on_long_files():
    count = Counting()
    prefix = "".join(f"x{i} = {i}\n" for i in range(4000))
    trim_context(prefix, prefix, count, 300)
    assert count.calls < 40  # binary search, not one call per line


@pytest.mark.parametrize("budget", [0, -5])
def test_budget_must_be_positive(budget):
    with pytest.raises(ValueError, match="budget"):
        trim_context("a", "b", words, budget)


def test_anchored_window_start_stays_put_while_typing():
    """The kept prefix starts on a multiple of anchor_lines, so it does not slide per line."""
    starts = set()
    for typed in range(60, 90):  # the user types line after line
        prefix = "".join(f"l{i} w\n" for i in range(typed))
        tail, _ = trim_context(prefix, "", words, 80, suffix_share=0.0, anchor_lines=16)
        first = int(tail.split()[0][1:])
        assert first % 16 == 0 and words(tail) <= 80
        starts.add(first)
    assert len(starts) <= 3  # without anchoring the start moves on all 30 lines
    unanchored = {
        trim_context("".join(f"l{i} w\n" for i in range(t)), "", words, 80, 0.0)[0].split()[0]
        for t in range(60, 90)
    }
    assert len(unanchored) == 30
