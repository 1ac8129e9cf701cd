"""Cross-attention fusion: the media tokens become memory that the decoder's blocks attend to.

The text sequence does not grow with the media (unlike early fusion); the decoder must be built
with `cross_attention: true` (see `decoder_overrides`). Gated fusion is the same memory read by
blocks with Flamingo's tanh gate (`cross_attention_gate`), which lives in `nn.blocks`.
Legend: B batch, N media tokens, Cm media dim, C decoder dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import FusionOutput, Projector
from .early import EarlyFusion


class CrossAttentionFusion(EarlyFusion):
    """The early-fusion tokens, proj(media) + a modality-type embedding, as memory; no prefix.

    `null_tokens` K learned tokens follow the media in the memory, so that a query matching no
    media token can attend to them rather than spread over near misses (see FusionConfig)."""

    def __init__(self, media_dim: int, dim: int, projector: Projector = "linear", null_tokens: int = 0) -> None:
        super().__init__(media_dim, dim, projector)
        self.null = nn.Parameter(torch.randn(1, null_tokens, dim) * 0.02) if null_tokens else None

    def forward(self, media: Tensor) -> FusionOutput:
        """media (B, N, Cm) -> memory (B, N + K, C), no prefix."""
        memory = self.tokens(media)
        if self.null is not None:
            memory = torch.cat([memory, self.null.to(memory.dtype).expand(memory.shape[0], -1, -1)], dim=1)
        return FusionOutput(prefix=None, memory=memory)


class GatedCrossAttentionFusion(CrossAttentionFusion):
    """Flamingo-style fusion: the same memory as `CrossAttentionFusion`; the difference is in the
    decoder, whose cross-attention residuals are scaled by tanh(gate), gate = 0 at init, so a
    pretrained language model is unchanged until training opens the gates."""
