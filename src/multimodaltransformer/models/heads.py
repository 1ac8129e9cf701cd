"""The heads on top of the decoder besides the LM head, configured: contrastive projections, image-text
matching, CTC on the audio tokens, region attributes on the image patches, one classifier per task.
Legend: C dim, D contrastive dim."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def projection(dim: int, out: int, hidden: int | None) -> nn.Module:
    """Into the contrastive space: linear, or a two-layer MLP (SimCLR's projection head)."""
    if hidden is None:
        return nn.Linear(dim, out, bias=False)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out, bias=False))


@dataclass
class HeadsConfig:
    """Heads on top of the decoder besides the LM head."""

    # image-text contrastive projections to a shared D-dim space (retrieval, CLIP's loss); None: none
    contrastive_dim: int | None = None
    # hidden width of two-layer (MLP) contrastive projections; None: linear projections (CLIP's).
    # An MLP helps when the towers are locked (LiT) and only the projections learn.
    contrastive_hidden: int | None = None
    # the text side of the contrastive space: the last real token (CLIP), or the mean over the
    # text's tokens, which holds more of the text when the decoder is locked and trained to generate
    text_pool: Literal["last", "mean"] = "last"
    # image-text matching: a binary head on the fused [image; text] representation
    itm: bool = False
    # > 0: a CTC head on the audio encoder's tokens (Graves et al. 2006); on rows with a transcript
    # (ctc_targets) its loss is added to the LM loss with this weight, which teaches the encoder
    # token-aligned features far sooner than the decoder's cross-attention alone (joint CTC-attention)
    ctc_weight: float = 0.0
    # > 0: region attribute heads (models/regions.py) on the image encoder's patch tokens, trained
    # from the records' `objects` boxes; their loss is added to the LM loss with this weight
    region_weight: float = 0.0
    # the object attributes they predict (e.g. [color, shape, size]), and each one's values (filled
    # from the training data by the trainer, like `classes`)
    region_attributes: list[str] = field(default_factory=list)
    region_classes: dict[str, list[str]] = field(default_factory=dict)
    # one classification head per task, with its labels (filled from the training data by the trainer)
    classes: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.contrastive_dim is not None and self.contrastive_dim <= 0:
            raise ValueError(f"heads.contrastive_dim must be positive, got {self.contrastive_dim}")
        if self.ctc_weight < 0:
            raise ValueError(f"heads.ctc_weight must be non-negative, got {self.ctc_weight}")
        if self.region_weight < 0:
            raise ValueError(f"heads.region_weight must be non-negative, got {self.region_weight}")
        if self.region_weight > 0 and not self.region_attributes:
            raise ValueError("heads.region_weight needs heads.region_attributes (e.g. [color, shape])")
        if self.contrastive_hidden is not None and self.contrastive_hidden <= 0:
            raise ValueError(f"heads.contrastive_hidden must be positive, got {self.contrastive_hidden}")
        for task, labels in self.classes.items():
            if not _TASK_NAME.match(task):
                raise ValueError(f"heads.classes: task name {task!r} must be letters, digits, _ or -")
            if len(labels) < 2 or len(set(labels)) != len(labels):
                raise ValueError(f"heads.classes.{task}: needs at least 2 distinct labels, got {labels}")
