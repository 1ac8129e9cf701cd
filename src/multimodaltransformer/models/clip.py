"""CLIP (Radford et al. 2021): a causal text transformer and a ViT, projected into one embedding space.

`encode_text` / `encode_image` give the projected features (HF `get_text_features` /
`get_image_features`); `forward` gives the scaled cosine similarities.
Legend: B text batch, I image batch, T text length, C tower dim, P projection dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import EncoderOutput, TransformerConfig, TransformerStack, causal_padding_mask
from .base import PretrainedModel
from .vit import VisionTransformer, VisionTransformerConfig


def _text_stack() -> TransformerConfig:
    return TransformerConfig(dim=512, depth=12, heads=8, mlp_dim=2048, activation="quick_gelu",
                             position="learned", max_seq_len=77)


def _vision() -> VisionTransformerConfig:
    stack = TransformerConfig(dim=768, depth=12, heads=12, mlp_dim=3072, activation="quick_gelu",
                              position="learned", max_seq_len=(224 // 32) ** 2 + 1, embed_norm=True,
                              final_norm=False)
    return VisionTransformerConfig(stack, image_size=224, patch_size=32, patch_bias=False, pooler="layernorm")


@dataclass
class CLIPTextConfig:
    transformer: TransformerConfig = field(default_factory=_text_stack)
    vocab_size: int = 49408
    # Pooling token. Legacy checkpoints say 2 and mean "the highest token id" (HF keeps that quirk).
    eos_token_id: int = 49407


@dataclass
class CLIPConfig:
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    vision: VisionTransformerConfig = field(default_factory=_vision)
    projection_dim: int = 512
    logit_scale_init: float = 2.6592  # log(1 / 0.07)
    model_type: Literal["mmt-clip"] = "mmt-clip"


class CLIPOutput(NamedTuple):
    logits_per_image: Tensor  # (I, B)
    logits_per_text: Tensor  # (B, I)
    text_embeds: Tensor  # (B, P), L2-normalised
    image_embeds: Tensor  # (I, P), L2-normalised


class CLIPTextEncoder(nn.Module):
    """Token + learned positions -> causal pre-LN stack -> final norm; pooled at the EOS token."""

    def __init__(self, config: CLIPTextConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embed = nn.Embedding(config.vocab_size, config.transformer.dim)
        self.transformer = TransformerStack(config.transformer)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> EncoderOutput:
        T = input_ids.shape[1]
        if T > self.config.transformer.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_position_embeddings "
                             f"{self.config.transformer.max_seq_len}")
        mask = causal_padding_mask(attention_mask, T, device=input_ids.device)
        h = self.transformer(self.tok_embed(input_ids), mask)
        eos = self.config.eos_token_id
        idx = input_ids.argmax(-1) if eos == 2 else (input_ids == eos).int().argmax(-1)  # first EOS
        return EncoderOutput(h, h[torch.arange(h.shape[0], device=h.device), idx])


class CLIP(PretrainedModel):
    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        self.text_model = CLIPTextEncoder(config.text)
        self.vision_model = VisionTransformer(config.vision)
        self.text_projection = nn.Linear(config.text.transformer.dim, config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(config.vision.transformer.dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Projected text features (B, P), not normalised (HF `get_text_features`)."""
        return self.text_projection(self.text_model(input_ids, attention_mask).pooler_output)

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """Projected image features (I, P), not normalised (HF `get_image_features`)."""
        return self.visual_projection(self.vision_model(pixel_values).pooler_output)

    def forward(self, input_ids: Tensor, pixel_values: Tensor, attention_mask: Tensor | None = None) -> CLIPOutput:
        text = F.normalize(self.encode_text(input_ids, attention_mask), dim=-1)
        image = F.normalize(self.encode_image(pixel_values), dim=-1)
        logits_per_text = text @ image.t() * self.logit_scale.exp()
        return CLIPOutput(logits_per_text.t(), logits_per_text, text, image)
