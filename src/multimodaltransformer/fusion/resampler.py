"""Resampler fusion: a fixed number of learned queries read the media and become the prefix.

Flamingo's Perceiver Resampler (Alayrac et al. 2022), close to BLIP-2's Q-Former without its text
branch: however many media tokens N come in, `num_queries` tokens go out, so the decoder's
sequence stays short. Each layer, pre-LN:
    q = q + Attn(query=LN(q), keys/values=[LN(media); LN(q)])    (queries also see each other)
    q = q + MLP(LN(q))
There are no positions inside, so the output does not depend on the order of the media tokens.
Legend: B batch, N media tokens, Cm media dim, C decoder dim, Q queries.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn.attention import MultiHeadAttention
from ..nn.blocks import MLP, build_norm
from .config import FusionOutput, Projector, build_projector


class ResamplerLayer(nn.Module):
    """One Perceiver layer: the queries cross-attend to [media; queries], then an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5) -> None:
        super().__init__()
        # separate norms for media and queries, as in Flamingo: the two come from different places.
        self.norm_media = build_norm("layernorm", dim, eps)
        self.norm_queries = build_norm("layernorm", dim, eps)
        self.attn = MultiHeadAttention(dim, heads, cross=True)
        self.norm_mlp = build_norm("layernorm", dim, eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, queries: Tensor, media: Tensor) -> Tensor:
        """queries (B, Q, C), media (B, N, C) -> queries (B, Q, C)."""
        q = self.norm_queries(queries)
        kv = torch.cat([self.norm_media(media), q], dim=1)  # (B, N + Q, C)
        queries = queries + self.attn(q, context=kv)
        return queries + self.mlp(self.norm_mlp(queries))


class Resampler(nn.Module):
    """media (B, N, Cm) -> prefix (B, num_queries, C) for any N >= 1."""

    def __init__(self, media_dim: int, dim: int, num_queries: int = 16, depth: int = 2, heads: int = 4,
                 projector: Projector = "linear") -> None:
        super().__init__()
        self.proj = build_projector(projector, media_dim, dim)
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.layers = nn.ModuleList(ResamplerLayer(dim, heads) for _ in range(depth))
        self.norm = build_norm("layernorm", dim, 1e-5)
        self.type_embed = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, media: Tensor) -> FusionOutput:
        """media (B, N, Cm) -> prefix (B, Q, C), no memory."""
        x = self.proj(media)  # (B, N, C)
        q = self.queries.expand(x.shape[0], -1, -1)  # (B, Q, C)
        for layer in self.layers:
            q = layer(q, x)
        return FusionOutput(prefix=self.norm(q) + self.type_embed, memory=None)
