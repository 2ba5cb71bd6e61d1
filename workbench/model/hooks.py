"""Hook points: named identity modules where activations can be read or replaced.

The names follow the TransformerLens vocabulary (``hook_embed``, ``blocks.3.hook_resid_pre``,
``blocks.3.attn.hook_pattern`` ...). Attach functions with :func:`hooks`, a context manager that
always removes what it attached, even when the forward raises::

    def ablate_head(z, hook):  # z: [batch, pos, head, d_head]
        z[:, :, 4] = 0
        return z

    with model.hooks([("blocks.2.attn.hook_z", ablate_head)]):  # or hooks(model, [...])
        logits = model(tokens)

A hook function receives ``(tensor, hook)`` where ``hook.name`` is the hook point's name; it may
return a replacement tensor of the same shape, or None to leave the activation unchanged.
Names may also be given as a predicate ``lambda name: name.endswith("hook_resid_post")``.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]
HookSelector = str | Callable[[str], bool]


class HookPoint(nn.Module):
    """An identity module; its name is set by the root model after construction."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """True when something is attached (so the caller may compute what it would skip)."""
        return bool(self._forward_hooks) or bool(self._forward_pre_hooks)

    def add_hook(self, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
        def wrapper(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> Any:
            return fn(output, self)

        return self.register_forward_hook(wrapper)


def name_hook_points(root: nn.Module) -> dict[str, HookPoint]:
    """Give every HookPoint below ``root`` its dotted name; return them by name."""
    points = {}
    for name, module in root.named_modules():
        if isinstance(module, HookPoint):
            module.name = name
            points[name] = module
    return points


def _select(points: dict[str, HookPoint], selector: HookSelector) -> list[HookPoint]:
    if callable(selector):
        return [point for name, point in points.items() if selector(name)]
    if selector not in points:
        close = [name for name in points if name.split(".")[-1] == selector.split(".")[-1]]
        hint = f" (e.g. {close[0]})" if close else ""
        raise KeyError(f"no hook point named {selector!r}{hint}")
    return [points[selector]]


@contextlib.contextmanager
def hooks(model: nn.Module, fwd_hooks: Sequence[tuple[HookSelector, HookFn]]) -> Iterator[None]:
    """Attach ``fwd_hooks`` to ``model``'s hook points for the duration of the ``with`` block."""
    points = getattr(model, "hook_dict", None) or name_hook_points(model)
    handles = []
    try:
        for selector, fn in fwd_hooks:
            for point in _select(points, selector):
                handles.append(point.add_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def attached_hook_count(model: nn.Module) -> int:
    """How many forward hooks are attached anywhere in ``model`` (0 after every ``with hooks``)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class _CallableModule(types.ModuleType):
    """Lets ``workbench.model.hooks(model, ...)`` work although ``workbench.model.hooks`` is this module.

    Importing a submodule binds it to the package attribute of the same name, which shadows the
    lazily exported context manager as soon as anything imports ``workbench.model.hooks``.
    """

    def __call__(self, model: nn.Module, fwd_hooks: Sequence[tuple[HookSelector, HookFn]]):
        return hooks(model, fwd_hooks)


sys.modules[__name__].__class__ = _CallableModule
