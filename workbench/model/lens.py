"""The logit lens as a library call: what each layer would predict, at chosen positions.

``logit_lens(model, tokens, positions=[-1], top_k=5)`` decodes each chosen layer's residual
stream (``resid_post``; ``"embed"`` for the stream before layer 0) with the model's own final
norm and unembedding (nostalgebraist 2020). It is streamed: a hook keeps only the rows at
``positions`` as each layer runs, the forward stops at the final norm (no ``[T, vocab]``
logits), and rows are decoded a block at a time, so memory is ``layers x batch x positions x
vocab`` for the logits (or ``x k`` for top-k), whatever the input length. Asking for the full
logits of more than ``max_logits_bytes`` is refused with the number; ask for ``top_k`` instead.

The last layer's lens equals the model's logits at those positions (the test checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workbench.model.hooks import hooks


@dataclass
class LensResult:
    """Per-layer predictions at ``positions [P]`` for ``layers [L]`` (labels ``"embed"`` or
    ``"3"`` = after block 3). Either ``logits [L, B, P, V]`` or the top-k ``token_ids`` and
    ``probs`` ``[L, B, P, k]`` (softmax probabilities, not renormalised over k)."""

    layers: list[str]
    positions: list[int]
    logits: torch.Tensor | None = None
    token_ids: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    tokens: list | None = None  # token strings [L][B][P][k], when the model has a tokenizer


def _layer_names(model: Any, layers: Sequence[int | str] | None) -> tuple[list[str], list[str]]:
    n_layers = model.config.n_layers
    chosen = list(range(n_layers)) if layers is None else list(layers)
    labels, hook_names = [], []
    for layer in chosen:
        if layer == "embed":
            labels.append("embed")
            hook_names.append("blocks.0.hook_resid_pre")
            continue
        index = int(layer) + n_layers if int(layer) < 0 else int(layer)
        if not 0 <= index < n_layers:
            raise IndexError(f"layer {layer} is outside 0..{n_layers - 1}")
        labels.append(str(index))
        hook_names.append(f"blocks.{index}.hook_resid_post")
    return labels, hook_names


@torch.no_grad()
def logit_lens(
    model: Any,
    tokens: Any,
    positions: Sequence[int] | None = None,
    layers: Sequence[int | str] | None = None,
    top_k: int | None = None,
    block_rows: int = 1024,
    max_logits_bytes: int = 2**30,
    **forward_kwargs: Any,
) -> LensResult:
    """Decode the residual stream of ``layers`` (default: after every block) at ``positions``
    (default: the last; negatives count from the end) of ``tokens`` (ids ``[B, T]`` or text).

    ``top_k`` keeps the k most likely tokens per row; without it the full logits are returned.
    ``forward_kwargs`` go to the forward (``attention_mask``, ``position_ids``).
    """
    if isinstance(tokens, str | list):
        tokens = model.to_tokens(tokens)
    B, T = tokens.shape
    at = [p + T if p < 0 else p for p in (positions if positions is not None else [-1])]
    if any(not 0 <= p < T for p in at):
        raise IndexError(f"positions {list(positions or [])} outside 0..{T - 1}")
    labels, hook_names = _layer_names(model, layers)
    vocab = model.config.vocab_size
    if top_k is None and len(labels) * B * len(at) * vocab * 4 > max_logits_bytes:
        need = len(labels) * B * len(at) * vocab * 4
        raise ValueError(
            f"the lens logits would be {need / 2**30:.2f} GiB ({len(labels)} layers x {B} x "
            f"{len(at)} positions x {vocab}); pass top_k, fewer positions or layers, or raise "
            "max_logits_bytes"
        )
    index = torch.tensor(at, device=model.device)
    rows: dict[str, torch.Tensor] = {}

    def keep(tensor: torch.Tensor, hook: Any) -> None:
        rows[hook.name] = tensor.detach()[:, index.to(tensor.device)].clone()  # (B, P, d)

    with hooks(model, [(sorted(set(hook_names)), keep)]):
        model.hidden(tokens, **forward_kwargs)
    stacked = torch.stack([rows[name] for name in hook_names])  # (L, B, P, d)
    flat = stacked.reshape(-1, stacked.shape[-1])
    out_logits, out_ids, out_probs = [], [], []
    for start in range(0, flat.shape[0], block_rows):
        block = flat[start : start + block_rows].to(model.device)
        logits = model.unembed(model.ln_final(block)).float()  # (rows, V)
        if top_k is None:
            out_logits.append(logits.cpu())
        else:
            probs = logits.softmax(dim=-1)
            top = torch.topk(probs, min(top_k, vocab), dim=-1)
            out_ids.append(top.indices.cpu())
            out_probs.append(top.values.cpu())
    shape = (len(labels), B, len(at))
    result = LensResult(labels, at)
    if top_k is None:
        result.logits = torch.cat(out_logits).view(*shape, vocab)
        return result
    result.token_ids = torch.cat(out_ids).view(*shape, -1)
    result.probs = torch.cat(out_probs).view(*shape, -1)
    if model.tokenizer is not None:
        decode = model.tokenizer.decode
        result.tokens = [[[[decode([int(i)]) for i in ks] for ks in row] for row in layer] for layer in result.token_ids]
    return result
