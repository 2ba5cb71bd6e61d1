"""Attention recorder: per (layer, head, query position) statistics, streamed in query chunks.

Nothing of size ``[layers, heads, T, T]`` is ever held: the decoder's explicit attention path hands
each chunk of ``c`` query rows (``[B, H, c, S]`` scores and probabilities) to
:meth:`AttentionRecorder.observe`, which reduces it to ``[H, c]`` numbers and lets it go. Peak extra
memory is O(B x H x chunk x S); the chunk shrinks as S grows to stay under ``chunk_bytes``.

Statistics (averaged over the batch; position 0 sees one key, so its normalised entropy is NaN):

* ``entropy``: Shannon entropy of the attention distribution, nats.
* ``entropy_norm``: entropy / log(number of visible keys): 1 = uniform, 0 = one-hot.
* ``max_prob`` and ``argmax``: the largest weight and the key index it sits on.
* ``sink_mass``: weight on the first visible key (the "attention sink").
* ``mean_distance``: expected query-key distance ``q - k`` in tokens.
* ``logit_std``: standard deviation of the pre-softmax logits over visible keys (after the
  model's own scale and soft-cap, when it caps, as the softmax sees them; before any ALiBi bias:
  the bias is position, not content). With 1/sqrt(d_head) scaling it is O(1) in trained models;
  without it, about sqrt(d_head) times larger.
* ``logit_gap``: the top logit minus the runner-up's (nats; ALiBi bias included, as the softmax
  sees it). A sharp healthy head wins by a few nats; an unscaled one by tens. NaN with one key.

Full patterns are kept only for requested ``(layer, head)`` pairs and query range, within a byte
budget, for the HTML pattern viewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from workbench.model.context import AttentionChunk

STATS = (
    "entropy", "entropy_norm", "max_prob", "argmax", "sink_mass", "mean_distance", "logit_std", "logit_gap",
)


@dataclass(frozen=True)
class PatternRequest:
    """Keep the full pattern of ``head`` in ``layer`` for query rows ``[start, stop)``."""

    layer: int
    head: int
    start: int = 0
    stop: int = 64


def row_max(x: torch.Tensor, block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.max(dim=-1)`` (values, first index of the maximum), several times faster on long rows.

    torch's max-with-index over the last axis is not vectorised on CPU while ``amax`` is: take
    the maximum of each block of ``block`` keys, pick the first block holding the row's maximum,
    and search only inside it. Exact, ties included. The default block, 32 keys for rows
    shorter than 1024 and 64 beyond, was the faster of the two on both (other sizes are slower).
    """
    n = x.shape[-1]
    if block is None:
        block = 32 if n < 1024 else 64
    whole = n - n % block
    if whole < 4 * block:
        return x.max(dim=-1)
    blocks = x[..., :whole].unflatten(-1, (whole // block, block))  # (..., blocks, block)
    best_block = blocks.amax(dim=-1).argmax(dim=-1, keepdim=True)  # (..., 1)
    inside = blocks.gather(-2, best_block[..., None].expand(*best_block.shape, block)).squeeze(-2)
    values, offset = inside.max(dim=-1)
    indices = best_block.squeeze(-1) * block + offset
    if whole < n:
        tail_values, tail_offset = x[..., whole:].max(dim=-1)
        later = tail_values > values  # strictly: on a tie the earlier index stays
        values = torch.where(later, tail_values, values)
        indices = torch.where(later, tail_offset + whole, indices)
    return values, indices


@torch.no_grad()
def chunk_statistics(
    probs: torch.Tensor,
    visible: torch.Tensor,
    query_index: torch.Tensor,
    scores: torch.Tensor | None = None,
    *,
    shared: int = 0,
    writable: bool = False,
    alibi: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Reduce one chunk: ``probs [B, H, c, S]``, ``visible [B|1, 1, c, S]`` -> each ``[B, H, c]``.

    With ``scores`` (-inf where masked) every statistic is one reduction over the chunk, with no
    logarithm per key: scores are shifted by the row's top score ``m``, entropy is
    ``-log p_max - E_p[s - m]`` (two non-negative terms, nothing cancels) and the spread is
    ``E[(s-m)^2] - E[s-m]^2`` over visible keys, whose fp32 rounding is about ``1e-7 (1 + z^2)``
    relative, z the top score's z-score. ``writable`` scores (the attention path's own
    temporaries) are shifted in place; the first ``shared`` keys, which every row sees (under a
    causal mask: all keys before the chunk's first query), need no masking. Without ``scores``
    (a backend that only sees probabilities) both come from log-probabilities, which differ
    from the logits by a per-row constant, and the spread is taken in two passes.

    ``alibi`` (``[H]`` slopes) takes ALiBi's ``-m_h (q - k)`` out of the spread: on a long probe
    that bias alone spreads the logits by ``m_h T / sqrt(12)``, which says nothing about the
    content logits' scale. The gap (top logit minus the runner-up) keeps it: it is what the
    softmax sees.
    """
    p = probs.float()
    B, H, c, S = p.shape
    visible = visible.expand(B, 1, c, S)
    n_visible = visible.sum(-1, dtype=torch.float32)  # (B, 1, c)
    max_prob, argmax = row_max(p)
    if shared > 0:  # every row sees key 0, so it is each row's first visible key
        sink = p[..., 0]
    else:
        first_visible = visible.to(torch.uint8).argmax(dim=-1, keepdim=True)  # (B, 1, c, 1)
        sink = p.gather(-1, first_visible.expand(B, H, c, 1)).squeeze(-1)
    # E_p[q - k] = (q - q0) - E_p[k - q0] (p sums to 1): one matrix-vector product. Offsets from
    # the chunk's first query q0 keep the terms small, so little is lost to rounding.
    query_index = query_index.to(p.device, torch.float32)
    key_offset = torch.arange(S, device=p.device, dtype=torch.float32) - query_index[0]
    mean_distance = (query_index - query_index[0]) - p @ key_offset
    if scores is not None:
        top = scores.gather(-1, argmax[..., None]).float()  # m = s[argmax p], (B, H, c, 1)
        if writable and scores.dtype == torch.float32:
            shifted = scores.sub_(top)
        else:
            shifted = scores.float() - top
        # runner-up: hide the top key for one amax (hidden keys are still -inf), then put it back
        top_slot = argmax[..., None]
        gap = -shifted.scatter_(-1, top_slot, float("-inf")).amax(-1)  # (B, H, c)
        shifted.scatter_(-1, top_slot, 0.0)
        shifted[..., shared:].nan_to_num_(neginf=0.0)  # s - m where visible, else 0
        expected = torch.einsum("...k,...k->...", p, shifted)  # E_p[s - m]
        entropy = (-torch.log(max_prob) - expected).clamp_min_(0)
        if alibi is not None:
            shifted = _without_alibi(shifted, alibi, visible, query_index)
        mean = shifted.sum(-1) / n_visible
        var = (torch.linalg.vector_norm(shifted, dim=-1).square_() / n_visible - mean.square()).clamp_min_(0)
    else:
        entropy = -torch.special.xlogy(p, p).sum(-1)
        hidden = ~visible
        logits = torch.log(p.clamp_min(torch.finfo(torch.float32).tiny)).masked_fill_(hidden, 0.0)
        top_two = p.topk(min(2, S), dim=-1).values  # (B, H, c, 2)
        tiny = torch.finfo(torch.float32).tiny
        gap = torch.log(top_two[..., 0]) - torch.log(top_two[..., -1].clamp_min(tiny))
        if alibi is not None:
            logits = _without_alibi(logits, alibi, visible, query_index)
        mean = logits.sum(-1) / n_visible
        centred = (logits - mean[..., None]).masked_fill_(hidden, 0.0)
        var = centred.square_().sum(-1) / n_visible
    entropy_norm = torch.where(n_visible > 1, entropy / torch.log(n_visible).clamp_min(1e-12), torch.nan)
    logit_std = torch.where(n_visible > 1, var.sqrt(), torch.nan)
    logit_gap = torch.where(n_visible > 1, gap, torch.nan)
    return {
        "entropy": entropy,
        "entropy_norm": entropy_norm,
        "max_prob": max_prob,
        "argmax": argmax.float(),
        "sink_mass": sink,
        "mean_distance": mean_distance,
        "logit_std": logit_std,
        "logit_gap": logit_gap,
    }


def _without_alibi(
    logits: torch.Tensor, slopes: torch.Tensor, visible: torch.Tensor, query_index: torch.Tensor
) -> torch.Tensor:
    """``logits [B, H, c, S]`` (0 where hidden) minus ALiBi's ``m_h (k - q)``, still 0 where hidden.

    Keys are ``[0, S)`` and ``query_index`` the queries' absolute positions, as in the chunk."""
    S = logits.shape[-1]
    distance = torch.arange(S, device=logits.device, dtype=torch.float32)[None, :] - query_index[:, None]  # (c, S)
    bias = slopes.to(logits.device, torch.float32)[:, None, None] * distance  # (H, c, S)
    return (logits - bias).masked_fill_(~visible, 0.0)


@dataclass
class AttentionRecord:
    """Attention statistics: each of :data:`STATS` is a float32 tensor ``[layers, heads, T]``."""

    n_layers: int
    n_heads: int
    n_tokens: int
    d_head: int
    scale: float
    stats: dict[str, torch.Tensor]
    patterns: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # [rows, keys]
    pattern_start: dict[tuple[int, int], int] = field(default_factory=dict)
    patterns_dropped: int = 0
    # What the model does to the logits before the softmax, so the analyzers judge them right:
    softcap: float | None = None  # scores and logit_std are after cap * tanh(s / cap) (Gemma 2)
    qk_norm: bool = False  # q and k heads are RMS-normalised: their norm weights set the scale

    def __getattr__(self, name: str) -> torch.Tensor:
        stats = self.__dict__.get("stats", {})
        if name in stats:
            return stats[name]
        raise AttributeError(name)

    def head_summary(self, stat: str, skip_first: int = 1) -> torch.Tensor:
        """``[layers, heads]`` mean of ``stat`` over query positions ``>= skip_first`` (NaN-aware)."""
        return torch.nanmean(self.stats[stat][:, :, skip_first:], dim=-1)

    def to_dict(self, max_positions: int = 64) -> dict[str, Any]:
        """JSON-ready: per-head means, and per-position curves averaged into at most
        ``max_positions`` buckets."""
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_tokens": self.n_tokens,
            "d_head": self.d_head,
            "scale": self.scale,
            "softcap": self.softcap,
            "qk_norm": self.qk_norm,
            "head_means": {stat: _nan_to_none(self.head_summary(stat)) for stat in STATS},
            "by_position": {
                stat: _nan_to_none(bucket(self.stats[stat], max_positions)) for stat in STATS
            },
            "bucket_size": math.ceil(self.n_tokens / max_positions) if self.n_tokens > max_positions else 1,
            "patterns": [
                {"layer": layer, "head": head, "start": self.pattern_start[(layer, head)],
                 "pattern": _nan_to_none(pattern, digits=2)}
                for (layer, head), pattern in sorted(self.patterns.items())
            ],
            "patterns_dropped": self.patterns_dropped,
        }


def bucket(values: torch.Tensor, max_positions: int) -> torch.Tensor:
    """Average the last axis into at most ``max_positions`` equal buckets (NaN-aware)."""
    n = values.shape[-1]
    if n <= max_positions:
        return values
    size = math.ceil(n / max_positions)
    padded = torch.nn.functional.pad(values, (0, size * math.ceil(n / size) - n), value=float("nan"))
    return torch.nanmean(padded.reshape(*values.shape[:-1], -1, size), dim=-1)


def _nan_to_none(values: torch.Tensor, digits: int = 5) -> Any:
    """Nested lists with NaN as None (JSON has no NaN), rounded to ``digits`` significant digits."""
    data = values.tolist()
    form = f".{digits}g"

    def clean(x: Any) -> Any:
        if isinstance(x, list):
            return [clean(v) for v in x]
        return None if (isinstance(x, float) and math.isnan(x)) else float(format(x, form))

    return clean(data)


class AttentionRecorder:
    """Attach to a HookedDecoder; reduces every attention chunk of the next forward."""

    def __init__(
        self,
        model: Any,
        patterns: list[PatternRequest] | None = None,
        pattern_budget_bytes: int = 32 * 2**20,
        chunk_bytes: int = 16 * 2**20,
    ) -> None:
        self.model = model
        self.config = model.config
        self.requests = {(r.layer, r.head): r for r in (patterns or [])}
        self.pattern_budget_bytes = pattern_budget_bytes
        self.chunk_bytes = chunk_bytes
        self.record: AttentionRecord | None = None
        self._start()

    def options(self) -> dict[str, object]:
        """The attention options a recorded forward runs with: this recorder observes every chunk,
        and chunks keep their temporaries (about four fp32 tensors of ``[batch, heads, rows,
        keys]``) under ``chunk_bytes``."""
        self._tokens = 0
        return {"observer": self.observe, "chunk_bytes": self.chunk_bytes}

    @torch.no_grad()
    def observe(self, chunk: AttentionChunk) -> None:
        B, H, c, S = chunk.probs.shape
        layer = chunk.layer
        if layer == 0 and chunk.query_start == 0:
            self._start()
        stats = chunk_statistics(chunk.probs, chunk.visible, chunk.query_index, chunk.scores,
                                 shared=chunk.shared, writable=chunk.writable, alibi=chunk.alibi)
        values = torch.stack([stats[name] for name in STATS])  # (stats, B, H, c)
        values = values[:, 0] if B == 1 else torch.nanmean(values, dim=1)
        stop = chunk.query_start + c
        if self._values is None or self._values.shape[-1] < stop:
            self._grow(stop, H)
        self._values[:, layer, :, chunk.query_start : stop] = values.cpu()
        self._tokens = max(self._tokens, stop)
        for head in range(H):
            request = self.requests.get((layer, head))
            if request is not None:
                self._keep_pattern(request, chunk, head)

    def _start(self) -> None:
        self._values: torch.Tensor | None = None  # (stats, layers, heads, capacity), NaN = not seen
        self._patterns: dict[tuple[int, int], torch.Tensor] = {}
        self._pattern_start: dict[tuple[int, int], int] = {}
        self._pattern_bytes = 0
        self._dropped = 0
        self._tokens = 0

    def _grow(self, length: int, heads: int) -> None:
        """Room for ``length`` positions, at least doubling (chunks arrive a few rows at a time)."""
        old = self._values
        capacity = max(length, 2 * old.shape[-1]) if old is not None else length
        new = torch.full((len(STATS), self.config.n_layers, heads, capacity), float("nan"))
        if old is not None:
            new[..., : old.shape[-1]] = old
        self._values = new

    def _keep_pattern(self, request: PatternRequest, chunk: AttentionChunk, head: int) -> None:
        lo = max(request.start, chunk.query_start)
        hi = min(request.stop, chunk.query_start + chunk.probs.shape[2])
        if lo >= hi:
            return
        rows = chunk.probs[0, head, lo - chunk.query_start : hi - chunk.query_start, : request.stop]
        # The chunk may hold fewer keys than the forward (see AttentionChunk): pad with the zero
        # weight of the keys it left out, so every kept row has the same width.
        width = min(request.stop, max(chunk.n_keys, chunk.probs.shape[-1]))
        if rows.shape[-1] < width:
            rows = torch.nn.functional.pad(rows, (0, width - rows.shape[-1]))
        key = (request.layer, head)
        nbytes = rows.numel() * 4
        if self._pattern_bytes + nbytes > self.pattern_budget_bytes:
            self._dropped += 1
            return
        self._pattern_bytes += nbytes
        previous = self._patterns.get(key)
        rows = rows.to("cpu", torch.float32, copy=True)  # a view would keep the whole chunk alive
        self._patterns[key] = rows if previous is None else torch.cat([previous, rows])
        self._pattern_start.setdefault(key, lo)

    def finish(self) -> AttentionRecord | None:
        if self._values is None:
            return None
        self.record = AttentionRecord(
            n_layers=self.config.n_layers,
            n_heads=self.config.n_heads,
            n_tokens=self._tokens,
            # the nnsight backend describes a foreign model with the basic sizes only
            d_head=getattr(self.config, "qk_dim", self.config.d_head),
            scale=self.config.scale,
            softcap=getattr(self.config, "attn_softcap", None),
            qk_norm=getattr(self.config, "qk_norm", False),
            stats={name: self._values[i, ..., : self._tokens].clone() for i, name in enumerate(STATS)},
            patterns=dict(self._patterns),
            pattern_start=dict(self._pattern_start),
            patterns_dropped=self._dropped,
        )
        return self.record
