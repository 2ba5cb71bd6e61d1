"""Text in, text out on the hooked decoder: tokenizing, decoding and generation.

Mixed into :class:`~workbench.model.HookedDecoder`. The tokenizer is the checkpoint's own
(``load_model`` attaches it, loaded on first use); a checkpoint without one still runs on token
ids, and the text methods then say so. Methods follow TransformerLens's names and defaults,
except where noted:

* ``to_tokens(text, prepend_bos=True, padding_side="right")`` tokenizes without the tokenizer's
  own special tokens and prepends ``bos_token_id`` when asked; a list is padded on the right.
* ``generate`` is greedy unless ``do_sample=True`` (TransformerLens samples by default), and
  runs on the KV cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from workbench.errors import InputError
from workbench.model.kv_cache import KVCache

TextInput = str | list[str]


class NoTokenizerError(InputError):
    """A text method was called on a model whose checkpoint carries no tokenizer."""


def is_text(value: Any) -> bool:
    """True for a string or a non-empty list of strings."""
    return isinstance(value, str) or (
        isinstance(value, list | tuple) and len(value) > 0 and all(isinstance(v, str) for v in value)
    )


class TextMixin:
    """Tokenizer-backed methods of the hooked decoder."""

    _tokenizer: Any = None
    _tokenizer_loader: Callable[[], Any] | None = None

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's transformers tokenizer, or None when it has none."""
        if self._tokenizer is None and self._tokenizer_loader is not None:
            loader, self._tokenizer_loader = self._tokenizer_loader, None
            self._tokenizer = loader()
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        self._tokenizer, self._tokenizer_loader = tokenizer, None

    def set_tokenizer_loader(self, loader: Callable[[], Any]) -> None:
        """Load the tokenizer with ``loader()`` the first time it is needed."""
        self._tokenizer, self._tokenizer_loader = None, loader

    def _need_tokenizer(self) -> Any:
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise NoTokenizerError(
                f"{self.config.name}: this checkpoint has no tokenizer; pass token ids "
                "([batch, pos] int tensors) or set model.tokenizer"
            )
        return tokenizer

    def _bos(self) -> int | None:
        tokenizer = self.tokenizer
        bos = getattr(tokenizer, "bos_token_id", None)
        return bos if bos is not None else self.config.bos_token_id

    def _eos(self) -> int | None:
        tokenizer = self.tokenizer
        eos = getattr(tokenizer, "eos_token_id", None)
        return eos if eos is not None else self.config.eos_token_id

    def encode(
        self, text: TextInput, prepend_bos: bool = True, padding_side: str = "right"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [batch, pos], attention_mask [batch, pos])`` for a string or a list."""
        tokenizer = self._need_tokenizer()
        texts = [text] if isinstance(text, str) else list(text)
        rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        bos = self._bos()
        if prepend_bos:
            if bos is None:
                raise NoTokenizerError(f"{self.config.name}: the tokenizer has no BOS token; use prepend_bos=False")
            rows = [[bos, *row] for row in rows]
        length = max(len(row) for row in rows)
        if length == 0:
            raise ValueError("cannot tokenize an empty string without prepend_bos")
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else (self._eos() if self._eos() is not None else 0)
        tokens = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            at = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
            tokens[i, at] = torch.tensor(row, dtype=torch.long)
            mask[i, at] = 1
        return tokens.to(self.device), mask.to(self.device)

    def to_tokens(self, text: TextInput, prepend_bos: bool = True, padding_side: str = "right") -> torch.Tensor:
        """Token ids ``[batch, pos]`` of a string (batch 1) or a list of strings (padded)."""
        return self.encode(text, prepend_bos, padding_side)[0]

    def to_str_tokens(self, value: Any, prepend_bos: bool = True) -> list[str] | list[list[str]]:
        """One string per token: of a text, of ids ``[pos]`` / ``[1, pos]``, or of each text or row
        of a list / ``[batch, pos]`` tensor (a list of lists)."""
        tokenizer = self._need_tokenizer()
        if isinstance(value, list) and is_text(value):
            return [self.to_str_tokens(text, prepend_bos) for text in value]
        if isinstance(value, str):
            value = self.to_tokens(value, prepend_bos)
        ids = torch.as_tensor(value)
        if ids.dim() == 2 and ids.shape[0] > 1:
            return [self.to_str_tokens(row) for row in ids]
        return [tokenizer.decode([int(i)]) for i in ids.reshape(-1)]

    def to_string(self, tokens: Any) -> str | list[str]:
        """Decoded text of ids ``[pos]`` (a string) or ``[batch, pos]`` (one string per row)."""
        tokenizer = self._need_tokenizer()
        ids = torch.as_tensor(tokens)
        if ids.dim() == 2:
            return [tokenizer.decode(row.tolist()) for row in ids]
        return tokenizer.decode(ids.tolist())

    def to_single_token(self, text: str) -> int:
        """The id of a string that is exactly one token (ValueError otherwise)."""
        ids = self.to_tokens(text, prepend_bos=False)[0]
        if ids.numel() != 1:
            raise ValueError(f"{text!r} is {ids.numel()} tokens, not one")
        return int(ids[0])

    @torch.no_grad()
    def generate(
        self,
        input: TextInput | torch.Tensor,
        max_new_tokens: int = 10,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_at_eos: bool = False,
        prepend_bos: bool = True,
        generator: torch.Generator | None = None,
    ) -> Any:
        """Continue ``input`` by ``max_new_tokens`` tokens on the KV cache.

        Greedy by default; ``do_sample=True`` samples from ``softmax(logits / temperature)``
        restricted to the ``top_k`` most likely tokens and the smallest set of probability
        ``top_p`` (``generator`` seeds it). A string comes back as a string (its text and the continuation,
        without BOS; a list as a list),
        ids ``[batch, pos]`` as ids ``[batch, pos + n]``. Lists of strings are left-padded.
        With ``stop_at_eos`` a row stops at its EOS token and is padded with EOS after it.
        """
        text_in = is_text(input)
        if text_in:
            tokens, mask = self.encode(input, prepend_bos, padding_side="left")
        else:
            tokens, mask = torch.as_tensor(input).to(self.device), None
        eos = self._eos() if stop_at_eos else None
        if stop_at_eos and eos is None:
            raise ValueError("stop_at_eos needs an EOS token id (tokenizer or config)")
        out = decode_loop(self, tokens, mask, max_new_tokens, eos, do_sample, temperature, top_k, top_p, generator)
        if not text_in:
            return out
        prompt = tokens.shape[1]
        skip = 1 if prepend_bos else 0  # decode the prompt's text and the continuation, no BOS
        texts = [self.to_string(row[prompt - int(m.sum()) + skip :]) for row, m in zip(out, mask, strict=True)]
        return texts[0] if isinstance(input, str) else texts


def next_token(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The next token ``[B, 1]`` from last-position logits ``[B, V]``."""
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already hold top_p (the first always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def decode_loop(
    model: Any,
    tokens: torch.Tensor,
    mask: torch.Tensor | None,
    max_new_tokens: int,
    eos: int | None,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Prefill ``tokens [B, T]`` once, then one cached forward per new token."""
    cache = KVCache(model.config.n_layers)
    B = tokens.shape[0]
    if mask is not None:
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        logits = model(tokens, attention_mask=mask, cache=cache, position_ids=positions)
        next_position = positions[:, -1:] + 1
    else:
        logits = model(tokens, cache=cache)
        next_position = None
    out = [tokens]
    finished = torch.zeros(B, 1, dtype=torch.bool, device=tokens.device)
    for step in range(max_new_tokens):
        chosen = next_token(logits[:, -1], do_sample, temperature, top_k, top_p, generator)
        if eos is not None:
            chosen = chosen.masked_fill(finished, eos)
            finished = finished | (chosen == eos)
        out.append(chosen)
        if step == max_new_tokens - 1 or (eos is not None and bool(finished.all())):
            break
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(chosen)], dim=1)
            logits = model(chosen, attention_mask=mask, cache=cache, position_ids=next_position)
            next_position = next_position + 1
        else:
            logits = model(chosen, cache=cache)
    return torch.cat(out, dim=1)
