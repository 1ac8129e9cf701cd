"""GPT-style decoder: token + learned position embeddings, pre-LN blocks, tied LM head.

The decoder works on embeddings, so other modalities can be placed in front of the text
(prefix fusion); `embed_tokens` turns token ids into those embeddings. The same decoder interface
(`embed_tokens`, `hidden`, `head`) is offered by the pretrained decoder LMs (models/lm.py).
Legend: B batch, T sequence length, C model dim, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..nn import TransformerConfig, TransformerStack
from ..nn.cache import DecodeCache


@dataclass
class DecoderConfig(TransformerConfig):
    vocab_size: int = 1024
    max_seq_len: int = 256
    tie_embeddings: bool = True


class GPTDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.transformer = TransformerStack(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_embed.weight
        self.apply(_init_weights)

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        return self.tok_embed(input_ids)  # (B, T, C)

    def hidden(self, x: Tensor, positions: Tensor, mask: Tensor | None = None, input_pos: Tensor | None = None,
               context: Tensor | None = None, context_mask: Tensor | None = None,
               cache: DecodeCache | None = None) -> Tensor:
        """x (B, T, C) embeddings, positions (B, T) -> final hidden states (B, T, C).

        context (B, M, C) feeds the cross-attention layers (cross / gated fusion), if any;
        context_mask (B, 1, 1, M) hides its padding (rows lacking a modality).
        """
        return self.transformer(self.drop(x + self.pos_embed(positions)), mask=mask, input_pos=input_pos,
                                context=context, context_mask=context_mask, cache=cache)

    def head(self, h: Tensor) -> Tensor:
        """Hidden states (B, T, C) -> logits (B, T, V)."""
        return self.lm_head(h)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor | None = None,
                input_pos: Tensor | None = None, context: Tensor | None = None,
                cache: DecodeCache | None = None) -> Tensor:
        """x (B, T, C) embeddings, positions (B, T) -> logits (B, T, V)."""
        return self.head(self.hidden(x, positions, mask, input_pos, context, cache=cache))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
