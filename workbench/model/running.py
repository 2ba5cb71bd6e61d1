"""``run_with_cache`` / ``run_with_hooks`` on the hooked decoder, and what a cache will cost.

Mixed into :class:`~workbench.model.HookedDecoder`::

    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.2.attn.hook_z", ablate)])

Before a cached run, :func:`cache_bytes` adds up the bytes the requested activations will hold
(shapes from the config: ``[B, H, T, T]`` per pattern, ``[B, T, d_model]`` per residual ...),
and ``run_with_cache`` refuses a cache that cannot fit in the free memory of the device it goes
to, naming the number: every layer's pattern of SmolLM2 at 8,192 tokens is 30 x 9 x 8192^2 x 4
bytes = 67.5 GiB. ``workbench.record`` streams statistics over the same hook points instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from workbench.errors import RunError
from workbench.model.activation_cache import ActivationCache
from workbench.model.hooks import HookPoint, HookSelector, hooks, name_hook_points, reset_hooks, select
from workbench.model.lens import LensResult, logit_lens
from workbench.units import gib

NamesFilter = HookSelector | None


class CacheTooLargeError(RunError):
    """A requested activation cache would not fit in the memory of its device."""


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device``: CUDA's free bytes, or the OS's MemAvailable for the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62  # unknown: do not refuse


def hook_numel(model: Any, name: str, batch: int, tokens: int) -> tuple[int, int]:
    """``(elements, bytes per element)`` the hook point ``name`` holds for one forward of
    ``[batch, tokens]`` without a KV cache (experts: their share of the routed tokens)."""
    c = model.config
    itemsize = torch.empty(0, dtype=model.dtype).element_size()
    BT, last = batch * tokens, name.rsplit(".", 1)[-1]
    layer = int(name.split(".")[1]) if name.startswith("blocks.") else None
    heads = {"q": c.n_heads, "rot_q": c.n_heads, "z": c.n_heads, "k": c.kv_heads, "v": c.kv_heads,
             "rot_k": c.kv_heads, "q_input": c.n_heads, "attn_in": c.n_heads,
             "k_input": c.kv_heads, "v_input": c.kv_heads, "result": c.n_heads}
    key = last.removeprefix("hook_")
    if key == "tokens":
        return BT, 8
    if key in ("pattern", "attn_scores"):
        return batch * c.n_heads * tokens * tokens, itemsize
    if key == "scale":
        return BT, 4
    if key in ("q", "k", "v", "z", "rot_q", "rot_k"):
        return BT * heads[key] * c.d_head, itemsize
    if key in ("q_input", "k_input", "v_input", "attn_in", "result"):
        return BT * heads[key] * c.d_model, itemsize
    if key == "logits":
        return BT * c.vocab_size, itemsize
    if key == "router_logits":
        return BT * c.n_experts, itemsize
    if key in ("expert_indices", "expert_weights"):
        return BT * c.top_k, 8 if key == "expert_indices" else itemsize
    if key in ("pre", "pre_linear") or (key == "post" and ".mlp." in name):
        moe = layer is not None and c.is_moe_layer(layer)
        if ".experts." in name:  # routed tokens split over the experts
            return math.ceil(BT * c.top_k / c.n_experts) * (c.d_expert or c.d_mlp), itemsize
        if ".shared_expert." in name:
            return BT * c.d_shared_expert, itemsize
        if moe:  # the MoE block's own hook_post: its output
            return BT * c.d_model, itemsize
        return BT * c.d_mlp, itemsize
    return BT * c.d_model, itemsize  # residual-stream-shaped points


def cache_bytes(model: Any, names: Sequence[str], batch: int, tokens: int) -> int:
    """Bytes a cache of the hook points ``names`` holds after one ``[batch, tokens]`` forward."""
    total = 0
    for name in names:
        numel, itemsize = hook_numel(model, name, batch, tokens)
        total += numel * itemsize
    return total


def _filter_points(model: Any, names_filter: NamesFilter) -> list[str]:
    """The hook points a cache keeps. Without a filter, ``attn.hook_result`` is left out
    unless its switch is on (as TransformerLens's ``use_attn_result``)."""
    if names_filter is None:
        result_off = {
            f"blocks.{layer}.attn.hook_result"
            for layer, block in enumerate(model.blocks)
            if not block.attn.hook_result.switched_on
        }
        return [name for name in model.hook_dict if name not in result_off]
    return [p.name for p in select(model.hook_dict, names_filter)]


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting each next token (nats)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten().to(logits.device))


class RunMixin:
    """TransformerLens's running methods on the hooked decoder."""

    def run_with_cache(
        self,
        input: Any,
        *args: Any,
        names_filter: NamesFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        max_cache_bytes: int | None = None,
        incl_bwd: bool = False,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, ActivationCache]:
        """``(logits, cache)``: one forward (no autograd) keeping every hook point that
        ``names_filter`` picks (all when None; a name, a list of names or a predicate), moved to
        ``device`` (default: where it was computed).

        ``incl_bwd`` also keeps the gradient of ``loss_fn(logits, tokens)`` (default: the mean
        next-token cross-entropy) at each of those points, under ``name + "_grad"`` as
        TransformerLens names it (attribution patching). The gradients are taken with
        ``torch.autograd.grad``: no parameter's ``.grad`` changes.

        Raises :class:`CacheTooLargeError` before running when the cache (plus the logits)
        would pass ``max_cache_bytes`` (default: the free memory of ``device``).
        """
        tokens = self.to_tokens(input) if isinstance(input, str | list) else input
        names = _filter_points(self, names_filter)
        batch, length = tokens.shape
        target = torch.device(device) if device is not None else self.device
        need = cache_bytes(self, names, batch, length) * (2 if incl_bwd else 1)
        need += batch * length * self.config.vocab_size * 4
        limit = max_cache_bytes if max_cache_bytes is not None else available_bytes(target)
        if need > limit:
            raise CacheTooLargeError(
                f"run_with_cache would hold {gib(need)} ({len(names)} hook points and the logits "
                f"for {batch} x {length} tokens) but {target.type} has {gib(limit)} free; cache fewer "
                "hook points (names_filter), fewer tokens, or stream statistics with workbench.record"
            )
        store: dict[str, torch.Tensor] = {}
        live: dict[str, torch.Tensor] = {}  # with incl_bwd: the activations to differentiate

        def keep(tensor: torch.Tensor, hook: Any) -> None:
            store[hook.name] = tensor.detach().to(target)
            if incl_bwd and tensor.requires_grad:
                live[hook.name] = tensor

        with torch.set_grad_enabled(incl_bwd), hooks(self, [(names, keep)] if names else []):
            logits = self(tokens, *args, **kwargs)
        if incl_bwd:
            if not live:
                raise RunError("incl_bwd: no cached activation requires grad (are the parameters frozen?)")
            loss = (loss_fn or next_token_loss)(logits, tokens)
            grads = torch.autograd.grad(loss, list(live.values()), allow_unused=True)
            for name, grad in zip(live, grads, strict=True):
                if grad is not None:
                    store[f"{name}_grad"] = grad.detach().to(target)
            logits = logits.detach()
        cache = ActivationCache(store, self)
        return logits, cache.remove_batch_dim() if remove_batch_dim else cache

    def run_with_hooks(
        self,
        input: Any,
        *args: Any,
        fwd_hooks: Sequence[tuple[HookSelector, Callable]] = (),
        bwd_hooks: Sequence[tuple[HookSelector, Callable]] = (),
        reset_hooks_end: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Logits of one forward with ``fwd_hooks`` (and ``bwd_hooks``) attached.

        Backward hooks are bound to this forward's activations, so they fire when the caller
        runs ``loss.backward()`` afterwards, even with ``reset_hooks_end`` (which removes the
        module hooks and clears ``hook.ctx`` after the forward). ``reset_hooks_end=False``
        leaves the hooks attached until :meth:`reset_hooks`. Backward hooks need autograd: they
        never fire for a forward run under ``torch.no_grad()``.
        """
        if reset_hooks_end:
            with hooks(self, fwd_hooks, bwd_hooks):
                return self(input, *args, **kwargs)
        for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
            for selector, fn in pairs:
                self.add_hook(selector, fn, dir=direction)
        return self(input, *args, **kwargs)

    def add_hook(self, selector: HookSelector, fn: Callable, dir: str = "fwd") -> None:
        """Attach ``fn`` until :meth:`reset_hooks` (prefer ``with model.hooks(...)``)."""
        for point in select(self.hook_dict, selector):
            point.add_hook(fn, dir=dir)

    def reset_hooks(self) -> None:
        """Remove every hook attached to a hook point and clear every ``hook.ctx``."""
        reset_hooks(self)

    def logit_lens(self, input: Any, **kwargs: Any) -> LensResult:
        """Per-layer predictions at chosen positions, streamed; see :func:`workbench.model.lens.logit_lens`."""
        return logit_lens(self, input, **kwargs)

    # --- switches for the optional hook points ---------------------------------------------

    def set_use_attn_result(self, on: bool) -> None:
        """Compute ``attn.hook_result`` on every forward (it also runs whenever watched)."""
        for block in self.blocks:
            block.attn.hook_result.switched_on = on

    def set_use_split_qkv_input(self, on: bool) -> None:
        """Add (or remove) the per-head ``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``
        of every block (see :mod:`workbench.model.head_inputs`)."""
        self._set_head_inputs(("hook_q_input", "hook_k_input", "hook_v_input"), on)

    def set_use_attn_in(self, on: bool) -> None:
        """Add (or remove) one per-head ``hook_attn_in`` per block, shared by q, k and v."""
        self._set_head_inputs(("hook_attn_in",), on)

    def _set_head_inputs(self, names: tuple[str, ...], on: bool) -> None:
        if on and not all(isinstance(getattr(b.attn, p, None), torch.nn.Linear) for b in self.blocks for p in "qkv"):
            raise ValueError(f"{self.config.name}: per-head inputs need plain q, k, v projections "
                             "(multi-head latent attention has none)")
        for block in self.blocks:
            for name in names:
                if on and name not in block._modules:
                    block.add_module(name, HookPoint())
                elif not on and name in block._modules:
                    del block._modules[name]
        self.hook_dict = name_hook_points(self)
