"""A schedule for tests of the server's running batch (generation/batching.py `ContinuousBatch`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def decode_joining(batch, first: Callable[[], Tensor], joiners: Callable[[], Tensor], join_at: int,
                   limits: list[int], steps: int) -> list[list[Tensor]]:
    """Greedy decoding in one running batch: row 0 starts alone (`first()` prefills it), the other
    rows join together at step `join_at` (`joiners()` prefills them) and each row leaves once it has
    `limits[r]` logits. Each row's logits, in order (compare them with decoding the row alone)."""
    got: list[list[Tensor]] = [[] for _ in limits]
    last = first()
    got[0].append(last[0])
    live = [0]
    for step in range(steps):
        if step == join_at:  # the others join mid-decode, prefilled together (the batch shifts right)
            joined = joiners()
            last, live = torch.cat([last, joined]), live + list(range(1, len(limits)))
            for r, row in enumerate(joined, start=1):
                got[r].append(row)
            continue
        keep = [i for i, r in enumerate(live) if len(got[r]) < limits[r]]
        if len(keep) < len(live):
            batch.keep(keep)
            last, live = last[keep], [live[i] for i in keep]
        if not live:
            break
        last = batch.step(last.argmax(-1)).float()
        for r, row in zip(live, last):
            got[r].append(row)
    return got
