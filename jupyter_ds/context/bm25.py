"""BM25 over windows of lines, for "similar code elsewhere in the repository".

Tabby and Copilot's neighbouring tabs rank snippets of other files by how many rare
identifiers they share with the code just above the cursor; BM25 is that idea with term
frequency saturation and length normalisation. Documents are overlapping windows of a
file's lines (a function rarely fits a fixed window, the overlap gives each line two
chances to sit with its neighbours), tokenised into identifiers: code's words are its
names, and punctuation or keywords say nothing about which file is related.

The index is inverted (term -> chunk -> count) so that a query costs the postings of its
own terms, not a scan of the repository, and it is updated one file at a time: a file
that changed is removed and added again, everything else stays.
"""

from __future__ import annotations

import heapq
import keyword
import math
import re
import sys
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Words that every Python file has: they match everything, so they rank nothing.
STOP_WORDS = frozenset({
    *keyword.kwlist, *keyword.softkwlist, "self", "cls", "args", "kwargs", "print", "len",
    "range", "str", "int", "float", "bool", "list", "dict", "set", "tuple", "object",
    "isinstance", "super", "__init__", "__name__", "__main__", "np", "pd", "os", "sys",
    "typing", "Any", "Optional", "annotations", "__future__",
    # Docstrings and comments are tokenised too: their commonest words.
    "the", "of", "to", "it", "is", "be", "this", "that", "an", "on", "at", "by", "we",
    "are", "was", "can", "has", "have", "its", "but", "then", "than", "when", "which",
    "one", "all", "any", "no", "so", "do", "does", "there", "their", "they", "them", "these",
    "those", "what", "who", "how", "will", "would", "should", "may", "must", "only", "also",
    "TODO", "See", "The", "If", "It", "This", "Returns", "Return", "Args", "Parameters",
})
DF_FLOOR = 64  # chunks a query term may occur in, whatever its share
MAX_LINE_CHARS = 400  # a longer line is data, not code: only its start is tokenised


def identifiers(text: str) -> list[str]:
    """The identifiers of ``text`` that can tell files apart (no keywords, no one-letter
    names), interned: the same name in thousands of chunks is one string."""
    return [sys.intern(t) for t in IDENTIFIER.findall(text)
            if len(t) > 1 and t not in STOP_WORDS]


def windows(n_lines: int, size: int, stride: int) -> list[tuple[int, int]]:
    """``[start, end)`` line windows of ``size`` lines every ``stride`` lines, covering
    every line (the last window ends at the last line)."""
    if n_lines <= 0:
        return []
    if n_lines <= size:
        return [(0, n_lines)]
    out = [(start, start + size) for start in range(0, n_lines - size + 1, stride)]
    if out[-1][1] < n_lines:
        out.append((n_lines - size, n_lines))
    return out


@dataclass(frozen=True)
class ChunkTerms:
    """One window of a file: 1-based first and last line, and its identifier counts."""

    first: int
    last: int
    terms: Counter[str]


def chunk_file(text: str, size: int = 12, stride: int = 6,
               min_terms: int = 3) -> list[ChunkTerms]:
    """The windows of ``text`` worth ranking (those with at least ``min_terms``
    identifiers; blank stretches and lone brackets match nothing useful)."""
    lines = text.split("\n")
    per_line = [identifiers(line[:MAX_LINE_CHARS]) for line in lines]
    out = []
    for start, end in windows(len(lines), size, stride):
        # Blank lines at either end add nothing to show: trim them.
        while start < end and not lines[start].strip():
            start += 1
        while end > start and not lines[end - 1].strip():
            end -= 1
        terms: Counter[str] = Counter()
        for words in per_line[start:end]:
            terms.update(words)
        if sum(terms.values()) >= min_terms:
            out.append(ChunkTerms(start + 1, end, terms))
    # Trimming can make neighbouring windows the same lines: keep one.
    seen: set[tuple[int, int]] = set()
    return [c for c in out if (c.first, c.last) not in seen
            and not seen.add((c.first, c.last))]  # type: ignore[func-returns-value]


@dataclass(frozen=True)
class Hit:
    """A ranked chunk: its file, 1-based lines, score and how many query terms it has."""

    path: str
    first: int
    last: int
    score: float
    matched: int


class BM25Index:
    """An inverted BM25 index of chunks, with postings grouped by file.

    ``postings[term][file]`` is a packed array of (chunk number in the file, count)
    pairs: adding or removing a file touches only that file's own terms (an edited file
    is re-indexed in time proportional to its size, whatever the repository's), and a
    posting costs 8 bytes instead of a dictionary entry. ``df`` counts the chunks that
    hold each term. Not thread-safe by itself: the repository index serialises writers
    and readers.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.postings: dict[str, dict[int, array[int]]] = {}
        self.df: dict[str, int] = {}
        # file number -> (path, [(first line, last line, length in terms)] per chunk)
        self.files: dict[int, tuple[str, list[tuple[int, int, int]]]] = {}
        self.numbers: dict[str, int] = {}  # path -> file number
        self.terms_of: dict[int, tuple[str, ...]] = {}  # file number -> its terms
        self.n_chunks = 0
        self.total_len = 0
        self._next = 0

    def __len__(self) -> int:
        return self.n_chunks

    def add_file(self, path: str, chunks: Iterable[ChunkTerms]) -> None:
        """Index ``path``'s chunks (replacing what it had)."""
        self.remove_file(path)
        number = self._next
        self._next += 1
        per_term: dict[str, array[int]] = {}
        meta = []
        for local, chunk in enumerate(chunks):
            length = sum(chunk.terms.values())
            meta.append((chunk.first, chunk.last, length))
            self.total_len += length
            for term, tf in chunk.terms.items():
                packed = per_term.get(term)
                if packed is None:
                    packed = per_term[term] = array("I")
                packed.append(local)
                packed.append(tf)
        if not meta:
            return
        for term, packed in per_term.items():
            self.postings.setdefault(term, {})[number] = packed
            self.df[term] = self.df.get(term, 0) + len(packed) // 2
        self.files[number] = (path, meta)
        self.numbers[path] = number
        self.terms_of[number] = tuple(per_term)
        self.n_chunks += len(meta)

    def remove_file(self, path: str) -> None:
        number = self.numbers.pop(path, None)
        if number is None:
            return
        _, meta = self.files.pop(number)
        for term in self.terms_of.pop(number):
            by_file = self.postings[term]
            packed = by_file.pop(number)
            left = self.df[term] - len(packed) // 2
            if by_file:
                self.df[term] = left
            else:
                del self.postings[term], self.df[term]
        self.n_chunks -= len(meta)
        self.total_len -= sum(length for _, _, length in meta)

    def search(self, terms: Iterable[str], k: int = 5, *, exclude: str | None = None,
               min_matched: int = 2, max_terms: int = 32,
               max_df_share: float = 0.05, max_postings: int = 3000) -> list[Hit]:
        """The ``k`` best chunks for the query ``terms``, not from the file ``exclude``,
        no two of them overlapping.

        The work is bounded: at most ``max_terms`` distinct query terms, rarest first,
        none that occur in more than ``max_df_share`` of the chunks (unless in fewer
        than :data:`DF_FLOOR`: in a small index every term is kept, its work is small
        anyway), and no further term once ``max_postings`` postings were scored (the
        rarest terms, which weigh most, always count). A chunk must share
        ``min_matched`` distinct terms with the query (fewer when the query has fewer).
        """
        n = self.n_chunks
        if n == 0:
            return []
        avg = self.total_len / n
        df = self.df
        limit = max(DF_FLOOR, max_df_share * n)
        query = sorted((t for t in dict.fromkeys(terms) if df.get(t, limit + 1) <= limit),
                       key=df.__getitem__)[:max_terms]
        if not query:
            return []
        skip = self.numbers.get(exclude) if exclude is not None else None
        scores: dict[int, float] = {}
        matched: dict[int, int] = {}
        k1, b = self.k1, self.b
        scored = 0
        for term in query:
            if scored >= max_postings:
                query = query[:query.index(term)]  # what ``min_matched`` is measured on
                break
            scored += df[term]
            idf = math.log(1.0 + (n - df[term] + 0.5) / (df[term] + 0.5))
            for number, packed in self.postings[term].items():
                if number == skip:
                    continue
                meta = self.files[number][1]
                base = number << 20
                for i in range(0, len(packed), 2):
                    local, tf = packed[i], packed[i + 1]
                    key = base | local
                    norm = k1 * (1 - b + b * meta[local][2] / avg)
                    scores[key] = scores.get(key, 0.0) + idf * tf * (k1 + 1) / (tf + norm)
                    matched[key] = matched.get(key, 0) + 1
        need = min(min_matched, len(query))
        # Overlapping windows of one file compete for the same lines: take a few more
        # than ``k`` and keep the best of each overlap.
        ranked = heapq.nlargest(
            k * 4 + 4, ((s, key) for key, s in scores.items() if matched[key] >= need))
        out: list[Hit] = []
        for score, key in ranked:
            path, meta = self.files[key >> 20]
            first, last, _ = meta[key & 0xFFFFF]
            if any(h.path == path and h.first <= last and first <= h.last for h in out):
                continue
            out.append(Hit(path, first, last, score, matched[key]))
            if len(out) >= k:
                break
        return out
