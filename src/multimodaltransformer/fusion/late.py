"""Late fusion: the media and the text are encoded apart and meet only in a small MLP.

The fused vector feeds task heads (classification, matching, answer classes) that the model puts
on top. Late fusion has no generative path: the decoder never sees the media, so it cannot
caption or answer in free text.
Legend: B batch, N media tokens, Cm media dim, C text (decoder) dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LateFusion(nn.Module):
    """fused = MLP([mean_N(media); text]): Linear(Cm + C -> H)-GELU-Linear(H -> C), H = hidden_dim or 2C."""

    def __init__(self, media_dim: int, text_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden_dim if hidden_dim is not None else 2 * text_dim
        self.mlp = nn.Sequential(nn.Linear(media_dim + text_dim, hidden), nn.GELU(), nn.Linear(hidden, text_dim))

    def forward(self, media: Tensor, text: Tensor) -> Tensor:
        """media (B, N, Cm), text (B, C) pooled text vector -> fused (B, C)."""
        pooled = media.mean(dim=1)  # (B, Cm)
        return self.mlp(torch.cat([pooled, text], dim=-1))  # (B, C)
