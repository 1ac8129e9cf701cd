"""Fusion: how another modality's tokens reach the text decoder.

Early (prefix) fusion: project each modality's tokens into the decoder's space, add a
learned modality-type embedding, and place them before the text tokens.
Legend: B batch, N media tokens, T text tokens, C decoder dim.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


class EarlyFusion(nn.Module):
    """`projector`: "linear" (ClipCap/LLaVA-1) or "mlp", Linear-GELU-Linear (LLaVA-1.5)."""

    def __init__(self, media_dim: int, dim: int, projector: Literal["linear", "mlp"] = "linear") -> None:
        super().__init__()
        if projector == "linear":
            self.proj: nn.Module = nn.Linear(media_dim, dim)
        else:
            self.proj = nn.Sequential(nn.Linear(media_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.type_embed = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, media: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """media (B, N, Cm), text (B, T, C), text_mask (B, T) bool -> (B, N+T, C), mask (B, N+T)."""
        prefix = self.proj(media) + self.type_embed
        media_mask = torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
        return torch.cat([prefix, text], dim=1), torch.cat([media_mask, text_mask], dim=1)
