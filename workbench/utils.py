"""Hook names from short names, as TransformerLens's ``utils.get_act_name`` builds them.

``get_act_name("pattern", 3) == "blocks.3.attn.hook_pattern"``,
``get_act_name("resid_post", 0) == "blocks.0.hook_resid_post"``,
``get_act_name("scale", 2, "ln1") == "blocks.2.ln1.hook_scale"``, ``get_act_name("scale") ==
"ln_final.hook_scale"``, ``get_act_name("embed") == "hook_embed"``. TransformerLens's aliases
work too (``attn`` -> ``pattern``, ``attn_logits`` -> ``attn_scores``, ``mlp_post`` -> ``post``).
"""

from __future__ import annotations

ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_post": "post",
    "mlp_pre_linear": "pre_linear",
}
ATTN = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
MLP = {"pre", "pre_linear", "post", "router_logits", "expert_indices", "expert_weights"}
BLOCK = {
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out",
    "mlp_in", "attn_in", "q_input", "k_input", "v_input",
}
NORM = {"scale", "normalized", "out"}
TOP = {"tokens", "embed", "pos_embed", "final", "logits"}
LAYER_TYPES = {"a": "attn", "m": "mlp", "b": "", "block": "", "attn": "attn", "mlp": "mlp",
               "ln1": "ln1", "ln2": "ln2", "ln_final": "ln_final"}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name for a short ``name`` at ``layer`` (a full name is returned as is).

    ``layer_type`` picks the sublayer where a short name is ambiguous (``"ln1"`` / ``"ln2"`` for
    ``scale`` and ``normalized``; ``"a"``/``"m"``/``"b"`` as in TransformerLens).
    """
    if "." in name or (name.startswith("hook_") and layer is None):
        return name
    short = ALIASES.get(name, name.removeprefix("hook_"))
    if layer is None:
        if short in TOP:
            return f"hook_{short}"
        if short in NORM:
            return f"ln_final.hook_{short}"
        raise KeyError(f"{name!r} needs a layer (e.g. get_act_name({name!r}, 0))")
    if layer_type is not None:
        if layer_type not in LAYER_TYPES:
            raise KeyError(f"unknown layer type {layer_type!r}; one of {sorted(LAYER_TYPES)}")
        part = LAYER_TYPES[layer_type]
    elif short in ATTN:
        part = "attn"
    elif short in MLP:
        part = "mlp"
    elif short in BLOCK:
        part = ""
    elif short in NORM:
        raise KeyError(f"{name!r} at a layer needs layer_type 'ln1' or 'ln2'")
    else:
        raise KeyError(f"unknown activation name {name!r}")
    middle = f".{part}" if part else ""
    return f"blocks.{layer}{middle}.hook_{short}"
