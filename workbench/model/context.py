"""What one forward shares across layers, and what the explicit attention path shows observers.

Shapes: B batch, T new tokens in this forward, S keys (cached + new), H query heads, D d_head,
c a chunk of query rows, n the keys a chunk can see.

* :class:`ForwardContext`: positions, rotary tables, ALiBi slopes and key masks, built once per
  forward and shared by every layer;
* :class:`AttentionChunk`: one chunk of query rows of one layer, as an observer sees it;
* :class:`AttentionOptions`: how attention runs in one forward (which path, chunk budget,
  observer); set only through ``HookedDecoder.attention_options(...)``, read through the context;
* :func:`query_chunks`: the one chunking rule, shared by the decoder's explicit path and the
  nnsight backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class AttentionChunk:
    """What an attention observer sees for rows ``[query_start, query_start + c)`` of one layer.

    Keys are cut after the last one a row of the chunk can see (causal attention never looks
    ahead), so the key axis has ``n <= n_keys`` entries: keys ``[0, n)``; the weight on the
    others is zero.
    """

    layer: int
    query_start: int  # index of the first query row among this forward's T rows
    scores: torch.Tensor | None  # (B, H, c, n) scaled logits incl. position bias and any soft-cap
    # (what the softmax sees); -inf where masked
    probs: torch.Tensor  # (B, H, c, n) softmax of scores
    visible: torch.Tensor  # (B or 1, 1, c, n) bool: which keys each query may see
    query_index: torch.Tensor  # (c,) absolute index of each query (cache offset included)
    scale: float  # the multiplier that was applied to q.k
    n_keys: int = 0  # S, all keys of this forward (cached + new); 0 when unknown (= n)
    shared: int = 0  # keys [0, shared) are visible to every row (0 when unknown)
    writable: bool = False  # scores are the path's own temporaries: the observer may overwrite them
    alibi: torch.Tensor | None = None  # (H,) ALiBi slopes included in scores, None without ALiBi


AttentionObserver = Callable[[AttentionChunk], None]
CHUNK_ROWS = 256  # the explicit path's default cap on query rows per chunk


def chunk_keys(chunk_bytes: int, batch: int, heads: int) -> int:
    """Scores per head in a chunk whose temporaries (about four fp32 tensors of
    ``[batch, heads, rows, keys]``) stay under ``chunk_bytes``."""
    return max(1, chunk_bytes // max(1, batch * heads * 4 * 4))


def chunk_rows(keys_before: int, chunk_keys: int) -> int:
    """The most query rows ``r`` with ``r x (keys_before + r) <= chunk_keys`` (at least 1): a chunk
    of causal rows after ``keys_before`` keys holds about ``chunk_keys`` scores per head, so early
    rows, which see few keys, come in larger chunks."""
    return max(1, int((math.sqrt(keys_before * keys_before + 4 * chunk_keys) - keys_before) / 2))


def query_chunks(n_rows: int, keys_before: int, max_rows: int, keys_budget: int | None):
    """``(start, stop)`` of each chunk of ``n_rows`` causal query rows that follow ``keys_before``
    cached keys: at most ``max_rows`` rows, and about ``keys_budget`` scores per head when set."""
    start = 0
    while start < n_rows:
        rows = max_rows
        if keys_budget is not None:
            rows = min(rows, chunk_rows(keys_before + start, keys_budget))
        stop = min(start + max(1, rows), n_rows)
        yield start, stop
        start = stop


@dataclass(frozen=True)
class AttentionOptions:
    """How attention runs in one forward.

    ``explicit``: take the explicit chunked path even when nothing observes it (tests, timing).
    ``chunk_rows``: at most this many query rows per chunk. ``chunk_bytes``: when set, chunks also
    keep their temporaries under about this many bytes. ``observer``: called with every
    :class:`AttentionChunk` (a recorder); an observer forces the explicit path.
    """

    explicit: bool = False
    chunk_rows: int = CHUNK_ROWS
    chunk_bytes: int | None = None
    observer: AttentionObserver | None = None


@dataclass
class ForwardContext:
    """Per-forward facts shared by every layer: positions, rotary tables, key validity."""

    query_index: torch.Tensor  # (T,) absolute index of each new token
    key_index: torch.Tensor  # (S,)
    key_valid: torch.Tensor | None  # (B, S) bool, None when nothing is padded
    cos: torch.Tensor | None = None  # (B, T, D) rotary tables, None without RoPE
    sin: torch.Tensor | None = None
    alibi: torch.Tensor | None = None  # (H,) slopes, None without ALiBi
    cos_local: torch.Tensor | None = None  # (B, T, D) for sliding-window layers with their own base
    sin_local: torch.Tensor | None = None  # (Gemma 3's local RoPE); None: every layer uses cos/sin
    options: AttentionOptions = field(default_factory=AttentionOptions)
    keys_budget: int | None = None  # scores per head a chunk may hold (from options.chunk_bytes)
    _masks: dict[int | None, torch.Tensor | None] = field(default_factory=dict)
    _causal: dict[int | None, torch.Tensor] = field(default_factory=dict)

    def visible(self, window: int | None) -> torch.Tensor | None:
        """Bool ``(B or 1, 1, T, S)`` of visible keys, or None for a plain causal mask."""
        if window not in self._masks:
            plain = self.key_valid is None and window is None
            if plain and self.query_index.shape[0] == self.key_index.shape[0]:
                self._masks[window] = None
            else:
                self._masks[window] = self._build(window)
        return self._masks[window]

    def visible_or_causal(self, window: int | None) -> torch.Tensor:
        mask = self.visible(window)
        if mask is not None:
            return mask
        if window not in self._causal:  # built once per forward, shared by every layer
            self._causal[window] = self._build(window)
        return self._causal[window]

    def _build(self, window: int | None) -> torch.Tensor:
        # Query i (absolute index past + i) sees key j when 0 <= past + i - j < window: a band of
        # the (T, S) matrix, cut with tril/triu instead of a (T, S) int64 distance matrix.
        T, S = self.query_index.shape[0], self.key_index.shape[0]
        past = int(self.query_index[0] - self.key_index[0]) if T and S else 0
        mask = torch.ones(T, S, dtype=torch.bool, device=self.query_index.device).tril_(past)
        if window is not None:
            mask = mask.triu_(past - window + 1)
        mask = mask[None, None]
        if self.key_valid is not None:
            mask = mask & self.key_valid[:, None, None, :]
            # A padding query that sees no key would give NaN (0 * NaN leaks into later
            # layers); let it see every key instead. Its output is meaningless either way.
            mask = mask | ~mask.any(dim=-1, keepdim=True)
        return mask
