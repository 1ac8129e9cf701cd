"""The model interface the generation engine drives; every generative model offers it itself.

A generative model (MultimodalTransformerModel, ComposedModel, DecoderLM: GPT-2, Llama ...; Whisper):
  embed(input_ids, attention_mask, **media) -> (x (B, S, C), key_mask (B, S), context (B, M, C) | None)
      media prefix tokens first; context is what cross-attention layers read (None: none)
  embed_tokens(ids (B, T)) -> (B, T, C)      a decode step's new tokens
  new_cache(B, L, context_len) -> DecodeCache (nn/cache.py), the state the caller owns and passes in
  decode_step(x, positions, key_mask, start, context=None, *, cache) -> logits (B, T', V)   x at cache
      slots start..; key_mask (B, L); context only at the prefill; T' may be 1 (the last position)
  max_seq_len;  num_media_tokens (prefix positions the media take)
and optionally `tokenizer` (a TextTokenizer: eos_id / pad_id are the defaults) or `eos_token_id`.
Legend: B batch, T length, L cache slots, C dim, V vocab.
"""

from __future__ import annotations

from typing import Any

METHODS = ("embed", "embed_tokens", "new_cache", "decode_step")


def as_generative(model: Any) -> Any:
    """`model`, checked to have the generation interface."""
    missing = [name for name in METHODS if not hasattr(model, name)]
    if missing:
        raise TypeError(f"{type(model).__name__} cannot generate: it lacks {', '.join(missing)} "
                        "(generation/interface.py: a multimodal model, a decoder LM or Whisper)")
    return model


def default_special_ids(model: Any) -> tuple[int | list[int] | None, int | None]:
    """(eos, pad) the model suggests: its tokenizer's (TextTokenizer) or its config's EOS."""
    tok = getattr(model, "tokenizer", None)
    if hasattr(tok, "eos_id"):
        return tok.eos_id, tok.pad_id
    return getattr(model, "eos_token_id", None), None


__all__ = ["as_generative", "default_special_ids"]
