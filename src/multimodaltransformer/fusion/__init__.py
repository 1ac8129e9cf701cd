"""Fusion: how another modality's tokens reach the text decoder.

Each fusion maps media tokens (B, N, Cm) to a `FusionOutput`: prefix tokens placed before the text
(early, resampler, graph) or memory the decoder cross-attends to (cross, gated). Late fusion instead mixes
pooled media and text vectors for task heads; the joint space (dual encoders) has no fusion module. `build_fusion` reads a `FusionConfig`;
`decoder_overrides` says what the decoder needs to go with it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .config import FusionConfig, FusionOutput, build_projector
from .cross import CrossAttentionFusion, GatedCrossAttentionFusion
from .early import EarlyFusion
from .graph import GraphFusion, MessagePassingLayer, grid_graph, node_grid_side
from .late import LateFusion
from .resampler import Resampler, ResamplerLayer

# type -> builder(cfg, media_dim, dim)
_BUILDERS: dict[str, Callable[[FusionConfig, int, int], nn.Module]] = {
    "early": lambda cfg, media_dim, dim: EarlyFusion(media_dim, dim, cfg.projector),
    "cross": lambda cfg, media_dim, dim: CrossAttentionFusion(media_dim, dim, cfg.projector, cfg.null_tokens),
    "gated": lambda cfg, media_dim, dim: GatedCrossAttentionFusion(media_dim, dim, cfg.projector, cfg.null_tokens),
    "resampler": lambda cfg, media_dim, dim: Resampler(media_dim, dim, cfg.num_queries, cfg.depth, cfg.heads,
                                                       cfg.projector),
    "graph": lambda cfg, media_dim, dim: GraphFusion(media_dim, dim, cfg.depth, cfg.graph_radius, cfg.graph_pool,
                                                     cfg.projector),
    "late": lambda cfg, media_dim, dim: LateFusion(media_dim, dim, cfg.hidden_dim),
}


def build_fusion(cfg: FusionConfig, media_dim: int, dim: int) -> nn.Module | None:
    """The fusion module for `cfg.type`, from media dim Cm to decoder dim C (None for "joint")."""
    if cfg.type == "joint":
        return None
    if cfg.type == "resampler" and dim % cfg.heads:
        raise ValueError(f"fusion.heads {cfg.heads} must divide the decoder dim {dim}")
    return _BUILDERS[cfg.type](cfg, media_dim, dim)


def num_prefix_tokens(cfg: FusionConfig, num_media: int) -> int:
    """Tokens the fusion puts in front of the text: N (early), num_queries (resampler),
    N / graph_pool^2 (graph; a ValueError if the N patches are no square grid that the pool divides), else 0."""
    if cfg.type == "early":
        return num_media
    if cfg.type == "resampler":
        return cfg.num_queries
    if cfg.type == "graph":
        return node_grid_side(num_media, cfg.graph_pool) ** 2
    return 0


def uses_cross_attention(cfg: FusionConfig) -> bool:
    """Whether the decoder reads the media through cross-attention layers (cross, gated)."""
    return cfg.type in ("cross", "gated")


def decoder_overrides(cfg: FusionConfig) -> dict[str, bool]:
    """Decoder `TransformerConfig` fields this fusion needs, for `dataclasses.replace`."""
    if cfg.type == "gated":
        return {"cross_attention": True, "cross_attention_gate": True}
    if cfg.type == "cross":
        return {"cross_attention": True}
    return {}


__all__ = [
    "CrossAttentionFusion", "EarlyFusion", "FusionConfig", "FusionOutput", "GatedCrossAttentionFusion",
    "GraphFusion", "LateFusion", "MessagePassingLayer", "Resampler", "ResamplerLayer", "build_fusion",
    "build_projector", "decoder_overrides", "grid_graph", "node_grid_side", "num_prefix_tokens",
    "uses_cross_attention",
]
