"""Vision Transformer with a [CLS] token (Dosovitskiy et al. 2021): HF ViT, and CLIP's image tower.

patches + [CLS] -> the stack (learned positions) -> a pooled [CLS]. The two families differ only by
configuration: ViT has a patch bias, a final norm and a tanh(dense) pooler; CLIP has no patch bias,
a norm before the blocks (pre_layrnorm), none after, and pools with a LayerNorm on [CLS].
Legend: B batch, N patches, C model dim, P patch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ..nn import EncoderOutput, TransformerConfig, TransformerStack, build_norm
from .base import PretrainedModel


def _vit_stack() -> TransformerConfig:
    return TransformerConfig(dim=768, depth=12, heads=12, mlp_dim=3072, norm_eps=1e-12, position="learned",
                             max_seq_len=(224 // 16) ** 2 + 1)


@dataclass
class VisionTransformerConfig:
    transformer: TransformerConfig = field(default_factory=_vit_stack)
    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    patch_bias: bool = True
    # "dense_tanh": tanh(W h[CLS] + b) (HF ViT); "layernorm": LN(h[CLS]) (CLIP); "none".
    pooler: Literal["none", "dense_tanh", "layernorm"] = "dense_tanh"
    pooler_dim: int | None = None  # width of the dense pooler; None = transformer.dim
    model_type: Literal["mmt-vit"] = "mmt-vit"

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.transformer.position == "learned" and self.transformer.max_seq_len < self.num_patches + 1:
            raise ValueError(f"transformer.max_seq_len {self.transformer.max_seq_len} must cover "
                             f"{self.num_patches} patches + [CLS]")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class VisionTransformer(PretrainedModel):
    """`model(pixel_values).last_hidden_state` (B, N + 1, C) and `.pooler_output`, as HF `ViTModel`."""

    config_class = VisionTransformerConfig

    def __init__(self, config: VisionTransformerConfig) -> None:
        super().__init__(config)
        t = config.transformer
        self.patch_embed = nn.Conv2d(config.channels, t.dim, config.patch_size, stride=config.patch_size,
                                     bias=config.patch_bias)
        self.cls_token = nn.Parameter(torch.randn(1, 1, t.dim) * 0.02)
        self.transformer = TransformerStack(t)
        self.pooler = nn.Linear(t.dim, config.pooler_dim or t.dim) if config.pooler == "dense_tanh" else None
        self.post_norm = build_norm(t.norm, t.dim, t.norm_eps) if config.pooler == "layernorm" else None

    def forward(self, pixel_values: Tensor) -> EncoderOutput:
        size = self.config.image_size
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(f"pixel_values are {tuple(pixel_values.shape[-2:])}, the model takes {size}x{size}")
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # (B, N + 1, C)
        h = self.transformer(x)
        if self.pooler is not None:
            return EncoderOutput(h, torch.tanh(self.pooler(h[:, 0])))
        if self.post_norm is not None:
            return EncoderOutput(h, self.post_norm(h[:, 0]))
        return EncoderOutput(h, None)
