"""Residual-stream recorder: how much each sublayer writes, and a memory-bounded logit lens.

Per layer and position (averaged over the batch):

* ``resid_pre_norm``, ``attn_out_norm``, ``mlp_out_norm``: L2 norms of the stream entering the
  block and of what attention and the MLP add to it.
* ``attn_ratio`` = |attn_out| / |resid_pre| and ``mlp_ratio`` = |mlp_out| / |resid_mid|: the
  relative size of each write (how much a sublayer changes the stream).
* ``attn_cos`` / ``mlp_cos``: cosine between the write and the stream it is added to
  (negative: the sublayer erases what is there).

Logit lens (nostalgebraist 2020): each layer's ``resid_post`` is decoded with the model's own
final norm and unembedding; ``lens_kl[l, t]`` is KL(final || layer l) in nats and ``lens_top1``
whether the layer's top token equals the final top token. Decoding costs d x V per position and
layer, so the lens is taken at ``lens_positions`` evenly spaced positions (default 32, all of them
for shorter inputs; for SmolLM2 at 2048 tokens 32 positions x 30 layers cost about half an
unembedding of the whole input), and only those rows of each layer are kept: ``[layers, T, vocab]``
and ``[layers, T, d]`` are never held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from workbench.recorders.attention import _nan_to_none, bucket, row_max

STATS = ("resid_pre_norm", "attn_out_norm", "mlp_out_norm", "attn_ratio", "mlp_ratio", "attn_cos", "mlp_cos")


@dataclass
class ResidualRecord:
    """Each of :data:`STATS` is ``[layers, T]``; ``lens_kl``/``lens_top1`` are ``[layers, P]``
    at token positions ``lens_positions [P]``; ``final_norm`` is ``[T]``."""

    stats: dict[str, torch.Tensor]
    final_norm: torch.Tensor
    lens_positions: torch.Tensor | None = None
    lens_kl: torch.Tensor | None = None
    lens_top1: torch.Tensor | None = None

    def __getattr__(self, name: str) -> torch.Tensor:
        stats = self.__dict__.get("stats", {})
        if name in stats:
            return stats[name]
        raise AttributeError(name)

    def layer_means(self, stat: str) -> torch.Tensor:
        return torch.nanmean(self.stats[stat], dim=-1)

    def to_dict(self, max_positions: int = 256) -> dict[str, Any]:
        data: dict[str, Any] = {
            "layer_means": {stat: _nan_to_none(self.layer_means(stat)) for stat in STATS},
            "by_position": {stat: _nan_to_none(bucket(self.stats[stat], max_positions)) for stat in STATS},
        }
        if self.lens_kl is not None:
            data["lens"] = {
                "positions": self.lens_positions.tolist(),
                "kl_mean": _nan_to_none(self.lens_kl.mean(dim=-1)),
                "top1_mean": _nan_to_none(self.lens_top1.float().mean(dim=-1)),
            }
        return data


@torch.no_grad()
def write_stats(
    resid_pre: torch.Tensor, attn_out: torch.Tensor, resid_mid: torch.Tensor, mlp_out: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-position write statistics of one block, each ``[T]`` (batch-averaged)."""
    resid_pre, attn_out, resid_mid, mlp_out = (t.float() for t in (resid_pre, attn_out, resid_mid, mlp_out))
    pre_norm, mid_norm = resid_pre.norm(dim=-1), resid_mid.norm(dim=-1)
    attn_norm, mlp_norm = attn_out.norm(dim=-1), mlp_out.norm(dim=-1)
    # Cosines from the norms already taken: one dot product each, no second pass for norms.
    attn_dot = torch.linalg.vecdot(attn_out, resid_pre)
    mlp_dot = torch.linalg.vecdot(mlp_out, resid_mid)
    out = {
        "resid_pre_norm": pre_norm,
        "attn_out_norm": attn_norm,
        "mlp_out_norm": mlp_norm,
        "attn_ratio": attn_norm / pre_norm.clamp_min(1e-12),
        "mlp_ratio": mlp_norm / mid_norm.clamp_min(1e-12),
        "attn_cos": attn_dot / (attn_norm * pre_norm).clamp_min(1e-12),
        "mlp_cos": mlp_dot / (mlp_norm * mid_norm).clamp_min(1e-12),
    }
    return {name: value.mean(dim=0).cpu() for name, value in out.items()}


def lens_positions(n_tokens: int, limit: int) -> torch.Tensor:
    if n_tokens <= limit:
        return torch.arange(n_tokens)
    return torch.linspace(0, n_tokens - 1, limit).round().long().unique()


def log_normaliser(logits: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the last axis without subnormal intermediates.

    A term below ``e^-87`` of the largest is a subnormal float, which x86 CPUs handle dozens of
    times slower than a normal one (a wide vocabulary distribution has thousands of them); it is
    raised to ``e^-87``, which moves the sum by at most ``V x 1e-38`` of itself.
    """
    top = logits.amax(dim=-1, keepdim=True)
    return top.squeeze(-1) + (logits - top).clamp_min_(-87.0).exp_().sum(dim=-1).log_()


@torch.no_grad()
def logit_lens(
    rows: torch.Tensor,
    final: torch.Tensor,
    final_norm: torch.nn.Module,
    unembed: torch.nn.Module,
    final_logits: torch.Tensor | None = None,
    block_rows: int = 1024,
    slice_rows: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(final || layer) and top-1 agreement, ``[layers, P]``.

    ``rows [layers, P, d]`` is each layer's residual stream at the lens positions, ``final
    [P, d]`` the final normalised stream there; ``final_logits [P, V]``, the model's own logits
    when the forward made them, saves decoding it again.

    ``KL = E_f[log p_f] - E_f[z] + lse(z)`` for a layer's logits ``z``: a dot product and a
    normaliser per row, no ``[rows, V]`` log-probabilities. Several layers are decoded in one
    matrix product of about ``block_rows`` rows (a 256-row product runs 12% slower per row than
    a 1024-row one), then reduced ``slice_rows`` rows at a time, so those passes read cache.
    """
    n_layers, n_positions, _ = rows.shape
    kl = torch.empty(n_layers, n_positions)
    top1 = torch.empty(n_layers, n_positions, dtype=torch.bool)
    device = final.device
    chunk = min(n_positions, block_rows)
    for start in range(0, n_positions, chunk):
        at_chunk = slice(start, start + chunk)
        if final_logits is not None:
            final_z = final_logits[at_chunk].to(device, torch.float32)
        else:
            final_z = unembed(final[at_chunk]).float()  # (c, V)
        c = final_z.shape[0]
        final_lse = log_normaliser(final_z)
        final_p = (final_z - final_lse[:, None]).clamp_min_(-87.0).exp_()
        final_term = torch.linalg.vecdot(final_p, final_z) - final_lse  # E_f[log p_f], (c,)
        final_top = row_max(final_z)[1]
        per_block = max(1, block_rows // c)
        for first in range(0, n_layers, per_block):
            layers = range(first, min(first + per_block, n_layers))
            block = rows[first : layers.stop, at_chunk].to(device)  # (k, c, d)
            logits = unembed(final_norm(block)).float()  # (k, c, V)
            for j, layer in enumerate(layers):
                for i in range(0, c, slice_rows):
                    part, rows_i = logits[j, i : i + slice_rows], slice(i, i + slice_rows)
                    layer_term = torch.linalg.vecdot(final_p[rows_i], part) - log_normaliser(part)
                    at = slice(start + i, start + i + part.shape[0])
                    kl[layer, at] = (final_term[rows_i] - layer_term).cpu()  # E_f[log p_f] - E_f[log p_l]
                    top1[layer, at] = (row_max(part)[1] == final_top[rows_i]).cpu()
    return kl, top1


class ResidualRecorder:
    """Hooks the block boundaries of a HookedDecoder and reduces them as the forward runs."""

    def __init__(self, model: Any, lens: bool = True, lens_positions: int = 32) -> None:
        self.model = model
        self.lens = lens
        self.lens_limit = lens_positions
        self.record: ResidualRecord | None = None
        self._reset()

    def _reset(self) -> None:
        self._current: dict[int, dict[str, torch.Tensor]] = {}
        self._stats: list[dict[str, torch.Tensor]] = []
        self._residuals: list[torch.Tensor] = []
        self._final: torch.Tensor | None = None
        self._final_logits: torch.Tensor | None = None
        self._lens_index: torch.Tensor | None = None  # this forward's lens positions

    def hooks(self) -> list[tuple[str, Any]]:
        fwd = []
        for layer in range(self.model.config.n_layers):
            for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
                fwd.append((f"blocks.{layer}.{name}", self._capture(layer, name)))
        fwd.append(("hook_final", self._capture_final))
        if self.lens:
            fwd.append(("hook_logits", self._capture_logits))
        return fwd

    def _capture(self, layer: int, name: str):
        def hook(tensor: torch.Tensor, point: Any) -> None:
            if layer == 0 and name == "hook_resid_pre":  # a new forward
                self._reset()
                if self.lens:
                    self._lens_index = lens_positions(tensor.shape[1], self.lens_limit).to(tensor.device)
            current = self._current.setdefault(layer, {})
            current[name] = tensor.detach()
            if name == "hook_mlp_out":
                self._stats.append(
                    write_stats(current["hook_resid_pre"], current["hook_attn_out"],
                                current["hook_resid_mid"], current["hook_mlp_out"])
                )
            if name == "hook_resid_post":
                if self.lens:  # only the lens positions of batch row 0: a few rows, not [B, T, d]
                    self._residuals.append(tensor.detach()[0, self._lens_index.to(tensor.device)])
                del self._current[layer]

        return hook

    def _capture_final(self, tensor: torch.Tensor, point: Any) -> None:
        self._final, self._final_logits = tensor.detach(), None

    def _capture_logits(self, logits: torch.Tensor, point: Any) -> None:
        if self._lens_index is not None:  # (P, V): the rows the lens needs
            self._final_logits = logits.detach()[0, self._lens_index.to(logits.device)].clone()

    def finish(self) -> ResidualRecord | None:
        if not self._stats:
            return None
        stats = {name: torch.stack([s[name] for s in self._stats]) for name in STATS}
        final = self._final
        record = ResidualRecord(stats=stats, final_norm=final.float().norm(dim=-1).mean(0).cpu())
        if self.lens and self._residuals and final is not None:
            positions = self._lens_index.cpu()
            record.lens_positions = positions
            record.lens_kl, record.lens_top1 = logit_lens(
                torch.stack(self._residuals), final[0, positions.to(final.device)],
                self.model.ln_final, self.model.unembed, self._final_logits,
            )
        self._residuals, self._final_logits = [], None
        self.record = record
        return record
