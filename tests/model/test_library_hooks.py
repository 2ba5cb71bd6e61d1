"""The library's hook habits: caches equal the hooks' values, hooks never change the result,
backward hooks give autograd's gradient, ctx / reset / selectors, the optional hook points, and
nnsight reading and writing the costly points (pattern, scores, rotary q/k) inside a trace."""

from __future__ import annotations

import pytest
import torch

import workbench
from workbench.model.attention import Attention
from workbench.model.hooks import attached_hook_count

pytestmark = pytest.mark.usefixtures("single_thread")

COSTLY = ("hook_pattern", "hook_attn_scores")


@pytest.fixture(scope="module")
def family_model(family_case, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp(f"library-{family_case.name}")
    family_case.hf_model().save_pretrained(folder)
    return workbench.load_model(folder)


def test_cache_equals_the_hooks_values_for_every_family(family_model) -> None:
    model = family_model
    tokens = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    seen: dict[str, torch.Tensor] = {}

    def keep(tensor, hook):
        seen[hook.name] = tensor.clone()

    model.set_use_attn_result(True)
    try:
        with torch.no_grad(), model.hooks([(lambda name: True, keep)]):
            hooked_logits = model(tokens)
        logits, cache = model.run_with_cache(tokens)
    finally:
        model.set_use_attn_result(False)
    assert torch.equal(logits, hooked_logits)
    expected = {name for name in seen if not name.endswith(("q_input", "k_input", "v_input", "attn_in"))}
    assert set(cache) == expected
    for name in expected:
        assert torch.equal(cache[name], seen[name]), name
    n_layers = model.config.n_layers
    # The heads sum to the attention output (Gemma 2 normalises that again before hook_attn_out).
    for layer in range(0 if model.config.post_norms else n_layers):
        heads = cache["result", layer].sum(dim=2)
        bias = model.blocks[layer].attn.o.bias
        torch.testing.assert_close(heads + (0 if bias is None else bias), cache["attn_out", layer], atol=1e-5, rtol=0)
    # BLOOM's embedding LayerNorm: hook_embed is after it, so it is the first block's input.
    assert torch.equal(cache["hook_embed"] + cache["hook_pos_embed"] if "hook_pos_embed" in cache else cache["embed"],
                       cache["resid_pre", 0])
    assert attached_hook_count(model) == 0


@pytest.mark.parametrize("name", ["llama", "gpt2", "alibi", "moe"])
def test_watching_the_new_points_changes_nothing(name: str, tiny_decoder) -> None:
    """Reading every hook point but the pattern keeps the logits bit-identical (fast path)."""
    model = tiny_decoder(name)
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        plain = model(tokens)
        model.set_use_attn_result(True)
        with model.hooks([(lambda n: not n.endswith(COSTLY), lambda t, hook: None)]):
            watched = model(tokens)
        model.set_use_attn_result(False)
    assert torch.equal(watched, plain)


def test_fast_path_stays_when_nothing_reads_patterns(tiny_decoder, monkeypatch) -> None:
    model = tiny_decoder("llama")
    calls = []
    original = Attention._explicit
    monkeypatch.setattr(Attention, "_explicit", lambda self, *a: calls.append(1) or original(self, *a))
    tokens = torch.randint(0, model.config.vocab_size, (1, 8))
    model.run_with_cache(tokens, names_filter=lambda n: not n.endswith(COSTLY))
    assert calls == []
    model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
    assert calls == [1]  # only the layer whose pattern was asked for


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_editing_the_normalized_stream_edits_the_output(name: str, tiny_decoder) -> None:
    model = tiny_decoder(name)
    tokens = torch.randint(0, model.config.vocab_size, (1, 6))
    norm = model.blocks[0].ln2
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.ln2.hook_normalized", "blocks.0.hook_resid_mid"])

    def double(tensor, hook):
        tensor.mul_(2.0)  # in place, TransformerLens style: returns nothing

    seen = {}
    with torch.no_grad(), model.hooks([("blocks.0.ln2.hook_normalized", double),
                                       ("blocks.0.ln2.hook_out", lambda t, hook: seen.update(out=t.clone()))]):
        model(tokens)
    expected = 2.0 * cache["blocks.0.ln2.hook_normalized"] * norm.weight
    if getattr(norm, "bias", None) is not None:
        expected = expected + norm.bias
    torch.testing.assert_close(seen["out"], expected.detach(), atol=1e-6, rtol=0)
    # and the definition: normalized = (x - mean) / scale (LayerNorm) or x / scale (RMSNorm)
    x = cache["resid_mid", 0]
    centred = x - x.mean(-1, keepdim=True) if name == "gpt2" else x
    scale = (centred.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    torch.testing.assert_close(cache["blocks.0.ln2.hook_normalized"], centred / scale, atol=1e-6, rtol=0)


def test_head_ablation_via_result_equals_via_z(tiny_decoder) -> None:
    model = tiny_decoder("gpt2")
    tokens = torch.randint(0, model.config.vocab_size, (2, 8))

    def zero_head_z(z, hook):
        z[:, :, 2] = 0
        return z

    def zero_head_result(result, hook):
        result[:, :, 2] = 0
        return result

    with torch.no_grad():
        clean = model(tokens)
        by_z = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head_z)])
        by_result = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_result", zero_head_result)])
    assert (by_z - clean).abs().max() > 1e-3  # the ablation matters
    torch.testing.assert_close(by_result, by_z, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama", "moe"])
def test_backward_hooks_give_autograd_gradients(name: str, tiny_decoder) -> None:
    model = tiny_decoder(name)
    tokens = torch.randint(0, model.config.vocab_size, (2, 7))
    points = ["blocks.0.hook_resid_mid", "blocks.1.attn.hook_z", "blocks.1.ln1.hook_normalized"]
    activations, grads = {}, {}

    def keep_activation(tensor, hook):
        tensor.retain_grad()
        activations[hook.name] = tensor

    def keep_grad(grad, hook):
        grads[hook.name] = grad.clone()

    logits = model.run_with_hooks(
        tokens, fwd_hooks=[(points, keep_activation)], bwd_hooks=[(points, keep_grad)]
    )
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    assert set(grads) == set(points)
    for point in points:
        assert grads[point].abs().max() > 0
        assert torch.equal(grads[point], activations[point].grad), point
    assert attached_hook_count(model) == 0
    model.zero_grad()


def test_backward_hook_can_replace_the_gradient(tiny_decoder) -> None:
    model = tiny_decoder("llama")
    tokens = torch.randint(0, model.config.vocab_size, (1, 6))
    logits = model.run_with_hooks(tokens, bwd_hooks=[("blocks.0.hook_resid_pre", lambda g, hook: torch.zeros_like(g))])
    logits.sum().backward()
    assert model.embed.weight.grad is not None and torch.count_nonzero(model.embed.weight.grad) == 0
    assert torch.count_nonzero(model.unembed.weight.grad) > 0  # what is after the point still learns
    model.zero_grad()


def test_ctx_selectors_and_reset(tiny_decoder) -> None:
    model = tiny_decoder("llama")
    tokens = torch.randint(0, model.config.vocab_size, (1, 5))

    def count(tensor, *, hook):  # keyword-only hook, as TransformerLens calls it
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1

    point = model.hook_dict["blocks.0.hook_resid_pre"]
    with torch.no_grad(), model.hooks([(["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"], count)]):
        model(tokens)
        model(tokens)
        assert point.ctx["calls"] == 2
    assert point.ctx == {}  # cleared with the hooks
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", count)], reset_hooks_end=False)
    assert attached_hook_count(model) == 1 and point.ctx["calls"] == 1
    model.reset_hooks()
    assert attached_hook_count(model) == 0 and point.ctx == {}
    with pytest.raises(KeyError, match="blocks.0.hook_resid_pre"):
        model.run_with_hooks(tokens, fwd_hooks=[(["blocks.0.hook_resid_pre", "blocks.0.resid_pre"], count)])
    assert attached_hook_count(model) == 0


def test_get_act_name() -> None:
    get = workbench.get_act_name
    assert get("pattern", 3) == "blocks.3.attn.hook_pattern"
    assert get("attn", 3) == "blocks.3.attn.hook_pattern"
    assert get("resid_post", 0) == "blocks.0.hook_resid_post"
    assert get("scale", 2, "ln1") == "blocks.2.ln1.hook_scale"
    assert get("scale") == "ln_final.hook_scale"
    assert get("embed") == "hook_embed"
    assert get("mlp_post", 1) == "blocks.1.mlp.hook_post"
    assert get("q_input", 1) == "blocks.1.hook_q_input"
    with pytest.raises(KeyError):
        get("scale", 2)


@pytest.mark.parametrize("switch", ["split_qkv_input", "attn_in"])
def test_per_head_inputs_behind_a_switch(switch: str, tiny_decoder) -> None:
    model = tiny_decoder("llama")  # grouped-query: 4 query heads, 2 key/value heads
    tokens = torch.randint(0, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        plain = model(tokens)
    getattr(model, f"set_use_{switch}")(True)
    try:
        _, cache = model.run_with_cache(tokens)
        name = "q_input" if switch == "split_qkv_input" else "attn_in"
        assert cache[name, 1].shape == (2, 8, 4, model.config.d_model)
        torch.testing.assert_close(cache[name, 1], cache["resid_pre", 1][:, :, None].expand(-1, -1, 4, -1), atol=0, rtol=0)
        torch.testing.assert_close(cache["logits"], plain, atol=1e-5, rtol=0)

        def zero_head_input(tensor, hook):
            tensor[:, :, 1] = 0
            return tensor

        with torch.no_grad():
            edited = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.1.hook_{name}", zero_head_input)])
        assert (edited - plain).abs().max() > 1e-3
    finally:
        getattr(model, f"set_use_{switch}")(False)
    _, cache = model.run_with_cache(tokens)
    assert "blocks.1.hook_q_input" not in cache


# --- nnsight --------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["hook_pattern", "hook_attn_scores", "hook_rot_q", "hook_rot_k", "hook_result"])
def test_nnsight_reads_costly_points(point: str, tiny_decoder) -> None:
    from nnsight import NNsight

    model = tiny_decoder("llama")
    tokens = torch.randint(0, model.config.vocab_size, (2, 8))
    names = [f"blocks.{layer}.attn.{point}" for layer in range(model.config.n_layers)]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    traced = NNsight(model)
    saved = []  # created before the trace; requested in layer order
    # no_grad as run_with_cache: with autograd on, a watched hook_result feeds the output
    # (see workbench.model.head_inputs), equal only up to rounding.
    with torch.no_grad(), traced.trace(tokens):
        for layer in range(model.config.n_layers):
            saved.append(getattr(traced.blocks[layer].attn, point).output.save())
    for name, value in zip(names, saved, strict=True):
        assert torch.equal(value, cache[name]), name


def test_nnsight_writes_the_pattern_like_a_hook(tiny_decoder, monkeypatch) -> None:
    from nnsight import NNsight

    model = tiny_decoder("llama")
    tokens = torch.randint(0, model.config.vocab_size, (2, 8))

    def uniform_head(pattern, hook):  # head 1 of layer 1 attends uniformly to what it may see
        visible = (pattern[:, 1] > 0).to(pattern.dtype)
        pattern[:, 1] = visible / visible.sum(-1, keepdim=True)
        return pattern

    with torch.no_grad():
        clean = model(tokens)
        hooked = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", uniform_head)])
    assert (hooked - clean).abs().max() > 1e-3
    traced = NNsight(model)
    with traced.trace(tokens):
        pattern = traced.blocks[1].attn.hook_pattern.output
        visible = (pattern[:, 1] > 0).to(pattern.dtype)
        pattern[:, 1] = visible / visible.sum(-1, keepdim=True)
        logits = traced.output.save()
    assert torch.equal(logits, hooked)

    # A trace that reads only the residual stream keeps the fast path.
    calls = []
    original = Attention._explicit
    monkeypatch.setattr(Attention, "_explicit", lambda self, *a: calls.append(1) or original(self, *a))
    with traced.trace(tokens):
        resid = traced.blocks[1].hook_resid_post.output.save()
    assert calls == [] and resid.shape == (2, 8, model.config.d_model)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_watched_points_under_inference_mode(name: str, tiny_decoder) -> None:
    """Inference tensors keep no version counter: watched norms and head results are rebuilt
    from the hooked values, equal to the plain forward up to rounding."""
    model = tiny_decoder(name)
    tokens = torch.randint(0, model.config.vocab_size, (1, 6))
    with torch.no_grad():
        plain = model(tokens)
    names = lambda n: n.endswith(("hook_scale", "hook_normalized", "hook_result"))  # noqa: E731
    with torch.inference_mode():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
    assert "blocks.0.attn.hook_result" in cache and "ln_final.hook_scale" in cache
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)


def test_cache_with_gradients_equals_autograd(tiny_decoder) -> None:
    model = tiny_decoder("gpt2")
    tokens = torch.randint(0, model.config.vocab_size, (2, 7))
    points = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_z", "blocks.1.ln2.hook_scale"]
    _, cache = model.run_with_cache(tokens, names_filter=points, incl_bwd=True)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: no .grad written
    acts = {}

    def keep(tensor, hook):
        tensor.retain_grad()
        acts[hook.name] = tensor

    logits = model.run_with_hooks(tokens, fwd_hooks=[(points, keep)])
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()
    for point in points:
        torch.testing.assert_close(cache[f"{point}_grad"], acts[point].grad, atol=1e-7, rtol=1e-5)
        assert cache[f"{point}_grad"].abs().max() > 0
    model.zero_grad(set_to_none=True)
