"""The decode batch: running requests share one forward per token.

On a CPU, one decode step of a small model is bound by reading the weights, not by the
arithmetic, so 8 sequences cost little more per step than one (measured on 2 cores with
SmolLM2-135M at a 300-token context: 64 ms for 1, 93 ms for 8). The batch keeps one KV
cache for all running sequences, right-aligned and left-padded to a common length with
an attention mask that hides the padding, and feeds each sequence's last token at its
own position.

Copies of the batch's KV are what batching costs, so they are avoided where possible:
a sequence alone adopts its prefill cache as it is; a finished sequence only marks its
row dead (a dead row keeps being stepped, which costs next to nothing in a
weight-bound step, and its output is ignored); a joining sequence takes over a dead row
in place when its prompt fits in the padded length (one row copied), and only otherwise
is the cache rebuilt, in one copy that also drops dead rows and padding nobody needs.
Joining needs plain full-attention KV tensors (:func:`ds_engine.prefix_cache
.extract_layers`); for other cache types (sliding window, recurrent) :meth:`can_join`
says no and the scheduler runs such requests one at a time.

With a :class:`ds_engine.compiled.StaticDecoder`, a batch of one row steps through its
compiled graph over a static cache instead: the row's KV moves there at its first step
alone and back to an ordinary cache whenever the batch needs it (:meth:`_layers`).
"""

from __future__ import annotations

from typing import Any

import torch

from ds_engine.compiled import StaticDecoder
from ds_engine.generation import SequenceState, forward, new_cache
from ds_engine.prefix_cache import LayerKV, adopt_layers, extract_layers

# Leading columns no live row needs before they are cut (as views: the next step's
# concatenation compacts them). Without the cut, a batch that never empties, its dead rows
# taken over in place, would keep every position since it began: memory and attention cost
# that grow with uptime (seen as +1 GB RSS in a 150 s load test).
TRIM_COLUMNS = 32


class DecodeBatch:
    """Sequences past their prefill, stepped together one token at a time."""

    def __init__(self, model: Any, static: StaticDecoder | None = None) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.static = static
        self._rows: list[SequenceState | None] = []  # None: a dead row
        self._cache: Any = None  # None while the one row's KV is in the static decoder
        self._mask: torch.Tensor | None = None  # [rows, cached positions], 1 = real token

    def __len__(self) -> int:
        return sum(1 for s in self._rows if s is not None)

    @property
    def seqs(self) -> list[SequenceState]:
        """The live sequences, in row order."""
        return [s for s in self._rows if s is not None]

    @property
    def rows(self) -> int:
        """Rows stepped per forward, dead ones included."""
        return len(self._rows)

    @property
    def length(self) -> int:
        """Cached positions per row, padding included."""
        return 0 if self._mask is None else int(self._mask.shape[1])

    def _layers(self) -> list[LayerKV] | None:
        self._leave_static()
        return extract_layers(self._cache, self.length) if self._cache is not None else None

    def _leave_static(self) -> None:
        """Bring the row's KV back from the static decoder into an ordinary cache."""
        if self.static is not None and self.static.active and self._cache is None:
            cache = new_cache(self.model)
            adopt_layers(cache, self.static.leave())
            self._cache = cache

    def _static_step(self) -> torch.Tensor | None:
        """The compiled step of a lone row (entering the static cache first), or None
        where the eager step must run: several rows, no bucket with room."""
        static = self.static
        if static is None or len(self._rows) != 1 or self._rows[0] is None:
            return None
        if static.active and static.room == 0:
            self._leave_static()  # the bucket is full: on to a longer one, if any
        if not static.active:
            assert self._mask is not None
            layers = extract_layers(self._cache, self.length)
            if layers is None or not bool(self._mask.all()):
                return None
            if not static.enter(layers, self.length):
                return None
            self._cache = None
        self._mask = torch.nn.functional.pad(self._mask, (0, 1), value=1)
        return static.step(self._rows[0].next_token)

    def can_join(self, cache: Any, prompt_tokens: int) -> bool:
        """Whether a sequence with this prefill ``cache`` can run in this batch now."""
        if not self._rows:
            return True
        return self._layers() is not None and extract_layers(cache, prompt_tokens) is not None

    def add(self, seq: SequenceState, cache: Any) -> None:
        """Let ``seq`` (prefilled into ``cache``, first token accepted) join the batch."""
        n = seq.prompt_tokens
        if not self._rows:
            self._rows, self._cache = [seq], cache
            self._mask = torch.ones((1, n), dtype=torch.long, device=self.device)
            return
        mine, theirs = self._layers(), extract_layers(cache, n)
        if mine is None or theirs is None:
            raise ValueError("this cache type cannot be batched (check can_join first)")
        assert self._mask is not None
        free = next((i for i, s in enumerate(self._rows) if s is None), None)
        if free is not None and n <= self.length:
            start = self.length - n
            for (k, v), (k2, v2) in zip(mine, theirs, strict=True):
                k[free, :, start:] = k2[0]
                v[free, :, start:] = v2[0]
            self._mask[free] = 0
            self._mask[free, start:] = 1
            self._rows[free] = seq
            return
        self._rebuild(mine, [(k2, v2) for k2, v2 in theirs], n)
        self._rows = [*self.seqs, seq]

    def _rebuild(self, mine: list[LayerKV], theirs: list[LayerKV], n: int) -> None:
        """One new cache: the live rows, then the joining one; no dead rows, no spare pad."""
        assert self._mask is not None
        live = [i for i, s in enumerate(self._rows) if s is not None]
        index = torch.tensor(live, dtype=torch.long, device=self.device)
        mask = self._mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else mask.shape[1]
        old = mask.shape[1] - first  # columns the live rows need
        length = max(old, n)
        rows = len(live) + 1
        layers = []
        for (k, v), (k2, v2) in zip(mine, theirs, strict=True):
            pair = []
            for src, new in ((k, k2), (v, v2)):
                out = src.new_zeros((rows, src.shape[1], length, src.shape[3]))
                out[: len(live), :, length - old :] = src.index_select(0, index)[:, :, first:]
                out[len(live), :, length - n :] = new[0]
                pair.append(out)
            layers.append((pair[0], pair[1]))
        new_mask = torch.zeros((rows, length), dtype=torch.long, device=self.device)
        new_mask[: len(live), length - old :] = mask[:, first:]
        new_mask[len(live), length - n :] = 1
        cache = new_cache(self.model)
        adopt_layers(cache, layers)
        self._cache, self._mask = cache, new_mask

    def remove(self, done: list[SequenceState]) -> None:
        """Retire finished sequences: their rows go dead until reused or rebuilt."""
        if not done:
            return
        self._rows = [None if s is not None and s in done else s for s in self._rows]
        if not any(s is not None for s in self._rows):
            self.clear()

    def clear(self) -> None:
        if self.static is not None:
            self.static.abandon()
        self._rows, self._cache, self._mask = [], None, None

    def use_eager(self) -> None:
        """Step in eager mode from now on (an adapter changed the model's modules, which
        the compiled graphs do not know)."""
        self._leave_static()
        self.static = None

    def step(self) -> torch.Tensor:
        """Feed every row its last token; next-token logits, ``[rows, vocab]``.

        Row ``i`` of the result belongs to the ``i``-th entry of the row list; use
        :meth:`live_logits` to pair logits with live sequences.
        """
        static = self._static_step()
        if static is not None:
            return static
        self._leave_static()
        self._trim()
        assert self._mask is not None and self._rows
        rows = self._rows
        # A dead row is fed token 0 at position 0 and attends to that token only.
        inputs = torch.tensor(
            [[s.next_token if s is not None else 0] for s in rows],
            dtype=torch.long,
            device=self.device,
        )
        self._mask = torch.nn.functional.pad(self._mask, (0, 1), value=1)
        if len(rows) == 1:  # one live row, no padding: the plain single-sequence call
            return forward(self.model, inputs, self._cache)
        positions = torch.tensor(
            [[s.next_position if s is not None else 0] for s in rows],
            dtype=torch.long,
            device=self.device,
        )
        return forward(
            self.model, inputs, self._cache, attention_mask=self._mask, position_ids=positions
        )

    def can_speculate(self) -> bool:
        """Whether :meth:`step_draft` may run: one live row and nothing else, in a cache
        that can be cut back. A batch of several rows decodes one token a step: its rows
        would accept drafts of different lengths, and the padding that evens them out
        costs more than drafts save on a weight-bound CPU step. A batch with a static
        decoder decodes one token a step too: its compiled step takes one token."""
        return (self.static is None and len(self._rows) == 1 and self._rows[0] is not None
                and callable(getattr(self._cache, "crop", None))
                and self._layers() is not None)

    def step_draft(self, draft: list[int]) -> torch.Tensor:
        """Feed the one row its last token and ``draft``; the logits after each of them,
        ``[len(draft) + 1, vocab]``. :meth:`rewind` then drops what was not accepted."""
        assert self.can_speculate() and self._mask is not None and draft
        seq = self._rows[0]
        assert seq is not None
        inputs = torch.tensor([[seq.next_token, *draft]], dtype=torch.long,
                              device=self.device)
        self._mask = torch.nn.functional.pad(self._mask, (0, len(draft) + 1), value=1)
        return forward(self.model, inputs, self._cache, keep=len(draft) + 1)[0]

    def rewind(self, tokens: int) -> None:
        """Forget the last ``tokens`` positions (drafted tokens the model did not keep)."""
        if tokens <= 0:
            return
        assert self._mask is not None and tokens < self._mask.shape[1]
        self._cache.crop(-tokens)
        self._mask = self._mask[:, :-tokens]

    def _trim(self) -> None:
        """Cut the leading padding columns that no live row attends to (see TRIM_COLUMNS)."""
        mask = self._mask
        if mask is None or mask.shape[1] <= TRIM_COLUMNS:
            return
        live = [i for i, s in enumerate(self._rows) if s is not None]
        used = mask[live].any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else 0
        if first < TRIM_COLUMNS:
            return
        layers = self._layers()
        if layers is None:
            return
        cache = new_cache(self.model)
        adopt_layers(cache, [(k[..., first:, :], v[..., first:, :]) for k, v in layers])
        self._cache, self._mask = cache, mask[:, first:]

    def live_logits(self, logits: torch.Tensor) -> list[tuple[SequenceState, torch.Tensor]]:
        """(sequence, its logits) for every live row of a :meth:`step` result."""
        return [(s, logits[i]) for i, s in enumerate(self._rows) if s is not None]
