"""Llama (Touvron et al. 2023) and its kin (SmolLM2, TinyLlama ...): a `DecoderLM` with RoPE, RMSNorm,
SwiGLU, grouped-query attention and no biases; the head is tied or not.

The weights come from Hugging Face directories (hub/llama.py) or GGUF files (hub/gguf.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..nn import TransformerConfig
from .lm import DecoderLM, DecoderLMConfig


def _smollm2_135m_stack() -> TransformerConfig:
    return TransformerConfig(dim=576, depth=30, heads=9, kv_heads=3, mlp_dim=1536, bias=False, activation="swiglu",
                             norm="rmsnorm", norm_eps=1e-5, position="rope", rope_base=100000.0, max_seq_len=8192)


@dataclass
class LlamaConfig(DecoderLMConfig):
    """Defaults are SmolLM2-135M's shape."""

    transformer: TransformerConfig = field(default_factory=_smollm2_135m_stack)
    vocab_size: int = 49152
    tie_embeddings: bool = True
    model_type: Literal["mmt-llama"] = "mmt-llama"


class Llama(DecoderLM):
    """`model(input_ids, attention_mask=None).logits` (B, T, V), as `LlamaForCausalLM`."""

    config_class = LlamaConfig
