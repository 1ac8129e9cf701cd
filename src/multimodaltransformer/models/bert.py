"""BERT (Devlin et al. 2019) and its distillations (MiniLM): a post-LN bidirectional text encoder.

word + token-type embeddings -> the stack (learned positions, embedding LayerNorm, post-LN blocks,
no final norm) -> optional pooler tanh(dense(h[CLS])). Legend: B batch, T length, C dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import EncoderOutput, TransformerConfig, TransformerStack, padding_mask
from .base import PretrainedModel


def _bert_stack() -> TransformerConfig:
    return TransformerConfig(dim=768, depth=12, heads=12, mlp_dim=3072, norm_eps=1e-12, norm_first=False,
                             position="learned", max_seq_len=512, embed_norm=True, final_norm=False)


@dataclass
class BERTConfig:
    transformer: TransformerConfig = field(default_factory=_bert_stack)
    vocab_size: int = 30522
    type_vocab_size: int = 2
    pad_token_id: int = 0
    pooler: bool = True
    model_type: Literal["mmt-bert"] = "mmt-bert"


class BERT(PretrainedModel):
    """`model(input_ids, attention_mask, token_type_ids=None)` -> EncoderOutput, as HF `BertModel`."""

    config_class = BERTConfig

    def __init__(self, config: BERTConfig) -> None:
        super().__init__(config)
        C = config.transformer.dim
        self.word_embed = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.type_embed = nn.Embedding(config.type_vocab_size, C)
        self.transformer = TransformerStack(config.transformer)
        self.pooler = nn.Linear(C, C) if config.pooler else None

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None) -> EncoderOutput:
        T = input_ids.shape[1]
        if T > self.config.transformer.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_position_embeddings "
                             f"{self.config.transformer.max_seq_len}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embed(input_ids) + self.type_embed(token_type_ids)  # positions are added by the stack
        mask = None if attention_mask is None else padding_mask(attention_mask)
        h = self.transformer(x, mask, positions=position_ids)
        pooled = torch.tanh(self.pooler(h[:, 0])) if self.pooler is not None else None
        return EncoderOutput(h, pooled)


def mean_pool(last_hidden_state: Tensor, attention_mask: Tensor | None = None, normalize: bool = True) -> Tensor:
    """Sentence embedding (B, C): the mean over real tokens (sentence-transformers), L2-normalised."""
    if attention_mask is None:
        pooled = last_hidden_state.mean(1)
    else:
        m = attention_mask.to(last_hidden_state.dtype)[..., None]  # (B, T, 1)
        pooled = (last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1) if normalize else pooled
