"""GPT-2 (Radford et al. 2019): token embeddings -> pre-LN causal stack with learned positions -> tied LM head.

Everything GPT-2-specific is configuration (gelu_tanh, learned positions) or lives in the weight
mapping (hub/gpt2.py: Conv1D transposes, the packed c_attn). Positions belong to the stack, so the
class is a generic decoder-only LM: a Llama is this with position="rope", norm="rmsnorm",
activation="swiglu", kv_heads, bias=False and an untied head. Legend: B batch, T length, C dim, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import TransformerConfig, TransformerStack, causal_padding_mask
from .base import PretrainedModel
from .multimodal import IGNORE_INDEX, ModelOutput


def _gpt2_stack() -> TransformerConfig:
    return TransformerConfig(dim=768, depth=12, heads=12, activation="gelu_tanh", position="learned",
                             max_seq_len=1024)


@dataclass
class GPT2Config:
    transformer: TransformerConfig = field(default_factory=_gpt2_stack)
    vocab_size: int = 50257
    tie_embeddings: bool = True
    eos_token_id: int | None = 50256
    model_type: Literal["mmt-gpt2"] = "mmt-gpt2"


class GPT2(PretrainedModel):
    """`model(input_ids, attention_mask=None).logits` (B, T, V), as `GPT2LMHeadModel`."""

    config_class = GPT2Config

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        C = config.transformer.dim
        self.tok_embed = nn.Embedding(config.vocab_size, C)
        self.transformer = TransformerStack(config.transformer)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embed.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        """Positions default to 0..T-1 whatever the padding (as in HF); `labels` are shifted here."""
        T = input_ids.shape[1]
        if T > self.config.transformer.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds n_positions {self.config.transformer.max_seq_len}")
        mask = causal_padding_mask(attention_mask, T, device=input_ids.device)
        h = self.transformer(self.tok_embed(input_ids), mask, positions=position_ids)
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=IGNORE_INDEX)
        return ModelOutput(loss, logits)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int = 20, eos_token_id: int | None = None) -> Tensor:
        """Greedy decoding with the KV cache for unpadded prompts (B, T) -> (B, T + n)."""
        B, T = input_ids.shape
        L = min(T + max_new_tokens, self.config.transformer.max_seq_len)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        ids, done = input_ids, torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        self.transformer.setup_caches(B, L)
        try:
            slots = torch.arange(L, device=input_ids.device)
            pos = slots[:T]
            x = self.tok_embed(input_ids)
            for _ in range(L - T):
                mask = slots[None, :] <= pos[:, None]  # (T, L): each query sees the cache up to itself
                logits = self.lm_head(self.transformer(x, mask, input_pos=pos)[:, -1])
                tok = logits.argmax(-1)
                if eos is not None:
                    tok = torch.where(done, torch.full_like(tok, eos), tok)
                    done = done | (tok == eos)
                ids = torch.cat([ids, tok[:, None]], dim=1)
                if bool(done.all()):
                    break
                pos, x = pos[-1:] + 1, self.tok_embed(tok[:, None])
        finally:
            self.transformer.clear_caches()
        return ids
