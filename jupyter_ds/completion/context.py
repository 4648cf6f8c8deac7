"""Fit the editor context into the prompt's token budget.

The text nearest the cursor matters most: keep the tail of the prefix and the head of the
suffix, cut on line boundaries so that the model sees whole lines. Token counting costs a
tokenizer call, so the cut points are found by binary search over line indices.
"""

from __future__ import annotations

from collections.abc import Callable

CountTokens = Callable[[str], int]


def _keep_tail(text: str, count: CountTokens, budget: int, anchor_lines: int = 0) -> str:
    """The longest suffix of ``text`` (whole lines where possible) within ``budget``.

    With ``anchor_lines`` the first kept line is rounded up to a multiple of it, so the
    start of the prompt stays put while the user types on: the engine can then reuse the
    cached keys and values of the prompt's beginning instead of recomputing everything
    each time the window would have slid by one line.
    """
    if budget <= 0 or not text:
        return ""
    if count(text) <= budget:
        return text
    lines = text.splitlines(keepends=True)
    # Smallest start index whose tail fits: fits(i) is monotone in i.
    low, high = 1, len(lines)
    while low < high:
        mid = (low + high) // 2
        if count("".join(lines[mid:])) <= budget:
            high = mid
        else:
            low = mid + 1
    if anchor_lines > 1 and low < len(lines):
        anchored = -(-low // anchor_lines) * anchor_lines  # round up: fewer tokens, fits
        if anchored < len(lines):
            low = anchored
    tail = "".join(lines[low:])
    if tail:
        return tail
    # The last line alone is over budget: cut it by characters.
    return _chars_from_end(lines[-1], count, budget)


def _keep_head(text: str, count: CountTokens, budget: int) -> str:
    """The longest prefix of ``text`` (whole lines where possible) within ``budget``."""
    if budget <= 0 or not text:
        return ""
    if count(text) <= budget:
        return text
    lines = text.splitlines(keepends=True)
    low, high = 0, len(lines) - 1  # largest end index whose head fits
    while low < high:
        mid = (low + high + 1) // 2
        if count("".join(lines[:mid])) <= budget:
            low = mid
        else:
            high = mid - 1
    head = "".join(lines[:low])
    if head:
        return head
    return _chars_from_start(lines[0], count, budget)


def _chars_from_end(line: str, count: CountTokens, budget: int) -> str:
    low, high = 0, len(line)
    while low < high:
        mid = (low + high) // 2
        if count(line[mid:]) <= budget:
            high = mid
        else:
            low = mid + 1
    return line[low:]


def _chars_from_start(line: str, count: CountTokens, budget: int) -> str:
    low, high = 0, len(line)
    while low < high:
        mid = (low + high + 1) // 2
        if count(line[:mid]) <= budget:
            low = mid
        else:
            high = mid - 1
    return line[:low]


def trim_context(
    prefix: str,
    suffix: str,
    count_tokens: CountTokens,
    budget: int,
    suffix_share: float = 0.25,
    anchor_lines: int = 0,
) -> tuple[str, str]:
    """Trim (prefix, suffix) so that their tokens together stay within ``budget``.

    The suffix gets at most ``suffix_share`` of the budget and gives back what it does not
    use; the prefix keeps its tail (the lines just above the cursor).
    """
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    if not 0.0 <= suffix_share <= 1.0:
        raise ValueError(f"suffix_share must be within 0..1, got {suffix_share}")
    head = _keep_head(suffix, count_tokens, int(budget * suffix_share))
    used = count_tokens(head) if head else 0
    tail = _keep_tail(prefix, count_tokens, budget - used, anchor_lines)
    return tail, head
