"""nnsight backend: the workbench's records from a transformers model the decoder does not implement.

``record_hf(hf_model, input_ids)`` runs one forward of a transformers causal LM under
``nnsight.NNsight(hf_model).trace(...)`` and returns the same :class:`~workbench.recorders.Recording`
that :func:`workbench.record` gives for the hooked decoder. The reductions are the recorders' own
(:func:`~workbench.recorders.attention.chunk_statistics` through
:class:`~workbench.recorders.attention.AttentionRecorder`,
:func:`~workbench.recorders.residual.write_stats`, :func:`~workbench.recorders.residual.logit_lens`,
:func:`~workbench.recorders.routing.accumulate`, :func:`~workbench.recorders.loss.chunked_loss`), so
on a family both paths load the numbers agree by construction, up to float error.

What is read, found generically (no model names; see :func:`describe`):

* the decoder layers: the longest ``nn.ModuleList`` whose every item has an attention child
  (``model.layers``, ``transformer.h``, ``gpt_neox.layers`` ...);
* per layer: its input (``resid_pre``), the attention child's output ``(attn_out, weights)``, the
  MLP child's output (``mlp_out``), the layer's output (``resid_post``), and inside MoE blocks the
  router (a ``gate``/``router`` child with one weight row per expert);
* the final norm (the last norm module beside the layer list) and ``get_output_embeddings()``
  for the logit lens and the loss.

Mapping to the hooked decoder's names (:func:`decompose`): when the sublayers return their writes
(``resid_pre + attn + mlp == resid_post``), ``attn_out`` and ``mlp_out`` are the attention and MLP
outputs and ``resid_mid = resid_pre + attn_out`` (in parallel-residual blocks such as GPT-NeoX's
that is the stream plus the attention write, which the MLP does not read); when they return the
updated stream (BLOOM adds the residual inside), the writes are the differences. A layer that
fits neither (post-sublayer norms as in Gemma 2 or OLMo 2) raises :class:`BackendError`: record
it with ``residual=False``.

Attention weights: only "eager" attention returns them, so when attention is recorded the model
is switched to ``attn_implementation="eager"`` for the traced forward and switched back after
(load with ``attn_implementation="eager"`` to skip the switch). Eager attention materialises one
layer's ``[B, H, T, T]`` weights; the backend reduces them in query chunks inside the trace, as the
layer runs, and keeps nothing of that size: peak extra memory is one layer's pattern (which eager
attention allocates anyway), never ``layers x`` it. The visible-key mask is rebuilt as the
decoder builds it (causal, plus padding from ``attention_mask`` and the config's sliding window per
layer); a layer whose weights put mass on keys that mask hides raises :class:`BackendError`.

Logit lens and loss decode the final norm's output with the output embedding; models that
post-process logits (soft-capping, a logit scale) are decoded without that step.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from workbench.backends.nnsight.layout import HFLayout, LayerParts, _envoy, describe
from workbench.errors import BackendError
from workbench.model.context import CHUNK_ROWS, AttentionChunk, ForwardContext, chunk_keys, query_chunks
from workbench.model.mlp import route
from workbench.recorders import Recording
from workbench.recorders.attention import AttentionRecorder, PatternRequest
from workbench.recorders.loss import LossRecord, chunked_loss
from workbench.recorders.residual import STATS as RESIDUAL_STATS
from workbench.recorders.residual import ResidualRecord, logit_lens, write_stats
from workbench.recorders.residual import lens_positions as pick_lens_positions
from workbench.recorders.routing import LayerRouting, RoutingRecord, accumulate

# Probability on keys the rebuilt mask hides above this means the mask is not the model's.
MASK_LEAK_TOLERANCE = 1e-4


@contextlib.contextmanager
def eager_attention(hf_model: nn.Module, needed: bool) -> Iterator[None]:
    """Switch ``hf_model`` to eager attention (which returns its weights) for the block."""
    config = hf_model.config
    before = getattr(config, "_attn_implementation", None)
    switch = needed and before not in (None, "eager")
    if switch:
        hf_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            hf_model.set_attn_implementation(before)


class _Collector:
    """Reduces what the trace hands over, layer by layer, into the recorders' state."""

    def __init__(
        self,
        layout: HFLayout,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attention: bool,
        patterns: list[PatternRequest] | None,
        pattern_budget_bytes: int,
        chunk_bytes: int,
        samples: int = 32,
    ) -> None:
        self.layout = layout
        B, T = input_ids.shape
        self.batch, self.n_tokens = B, T
        self.attention_mask = attention_mask
        self.chunk_bytes = chunk_bytes
        self.samples = samples
        self._masks: dict[int | None, torch.Tensor] = {}
        self.attention = None
        if attention:
            shape = SimpleNamespace(
                n_layers=layout.n_layers, n_heads=layout.n_heads, d_head=layout.d_head, scale=layout.scale
            )
            self.attention = AttentionRecorder(
                SimpleNamespace(config=shape), patterns, pattern_budget_bytes, chunk_bytes
            )
        self.write_stats: list[dict[str, torch.Tensor]] = []
        self.residuals: list[torch.Tensor] = []
        self.routing = {
            part.index: LayerRouting(part.index, layout.n_experts, layout.top_k)
            for part in layout.layers
            if part.router is not None
        }

    def visible(self, window: int | None, device: torch.device) -> torch.Tensor:
        """``(B or 1, 1, T, T)`` bool: the decoder's own mask (causal, window, padding)."""
        if window not in self._masks:
            index = torch.arange(self.n_tokens, device=device)
            key_valid = None
            if self.attention_mask is not None and not bool(self.attention_mask.all()):
                key_valid = self.attention_mask.to(device=device, dtype=torch.bool)
            ctx = ForwardContext(query_index=index, key_index=index, key_valid=key_valid)
            self._masks[window] = ctx.visible_or_causal(window)
        return self._masks[window]

    def observe_attention(self, part: LayerParts, weights: torch.Tensor | None) -> None:
        if weights is None:
            raise BackendError(
                f"layer {part.index}: the attention module returned no weights; load the model with "
                'attn_implementation="eager"'
            )
        B, H, T, S = weights.shape
        visible_all = self.visible(part.window, weights.device)
        query_index = torch.arange(T, device=weights.device)
        padded = self.attention_mask is not None and not bool(self.attention_mask.all())
        # The decoder's chunking (the same query_chunks rule): about chunk_bytes of temporaries,
        # and keys cut after the chunk's last query (causal).
        keys_budget = chunk_keys(self.chunk_bytes, B, H)
        for start, stop in query_chunks(T, 0, CHUNK_ROWS, keys_budget):
            visible = visible_all[:, :, start:stop]
            n = stop
            if n < S and padded and bool(visible[..., n:].any()):
                n = S  # a padding row that sees every key
            probs, visible = weights[:, :, start:stop, :n], visible[..., :n]
            leak = float((1 - (probs.float() * visible).sum(-1)).abs().max())
            if leak > MASK_LEAK_TOLERANCE:
                raise BackendError(
                    f"layer {part.index}: attention puts {leak:.3g} of its weight on keys the causal"
                    f"{'/window' if part.window else ''}/padding mask hides: this model masks attention "
                    "in a way the backend does not know"
                )
            # scores=None: chunk_statistics takes the logit spread from log-probabilities.
            self.attention.observe(
                AttentionChunk(
                    part.index, start, None, probs, visible, query_index[start:stop], self.layout.scale, S,
                    alibi=self.layout.alibi,
                )
            )

    def observe_router(self, part: LayerParts, output: Any) -> None:
        """Router output: transformers 5's ``(logits, scores, indices)`` or bare logits."""
        B, T = self.batch, self.n_tokens
        E, k = self.layout.n_experts, self.layout.top_k
        if isinstance(output, tuple) and len(output) == 3:
            logits, weights, indices = output
        else:
            logits = output[0] if isinstance(output, tuple) else output
            weights, indices = route(logits.float(), k, self.layout.norm_topk_prob)
        accumulate(
            self.routing[part.index],
            logits.reshape(B, T, E),
            indices.reshape(B, T, k),
            weights.reshape(B, T, k).float(),
            self.samples,
        )

    def observe_residual(
        self, part: LayerParts, resid_pre: torch.Tensor, attn_output: torch.Tensor,
        mlp_output: torch.Tensor | None, resid_post: torch.Tensor, keep_for_lens: bool,
    ) -> None:
        attn_out, resid_mid, mlp_out = decompose(part.index, resid_pre, attn_output, mlp_output, resid_post)
        self.write_stats.append(write_stats(resid_pre, attn_out, resid_mid, mlp_out))
        if keep_for_lens:
            self.residuals.append(resid_post)


def _closes(total: torch.Tensor, expected: torch.Tensor) -> bool:
    """``total`` equals ``expected`` up to the rounding of a couple of additions in its dtype."""
    tolerance = max(1e-4, 16 * torch.finfo(expected.dtype).eps)
    error = (total.float() - expected.float()).norm()
    return bool(error <= tolerance * expected.float().norm().clamp_min(1e-30))


def decompose(
    layer: int, resid_pre: torch.Tensor, attn_output: torch.Tensor, mlp_output: torch.Tensor | None,
    resid_post: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(attn_out, resid_mid, mlp_out)``: the writes of one layer, whichever way it adds them.

    Most blocks return their write from each sublayer (``resid_post = resid_pre + attn + mlp``,
    sequential or parallel); some (BLOOM) add the residual inside the sublayer, so attention
    returns ``resid_mid`` and the MLP ``resid_post``. The one that adds up is used; a layer that
    fits neither (post-sublayer norms, residual taken after a norm) raises :class:`BackendError`.
    """
    if mlp_output is None:  # no MLP child found: its write is what is left
        return attn_output, resid_pre + attn_output, resid_post - resid_pre - attn_output
    if _closes(resid_pre + attn_output + mlp_output, resid_post):
        return attn_output, resid_pre + attn_output, mlp_output
    if _closes(mlp_output, resid_post):
        return attn_output - resid_pre, attn_output, mlp_output - attn_output
    raise BackendError(
        f"layer {layer}: its attention and MLP outputs do not add up to the layer's output, as writes "
        "or as the updated stream (post-sublayer norms?); record it with residual=False"
    )


def _tensor(value: Any) -> torch.Tensor:
    """A module output's main tensor (the first item of a tuple output)."""
    return value[0] if isinstance(value, tuple | list) else value


def _hidden_states(inputs: tuple[tuple[Any, ...], dict[str, Any]]) -> torch.Tensor:
    args, kwargs = inputs
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return args[0] if args else next(iter(kwargs.values()))


def _forward_kwargs(hf_model: nn.Module, attention_mask: torch.Tensor | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    parameters = inspect.signature(hf_model.forward).parameters
    if "use_cache" in parameters:
        kwargs["use_cache"] = False
    if "logits_to_keep" in parameters:  # the recorders decode in chunks; skip the [B, T, V] logits
        kwargs["logits_to_keep"] = 1
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    return kwargs


@torch.no_grad()
def record_hf(
    hf_model: nn.Module,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    attention: bool = True,
    residual: bool = True,
    routing: bool = True,
    loss: bool = True,
    patterns: list[PatternRequest] | None = None,
    pattern_budget_bytes: int = 32 * 2**20,
    lens: bool = True,
    lens_positions: int = 32,
    chunk_bytes: int = 16 * 2**20,
) -> Recording:
    """Record one forward of a transformers causal LM (or an ``NNsight`` wrapping one).

    ``input_ids`` ``[B, T]``; ``attention_mask`` ``[B, T]`` (1 = token, 0 = padding). The records
    are those of :func:`workbench.record` (routing is None for a dense model); see the module
    docstring for what is read and how.
    """
    from nnsight import NNsight  # noqa: PLC0415 - nnsight is imported only when a model is traced

    if isinstance(hf_model, NNsight):
        traced, hf_model = hf_model, hf_model._module
    else:
        traced = NNsight(hf_model)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, pos], got shape {tuple(input_ids.shape)}")
    layout = describe(hf_model)
    device = next(hf_model.parameters()).device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    collector = _Collector(
        layout, input_ids, attention_mask, attention, patterns, pattern_budget_bytes, chunk_bytes
    )
    routing = routing and bool(collector.routing)
    keep_lens = residual and lens
    need_final = loss or keep_lens
    saved_final: list[torch.Tensor] = []
    with eager_attention(hf_model, attention), traced.trace(
        input_ids, **_forward_kwargs(hf_model, attention_mask)
    ):
        layers = _envoy(traced, layout.layers_path)
        # Read in execution order: layer input, attention, router, MLP, layer output.
        for part in layout.layers:
            layer = layers[part.index]
            resid_pre = _hidden_states(layer.inputs) if residual else None
            if attention or residual:
                attn_output = _envoy(layer, part.attention).output
                if attention:
                    weights = attn_output[1] if isinstance(attn_output, tuple) else None
                    collector.observe_attention(part, weights)
            if routing and part.router is not None:
                collector.observe_router(part, _envoy(layer, part.router).output)
            if residual:
                mlp_output = _tensor(_envoy(layer, part.mlp).output) if part.mlp is not None else None
                resid_post = _tensor(layer.output).save()
                collector.observe_residual(
                    part, resid_pre, _tensor(attn_output), mlp_output, resid_post, keep_lens
                )
        if need_final:
            saved_final.append(_tensor(_envoy(traced, layout.final_norm_path).output).save())
    recording = Recording()
    if attention:
        recording.attention = collector.attention.finish()
    final = saved_final[0] if saved_final else None
    unembed = hf_model.get_output_embeddings()
    if residual and collector.write_stats:
        stats = {name: torch.stack([s[name] for s in collector.write_stats]) for name in RESIDUAL_STATS}
        record = ResidualRecord(stats=stats, final_norm=final.float().norm(dim=-1).mean(0).cpu())
        if keep_lens:
            final_norm = hf_model.get_submodule(layout.final_norm_path)
            positions = pick_lens_positions(final.shape[1], lens_positions)
            record.lens_positions = positions
            index = positions.to(final.device)
            rows = torch.stack([resid[0, index.to(resid.device)].to(final.device) for resid in collector.residuals])
            record.lens_kl, record.lens_top1 = logit_lens(rows, final[0, index], final_norm, unembed)
        recording.residual = record
    if routing:
        recording.routing = RoutingRecord({k: v for k, v in collector.routing.items() if v.load is not None})
    if loss:
        recording.loss = LossRecord(chunked_loss(final, input_ids, unembed))
    return recording


def attention_weights_bytes(
    n_layers: int, n_heads: int, n_tokens: int, batch: int = 1, dtype_bytes: int = 4
) -> int:
    """Bytes that keeping every layer's attention weights (``output_attentions``) holds."""
    return n_layers * n_heads * batch * n_tokens * n_tokens * dtype_bytes


