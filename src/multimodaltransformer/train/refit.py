"""Refit the contrastive projections on the final, frozen towers (LiT on cached features).

A retrieval stream whose towers are locked trains only the two projections and the temperature,
but during the run the towers keep changing under the other streams, so the projections chase
moving features, and they get only the steps the stream is drawn. Once training ends the towers
are fixed: their pooled features are computed once, and the projections are fitted on them for
many cheap steps (a step is two small matmuls, not a pass through the towers). Zhai et al. 2022
(LiT) fit the text side to a frozen image tower the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from ..data.manifest import Example
from ..evaluate import caption_ids, pair_features, retrieval_scores
from ..objectives import contrastive_loss
from .schedule import lr_factor


def refit_contrastive(model: Any, examples: Sequence[Example], steps: int, batch_size: int = 128, lr: float = 1e-3,
                      seed: int = 0, max_pairs: int = 10000, progress: bool = False) -> dict[str, float]:
    """Fit `model`'s image/text projections and temperature on its frozen towers' pooled features
    of up to `max_pairs` pairs (a seeded choice) for `steps` AdamW steps (5% warmup, cosine).
    Deterministic for a seed; returns the mean loss of the last tenth of the steps."""
    if model.image_proj is None:
        raise ValueError("this model has no contrastive head (heads.contrastive_dim)")
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(examples), generator=g)[:max_pairs].sort().values.tolist()
    image, text, pairs = pair_features(model, [examples[i] for i in chosen], 256, skip_bad=True, progress=progress)
    same_caption = caption_ids(pairs)  # identical captions are not negatives of each other
    n = len(image)
    if n < 2:
        raise ValueError("refitting the contrastive projections needs at least 2 image-text pairs")
    batch_size = min(batch_size, n)
    params = [*model.image_proj.parameters(), *model.text_proj.parameters(), model.logit_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    order, pos, tail = torch.randperm(n, generator=g), 0, []
    device = next(model.parameters()).device
    for step in tqdm(range(steps), desc="refit projections", unit="step", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, warmup, steps, 0.05)
        if pos + batch_size > n:  # a new epoch: a new seeded order
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        loss = contrastive_loss(model.image_proj(image[idx].to(device)), model.text_proj(text[idx].to(device)),
                                model.logit_scale, same_caption[idx, None] == same_caption[None, idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
    for p in params:  # the projections' gradients were ours only
        p.grad = None
    return {"refit_loss": sum(tail) / len(tail), "refit_pairs": n}


def refit_streams(model: Any, streams: Sequence[Any], train_cfg: Any, progress: bool = False) -> list[dict[str, Any]]:
    """Refit the projections of every stream with `refit_steps` on the final towers, then score them
    on the stream's validation pairs; returns one log record per stream ({"refit/NAME": figures})."""
    records = []
    for s in streams:
        if not s.cfg.refit_steps:
            continue
        start = time.perf_counter()
        stats = refit_contrastive(model, s.examples, s.cfg.refit_steps, s.batch_size, lr=train_cfg.lr,
                                  seed=train_cfg.seed, progress=progress)
        record: dict[str, Any] = {**stats, "refit_seconds": time.perf_counter() - start}
        val = [e for e in s.val_examples if e.image is not None][:4 * train_cfg.eval_examples]
        if len(val) >= 2:
            record.update(retrieval_scores(model, val))
        records.append({f"refit/{s.cfg.name}": record})
        tqdm.write(f"refit {s.cfg.name}: {s.cfg.refit_steps} steps on {stats['refit_pairs']} pairs in "
                   f"{record['refit_seconds']:.0f}s" + (f", val retrieval R@1 {record['retrieval_r1']:.3f}"
                                                         if "retrieval_r1" in record else ""))
    model.train()
    return records
