"""Text in, text out: the checkpoint's tokenizer on the model, to_tokens / to_str_tokens /
to_string, model("text"), and generate (greedy and sampled) on the KV cache."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_tokenizer

import workbench
from workbench.model.text import NoTokenizerError

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def folders(family_cases, tmp_path_factory: pytest.TempPathFactory):
    """A tiny llama saved with the character tokenizer, and the same model without one."""
    reference = family_cases["llama"].hf_model()
    with_tokenizer = tmp_path_factory.mktemp("with-tokenizer")
    reference.save_pretrained(with_tokenizer)
    tiny_tokenizer().save_pretrained(with_tokenizer)
    without = tmp_path_factory.mktemp("without-tokenizer")
    reference.save_pretrained(without)
    return with_tokenizer, without


@pytest.fixture(scope="module")
def model(folders):
    return workbench.load_model(folders[0])


def test_tokenizer_is_attached_and_round_trips(model) -> None:
    assert model.tokenizer is not None
    tokens = model.to_tokens("Hi there")
    assert tokens.tolist() == [[1, 43, 76, 3, 87, 75, 72, 85, 72]]  # BOS, then one id per character
    assert model.to_tokens("Hi", prepend_bos=False).tolist() == [[43, 76]]
    assert model.to_str_tokens("Hi!") == ["<s>", "H", "i", "!"]
    assert model.to_str_tokens(tokens[0, 1:3]) == ["H", "i"]
    assert model.to_string(tokens[0, 1:]) == "Hi there"
    assert model.to_string(tokens) == ["<s>Hi there"]
    assert model.to_single_token("x") == 91
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token("xy")


def test_batches_are_padded_and_text_runs(model) -> None:
    batch = model.to_tokens(["Hello", "Hi"])
    assert batch.tolist()[1] == [1, 43, 76, 0, 0, 0]  # right padding, as TransformerLens
    with torch.no_grad():
        by_text = model(["Hello", "Hi"])
        alone = model("Hi")
    assert torch.equal(by_text, model(batch).detach())
    # Right padding never changes a real position's logits (causal attention).
    torch.testing.assert_close(by_text[1, :3], alone[0], atol=1e-5, rtol=0)  # batch-size rounding
    logits, cache = model.run_with_cache("Hi", names_filter="hook_embed")
    assert logits.shape == (1, 3, model.config.vocab_size) and cache["embed"].shape[:2] == (1, 3)


def test_greedy_generation_equals_argmax_without_cache(model) -> None:
    prompt = model.to_tokens("Hi")
    out = model.generate(prompt, max_new_tokens=5)
    tokens = prompt
    with torch.no_grad():
        for _ in range(5):  # recompute the whole sequence each step, no cache
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, tokens)
    text = model.generate("Hi", max_new_tokens=5)
    assert text == model.to_string(tokens[0, 1:])  # the prompt's text and what followed, no BOS
    # A left-padded batch continues each row as if it were alone.
    both = model.generate(["Hello", "Hi"], max_new_tokens=5)
    assert both[1] == text and both[0] == model.generate("Hello", max_new_tokens=5)


def test_sampling_follows_the_seeded_distribution(model) -> None:
    prompt = model.to_tokens("Hi")
    out = model.generate(prompt, max_new_tokens=4, do_sample=True, temperature=0.7, top_k=20,
                         generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    tokens = prompt
    with torch.no_grad():
        for _ in range(4):
            logits = model(tokens)[:, -1] / 0.7
            kth = torch.topk(logits, 20, dim=-1).values[:, -1:]
            probs = logits.masked_fill(logits < kth, float("-inf")).softmax(-1)
            tokens = torch.cat([tokens, torch.multinomial(probs, 1, generator=generator)], dim=1)
    assert torch.equal(out, tokens)
    greedy = model.generate(prompt, max_new_tokens=4)
    assert torch.equal(model.generate(prompt, max_new_tokens=4, do_sample=True, top_k=1), greedy)
    assert torch.equal(model.generate(prompt, max_new_tokens=4, do_sample=True, top_p=1e-6), greedy)
    assert not torch.equal(
        model.generate(prompt, max_new_tokens=12, do_sample=True, temperature=5.0, generator=torch.Generator().manual_seed(1)),
        model.generate(prompt, max_new_tokens=12),
    )


def test_stop_at_eos(model) -> None:
    prompt = model.to_tokens("Hi")
    eos = model.tokenizer.eos_token_id

    def force_eos(logits, hook):  # the second new token is EOS
        if logits.shape[1] == 1 and hook.ctx.setdefault("step", 0) == 0:
            logits[:, -1, eos] = 1e4
        hook.ctx["step"] = hook.ctx.get("step", 0) + (logits.shape[1] == 1)
        return logits

    with model.hooks([("hook_logits", force_eos)]):
        out = model.generate(prompt, max_new_tokens=6, stop_at_eos=True)
    assert out.shape[1] == prompt.shape[1] + 2 and int(out[0, -1]) == eos


def test_a_checkpoint_without_tokenizer_runs_on_ids(folders) -> None:
    model = workbench.load_model(folders[1])
    assert model.tokenizer is None
    tokens = torch.tensor([[1, 5, 9]])
    assert model.generate(tokens, max_new_tokens=2).shape == (1, 5)
    with pytest.raises(NoTokenizerError, match="no tokenizer"):
        model.to_tokens("Hi")


@pytest.mark.slow
def test_smollm2_text_tour(smollm2) -> None:
    """The README's tour on the real model: its tokenizer, a logit attribution that sums to the
    logit, the lens agreeing with the logits, and greedy text equal to transformers'."""
    model, reference, tokenizer = smollm2.workbench, smollm2.reference, smollm2.tokenizer
    assert model._tokenizer is not None or model._tokenizer_loader is not None  # load_model attached it
    model.tokenizer = tokenizer  # the same GGUF tokenizer, already converted (saves ~15 s)
    text = "The Eiffel Tower is in the city of"
    tokens = model.to_tokens(text, prepend_bos=False)
    assert tokens[0].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("_out", "embed", "hook_scale")))
    paris = model.to_single_token(" Paris")
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), paris, pos_slice=-1)
    torch.testing.assert_close(attrs.sum(0), logits[:, -1, paris], atol=1e-4, rtol=0)
    lens = model.logit_lens(tokens, positions=[-1], layers=[-1], top_k=1)
    assert int(lens.token_ids[0, 0, 0, 0]) == int(logits[0, -1].argmax()) == paris
    with torch.no_grad():
        expected = reference.generate(tokens, max_new_tokens=4, do_sample=False)
    assert model.generate(text, max_new_tokens=4, prepend_bos=False) == tokenizer.decode(expected[0])
