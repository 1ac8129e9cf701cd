"""Multi-head attention (self and cross) on `F.scaled_dot_product_attention`, with a KV cache.

Legend: B batch, T query length, S key length, H heads, D head dim, C model dim.
Masks are boolean, True = may attend, broadcastable to (B, H, T, S).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache(nn.Module):
    """Preallocated key/value buffers written in place at `input_pos` (gpt-fast style)."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch, heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, T, D) at positions `input_pos` (T,); return the full buffers."""
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over H heads; `context` switches it to cross attention."""

    def __init__(self, dim: int, heads: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.kv_cache: KVCache | None = None

    def _split(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                input_pos: Tensor | None = None) -> Tensor:
        """x (B, T, C); context (B, S, C) or None for self attention; returns (B, T, C).

        With a KV cache set and `input_pos` given, the new keys/values are written at those
        positions and attention runs over the whole buffer (the mask hides unwritten slots).
        """
        src = x if context is None else context
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(src)), self._split(self.v_proj(src))
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        B, H, T, D = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * D))
