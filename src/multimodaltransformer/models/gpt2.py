"""GPT-2 (Radford et al. 2019): a `DecoderLM` with learned positions, pre-LN GELU blocks and a tied head.

Everything GPT-2-specific is configuration (gelu_tanh, learned positions) or lives in the weight
mapping (hub/gpt2.py: Conv1D transposes, the packed c_attn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..nn import TransformerConfig
from .lm import DecoderLM, DecoderLMConfig


def _gpt2_stack() -> TransformerConfig:
    return TransformerConfig(dim=768, depth=12, heads=12, activation="gelu_tanh", position="learned",
                             max_seq_len=1024)


@dataclass
class GPT2Config(DecoderLMConfig):
    transformer: TransformerConfig = field(default_factory=_gpt2_stack)
    vocab_size: int = 50257
    tie_embeddings: bool = True
    eos_token_id: int | list[int] | None = 50256
    model_type: Literal["mmt-gpt2"] = "mmt-gpt2"


class GPT2(DecoderLM):
    """`model(input_ids, attention_mask=None).logits` (B, T, V), as `GPT2LMHeadModel`."""

    config_class = GPT2Config
