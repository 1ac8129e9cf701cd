"""Hugging Face's ViT and CLIP's image tower as a saved model: the library's one ViT (nn/vit.py),
configured with [CLS], the stack's learned positions and a pooler, plus save / load.
`model(pixel_values).last_hidden_state` (B, N + 1, C) and `.pooler_output`, as HF `ViTModel`."""

from __future__ import annotations

from ..nn.vit import ViT, VisionTransformerConfig
from .base import SavesPretrained

__all__ = ["VisionTransformer", "VisionTransformerConfig"]


class VisionTransformer(SavesPretrained, ViT):
    config_class = VisionTransformerConfig
