"""A record's `objects` (boxes and attribute values, as ShapesWorld and MovingShapes write them) into
the batch tensors of the region heads (models/regions.py). Legend: B batch, S token steps (1 for an
image; a video's time steps), R regions, A attributes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .manifest import DataError


def region_items(objects: Any, classes: Mapping[str, Sequence[str]], frames: Sequence[int] | None = None
                 ) -> list[list[tuple[list[float], list[int]]]]:
    """A record's `objects` -> per token step, [(box, [label index per attribute])].

    An image has one step: each object's `box`. A video's steps show the source frames `frames`
    (one per step): an object's `boxes` holds one box per source frame of the clip (None where it
    is not visible), and a static `box` counts for every step. A value not in `classes` (or
    missing) is -1 (no loss for that attribute there); objects without boxes are skipped, and a
    record with no boxed object gives no steps (its patches get no loss, see `collate_regions`).
    """
    steps: list[list[tuple[list[float], list[int]]]] = [[] for _ in (frames if frames is not None else [0])]
    boxed = False
    for obj in objects or ():
        if not isinstance(obj, dict):
            continue
        labels = [list(values).index(obj[a]) if obj.get(a) in values else -1 for a, values in classes.items()]
        if frames is not None and obj.get("boxes") is not None:
            per_step = [obj["boxes"][f] if f < len(obj["boxes"]) else None for f in frames]
        elif obj.get("box") is not None:
            per_step = [obj["box"]] * len(steps)
        else:
            continue
        boxed = True
        for step, box in zip(steps, per_step):
            if box is None:
                continue
            if len(box) != 4:
                raise DataError(f"an object's box must be [x0, y0, x1, y1], got {box}")
            step.append(([float(v) for v in box], labels))
    return steps if boxed else []


def collate_regions(items: list[list[list[tuple[list[float], list[int]]]]], attributes: int) -> dict[str, Tensor]:
    """Per-row, per-step region lists -> `region_boxes` (B, S, R, 4) and `region_labels` (B, S, R, A);
    padding regions have an empty box (they contain no patch centre). The steps of a row without
    boxes hold one region, the whole image with every attribute unknown: no loss on its patches."""
    S = max(1, max(len(steps) for steps in items))
    R = max(1, max((len(regions) for steps in items for regions in steps), default=1))
    boxes = torch.zeros(len(items), S, R, 4)
    labels = torch.full((len(items), S, R, attributes), -1, dtype=torch.long)
    for r, steps in enumerate(items):
        if len(steps) < S:
            boxes[r, len(steps):, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
        for t, regions in enumerate(steps):
            for k, (box, ls) in enumerate(regions):
                boxes[r, t, k] = torch.tensor(box)
                labels[r, t, k] = torch.tensor(ls)
    return {"region_boxes": boxes, "region_labels": labels}


def region_values(examples: Sequence[Any], attributes: Sequence[str]) -> dict[str, list[str]]:
    """{attribute: sorted values} over the boxed objects of the examples' records (`meta["objects"]`)."""
    values: dict[str, set[str]] = {a: set() for a in attributes}
    for ex in examples:
        for obj in ex.meta.get("objects") or ():
            if isinstance(obj, dict) and (obj.get("box") is not None or obj.get("boxes") is not None):
                for a in attributes:
                    if isinstance(obj.get(a), str):
                        values[a].add(obj[a])
    return {a: sorted(v) for a, v in values.items()}
