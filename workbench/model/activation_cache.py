"""ActivationCache: what ``run_with_cache`` keeps, keyed by hook name, with TransformerLens's helpers.

Shapes: C components (stacked), B batch, P positions (after ``pos_slice``), d d_model, L layers,
H heads. Keys are full hook names (``cache["blocks.3.attn.hook_pattern"]``) or shorthand
resolved by :func:`workbench.utils.get_act_name`: ``cache["pattern", 3]``, ``cache["resid_post",
-1]`` (negative layers count from the end), ``cache["scale", 2, "ln1"]``, ``cache["embed"]``.

The helpers follow TransformerLens's definitions with one difference on purpose: the workbench
never folds a norm's weight into the next matrix, so ``apply_ln_to_stack`` centres (LayerNorm),
divides by the cached ``hook_scale`` *and multiplies by the norm's weight*; the bias, a constant
no component owns, is left out. On a TransformerLens model with folded weights both give the
same numbers; here ``sum(apply_ln_to_stack(decompose_resid())) + ln_final.bias`` is exactly the
final normalised stream, and ``logit_attrs`` sums to the logit (difference) minus the bias'.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from workbench.model.head_inputs import head_out_weights
from workbench.utils import get_act_name

PosSlice = int | slice | list[int] | torch.Tensor | None


_POS_DIM = -2  # positions in [..., P, d] activations


def _positions(tensor: torch.Tensor, pos_slice: PosSlice, dim: int) -> torch.Tensor:
    """``tensor`` indexed by ``pos_slice`` along ``dim`` (an int drops the axis)."""
    if pos_slice is None:
        return tensor
    index = [slice(None)] * tensor.dim()
    index[dim] = torch.as_tensor(pos_slice) if isinstance(pos_slice, list) else pos_slice
    return tensor[tuple(index)]


class ActivationCache(Mapping):
    """Activations by hook name (a read-only mapping) plus analysis helpers."""

    def __init__(self, cache_dict: dict[str, torch.Tensor], model: Any, has_batch_dim: bool = True) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

    # --- mapping ---------------------------------------------------------------------------

    def resolve(self, key: str | tuple) -> str:
        """The full hook name of ``key`` (a name, a short name, or ``(name, layer[, type])``)."""
        if isinstance(key, tuple):
            name, layer, *rest = key
            if layer is not None and layer < 0:
                layer += self.model.config.n_layers
            return get_act_name(name, layer, rest[0] if rest else None)
        return key if key in self.cache_dict else get_act_name(key)

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        name = self.resolve(key)
        if name not in self.cache_dict:
            raise KeyError(f"{name!r} is not in the cache (was it excluded by names_filter?)")
        return self.cache_dict[name]

    def __contains__(self, key: object) -> bool:
        try:
            return self.resolve(key) in self.cache_dict  # type: ignore[arg-type]
        except KeyError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __repr__(self) -> str:
        return f"ActivationCache with {len(self)} activations: {list(self.cache_dict)[:6]}..."

    def to(self, device: str | torch.device) -> ActivationCache:
        """The cache with every tensor moved to ``device``."""
        moved = {name: t.to(device) for name, t in self.cache_dict.items()}
        return ActivationCache(moved, self.model, self.has_batch_dim)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis of a batch-1 cache (ValueError otherwise)."""
        if not self.has_batch_dim:
            return self
        for name, tensor in self.cache_dict.items():
            if tensor.dim() == 0 or tensor.shape[0] != 1:
                raise ValueError(f"{name} has batch {tuple(tensor.shape)[:1]}, not 1")
        return ActivationCache({n: t[0] for n, t in self.cache_dict.items()}, self.model, False)

    # --- residual stream decompositions ----------------------------------------------------

    def _layer(self, layer: int | None) -> int:
        n_layers = self.model.config.n_layers
        return n_layers if layer is None or layer == -1 else layer

    def _stacked(self, components: list[torch.Tensor], labels: list[str], layer: int, mlp_input: bool,
                 pos_slice: PosSlice, apply_ln: bool, return_labels: bool) -> Any:
        """``components`` at ``pos_slice`` stacked ``[C, B, P, d]``, scaled by the norm that reads
        them (``apply_ln``), with their labels when asked."""
        stack = torch.stack([_positions(c, pos_slice, _POS_DIM) for c in components])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice)
        return (stack, labels) if return_labels else stack

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Any:
        """The residual stream before each layer up to ``layer`` (all, plus the final
        ``resid_post``, when None/-1/n_layers): ``[C, B, P, d]``, labels ``"3_pre"``,
        ``"3_mid"`` (``incl_mid``), ``"final_post"``."""
        layer = self._layer(layer)
        n_layers = self.model.config.n_layers
        components, labels = [], []
        for index in range(layer + 1):
            if index == n_layers:
                components.append(self["resid_post", n_layers - 1])
                labels.append("final_post")
                continue
            components.append(self["resid_pre", index])
            labels.append(f"{index}_pre")
            if (incl_mid and index < layer) or (mlp_input and index == layer):
                components.append(self["resid_mid", index])
                labels.append(f"{index}_mid")
        return self._stacked(components, labels, layer, mlp_input, pos_slice, apply_ln, return_labels)

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice: PosSlice = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Any:
        """What each sublayer wrote before ``layer`` (embeddings, then every attention and MLP
        output; ``mode`` "attn" / "mlp" keeps one kind): ``[C, B, P, d]``; the components sum to
        ``resid_pre`` of ``layer`` (``resid_mid`` with ``mlp_input``)."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        layer = self._layer(layer)
        components, labels = [], []
        if incl_embeds:
            for name in ("embed", "pos_embed"):
                if f"hook_{name}" in self.cache_dict:
                    components.append(self.cache_dict[f"hook_{name}"])
                    labels.append(name)
        for index in range(layer):
            if mode != "mlp":
                components.append(self["attn_out", index])
                labels.append(f"{index}_attn_out")
            if mode != "attn":
                components.append(self["mlp_out", index])
                labels.append(f"{index}_mlp_out")
        if mlp_input and mode != "mlp":
            components.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        return self._stacked(components, labels, layer, mlp_input, pos_slice, apply_ln, return_labels)

    def compute_head_results(self) -> None:
        """Add ``blocks.{l}.attn.hook_result`` ``[B, T, H, d]`` from the cached ``hook_z`` and
        ``W_O`` for every layer whose result is missing (no output bias, as the hook point)."""
        for layer, block in enumerate(self.model.blocks):
            name = f"blocks.{layer}.attn.hook_result"
            if name in self.cache_dict:
                continue
            z = self["z", layer]  # (B, T, H, D)
            attn = block.attn
            w_o = head_out_weights(attn.o, attn.n_heads, attn.d_head)  # (H, D, d)
            self.cache_dict[name] = torch.einsum("...hk,hkd->...hd", z, w_o.to(z.device, z.dtype)).detach()

    def stack_head_results(
        self,
        layer: int | None = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: PosSlice = None,
        apply_ln: bool = False,
    ) -> Any:
        """Every head's output before ``layer`` (all layers for -1/None/n_layers) as
        ``[L x H, B, P, d]``, labels ``"L3H5"``; ``incl_remainder`` adds the residual stream
        minus the heads' sum (embeddings, MLPs, biases) as ``"remainder"``."""
        layer = self._layer(layer)
        n_heads = self.model.config.n_heads
        self.compute_head_results()
        components, labels = [], []
        for index in range(layer):
            result = _positions(self["result", index], pos_slice, _POS_DIM - 1)  # (B, P, H, d)
            components.extend(result.movedim(-2, 0))
            labels.extend(f"L{index}H{head}" for head in range(n_heads))
        stack = torch.stack(components) if components else torch.empty(0)
        if incl_remainder:
            total = self.accumulated_resid(layer, pos_slice=pos_slice)[-1]
            stack = torch.cat([stack, (total - stack.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(
        self,
        residual_stack: torch.Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: PosSlice = None,
    ) -> torch.Tensor:
        """Each component ``[..., B, P, d]`` through the norm that reads the stream at ``layer``
        (``ln_final`` for None/-1/n_layers, else ``ln1``, or ``ln2`` with ``mlp_input``) with
        this run's frozen scale: centred (LayerNorm), divided by ``hook_scale``, times the
        weight, no bias (see the module docstring). ``pos_slice`` is the one the stack was
        cut with, so that the scale is cut alike."""
        n_layers = self.model.config.n_layers
        if layer is None or layer == -1 or layer == n_layers:
            norm, scale = self.model.ln_final, self["ln_final.hook_scale"]
        else:
            kind = "ln2" if mlp_input else "ln1"
            norm, scale = getattr(self.model.blocks[layer], kind), self["scale", layer, kind]
        scale = _positions(scale, pos_slice, _POS_DIM)
        stack = residual_stack.float()
        if isinstance(norm, torch.nn.LayerNorm):
            stack = stack - stack.mean(-1, keepdim=True)
        stack = stack / scale.to(stack.device)
        if norm.weight is not None:  # Gemma's RMSNorm multiplies by offset + weight
            weight = norm.weight.detach().to(stack.device, torch.float32) + getattr(norm, "offset", 0.0)
            stack = stack * weight
        return stack.to(residual_stack.dtype)

    def logit_attrs(
        self,
        residual_stack: torch.Tensor,
        tokens: int | str | torch.Tensor,
        incorrect_tokens: int | str | torch.Tensor | None = None,
        pos_slice: PosSlice = None,
    ) -> torch.Tensor:
        """Each component's direct contribution to the logit of ``tokens`` (minus that of
        ``incorrect_tokens``): ``apply_ln_to_stack`` (final norm) dotted with the unembedding
        directions. ``residual_stack [C, B, P, d]`` or ``[C, B, d]``; ``tokens`` an id, a string
        of one token, ``[B]`` or ``[B, P]`` ids. Returns ``[C, B, P]`` or ``[C, B]``."""
        directions = self._directions(tokens, residual_stack)
        if incorrect_tokens is not None:
            directions = directions - self._directions(incorrect_tokens, residual_stack)
        scaled = self.apply_ln_to_stack(residual_stack, -1, pos_slice=pos_slice)
        return (scaled * directions).sum(dim=-1)

    def _directions(self, tokens: int | str | torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
        if isinstance(tokens, str):
            tokens = self.model.to_single_token(tokens)
        ids = torch.as_tensor(tokens, device=self.model.unembed.weight.device)
        directions = self.model.unembed.weight.detach()[ids].to(stack.device, stack.dtype)  # (..., d)
        if ids.dim() == 1 and stack.dim() == 4:  # [B] ids against a stack with a position axis
            directions = directions[:, None]
        return directions
