"""Region attribute heads: per-patch classifiers on the image encoder's tokens, trained from the
objects a record names (LXMERT's object-label prediction, with the scene's own ground truth in
place of a detector's labels).

A record's `objects` entries that carry a `box` ([x0, y0, x1, y1] as fractions of the image's width
and height) and attribute values (`color`, `shape` ...) label the patches whose centres fall inside
the box (the smallest box where several do); patches inside no box are labelled "none". Each
configured attribute gets a linear head over its values plus "none", and the mean cross-entropy
over patches is added to the LM loss. The signal reaches every patch token from the first step,
whereas the captions and answers reach the encoder only once the decoder has learnt where to look:
on the demo, colour, shape and captions are learnt in a fraction of the steps, and the video recipe
meets its floors in ~980 steps instead of ~1,600 (benchmarks/README.md); questions that bind two attributes
(is there a red circle?) were not helped. Legend: B batch, S token steps, N patch tokens (a square
grid of side `side`), R regions, A attributes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modalities.video import sample_indices


def patch_targets(boxes: Tensor, labels: Tensor, side: int) -> Tensor:
    """(B, N, A) targets on a side x side grid (row-major): the labels of the smallest box holding
    the patch centre, shifted by one so that 0 is "none"; -100 where that attribute is unknown."""
    centres = (torch.arange(side, device=boxes.device, dtype=boxes.dtype) + 0.5) / side
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    cx, cy = cx.reshape(1, 1, -1), cy.reshape(1, 1, -1)  # (1, 1, N)
    x0, y0, x1, y1 = (boxes[..., i:i + 1] for i in range(4))  # (B, R, 1)
    inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)  # (B, R, N)
    area = ((x1 - x0) * (y1 - y0)).expand_as(inside)
    area = torch.where(inside, area, torch.full_like(area, math.inf))
    best = area.argmin(1)  # (B, N): the smallest box holding each centre
    hit = inside.any(1)
    picked = labels.gather(1, best[..., None].expand(-1, -1, labels.shape[-1]))  # (B, N, A)
    targets = torch.where(picked >= 0, picked + 1, torch.full_like(picked, -100))
    return torch.where(hit[..., None], targets, torch.zeros_like(targets))


class RegionHeads(nn.Module):
    """One linear head per attribute over the patch tokens: logits over "none" + its values.

    `modality` names the encoder they read ("image", or "video": time-major tokens, `steps` grids of
    patches, step t showing the sampled frame `frames_per_step * t + frames_per_step // 2`, the
    tubelet's central frame)."""

    def __init__(self, dim: int, classes: Mapping[str, Sequence[str]], modality: str = "image",
                 sampled_frames: int | None = None, frames_per_step: int = 1) -> None:
        super().__init__()
        self.classes = {a: list(v) for a, v in classes.items()}
        self.modality, self.sampled_frames, self.frames_per_step = modality, sampled_frames, frames_per_step
        self.heads = nn.ModuleDict({a: nn.Linear(dim, len(v) + 1) for a, v in self.classes.items()})

    def source_frames(self, total: int) -> list[int] | None:
        """The source frame each token step shows, for a clip of `total` frames (None: an image)."""
        if self.sampled_frames is None:
            return None
        picked = sample_indices(total, self.sampled_frames)
        k = self.frames_per_step
        return [picked[t * k + k // 2] for t in range(self.sampled_frames // k)]

    @staticmethod
    def grid(tokens: Tensor) -> tuple[Tensor, int]:
        """The patch tokens (B, G*G, C) of an encoder's output, a leading [CLS] dropped, and G."""
        n = tokens.shape[1]
        for lead in (0, 1):
            side = math.isqrt(n - lead)
            if side * side == n - lead:
                return tokens[:, lead:], side
        raise ValueError(f"region heads need a square grid of patch tokens, got {n} tokens")

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        """{attribute: (B, N, K + 1) logits}, class 0 "none"."""
        patches, _ = self.grid(tokens)
        return {a: head(patches) for a, head in self.heads.items()}

    def loss(self, tokens: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        """Mean over attributes of the patches' cross-entropy; `boxes` (B, S, R, 4), `labels`
        (B, S, R, A) (or without S: one step), `tokens` (B, S * N (+1), C) time-major."""
        if boxes.dim() == 3:
            boxes, labels = boxes[:, None], labels[:, None]
        B, S = boxes.shape[:2]
        if S > 1:
            if tokens.shape[1] % S:
                raise ValueError(f"{tokens.shape[1]} tokens do not split into {S} steps")
            tokens = tokens.reshape(B * S, tokens.shape[1] // S, tokens.shape[2])
        patches, side = self.grid(tokens)
        targets = patch_targets(boxes.flatten(0, 1).to(patches.dtype), labels.flatten(0, 1), side)
        losses = [F.cross_entropy(head(patches).flatten(0, 1).float(), targets[..., i].flatten(), ignore_index=-100)
                  for i, head in enumerate(self.heads.values()) if bool((targets[..., i] != -100).any())]
        return torch.stack(losses).mean() if losses else patches.sum() * 0.0
