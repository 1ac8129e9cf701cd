"""Cross-attention fusion: the media tokens become memory that the decoder's blocks attend to.

The text sequence does not grow with the media (unlike early fusion); the decoder must be built
with `cross_attention: true` (see `decoder_overrides`). Gated fusion is the same memory read by
blocks with Flamingo's tanh gate (`cross_attention_gate`), which lives in `nn.blocks`.
Legend: B batch, N media tokens, Cm media dim, C decoder dim.
"""

from __future__ import annotations

from torch import Tensor

from .config import FusionOutput
from .early import EarlyFusion


class CrossAttentionFusion(EarlyFusion):
    """The early-fusion tokens, proj(media) + a modality-type embedding, as memory; no prefix."""

    def forward(self, media: Tensor) -> FusionOutput:
        """media (B, N, Cm) -> memory (B, N, C), no prefix."""
        return FusionOutput(prefix=None, memory=self.tokens(media))


class GatedCrossAttentionFusion(CrossAttentionFusion):
    """Flamingo-style fusion: the same memory as `CrossAttentionFusion`; the difference is in the
    decoder, whose cross-attention residuals are scaled by tanh(gate), gate = 0 at init, so a
    pretrained language model is unchanged until training opens the gates."""
