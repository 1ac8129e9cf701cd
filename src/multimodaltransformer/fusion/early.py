"""Early (prefix) fusion: the media tokens, projected, go in front of the text (ClipCap, LLaVA).

Legend: B batch, N media tokens, Cm media dim, C decoder dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import FusionOutput, Projector, build_projector


class EarlyFusion(nn.Module):
    """prefix = proj(media) + a learned modality-type embedding; the decoder reads [prefix; text]."""

    def __init__(self, media_dim: int, dim: int, projector: Projector = "linear") -> None:
        super().__init__()
        # `proj` and `type_embed` are checkpoint names (fusion.proj.*, fusion.type_embed): keep them.
        self.proj = build_projector(projector, media_dim, dim)
        # zeros: at init the prefix is the projection alone; training learns "this token is an image".
        self.type_embed = nn.Parameter(torch.zeros(1, 1, dim))

    def tokens(self, media: Tensor) -> Tensor:
        """media (B, N, Cm) -> (B, N, C) in the decoder's space, marked as image tokens."""
        return self.proj(media) + self.type_embed

    def forward(self, media: Tensor) -> FusionOutput:
        """media (B, N, Cm) -> prefix (B, N, C), no memory."""
        return FusionOutput(prefix=self.tokens(media), memory=None)
