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
whether the layer's top token equals the final top token. Decoding costs T x d x V per layer, so
the lens is taken at ``lens_positions`` evenly spaced positions (all of them for short inputs),
``chunk`` positions at a time: ``[layers, T, vocab]`` is never held.
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
    residuals: list[torch.Tensor],
    final_hidden: torch.Tensor,
    final_norm: torch.nn.Module,
    unembed: torch.nn.Module,
    positions: torch.Tensor,
    chunk: int = 128,
    block_rows: int = 256,
    slice_rows: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(final || layer) and top-1 agreement, ``[layers, P]``, batch row 0 of each residual.

    ``KL = E_f[log p_f] - E_f[z] + lse(z)`` for a layer's logits ``z``: a dot product and a
    normaliser per row, no ``[rows, V]`` log-probabilities. Several layers are decoded in one
    matrix product of about ``block_rows`` rows (a 64-row product runs well below the machine's
    matmul speed).
    """
    n_layers = len(residuals)
    kl = torch.empty(n_layers, positions.numel())
    top1 = torch.empty(n_layers, positions.numel(), dtype=torch.bool)
    device = final_hidden.device
    for start in range(0, positions.numel(), chunk):
        index = positions[start : start + chunk].to(device)
        c = index.numel()
        final_logits = unembed(final_hidden[0, index]).float()  # (c, V)
        final_lse = log_normaliser(final_logits)
        final_p = (final_logits - final_lse[:, None]).clamp_min_(-87.0).exp_()
        final_term = torch.linalg.vecdot(final_p, final_logits) - final_lse  # E_f[log p_f], (c,)
        final_top = row_max(final_logits)[1]
        per_block = max(1, block_rows // c)
        for first in range(0, n_layers, per_block):
            layers = range(first, min(first + per_block, n_layers))
            rows = torch.stack([residuals[layer][0, index.to(residuals[layer].device)].to(device)
                                for layer in layers])  # (k, c, d)
            logits = unembed(final_norm(rows)).float()  # (k, c, V)
            # A few rows at a time, so the passes below read cache rather than memory.
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

    def __init__(self, model: Any, lens: bool = True, lens_positions: int = 64) -> None:
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

    def hooks(self) -> list[tuple[str, Any]]:
        fwd = []
        for layer in range(self.model.config.n_layers):
            for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
                fwd.append((f"blocks.{layer}.{name}", self._capture(layer, name)))
        fwd.append(("hook_final", self._capture_final))
        return fwd

    def _capture(self, layer: int, name: str):
        def hook(tensor: torch.Tensor, point: Any) -> None:
            if layer == 0 and name == "hook_resid_pre":
                self._reset()
            current = self._current.setdefault(layer, {})
            current[name] = tensor.detach()
            if name == "hook_mlp_out":
                self._stats.append(
                    write_stats(current["hook_resid_pre"], current["hook_attn_out"],
                                current["hook_resid_mid"], current["hook_mlp_out"])
                )
            if name == "hook_resid_post":
                if self.lens:
                    self._residuals.append(tensor.detach())
                del self._current[layer]

        return hook

    def _capture_final(self, tensor: torch.Tensor, point: Any) -> None:
        self._final = tensor.detach()

    def finish(self) -> ResidualRecord | None:
        if not self._stats:
            return None
        stats = {name: torch.stack([s[name] for s in self._stats]) for name in STATS}
        final = self._final
        record = ResidualRecord(stats=stats, final_norm=final.float().norm(dim=-1).mean(0).cpu())
        if self.lens and self._residuals and final is not None:
            positions = lens_positions(final.shape[1], self.lens_limit)
            record.lens_positions = positions
            record.lens_kl, record.lens_top1 = logit_lens(
                self._residuals, final, self.model.ln_final, self.model.unembed, positions
            )
        self._residuals = []
        self.record = record
        return record
