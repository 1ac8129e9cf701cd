"""What every fusion shares: its config, its output, and the media -> decoder projector.

Legend: B batch, N media tokens, Cm media dim, C decoder dim, P prefix tokens, M memory tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from torch import Tensor, nn

FusionType = Literal["early", "cross", "gated", "resampler", "graph", "late", "joint"]
Projector = Literal["linear", "mlp"]
FUSION_TYPES: tuple[str, ...] = ("early", "cross", "gated", "resampler", "graph", "late", "joint")
PROJECTORS: tuple[str, ...] = ("linear", "mlp")


@dataclass
class FusionConfig:
    """How the media tokens reach the text decoder.

    early      projected tokens in front of the text (ClipCap, LLaVA)
    cross      projected tokens as memory for cross-attention layers in the decoder
    gated      cross, with Flamingo's tanh gates (closed at init) on those layers
    resampler  num_queries learned queries attend to the media (Perceiver Resampler / Q-Former)
               and go in front of the text, so the prefix length does not grow with N
    graph      the patch tokens as nodes of their grid graph (neighbours within graph_radius, edges
               carrying the offset), depth message-passing layers, then in front of the text;
               graph_pool > 1 first average-pools pool x pool patches, a prefix of N / pool^2 tokens
    late       pooled media and pooled text meet in an MLP for task heads; no generation
    joint      no fusion module: image and text meet only in the contrastive embedding space
               (a CLIP-style dual encoder, `heads.contrastive_dim`): retrieval, no generation
    """

    type: FusionType = "early"
    # media -> decoder dim: "linear" (ClipCap, LLaVA-1) or "mlp" = Linear-GELU-Linear (LLaVA-1.5).
    projector: Projector = "linear"
    num_queries: int = 16  # resampler: learned queries = output tokens
    depth: int = 2  # resampler: layers; graph: message-passing layers (one fusion is active, so they share it)
    heads: int = 4  # resampler: attention heads
    hidden_dim: int | None = None  # late: MLP width (None: 2 * C)
    graph_radius: int = 1  # graph: edges to nodes within this Chebyshev distance (1 = the 8 neighbours)
    # graph: average-pool graph_pool x graph_pool patches into one node (1 = a node per patch, the
    # prefix of early fusion; 2 = a 4x shorter prefix, coarser positions)
    graph_pool: int = 1
    # cross / gated: learned tokens appended to the memory. A softmax must put its weight somewhere;
    # with them a query that matches no patch ("is there a red circle?" when there is none) can
    # attend to "nothing" instead of to the nearest miss (null attention, attention sinks)
    null_tokens: int = 0

    def __post_init__(self) -> None:
        if self.type not in FUSION_TYPES:
            raise ValueError(f"fusion.type must be one of {FUSION_TYPES}, got {self.type!r}")
        if self.projector not in PROJECTORS:
            raise ValueError(f"fusion.projector must be one of {PROJECTORS}, got {self.projector!r}")
        for name in ("num_queries", "depth", "heads", "graph_radius", "graph_pool"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"fusion.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.null_tokens, int) or isinstance(self.null_tokens, bool) or self.null_tokens < 0:
            raise ValueError(f"fusion.null_tokens must be a non-negative integer, got {self.null_tokens!r}")
        if self.null_tokens and self.type not in ("cross", "gated"):
            raise ValueError(f"fusion.null_tokens is for cross-attention fusion (cross, gated), not {self.type!r}")
        if self.hidden_dim is not None and (not isinstance(self.hidden_dim, int) or self.hidden_dim <= 0):
            raise ValueError(f"fusion.hidden_dim must be a positive integer or None, got {self.hidden_dim!r}")


class FusionOutput(NamedTuple):
    """Where the media goes: in front of the text, or into the decoder's cross-attention."""

    prefix: Tensor | None  # (B, P, C) tokens placed before the text (early, resampler, graph)
    memory: Tensor | None  # (B, M, C) tokens the decoder cross-attends to (cross, gated)


def build_projector(kind: Projector, media_dim: int, dim: int) -> nn.Module:
    """(B, N, Cm) -> (B, N, C): one Linear, or Linear-GELU-Linear (LLaVA-1.5)."""
    if kind == "linear":
        return nn.Linear(media_dim, dim)
    return nn.Sequential(nn.Linear(media_dim, dim), nn.GELU(), nn.Linear(dim, dim))
