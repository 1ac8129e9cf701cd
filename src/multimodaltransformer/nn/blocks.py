"""Transformer blocks shared by every encoder and decoder: MLP, pre-LN block, a stack of blocks.

Legend: B batch, T sequence length, C model dim.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .attention import KVCache, MultiHeadAttention


@dataclass
class TransformerConfig:
    """A stack of pre-LN Transformer blocks."""

    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.depth < 0 or self.heads <= 0:
            raise ValueError(f"dim, depth and heads must be positive, got {self}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class TransformerBlock(nn.Module):
    """x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.dim)
        self.attn = MultiHeadAttention(cfg.dim, cfg.heads, bias=cfg.bias, dropout=cfg.dropout)
        self.ln_2 = nn.LayerNorm(cfg.dim)
        self.mlp = MLP(cfg.dim, int(cfg.dim * cfg.mlp_ratio), bias=cfg.bias, dropout=cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, input_pos: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), mask=mask, input_pos=input_pos))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks followed by a final LayerNorm; (B, T, C) -> (B, T, C)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, input_pos: Tensor | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, mask=mask, input_pos=input_pos)
        return self.ln_f(x)

    def setup_caches(self, batch: int, max_len: int) -> None:
        """Give every self-attention layer a preallocated KV cache of `max_len` positions."""
        p = next(self.parameters())
        for block in self.blocks:
            attn = block.attn
            attn.kv_cache = KVCache(batch, attn.heads, max_len, attn.head_dim, p.dtype, p.device)

    def clear_caches(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None
