"""ActivationCache helpers against their TransformerLens definitions (computed by hand here),
the cache-size estimate and its refusal, the weight views, and the logit lens call."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from workbench.config import DecoderConfig
from workbench.model.hooks import attached_hook_count
from workbench.model.running import CacheTooLargeError, cache_bytes

pytestmark = pytest.mark.usefixtures("single_thread")

# Sums of a dozen fp32 terms of size <= ~10 (d_model 32-36): ~1e-6 of rounding; 1e-5 two-sided.
ATOL = 1e-5


@pytest.fixture(params=["gpt2", "llama", "alibi"])
def cached(request, tiny_decoder):
    model = tiny_decoder(request.param)
    tokens = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


def final_bias(model) -> torch.Tensor:
    bias = getattr(model.ln_final, "bias", None)
    return torch.zeros(model.config.d_model) if bias is None else bias.detach()


def test_shorthand_keys(cached) -> None:
    model, _, _, cache = cached
    last = model.config.n_layers - 1
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_post", -1] is cache[f"blocks.{last}.hook_resid_post"]
    assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
    assert cache["embed"] is cache["hook_embed"]
    assert ("z", 0) in cache and "nope" not in cache
    with pytest.raises(KeyError, match="names_filter"):
        cache["result", 0]  # not computed: its switch was off


def test_accumulated_and_decomposed_resid(cached) -> None:
    model, _, logits, cache = cached
    n_layers = model.config.n_layers
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == [f"{layer}_pre" for layer in range(n_layers)] + ["final_post"]
    for index in range(n_layers):
        assert torch.equal(stack[index], cache["resid_pre", index])
    assert torch.equal(stack[-1], cache["resid_post", -1])
    _, labels = cache.accumulated_resid(layer=1, incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre"]

    parts, labels = cache.decompose_resid(return_labels=True)
    expected = ["embed"] + (["pos_embed"] if "hook_pos_embed" in cache else [])
    expected += [f"{layer}_{kind}" for layer in range(n_layers) for kind in ("attn_out", "mlp_out")]
    assert labels == expected
    torch.testing.assert_close(parts.sum(0), cache["resid_post", -1], atol=ATOL, rtol=0)
    # The definition of the frozen final norm: centre (LayerNorm), divide by the run's scale,
    # times the weight; the parts plus the bias give ln_final's output exactly.
    scaled = cache.apply_ln_to_stack(parts)
    x = parts
    if model.config.norm == "layernorm":
        x = x - x.mean(-1, keepdim=True)
    by_hand = x / cache["ln_final.hook_scale"] * model.ln_final.weight.detach()
    torch.testing.assert_close(scaled, by_hand, atol=1e-6, rtol=0)
    torch.testing.assert_close(scaled.sum(0) + final_bias(model), cache["final"], atol=ATOL, rtol=0)
    torch.testing.assert_close(cache.accumulated_resid(apply_ln=True)[-1] + final_bias(model), cache["final"], atol=ATOL, rtol=0)


def test_head_results_and_logit_attrs(cached) -> None:
    model, tokens, logits, cache = cached
    c = model.config
    heads, labels = cache.stack_head_results(return_labels=True, incl_remainder=True)
    assert labels[:2] == ["L0H0", "L0H1"] and labels[-1] == "remainder"
    assert heads.shape == (c.n_layers * c.n_heads + 1, 2, 9, c.d_model)
    for layer in range(c.n_layers):  # head h writes z_h @ W_O[h] (TransformerLens's result)
        w_o = model.blocks[layer].attn.o.weight.detach()  # (d, H*D)
        for head in range(c.n_heads):
            z = cache["z", layer][:, :, head]  # (B, T, D)
            by_hand = z @ w_o[:, head * c.d_head : (head + 1) * c.d_head].T
            torch.testing.assert_close(heads[layer * c.n_heads + head], by_hand, atol=1e-6, rtol=0)
    torch.testing.assert_close(heads.sum(0), cache["resid_post", -1], atol=ATOL, rtol=0)

    correct, wrong = tokens[:, -1], (tokens[:, -1] + 1) % c.vocab_size
    parts = cache.decompose_resid(pos_slice=-1)  # (C, B, d)
    attrs = cache.logit_attrs(parts, correct, incorrect_tokens=wrong, pos_slice=-1)  # (C, B)
    rows = torch.arange(2)
    difference = logits[rows, -1, correct] - logits[rows, -1, wrong]
    bias_term = final_bias(model) @ (model.W_U[:, correct] - model.W_U[:, wrong]).detach()
    torch.testing.assert_close(attrs.sum(0) + bias_term, difference, atol=ATOL, rtol=0)
    single = cache.logit_attrs(cache.decompose_resid(), int(correct[0]))  # (C, B, T)
    assert single.shape == (parts.shape[0], 2, 9)


def test_cache_size_estimate_is_what_the_cache_holds(tiny_decoder) -> None:
    for name in ("llama", "gpt2", "moe"):
        model = tiny_decoder(name)
        model.set_use_attn_result(True)
        tokens = torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(7))
        _, cache = model.run_with_cache(tokens)
        model.set_use_attn_result(False)
        exact = [n for n in cache if ".experts." not in n]
        held = sum(cache[n].numel() * cache[n].element_size() for n in exact)
        assert cache_bytes(model, exact, 2, 11) == held, name
        experts = [n for n in model.hook_dict if ".experts." in n]  # an idle expert fires no hook
        if experts:  # the routed rows (tokens x top_k) split evenly: within one row per expert
            held = sum(cache[n].numel() * cache[n].element_size() for n in experts if n in cache)
            estimate = cache_bytes(model, experts, 2, 11)
            row = (model.config.d_expert or model.config.d_mlp) * 4
            assert held <= estimate <= held + row * len(experts)


def test_a_cache_that_cannot_fit_is_refused(tiny_decoder) -> None:
    model = tiny_decoder("llama")
    tokens = torch.randint(0, model.config.vocab_size, (1, 16))
    with pytest.raises(CacheTooLargeError, match=r"GiB.*workbench\.record"):
        model.run_with_cache(tokens, max_cache_bytes=10_000)
    assert attached_hook_count(model) == 0
    # SmolLM2's shape: every layer's pattern at 8,192 tokens is 30 x 9 x 8192^2 x 4 bytes.
    smol = DecoderConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_head=64,
                         d_mlp=1536, max_positions=8192)
    fake = SimpleNamespace(config=smol, dtype=torch.float32)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(30)]
    assert cache_bytes(fake, names, 1, 8192) == 30 * 9 * 8192**2 * 4  # 67.5 GiB


def test_weight_views(tiny_decoder) -> None:
    model = tiny_decoder("llama")  # grouped-query: query head h reads key/value head h // 2
    tokens = torch.randint(0, model.config.vocab_size, (1, 7))
    logits, cache = model.run_with_cache(tokens)
    c = model.config
    assert model.W_E is model.embed.weight and model.W_Q.shape == (c.n_layers, c.n_heads, c.d_model, c.d_head)
    normalized = cache["blocks.1.ln1.hook_out"]
    for head in range(c.n_heads):
        torch.testing.assert_close(normalized @ model.W_Q[1, head] + model.b_Q[1, head], cache["q", 1][:, :, head], atol=1e-6, rtol=0)
        torch.testing.assert_close(normalized @ model.W_K[1, head], cache["k", 1][:, :, head // 2], atol=1e-6, rtol=0)
        torch.testing.assert_close(normalized @ model.W_V[1, head], cache["v", 1][:, :, head // 2], atol=1e-6, rtol=0)
    attn_out = torch.einsum("bthk,hkd->btd", cache["z", 0], model.W_O[0]) + model.b_O[0]
    torch.testing.assert_close(attn_out, cache["attn_out", 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["final"] @ model.W_U + model.b_U, logits, atol=1e-5, rtol=0)
    ov = model.OV[1, 2]
    torch.testing.assert_close(ov.AB, model.W_V[1, 2] @ model.W_O[1, 2])
    U, S, Vh = ov.svd()
    torch.testing.assert_close(U @ torch.diag(S) @ Vh, ov.AB, atol=1e-5, rtol=0)
    torch.testing.assert_close(S, torch.linalg.svdvals(ov.AB)[: c.d_head], atol=1e-5, rtol=1e-4)
    assert model.QK.shape == (c.n_layers, c.n_heads, c.d_model, c.d_model)
    mlp_in = cache["blocks.0.ln2.hook_out"]
    torch.testing.assert_close(mlp_in @ model.W_in[0], cache["pre_linear", 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(mlp_in @ model.W_gate[0], cache["pre", 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(cache["post", 0] @ model.W_out[0], cache["mlp_out", 0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no W_pos"):
        _ = model.W_pos


def test_weight_views_refuse_moe_stacks(tiny_decoder) -> None:
    with pytest.raises(ValueError, match="mixture of experts"):
        _ = tiny_decoder("moe").W_in
    gpt2 = tiny_decoder("gpt2")
    assert gpt2.W_pos is gpt2.pos_embed.weight and gpt2.b_in.shape == (2, 48)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_logit_lens(name: str, tiny_decoder) -> None:
    model = tiny_decoder(name)
    tokens = torch.randint(0, model.config.vocab_size, (2, 10))
    with torch.no_grad():
        logits = model(tokens)
    lens = model.logit_lens(tokens, positions=[0, 4, -1], layers=["embed", 0, -1])
    assert lens.layers == ["embed", "0", str(model.config.n_layers - 1)] and lens.positions == [0, 4, 9]
    assert lens.logits.shape == (3, 2, 3, model.config.vocab_size)
    torch.testing.assert_close(lens.logits[-1], logits[:, [0, 4, 9]], atol=1e-5, rtol=0)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    by_hand = model.unembed(model.ln_final(cache["resid_post", 0][:, [0, 4, 9]]))
    torch.testing.assert_close(lens.logits[1], by_hand.detach(), atol=1e-5, rtol=0)
    top = model.logit_lens(tokens, positions=[4], top_k=3)
    expected = torch.topk(lens.logits[1:2, :, 1:2].softmax(-1), 3, dim=-1)
    assert torch.equal(top.token_ids[0:1], expected.indices)
    torch.testing.assert_close(top.probs[0:1], expected.values, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="GiB"):
        model.logit_lens(tokens, positions=list(range(10)), max_logits_bytes=1000)
    assert attached_hook_count(model) == 0


def test_cache_device_batch_dim_and_the_hooked_model(tiny_decoder) -> None:
    model = tiny_decoder("llama")
    tokens = torch.randint(0, model.config.vocab_size, (1, 5))
    _, on_meta = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post", device="meta")
    assert on_meta["resid_post", 0].is_meta and on_meta["resid_post", 0].shape == (1, 5, model.config.d_model)
    _, cache = model.run_with_cache(tokens, names_filter=["hook_embed", "blocks.1.attn.hook_pattern"])
    single = cache.remove_batch_dim()
    assert single["pattern", 1].shape == (model.config.n_heads, 5, 5)
    assert torch.equal(single["embed"], cache["embed"][0])
    with pytest.raises(ValueError, match="batch"):
        model.run_with_cache(torch.cat([tokens, tokens]), names_filter="hook_embed")[1].remove_batch_dim()
    with torch.no_grad():
        plain = model(tokens)
        with model.hooks([("hook_embed", lambda t, hook: None)]) as hooked:
            assert hooked is model and torch.equal(hooked(tokens), plain)
