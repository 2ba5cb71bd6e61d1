"""Hook points: named identity modules where activations can be read or replaced.

The names follow the TransformerLens vocabulary (``hook_embed``, ``blocks.3.hook_resid_pre``,
``blocks.3.attn.hook_pattern`` ...). Attach functions with :func:`hooks`, a context manager that
always removes what it attached, even when the forward raises::

    def ablate_head(z, hook):  # z: [batch, pos, head, d_head]
        z[:, :, 4] = 0
        return z

    with model.hooks([("blocks.2.attn.hook_z", ablate_head)]):  # or hooks(model, [...])
        logits = model(tokens)

A hook function is called as ``fn(tensor, hook=point)`` (positionally when its second parameter
is not named ``hook``), where ``hook.name`` is the point's name and ``hook.ctx`` a dict that
lives until the hooks are removed; it may return a replacement tensor of the same shape, or None
to leave the activation unchanged. A selector is a name, a list of names, or a predicate
``lambda name: name.endswith("hook_resid_post")``.

Backward hooks (``bwd_hooks``) see the gradient of the loss with respect to the activation at a
hook point, ``fn(grad, hook=point)``; a returned tensor replaces that gradient.

Some hook points cost work when they run (the attention pattern forces the explicit attention
path, ``attn.hook_result`` splits the output projection by head). They run when something
watches them: a torch hook attached here, an nnsight trace that asks for them
(``nnsight.NNsight(model).trace(...)`` reading or writing ``...attn.hook_pattern.output``), or the
model's switch for them (see :attr:`HookPoint.active`).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

HookFn = Callable[..., torch.Tensor | None]
HookSelector = str | Sequence[str] | Callable[[str], bool]
# Where nnsight (0.8) keeps the per-module state of its forward controller: ``active()`` gives
# the running trace's interleaver and this module's (input, skip, output) locations, and the
# interleaver's ``parked`` / ``observers`` say which locations a worker waits on or a cache
# records. Workers ask in execution order, so when a costly point is reached, a trace that wants
# it is parked on it right then. Read defensively: without nnsight the attribute is absent.
_NNSIGHT_STATE = "__nnsight__"


def watched_by_nnsight(module: nn.Module) -> bool:
    """True while a running nnsight trace waits on (or caches) ``module``'s input or output."""
    state = module.__dict__.get(_NNSIGHT_STATE)
    if state is None:
        return False
    try:
        interleaver, _, locations = state.active()
        if interleaver is None:
            return False
        wanted = interleaver.parked | set(interleaver.observers)
        return any(location in wanted for location in locations)
    except (AttributeError, TypeError, ValueError):  # another nnsight version: assume watched
        return True


def _takes_hook_keyword(fn: Callable) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "hook" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


class HookPoint(nn.Module):
    """An identity module; its name is set by the root model after construction."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self.ctx: dict[str, Any] = {}  # hook functions' scratch space, cleared by reset_hooks
        self.switched_on = False  # the model's switch for an optional point (see HookedDecoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def active(self) -> bool:
        """True when something watches this point (a torch hook, an nnsight trace waiting on
        it, or its switch), so the caller computes what it would otherwise skip."""
        return (
            self.switched_on
            or bool(self._forward_hooks)
            or bool(self._forward_pre_hooks)
            or watched_by_nnsight(self)
        )

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> torch.utils.hooks.RemovableHandle:
        """Attach ``fn``; ``dir="bwd"`` calls it with the gradient at this point instead."""
        keyword = _takes_hook_keyword(fn)

        def call(tensor: torch.Tensor) -> Any:
            return fn(tensor, hook=self) if keyword else fn(tensor, self)

        if dir == "fwd":
            return self.register_forward_hook(lambda module, inputs, output: call(output))
        if dir != "bwd":
            raise ValueError(f"hook direction must be 'fwd' or 'bwd', got {dir!r}")

        def on_forward(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(call)

        return self.register_forward_hook(on_forward)


def name_hook_points(root: nn.Module) -> dict[str, HookPoint]:
    """Give every HookPoint below ``root`` its dotted name; return them by name."""
    points = {}
    for name, module in root.named_modules():
        if isinstance(module, HookPoint):
            module.name = name
            points[name] = module
    return points


def select(points: dict[str, HookPoint], selector: HookSelector) -> list[HookPoint]:
    """The hook points a name, a list of names or a predicate picks (KeyError for a bad name)."""
    if callable(selector):
        return [point for name, point in points.items() if selector(name)]
    names = [selector] if isinstance(selector, str) else list(selector)
    for name in names:
        if name not in points:
            head, _, tail = name.rpartition(".")
            tail = tail if tail.startswith("hook_") else f"hook_{tail}"
            guess = f"{head}.{tail}" if head else tail
            close = [guess] if guess in points else [known for known in points if known.endswith(f".{tail}")]
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise KeyError(f"no hook point named {name!r}{hint}")
    return [points[name] for name in names]


@contextlib.contextmanager
def hooks(
    model: nn.Module,
    fwd_hooks: Sequence[tuple[HookSelector, HookFn]] = (),
    bwd_hooks: Sequence[tuple[HookSelector, HookFn]] = (),
    reset_ctx: bool = True,
) -> Iterator[nn.Module]:
    """Attach ``fwd_hooks`` and ``bwd_hooks`` to ``model``'s hook points for the ``with`` block.

    On exit every hook is removed and, with ``reset_ctx``, every ``hook.ctx`` is cleared.
    """
    points = getattr(model, "hook_dict", None) or name_hook_points(model)
    handles = []
    touched: list[HookPoint] = []
    try:
        for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
            for selector, fn in pairs:
                for point in select(points, selector):
                    handles.append(point.add_hook(fn, dir=direction))
                    touched.append(point)
        yield model  # as TransformerLens: `with model.hooks(...) as hooked_model:`
    finally:
        for handle in handles:
            handle.remove()
        if reset_ctx:
            for point in touched:
                point.ctx.clear()


def reset_hooks(model: nn.Module) -> None:
    """Remove every forward hook attached to ``model``'s hook points and clear their ``ctx``
    (for hooks attached with ``HookPoint.add_hook`` outside a ``with`` block)."""
    points = getattr(model, "hook_dict", None) or name_hook_points(model)
    for point in points.values():
        point._forward_hooks.clear()
        point._forward_pre_hooks.clear()
        point.ctx.clear()


def attached_hook_count(model: nn.Module) -> int:
    """How many forward hooks are attached anywhere in ``model`` (0 after every ``with hooks``)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class _CallableModule(types.ModuleType):
    """Lets ``workbench.model.hooks(model, ...)`` work although ``workbench.model.hooks`` is this module.

    Importing a submodule binds it to the package attribute of the same name, which shadows the
    lazily exported context manager as soon as anything imports ``workbench.model.hooks``.
    """

    def __call__(self, model: nn.Module, fwd_hooks=(), bwd_hooks=()):
        return hooks(model, fwd_hooks, bwd_hooks)


sys.modules[__name__].__class__ = _CallableModule
