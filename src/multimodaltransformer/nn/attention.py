"""Multi-head attention (self and cross) on `F.scaled_dot_product_attention`, with a KV cache passed in.

Legend: B batch, T query length, S key length, H query heads, G key/value heads (G divides H;
G < H is grouped-query attention), D head dim, C model dim.
Masks are boolean, True = may attend, or additive float (ALiBi folded in), broadcastable to (B, H, T, S).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import KVCache
from .position import apply_rotary


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over H heads; `context` switches it to cross attention.

    `kv_heads` < `heads` shares each key/value head among heads // kv_heads query heads (GQA).
    A cross-attention layer (`cross=True`) given a cache projects its context once, at prefill,
    into it and reuses those keys/values when later steps pass no context.
    """

    def __init__(self, dim: int, heads: int, bias: bool = True, dropout: float = 0.0, *,
                 kv_heads: int | None = None, qkv_bias: bool | None = None, cross: bool = False) -> None:
        super().__init__()
        kv_heads = kv_heads or heads
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        if heads % kv_heads:
            raise ValueError(f"heads {heads} must be divisible by kv_heads {kv_heads}")
        qkv_bias = bias if qkv_bias is None else qkv_bias
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.dropout, self.cross = dropout, cross
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def _split(self, x: Tensor, heads: int) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, heads, self.head_dim).transpose(1, 2)  # (B, heads, T, D)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                input_pos: Tensor | None = None, rotary: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None) -> Tensor:
        """x (B, T, C); context (B, S, C) or None for self attention; returns (B, T, C).

        With a `cache` (nn/cache.py) and `input_pos` given, the new keys/values are written at those
        positions and attention runs over the whole buffer (the mask hides unwritten slots).
        `rotary` (cos, sin) from `RotaryPosition` rotates queries and keys before caching.
        """
        q = self._split(self.q_proj(x), self.heads)
        if self.cross and context is None:  # decode step: the context's K/V were cached at prefill
            if cache is None:
                raise ValueError("cross attention needs a context (or a cache filled at prefill)")
            k, v = cache.k, cache.v
        else:
            src = x if context is None else context
            k, v = self._split(self.k_proj(src), self.kv_heads), self._split(self.v_proj(src), self.kv_heads)
            if rotary is not None:
                q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
            if cache is not None and self.cross:
                k, v = cache.update(torch.arange(k.shape[2], device=k.device), k, v)
            elif cache is not None and input_pos is not None:
                k, v = cache.update(input_pos, k, v)
        B, H, T, D = q.shape
        if self.kv_heads != self.heads and T == 1 and not self.training and (
                mask is None or mask.dim() == 4 and mask.shape[1] == mask.shape[2] == 1):
            # GQA decode step: a K/V head's query heads become its queries (B, G, H/G, D), so the
            # cache is read once, not copied per query head; the mask (B, 1, 1, S) is per row
            y = F.scaled_dot_product_attention(q.reshape(B, self.kv_heads, H // self.kv_heads, D), k, v, attn_mask=mask)
            return self.out_proj(y.reshape(B, 1, H * D))
        if self.kv_heads != self.heads:  # GQA: each K/V head serves heads // kv_heads query heads
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        B, H, T, D = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * D))


def padding_mask(attention_mask: Tensor) -> Tensor:
    """(B, S) with 1/True for real tokens -> key mask (B, 1, 1, S), True = may attend."""
    return attention_mask.bool()[:, None, None, :]


def causal_mask(q_len: int, k_len: int | None = None, *, q_start: int = 0,
                device: torch.device | str | None = None) -> Tensor:
    """(q_len, k_len) True where key index <= query index; queries sit at q_start.. (for caches)."""
    k_len = q_start + q_len if k_len is None else k_len
    q = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q


def causal_padding_mask(attention_mask: Tensor | None, q_len: int,
                        device: torch.device | str | None = None) -> Tensor:
    """Causal mask combined with a (B, T) key padding mask -> (B or 1, 1, T, T).

    A query always sees itself, so rows of padding tokens never become all-masked (NaN).
    """
    causal = causal_mask(q_len, device=device)
    if attention_mask is None:
        return causal
    eye = torch.eye(q_len, dtype=torch.bool, device=device)
    return (causal & padding_mask(attention_mask)) | eye
