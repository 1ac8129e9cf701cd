"""The state of one decode, owned by whoever decodes (generation/'s sessions, the server's batch)
and passed into the model's forward: no module holds a cache between calls.

`DecodeCache` holds, per block, a self-attention `KVCache` of L slots written in place at
`input_pos` (gpt-fast style) and, with cross-attention, the context's K/V computed once at the
prefill. Rows can be selected (expand a prompt to its beams, drop finished rows), concatenated
(join prefilled rows to a running batch) and their filled slots copied in place (beam reorder).
Legend: B rows, G key/value heads, L slots, M context tokens, D head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class KVCache:
    """Key/value buffers (B, G, L, D), preallocated; `update` writes new keys/values in place."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str | None = None) -> None:
        shape = (batch, heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @classmethod
    def of(cls, k: Tensor, v: Tensor) -> "KVCache":
        cache = cls.__new__(cls)
        cache.k, cache.v = k, v
        return cache

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, G, T, D) at slots `input_pos` (T,); return the full buffers."""
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v

    def select(self, rows: Tensor) -> "KVCache":
        return KVCache.of(self.k.index_select(0, rows), self.v.index_select(0, rows))


@dataclass
class LayerCache:
    self_attn: KVCache
    cross_attn: KVCache | None = None  # the context's K/V, written at the prefill; None: no context


class DecodeCache:
    """Every block's caches for B rows of L slots (`length`)."""

    def __init__(self, layers: list[LayerCache], length: int, context_mask: Tensor | None = None) -> None:
        self.layers, self.length = layers, length
        self.context_mask = context_mask  # (B, M) bool, the context positions that may be attended; None: all

    @property
    def batch(self) -> int:
        return self.layers[0].self_attn.k.shape[0] if self.layers else 0

    def select(self, rows: Tensor) -> "DecodeCache":
        """A cache of these rows (N,), in this order (a row may repeat: a prompt's beams)."""
        return DecodeCache([LayerCache(c.self_attn.select(rows), None if c.cross_attn is None else
                                       c.cross_attn.select(rows)) for c in self.layers], self.length,
                           None if self.context_mask is None else self.context_mask.index_select(0, rows))

    def concat(self, other: "DecodeCache") -> "DecodeCache":
        """This cache's rows, then `other`'s (same length, same context length)."""
        def cat(a: KVCache | None, b: KVCache | None) -> KVCache | None:
            return None if a is None or b is None else KVCache.of(torch.cat([a.k, b.k]), torch.cat([a.v, b.v]))

        if (self.context_mask is None) != (other.context_mask is None):
            raise ValueError("cannot concat a cache whose context has a padding mask with one without")
        return DecodeCache([LayerCache(cat(a.self_attn, b.self_attn), cat(a.cross_attn, b.cross_attn))
                            for a, b in zip(self.layers, other.layers)], self.length,
                           None if self.context_mask is None else torch.cat([self.context_mask, other.context_mask]))

    def self_buffers(self) -> list[Tensor]:
        """The self-attention K and V buffers (B, G, L, D), for in-place slot moves."""
        return [buf for c in self.layers for buf in (c.self_attn.k, c.self_attn.v)]

    def copy_rows_(self, dst: Tensor, src: Tensor, filled: int) -> None:
        """Rows dst take rows src's first `filled` self-attention slots, in place (beam reorder;
        the context K/V are equal across the rows of one prompt and stay)."""
        for buf in self.self_buffers():
            part = buf[:, :, :filled]
            part.index_copy_(0, dst, part.index_select(0, src))
