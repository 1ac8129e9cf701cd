"""The Vision Transformer (Dosovitskiy et al. 2021), one implementation for every use.

pixel_values (B, 3, H, W) -> patch embedding -> [+ patch positions] [, [CLS]] -> the stack -> hidden
states (B, N (+1), C), and a pooled [CLS] where configured. Configuration makes it each of:
  the library's image encoder (modalities/image.py: a conv or linear stem, learned or 2-D sin/cos
      patch positions, no [CLS]: the patch tokens are what the fusion reads),
  Hugging Face's ViT (models/vit.py: [CLS], the stack's learned positions, a tanh(dense) pooler),
  CLIP's image tower (no patch bias, a norm before the blocks, LayerNorm on [CLS]).
Legend: B batch, N patches, C model dim, P patch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .blocks import TransformerConfig, build_norm
from .position import sincos_2d_table
from .transformer import EncoderOutput, TransformerStack


def _vit_stack() -> TransformerConfig:  # ViT-B/16
    return TransformerConfig(dim=768, depth=12, heads=12, mlp_dim=3072, norm_eps=1e-12, position="learned",
                             max_seq_len=(224 // 16) ** 2 + 1)


@dataclass
class VisionTransformerConfig:
    transformer: TransformerConfig = field(default_factory=_vit_stack)
    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    patch_bias: bool = True
    # "linear": one P x P stride-P convolution (ViT); "conv": stride-2 3x3 convolutions down to the
    # same grid (Xiao et al. 2021), much better at small shapes for little compute
    stem: Literal["linear", "conv"] = "linear"
    cls_token: bool = True
    # "stack": the transformer's own positions over [CLS] + patches (HF ViT, CLIP); "learned" or
    # "sincos" (MAE's fixed 2-D table): added to the patches before the stack
    patch_positions: Literal["stack", "learned", "sincos"] = "stack"
    # "dense_tanh": tanh(W h[CLS] + b) (HF ViT); "layernorm": LN(h[CLS]) (CLIP); "none".
    pooler: Literal["none", "dense_tanh", "layernorm"] = "dense_tanh"
    pooler_dim: int | None = None  # width of the dense pooler; None = transformer.dim
    model_type: Literal["mmt-vit"] = "mmt-vit"

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.patch_positions == "stack" and self.transformer.position == "learned" \
                and self.transformer.max_seq_len < self.num_patches + self.cls_token:
            raise ValueError(f"transformer.max_seq_len {self.transformer.max_seq_len} must cover "
                             f"{self.num_patches} patches" + (" + [CLS]" if self.cls_token else ""))
        if self.pooler != "none" and not self.cls_token:
            raise ValueError(f"pooler {self.pooler!r} pools the [CLS] token: it needs cls_token")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def conv_stem(channels: int, dim: int, patch_size: int) -> nn.Sequential:
    """log2(P) stride-2 3x3 conv + BN + ReLU layers (widths growing to dim/2), then a 1x1 to dim."""
    layers: list[nn.Module] = []
    steps = patch_size.bit_length() - 1
    c_in = channels
    for i in range(steps):
        c_out = max(16, dim // 2 ** (steps - i))
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        c_in = c_out
    layers.append(nn.Conv2d(c_in, dim, 1))
    return nn.Sequential(*layers)


class ViT(nn.Module):
    """`hidden(pixel_values)` (B, N (+1), C); `forward` -> EncoderOutput(last_hidden_state, pooler_output)."""

    def __init__(self, config: VisionTransformerConfig) -> None:
        super().__init__()
        self.config = config
        t, P = config.transformer, config.patch_size
        if config.stem == "conv":
            self.patch_embed = conv_stem(config.channels, t.dim, P)
        else:
            self.patch_embed = nn.Conv2d(config.channels, t.dim, P, stride=P, bias=config.patch_bias)
        self.cls_token = nn.Parameter(torch.randn(1, 1, t.dim) * 0.02) if config.cls_token else None
        side = config.image_size // P
        if config.patch_positions == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, config.num_patches, t.dim) * 0.02)
        elif config.patch_positions == "sincos":  # a function of the config: not saved with the weights
            self.register_buffer("pos_embed", sincos_2d_table(side, side, t.dim)[None], persistent=False)
        else:
            self.pos_embed = None
        self.transformer = TransformerStack(t)
        self.pooler = nn.Linear(t.dim, config.pooler_dim or t.dim) if config.pooler == "dense_tanh" else None
        self.post_norm = build_norm(t.norm, t.dim, t.norm_eps) if config.pooler == "layernorm" else None

    def hidden(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> the stack's output (B, N (+1), C), [CLS] first when there is one."""
        size = self.config.image_size
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(f"pixel_values are {tuple(pixel_values.shape[-2:])}, the model takes {size}x{size}")
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)  # (B, N, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)  # (B, N + 1, C)
        return self.transformer(x)

    def patch_tokens(self, pixel_values: Tensor) -> Tensor:
        """The patches' hidden states (B, N, C), without [CLS]."""
        h = self.hidden(pixel_values)
        return h if self.cls_token is None else h[:, 1:]

    def forward(self, pixel_values: Tensor) -> EncoderOutput:
        h = self.hidden(pixel_values)
        if self.pooler is not None:
            return EncoderOutput(h, torch.tanh(self.pooler(h[:, 0])))
        if self.post_norm is not None:
            return EncoderOutput(h, self.post_norm(h[:, 0]))
        return EncoderOutput(h, None)
