"""Tests of the hooked decoder: KV cache, the two attention paths, hooks, nnsight, offloading,
and (slow) the real SmolLM2 against transformers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import workbench
from workbench.model.context import AttentionChunk
from workbench.model.hooks import attached_hook_count

pytestmark = pytest.mark.usefixtures("single_thread")

# Same arithmetic in a different order (cached vs full keys, SDPA vs explicit softmax, chunked
# rows): differences are ~1e-6 at |logits| <= 5 in fp32; 1e-5 leaves headroom, while a wrong
# position, mask or cache entry moves logits by 1e-2 or more.
ATOL = 1e-5
RTOL = 1e-5
DECODERS = ["llama", "window", "yarn", "gpt2", "alibi", "moe"]


def real(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows of ``tensor [B, T, ...]`` at real (mask == 1) positions."""
    return tensor[mask.bool()]


# --- KV cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DECODERS)
def test_kv_cache_decoding_equals_full_forward(name: str, tiny_decoder, make_batch) -> None:
    """Prefix, then a chunk of 3, then one token at a time, on a left-padded batch."""
    model = tiny_decoder(name)
    input_ids, mask, position_ids = make_batch(model.config.vocab_size)
    with torch.no_grad():
        full = model(input_ids, attention_mask=mask, position_ids=position_ids)
        cache = workbench.KVCache(model.config.n_layers)
        steps = [(0, 6), (6, 9)] + [(t, t + 1) for t in range(9, input_ids.shape[1])]
        pieces = [
            model(
                input_ids[:, start:stop],
                attention_mask=mask[:, :stop],
                position_ids=position_ids[:, start:stop],
                cache=cache,
            )
            for start, stop in steps
        ]
    assert cache.length == input_ids.shape[1]
    torch.testing.assert_close(real(torch.cat(pieces, dim=1), mask), real(full, mask), atol=ATOL, rtol=RTOL)


def test_sliding_window_cache_beyond_window(tiny_decoder) -> None:
    """Decoding 20 tokens with a window of 4: the cache holds all keys, the mask limits them."""
    model = tiny_decoder("window")
    assert model.config.sliding_window == 4
    tokens = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(tokens)
        cache = workbench.KVCache(model.config.n_layers)
        steps = [model(tokens[:, t : t + 1], cache=cache) for t in range(20)]
        unwindowed = copy.deepcopy(model)
        for module in unwindowed.attention_modules():
            module.window = None
        assert (unwindowed(tokens) - full).abs().max() > 1e-3, "the window must change the result"
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", ["llama", "gpt2", "moe"])
def test_generate_is_greedy_argmax_of_full_forwards(name: str, tiny_decoder) -> None:
    model = tiny_decoder(name)
    prompt = torch.randint(0, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(4))
    generated = model.generate(prompt, max_new_tokens=6)
    tokens = prompt
    with torch.no_grad():
        for _ in range(6):
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generated, tokens)


# --- the two attention paths ----------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [256, 5, 1])
@pytest.mark.parametrize("name", DECODERS)
def test_sdpa_equals_explicit(name: str, chunk_size: int, tiny_decoder, make_batch) -> None:
    model = tiny_decoder(name)
    input_ids, mask, position_ids = make_batch(model.config.vocab_size)
    with torch.no_grad():
        fast = model(input_ids, attention_mask=mask, position_ids=position_ids)
        with model.attention_options(explicit=True, chunk_rows=chunk_size):
            explicit = model(input_ids, attention_mask=mask, position_ids=position_ids)
    torch.testing.assert_close(real(explicit, mask), real(fast, mask), atol=ATOL, rtol=RTOL)


def test_observer_sees_every_row_in_chunks(tiny_decoder) -> None:
    model = tiny_decoder("window")
    every: list[AttentionChunk] = []
    tokens = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad(), model.attention_options(observer=every.append, chunk_rows=5):
        observed = model(tokens)
    with torch.no_grad():
        torch.testing.assert_close(observed, model(tokens), atol=ATOL, rtol=RTOL)
    assert [chunk.layer for chunk in every] == [0, 0, 0, 1, 1, 1]  # every layer, in order
    seen = [chunk for chunk in every if chunk.layer == 1]
    assert [chunk.query_start for chunk in seen] == [0, 5, 10]
    # A chunk leaves out the keys after its last query (their weight is 0): pad back to S.
    assert [chunk.probs.shape[-1] for chunk in seen] == [5, 10, 12]
    probs = torch.cat([F.pad(chunk.probs, (0, chunk.n_keys - chunk.probs.shape[-1])) for chunk in seen], dim=2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-6, rtol=0)


# --- hooks ----------------------------------------------------------------------------------


def fired_counts(model, selector, *args, **kwargs) -> dict[str, int]:
    counts: dict[str, int] = {}

    def count(tensor, hook):
        counts[hook.name] = counts.get(hook.name, 0) + 1

    with workbench.model.hooks(model, [(selector, count)]), torch.no_grad():
        model(*args, **kwargs)
    return counts


def always_fired(model) -> set[str]:
    """Hook points every forward must pass through exactly once."""
    config = model.config
    names = {"hook_embed", "hook_final"}
    for layer in range(config.n_layers):
        block = f"blocks.{layer}"
        names |= {
            f"{block}.{point}"
            for point in (
                "hook_resid_pre",
                "hook_attn_out",
                "hook_resid_mid",
                "hook_mlp_out",
                "hook_resid_post",
            )
        }
        names |= {f"{block}.attn.{point}" for point in ("hook_q", "hook_k", "hook_v", "hook_z")}
        if config.is_moe_layer(layer):
            names |= {
                f"{block}.mlp.{point}"
                for point in ("hook_router_logits", "hook_expert_indices", "hook_expert_weights")
            }
        else:
            names.add(f"{block}.mlp.hook_post")
        if config.positions == "rope":
            names |= {f"{block}.attn.hook_rot_q", f"{block}.attn.hook_rot_k"}
    if config.positions in ("learned", "sinusoidal"):
        names.add("hook_pos_embed")
    return names


@pytest.mark.parametrize("with_pattern", [False, True], ids=["sdpa-path", "explicit-path"])
@pytest.mark.parametrize("name", ["llama", "gpt2", "moe"])
def test_every_hook_fires_once(name: str, with_pattern: bool, tiny_decoder) -> None:
    model = tiny_decoder(name)
    tokens = torch.randint(0, model.config.vocab_size, (2, 7))
    if with_pattern:
        selector = lambda hook_name: True  # noqa: E731
    else:
        selector = lambda hook_name: not hook_name.endswith(("hook_pattern", "hook_attn_scores"))  # noqa: E731
    counts = fired_counts(model, selector, tokens)
    assert set(counts) >= always_fired(model)
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    patterns = {
        f"blocks.{layer}.attn.{point}"
        for layer in range(model.config.n_layers)
        for point in ("hook_pattern", "hook_attn_scores")
    }
    assert (patterns <= set(counts)) == with_pattern
    assert attached_hook_count(model) == 0


def test_moe_routing_hooks(tiny_decoder) -> None:
    model = tiny_decoder("moe")
    tokens = torch.randint(0, model.config.vocab_size, (2, 7))
    captured = {}

    def keep(tensor, hook):
        captured[hook.name] = tensor.clone()

    with workbench.model.hooks(
        model, [(lambda n: n.endswith(("hook_router_logits", "hook_expert_indices")), keep)]
    ):
        model(tokens)
    logits = captured["blocks.0.mlp.hook_router_logits"]  # [batch, pos, n_experts]
    indices = captured["blocks.0.mlp.hook_expert_indices"]  # [batch, pos, top_k]
    assert logits.shape == (2, 7, 4) and indices.shape == (2, 7, 2) and indices.dtype == torch.int64
    assert torch.equal(indices, logits.topk(2, dim=-1).indices)
    assert "blocks.1.mlp.hook_router_logits" not in captured  # layer 1 is dense


def test_zero_ablating_a_head_equals_zeroing_its_output_weights(tiny_decoder) -> None:
    model = tiny_decoder("llama")
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    head, d_head = 2, model.config.d_head

    def ablate(z, hook):  # [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, head] = 0
        return z

    with torch.no_grad():
        clean = model(tokens)
        with workbench.model.hooks(model, [("blocks.1.attn.hook_z", ablate)]):
            ablated = model(tokens)
        surgery = copy.deepcopy(model)
        surgery.blocks[1].attn.o.weight[:, head * d_head : (head + 1) * d_head] = 0
        expected = surgery(tokens)
    assert (ablated - clean).abs().max() > 1e-3
    torch.testing.assert_close(ablated, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("returns", ["same", "none"])
def test_passive_hooks_change_nothing(returns: str, tiny_decoder) -> None:
    model = tiny_decoder("moe")
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))

    def passive(tensor, hook):
        return tensor if returns == "same" else None

    with torch.no_grad():
        clean = model(tokens)
        # Every point except pattern/scores, which would switch to the explicit path.
        with workbench.model.hooks(
            model, [(lambda n: not n.endswith(("hook_pattern", "hook_attn_scores")), passive)]
        ):
            hooked = model(tokens)
    assert torch.equal(hooked, clean)


def test_hooks_are_removed_when_the_forward_raises(tiny_decoder) -> None:
    model = tiny_decoder("llama")

    def explode(tensor, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with workbench.model.hooks(
            model, [("blocks.0.hook_resid_pre", lambda t, h: None), ("blocks.1.attn.hook_pattern", explode)]
        ):
            assert attached_hook_count(model) == 2
            model(torch.zeros(1, 4, dtype=torch.long))
    assert attached_hook_count(model) == 0
    # An unknown name after a valid one: the valid one is detached again.
    with pytest.raises(KeyError, match="no hook point"):
        with workbench.model.hooks(
            model, [("blocks.0.hook_resid_pre", lambda t, h: None), ("blocks.0.nope", explode)]
        ):
            pass
    assert attached_hook_count(model) == 0
    # The fast path is back: no hook asks for the pattern any more.
    assert not any(module.hook_pattern.active for module in model.attention_modules())


@pytest.mark.parametrize("name", ["llama", "window", "alibi"])
def test_pattern_rows_sum_to_one_and_are_causal(name: str, tiny_decoder, make_batch) -> None:
    model = tiny_decoder(name)
    input_ids, mask, position_ids = make_batch(model.config.vocab_size)
    patterns = {}
    with workbench.model.hooks(
        model, [(lambda n: n.endswith("hook_pattern"), lambda t, h: patterns.update({h.name: t}))]
    ):
        with torch.no_grad():
            model(input_ids, attention_mask=mask, position_ids=position_ids)
    assert len(patterns) == model.config.n_layers
    T = input_ids.shape[1]
    distance = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # query - key
    for layer in range(model.config.n_layers):
        pattern = patterns[f"blocks.{layer}.attn.hook_pattern"]  # (B, H, T, T)
        assert pattern.shape == (3, model.config.n_heads, T, T)
        real_queries = mask.bool()[:, None, :].expand(-1, model.config.n_heads, -1)
        rows = pattern[real_queries]  # (n, S)
        torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[0]), atol=1e-6, rtol=0)
        hidden = distance < 0
        window = model.config.window_for_layer(layer)
        if window is not None:
            hidden = hidden | (distance >= window)
        hidden = hidden[None, None] | (mask == 0)[:, None, None, :]  # future, outside window, padding
        assert torch.all(pattern.masked_fill(~real_queries[..., None], 0)[hidden.expand_as(pattern)] == 0)


# --- nnsight --------------------------------------------------------------------------------


def test_nnsight_reads_the_same_activations(tiny_decoder) -> None:
    from nnsight import NNsight

    model = tiny_decoder("llama")
    tokens = torch.randint(0, model.config.vocab_size, (2, 8))
    captured = {}
    with workbench.model.hooks(
        model, [(lambda n: n.endswith("hook_resid_post"), lambda t, h: captured.update({h.name: t}))]
    ):
        with torch.no_grad():
            logits = model(tokens)
    traced = NNsight(model)
    saved = []  # created before the trace; values requested in layer order
    with traced.trace(tokens):
        for layer in range(model.config.n_layers):
            saved.append(traced.blocks[layer].hook_resid_post.output.save())
        traced_logits = traced.output.save()
    for layer, value in enumerate(saved):
        assert torch.equal(value, captured[f"blocks.{layer}.hook_resid_post"])
    assert torch.equal(traced_logits, logits)
    assert attached_hook_count(model) == 0


def test_nnsight_ablation_equals_workbench_hook_ablation(tiny_decoder) -> None:
    from nnsight import NNsight

    model = tiny_decoder("llama")
    tokens = torch.randint(0, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        clean = model(tokens)
        with workbench.model.hooks(model, [("blocks.0.hook_mlp_out", lambda t, h: torch.zeros_like(t))]):
            hooked = model(tokens)
    traced = NNsight(model)
    with traced.trace(tokens):
        traced.blocks[0].hook_mlp_out.output = torch.zeros_like(traced.blocks[0].hook_mlp_out.output)
        ablated = traced.output.save()
    assert (ablated - clean).abs().max() > 1e-3
    assert torch.equal(ablated, hooked)


# --- device_map offloading ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "gpt2"])  # gpt2: tied embeddings, learned positions
def test_device_map_offloads_to_disk(name: str, tiny_decoder, tmp_path) -> None:
    folder = workbench.save_checkpoint(tiny_decoder(name), tmp_path / "model")
    normal = workbench.load_model(folder)
    model_bytes = sum(p.numel() * p.element_size() for p in normal.parameters())
    offloaded = workbench.load_model(
        folder, device_map="auto", max_memory={"cpu": model_bytes // 3}, offload_folder=tmp_path / "offload"
    )
    device_map = offloaded.hf_device_map
    on_disk = [key for key, device in device_map.items() if device == "disk" and key.startswith("blocks")]
    assert on_disk, device_map
    tokens = torch.randint(0, normal.config.vocab_size, (2, 8))
    selector = lambda n: n.endswith(("hook_resid_post", "attn.hook_z"))  # noqa: E731
    captured: dict[str, dict[str, torch.Tensor]] = {"normal": {}, "offloaded": {}}
    outputs = {}
    for label, model in (("normal", normal), ("offloaded", offloaded)):
        store = captured[label]
        with workbench.model.hooks(
            model, [(selector, lambda t, h, store=store: store.update({h.name: t.clone()}))]
        ):
            with torch.no_grad():
                outputs[label] = model(tokens)
    assert torch.equal(outputs["offloaded"], outputs["normal"])
    assert set(captured["offloaded"]) == set(captured["normal"])
    assert len(captured["offloaded"]) == 2 * normal.config.n_layers
    for hook_name, value in captured["normal"].items():
        assert torch.equal(captured["offloaded"][hook_name], value), hook_name
    assert attached_hook_count(offloaded) == 0


def test_offload_folder_reused_by_another_model(tiny_decoder, tmp_path) -> None:
    """A second model offloaded into the same folder must not run the first one's weights."""
    tokens = torch.randint(0, 96, (1, 8))
    for seed in (0, 1):
        model = tiny_decoder("llama", seed=seed)
        folder = workbench.save_checkpoint(model, tmp_path / f"model-{seed}")
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        offloaded = workbench.load_model(
            folder,
            device_map="auto",
            max_memory={"cpu": model_bytes // 3},
            offload_folder=tmp_path / "offload",
        )
        with torch.no_grad():
            assert torch.equal(offloaded(tokens), model(tokens)), f"model {seed}"


# --- the real model (slow) ------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_logits_match_transformers_at_512(smollm2) -> None:
    generator = torch.Generator().manual_seed(0)
    vocab = smollm2.workbench.config.vocab_size
    input_ids = torch.randint(0, vocab, (2, 512), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[1, :100] = 0  # left padding
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = smollm2.reference(input_ids, attention_mask=mask, position_ids=position_ids).logits
        actual = smollm2.workbench(input_ids, attention_mask=mask, position_ids=position_ids)
    max_diff = float((real(actual, mask) - real(expected, mask)).abs().max())
    torch.testing.assert_close(
        real(actual, mask),
        real(expected, mask),
        atol=ATOL,
        rtol=RTOL,
        msg=lambda message: f"{message}\nSmolLM2 T=512: max abs logit diff {max_diff:.3g}",
    )


@pytest.mark.slow
def test_smollm2_greedy_generation_matches_transformers(smollm2) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = smollm2.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    input_ids = prompt["input_ids"] if not isinstance(prompt, torch.Tensor) else prompt
    with torch.no_grad():
        expected = smollm2.reference.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=20, do_sample=False
        )
    actual = smollm2.workbench.generate(input_ids, max_new_tokens=20)
    n = expected.shape[1]  # transformers stops early at end-of-sequence
    assert n > input_ids.shape[1] + 3
    assert actual[:, :n].tolist() == expected.tolist(), smollm2.tokenizer.decode(
        actual[0, input_ids.shape[1] :]
    )
