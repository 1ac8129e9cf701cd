"""ViT checkpoints (`model_type: vit`) -> `models.vit.VisionTransformer` (pre-LN, [CLS], tanh pooler)."""

from __future__ import annotations

from typing import Any

from ..models.vit import VisionTransformer, VisionTransformerConfig
from ..nn import TransformerConfig
from .mapping import CheckpointError, WeightTable, activation, reject_options

FAMILY = "vit"
MODEL = VisionTransformer
PREFIXES = ("vit.", "")  # ViTForImageClassification saves "vit.embeddings...", ViTModel "embeddings..."


def _square(value: Any, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"{FAMILY}: non-square {what} {value} is not supported")
        value = value[0]
    return int(value)


def config_from_hf(hf: dict[str, Any], names: set[str]) -> VisionTransformerConfig:
    has_pooler = any(n.endswith("pooler.dense.weight") for n in names)
    if has_pooler:
        reject_options(hf, FAMILY, pooler_act="tanh")
    image, patch = _square(hf.get("image_size", 224), "image_size"), _square(hf.get("patch_size", 16), "patch_size")
    dropout = hf.get("hidden_dropout_prob", 0.0)
    stack = TransformerConfig(
        dim=hf.get("hidden_size", 768), depth=hf.get("num_hidden_layers", 12), heads=hf.get("num_attention_heads", 12),
        mlp_dim=hf.get("intermediate_size", 3072), activation=activation(hf.get("hidden_act", "gelu"), FAMILY),
        norm_eps=hf.get("layer_norm_eps", 1e-12), qkv_bias=hf.get("qkv_bias", True), position="learned",
        max_seq_len=(image // patch) ** 2 + 1, dropout=dropout, embed_dropout=dropout)
    return VisionTransformerConfig(stack, image_size=image, patch_size=patch, channels=hf.get("num_channels", 3),
                                   pooler="dense_tanh" if has_pooler else "none",
                                   pooler_dim=hf.get("pooler_output_size") or stack.dim)


def weight_map(cfg: VisionTransformerConfig) -> WeightTable:
    table: WeightTable = {
        "patch_embed.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.bias": "embeddings.patch_embeddings.projection.bias",
        "cls_token": "embeddings.cls_token",
        "transformer.position.weight": ("embeddings.position_embeddings", lambda t: t[0]),  # (1, N+1, C)
        "transformer.ln_f.weight": "layernorm.weight",
        "transformer.ln_f.bias": "layernorm.bias",
    }
    qkv_bias = cfg.transformer.qkv_bias is not False
    for i in range(cfg.transformer.depth):
        ours, hf = f"transformer.blocks.{i}.", f"encoder.layer.{i}."
        names = {"attn.q_proj": "attention.attention.query", "attn.k_proj": "attention.attention.key",
                 "attn.v_proj": "attention.attention.value", "attn.out_proj": "attention.output.dense",
                 "ln_1": "layernorm_before", "ln_2": "layernorm_after",
                 "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
        for a, b in names.items():
            table[f"{ours}{a}.weight"] = f"{hf}{b}.weight"
            if qkv_bias or a not in ("attn.q_proj", "attn.k_proj", "attn.v_proj"):
                table[f"{ours}{a}.bias"] = f"{hf}{b}.bias"
    if cfg.pooler == "dense_tanh":
        table |= {"pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias"}
    return table
