"""CLIP checkpoints (`model_type: clip`) -> `models.clip.CLIP`.

Both towers use HF's CLIPEncoderLayer (layer_norm1 / self_attn / layer_norm2 / mlp), pre-LN;
the vision tower's `pre_layrnorm` (HF's spelling) is our embed norm, `post_layernorm` the [CLS] pooler.
"""

from __future__ import annotations

from typing import Any

from ..models.clip import CLIP, CLIPConfig, CLIPTextConfig
from ..models.vit import VisionTransformerConfig
from ..nn import TransformerConfig
from .mapping import CheckpointError, WeightTable, activation, first_int

FAMILY = "clip"
MODEL = CLIP
PREFIXES = ("",)


def _stack(hf: dict[str, Any], defaults: dict[str, Any], **extra: Any) -> TransformerConfig:
    """One tower's stack: pre-LN, learned positions, HF's defaults for the fields a config.json omits."""
    c = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, **defaults, **hf}
    return TransformerConfig(
        dim=c["hidden_size"], depth=c["num_hidden_layers"], heads=c["num_attention_heads"],
        mlp_dim=c["intermediate_size"], activation=activation(c["hidden_act"], FAMILY),
        norm_eps=c["layer_norm_eps"], position="learned", dropout=0.0, **extra)


def config_from_hf(hf: dict[str, Any], names: set[str]) -> CLIPConfig:
    text = hf.get("text_config") or hf.get("text_config_dict") or {}
    vision = hf.get("vision_config") or hf.get("vision_config_dict") or {}
    image, patch = vision.get("image_size", 224), vision.get("patch_size", 32)
    if not isinstance(image, int) or not isinstance(patch, int):
        raise CheckpointError(f"{FAMILY}: only square image_size / patch_size are supported, got {image} / {patch}")
    text_stack = _stack(text, dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8,
                                   intermediate_size=2048), max_seq_len=text.get("max_position_embeddings", 77))
    vision_stack = _stack(vision, dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       intermediate_size=3072),
                          max_seq_len=(image // patch) ** 2 + 1, embed_norm=True, final_norm=False)
    eos = first_int(text.get("eos_token_id", 49407))
    return CLIPConfig(
        text=CLIPTextConfig(text_stack, vocab_size=text.get("vocab_size", 49408), eos_token_id=49407 if eos is None else eos),
        vision=VisionTransformerConfig(vision_stack, image_size=image, patch_size=patch,
                                       channels=vision.get("num_channels", 3), patch_bias=False, pooler="layernorm"),
        projection_dim=hf.get("projection_dim", 512), logit_scale_init=hf.get("logit_scale_init_value", 2.6592))


def _layers(table: WeightTable, ours: str, hf: str, depth: int) -> None:
    names = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
             "attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for i in range(depth):
        for a, b in names.items():
            for p in ("weight", "bias"):
                table[f"{ours}.blocks.{i}.{a}.{p}"] = f"{hf}.layers.{i}.{b}.{p}"


def weight_map(cfg: CLIPConfig) -> WeightTable:
    table: WeightTable = {
        "text_model.tok_embed.weight": "text_model.embeddings.token_embedding.weight",
        "text_model.transformer.position.weight": "text_model.embeddings.position_embedding.weight",
        "text_model.transformer.ln_f.weight": "text_model.final_layer_norm.weight",
        "text_model.transformer.ln_f.bias": "text_model.final_layer_norm.bias",
        "vision_model.patch_embed.weight": "vision_model.embeddings.patch_embedding.weight",
        "vision_model.cls_token": ("vision_model.embeddings.class_embedding", lambda t: t.reshape(1, 1, -1)),
        "vision_model.transformer.position.weight": "vision_model.embeddings.position_embedding.weight",
        "vision_model.transformer.ln_embed.weight": "vision_model.pre_layrnorm.weight",
        "vision_model.transformer.ln_embed.bias": "vision_model.pre_layrnorm.bias",
        "vision_model.post_norm.weight": "vision_model.post_layernorm.weight",
        "vision_model.post_norm.bias": "vision_model.post_layernorm.bias",
        "text_projection.weight": "text_projection.weight",
        "visual_projection.weight": "visual_projection.weight",
        "logit_scale": "logit_scale",
    }
    _layers(table, "text_model.transformer", "text_model.encoder", cfg.text.transformer.depth)
    _layers(table, "vision_model.transformer", "vision_model.encoder", cfg.vision.transformer.depth)
    return table
