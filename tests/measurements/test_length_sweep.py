"""The length sweep: claimed contexts, the copy probe, probe lengths, and what the sweep records
(prefixes of one forward, crashes, the same weights without RoPE scaling)."""

from __future__ import annotations

import pytest
import torch

from workbench.config import DecoderConfig, RopeScaling
from workbench.loading.native import save_checkpoint
from workbench.measurements.copy_probe import copied_blocks, copied_random_blocks, copy_targets
from workbench.measurements.length import (
    claimed_context,
    copy_block_len,
    rope_scaling_off,
    run_length_sweep,
    sweep_lengths,
)
from workbench.model.decoder import HookedDecoder
from workbench.pipeline.run import RunOptions, run
from workbench.recorders.loss import chunked_loss


def config(**changes) -> DecoderConfig:
    fields = dict(vocab_size=96, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=48, max_positions=64)
    return DecoderConfig(**{**fields, **changes})


@pytest.mark.parametrize(
    ("max_positions", "scaling", "claimed", "trained"),
    [
        (64, None, 64, 64),
        # Qwen2.5: max_position_embeddings is the original, a YaRN factor of 4 claims 4x it
        (32768, RopeScaling("yarn", 4.0, original_max_positions=32768), 131072, 32768),
        # Llama 3.1: 131,072 written out, a factor of 8 over 8,192 (65,536) claims no more
        (131072, RopeScaling("llama3", 8.0, original_max_positions=8192), 131072, 8192),
        # linear without the original: max_position_embeddings is the stretched context
        (16384, RopeScaling("linear", 8.0), 16384, 2048),
        # dynamic NTK stretches past max_position_embeddings
        (2048, RopeScaling("dynamic", 2.0), 4096, 2048),
    ],
)
def test_claimed_context_is_factor_times_the_original(max_positions, scaling, claimed, trained):
    assert claimed_context(config(max_positions=max_positions, rope_scaling=scaling)) == (claimed, trained)


def test_tokens_n_is_the_longest_probe_past_the_profile_cap():
    lengths, skipped = sweep_lengths(8192, [0.5, 1.0, 2.0], [256], cap=2048, requested=12000)
    assert lengths == [256, 4096, 8192, 12000] and skipped == [16384]
    assert sweep_lengths(64, [0.5, 1.0, 2.0], [], cap=2048) == ([32, 64, 128], [])
    assert sweep_lengths(64, [0.5, 1.0, 2.0], [], cap=2048, requested=300) == ([32, 64, 128, 300], [])
    assert sweep_lengths(8192, [0.5, 1.0, 2.0], [], cap=2048) == ([], [4096, 8192, 16384])


def test_copied_blocks_write_each_block_twice_and_mark_the_second_copy():
    tokens = copied_random_blocks(50, 4, 22, batch=2, seed=3)  # [2, 22]
    assert tokens.shape == (2, 22)
    assert torch.equal(tokens[:, 4:8], tokens[:, 0:4]) and torch.equal(tokens[:, 12:16], tokens[:, 8:12])
    assert not torch.equal(tokens[:, 8:12], tokens[:, 0:4])  # a fresh block per pair
    targets = copy_targets(22, 4)  # entry t: is token t + 1 in a second copy, past its first id?
    assert targets.tolist() == [(t + 1) % 8 > 4 for t in range(21)]
    stream = torch.arange(12)[None]
    assert copied_blocks(stream, 3, 10).tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 5, 3]]
    assert copy_block_len(8192, 32) == 32 and copy_block_len(64, 32) == 16 and copy_block_len(4, 32) == 2


def test_one_forward_per_kind_and_seed_gives_every_shorter_probe():
    torch.manual_seed(0)
    model = HookedDecoder(config()).eval()
    record = run_length_sweep(model, [16, 48, 128], natural=None, vocab_size=96, block_len=32, seeds=(0, 1))
    by_length = {p.length: p for p in record.probes}
    assert [p.kind for p in record.probes] == ["copy"] * 3
    assert by_length[128].prefix_of is None and by_length[16].prefix_of == 128
    assert by_length[48].loss_by_seed.shape == (2, 47)
    assert torch.equal(by_length[48].loss_by_seed, by_length[128].loss_by_seed[:, :47])
    # the prefix equals a forward of its own on the same first tokens (a causal model)
    tokens = copied_random_blocks(96, 16, 128, seed=1)[:, :48]
    alone = chunked_loss(model.hidden(tokens), tokens, model.unembed)[0]
    torch.testing.assert_close(by_length[48].loss_by_seed[1], alone, atol=1e-5, rtol=1e-5)


def test_a_length_the_model_cannot_take_is_recorded_not_raised():
    model = HookedDecoder(config(positions="learned")).eval()
    record = run_length_sweep(model, [32, 64, 128], natural=None, vocab_size=96, block_len=8, seeds=(0,))
    errors = {p.length: p.error for p in record.probes}
    assert errors[32] is None and errors[64] is None
    assert errors[128].startswith("IndexError: position 127 is past the learned position table")


def test_rope_scaling_off_is_the_same_weights_without_it_and_is_restored():
    scaled = config(rope_scaling=RopeScaling("linear", 4.0, original_max_positions=64))
    torch.manual_seed(0)
    model = HookedDecoder(scaled).eval()
    plain = HookedDecoder(scaled.replace(rope_scaling=None)).eval()
    plain.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 96, (1, 40))
    before = model(tokens)
    with rope_scaling_off(model):
        torch.testing.assert_close(model(tokens), plain(tokens))
    torch.testing.assert_close(model(tokens), before)
    assert model.config.rope_scaling is not None
    record = run_length_sweep(model, [128], natural=None, vocab_size=96, block_len=8, seeds=(0,))
    assert record.boundary == 256 and record.trained_context == 64
    assert [(p.kind, p.length, p.rope_scaling) for p in record.unscaled] == [("copy", 64, False)]


def test_extrapolation_tokens_lifts_the_profile_cap(tmp_path):
    torch.manual_seed(0)
    folder = save_checkpoint(HookedDecoder(config(name="tiny")), tmp_path / "tiny")
    profile = tmp_path / "short.toml"
    profile.write_text('name = "short"\n[probes]\nmax_tokens = 128\nlengths = []\nlength_seeds = 1\n')
    capped = run(str(folder), RunOptions(command="extrapolation", profile=str(profile))).report
    assert max(p["length"] for p in capped["length"]["probes"]) == 128
    lifted = run(str(folder), RunOptions(command="extrapolation", profile=str(profile), tokens=300)).report
    assert max(p["length"] for p in lifted["length"]["probes"]) == 300
    assert [f["check"] for f in lifted["findings"] if f["analyzer"] == "length_extrapolation"] == ["chance"]
