"""Speculative decoding from the prompt: drafts are tokens the context already holds.

Code repeats itself: an identifier typed a moment ago, the rest of a line that mirrors
the one above, a call copied from a neighbouring function. When the sequence's last few
tokens occurred earlier in the prompt or the output, the tokens that followed them then
are a cheap guess at what follows now (prompt-lookup decoding; no draft model). The
runner feeds the last accepted token and the ``k`` drafted ones in one forward, which on
a CPU, bound by reading the weights, costs little more than a forward of one token, and
keeps the drafted tokens up to the first one the model would not have chosen itself. So
under greedy decoding the output is the same token for token as plain decoding, and a
step yields one to ``k + 1`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# The longest n-gram looked for first: longer matches predict better, shorter ones more
# often. One token alone (n = 1) guesses too wildly to be worth a wider forward.
MAX_NGRAM = 3
MIN_NGRAM = 2
# How far back a match is looked for (tokens): the recent past predicts best, and the
# search stays well under a millisecond.
WINDOW = 1024


def draft(ids: Sequence[int], k: int, *, max_ngram: int = MAX_NGRAM,
          min_ngram: int = MIN_NGRAM, window: int = WINDOW) -> list[int]:
    """Up to ``k`` tokens that followed the most recent earlier occurrence of the last
    ``n`` tokens of ``ids`` (the longest ``n`` from ``max_ngram`` down to ``min_ngram``
    that occurs); [] when none does."""
    size = len(ids)
    if k <= 0 or size < min_ngram + 1:
        return []
    start = max(0, size - window)
    for n in range(min(max_ngram, size - 1), min_ngram - 1, -1):
        tail = list(ids[size - n:])
        last = tail[-1]
        # Candidates end where the tail's last token occurs, before the tail itself.
        for end in range(size - 2, start + n - 2, -1):
            if ids[end] != last:
                continue
            if list(ids[end - n + 1:end + 1]) == tail:
                follow = list(ids[end + 1:end + 1 + k])
                if follow:
                    return follow
    return []


@dataclass
class DraftStats:
    """What speculation did: forwards that carried a draft, tokens drafted, accepted."""

    steps: int = 0
    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance(self) -> float | None:
        """Accepted drafted tokens per drafted token; None before any draft."""
        return self.accepted / self.drafted if self.drafted else None
