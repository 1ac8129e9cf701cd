"""The model interface generation drives, and an adapter that gives it to any plain decoder LM.

A generative model here offers (MultimodalTransformerModel and ComposedModel do natively):
  embed(input_ids, attention_mask, **media) -> (x (B, S, C), key_mask (B, S), context (B, M, C) | None)
      media prefix tokens first; context is what cross-attention layers read (None: none)
  new_cache(B, L, context_len) -> DecodeCache (nn/cache.py), the state the caller owns and passes in
  decode_step(x, positions, key_mask, start, context=None, *, cache) -> logits (B, T', V)   x at cache
      slots start..; key_mask (B, L); context only at the prefill
  decoder.embed(ids) -> (B, T, C);  max_seq_len;  num_media_tokens
  __call__(input_ids=, attention_mask=, **media).logits   the uncached reference path
and optionally `tokenizer` (a TextTokenizer: eos_id / pad_id are the defaults).
`LMAdapter` wraps a decoder LM with `tok_embed`, `transformer` (a TransformerStack) and `lm_head`
(GPT2, Llama ... from `load_pretrained`); `EncoderDecoderAdapter` an encoder-decoder (Whisper) whose
encoder output is the memory its decoder cross-attends to. Legend: B batch, T length, L cache slots, C dim, V vocab.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..nn.cache import DecodeCache
from ..nn.sequence import Embedded, causal_mask
from ..nn.attention import causal_padding_mask


class LMAdapter(nn.Module):
    """The generation interface over a decoder-only LM (no media tokens).

    `decode_step` returns logits of the last position only (B, 1, V): generation needs no others,
    and the prompt's full (B, S, V) logits would be the largest tensor of the call.
    """

    num_media_tokens = 0

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.decoder = _TokenEmbedding(lm.tok_embed)
        self.tokenizer = getattr(lm, "tokenizer", None)  # a tokenizers.Tokenizer (for streaming)

    @property
    def max_seq_len(self) -> int:
        return self.lm.transformer.cfg.max_seq_len

    @property
    def eos_token_id(self) -> int | list[int] | None:
        return getattr(getattr(self.lm, "config", None), "eos_token_id", None)

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None, **media: Any) -> Embedded:
        if any(v is not None for v in media.values()):
            raise ValueError(f"{type(self.lm).__name__} is a text-only LM: it takes no {sorted(media)}")
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        return Embedded(self.lm.tok_embed(input_ids), mask)

    def new_cache(self, batch: int, max_len: int, context_len: int | None = None) -> DecodeCache:
        return self.lm.transformer.new_cache(batch, max_len)

    def decode_step(self, x: Tensor, positions: Tensor, key_mask: Tensor, start: int,
                    context: Tensor | None = None, *, cache: DecodeCache) -> Tensor:
        T = x.shape[1]
        input_pos = torch.arange(start, start + T, device=x.device)
        if T == 1:  # one new token at the newest slot: it may see every real slot, which key_mask marks
            mask = key_mask[:, None, None, :]  # (B, 1, 1, L), a view
        else:  # the prompt: causal over real slots, padded queries see themselves (no NaN rows)
            mask = causal_mask(key_mask, start, T, key_mask.shape[1])
        h = self.lm.transformer(x, mask, input_pos, positions=positions, cache=cache)
        return self.lm.lm_head(h[:, -1:])

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **media: Any) -> Any:
        """Full-sequence logits with positions counted from the first real token (left padding)."""
        x, mask = self.embed(input_ids, attention_mask, **media)[:2]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        h = self.lm.transformer(x, causal_padding_mask(mask, x.shape[1], device=x.device), positions=positions)
        return _Logits(self.lm.lm_head(h))


class EncoderDecoderAdapter(nn.Module):
    """The generation interface over an encoder-decoder with `encode`, `tok_embed`, `decoder` (a
    TransformerDecoder with cross-attention) and `lm_head`: Whisper. The media (input_features, or
    `encoder_outputs` already encoded) are encoded once into the memory (the context of the
    interface, its K/V cached at the prefill); the prompt is the decoder's own tokens. Positions are
    the cache slots (Whisper's learned table), so prompts are not left-padded."""

    num_media_tokens = 0  # the audio is memory, not prefix positions

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.decoder = _TokenEmbedding(model.tok_embed)

    @property
    def max_seq_len(self) -> int:
        return self.model.config.decoder.max_seq_len

    @property
    def eos_token_id(self) -> int | None:
        return self.model.config.eos_token_id

    def _memory(self, media: dict[str, Any]) -> Tensor:
        if media.get("encoder_outputs") is not None:
            return media["encoder_outputs"]
        if media.get("input_features") is None:
            raise ValueError(f"{type(self.model).__name__} needs input_features (or encoder_outputs)")
        return self.model.encode(media["input_features"])

    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None, **media: Any) -> Embedded:
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        return Embedded(self.model.tok_embed(input_ids), mask, self._memory(media))

    def new_cache(self, batch: int, max_len: int, context_len: int | None = None) -> DecodeCache:
        return self.model.decoder.new_cache(batch, max_len, context_len)

    def decode_step(self, x: Tensor, positions: Tensor, key_mask: Tensor, start: int,
                    context: Tensor | None = None, *, cache: DecodeCache) -> Tensor:
        input_pos = torch.arange(start, start + x.shape[1], device=x.device)
        h = self.model.decoder(x, context, attention_mask=key_mask, input_pos=input_pos, cache=cache)
        return self.model.lm_head(h[:, -1:])

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **media: Any) -> Any:
        return _Logits(self.model.decode(input_ids, self._memory(media), attention_mask))


class _TokenEmbedding:
    """`decoder.embed(ids)` of the interface: the LM's token embedding (B, T) -> (B, T, C)."""

    def __init__(self, tok_embed: nn.Module) -> None:
        self.embed = tok_embed


class _Logits:
    __slots__ = ("logits",)

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits


def as_generative(model: Any) -> Any:
    """`model` itself when it has the generation interface, else an `LMAdapter` around it."""
    if hasattr(model, "decode_step") and hasattr(model, "embed"):
        return model
    if all(hasattr(model, name) for name in ("tok_embed", "transformer", "lm_head")):
        return LMAdapter(model)
    if all(hasattr(model, name) for name in ("encode", "tok_embed", "decoder", "lm_head")):
        return EncoderDecoderAdapter(model)
    raise TypeError(f"{type(model).__name__} cannot generate: it needs embed/decode_step (a multimodal model) "
                    "or tok_embed/transformer/lm_head (a decoder LM) or encode/tok_embed/decoder/lm_head (Whisper)")


def default_special_ids(model: Any) -> tuple[int | list[int] | None, int | None]:
    """(eos, pad) the model suggests: its tokenizer's (TextTokenizer) or its config's EOS."""
    tok = getattr(model, "tokenizer", None)
    if hasattr(tok, "eos_id"):
        return tok.eos_id, tok.pad_id
    return getattr(model, "eos_token_id", None), None


__all__ = ["EncoderDecoderAdapter", "LMAdapter", "as_generative", "default_special_ids"]
