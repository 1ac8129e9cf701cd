"""Classifier-free guidance (Ho & Salimans 2022) as a logits processor with its own decoding session.

A model trained with its condition dropped some of the time predicts both p(x | c) and p(x);
sampling from log p(x) + s * (log p(x | c) - log p(x)) sharpens towards the condition (s = 1 is
plain conditional sampling, s > 1 trades diversity for faithfulness). The unconditional rows run
in a second cached session over the unconditional prompt (same length as the conditional one),
stepped with the tokens the conditional rows chose, as transformers'
`UnbatchedClassifierFreeGuidanceLogitsProcessor` does; both are log-softmaxed before mixing.
It must come first in the processor list: temperature and top-k/top-p then act on guided scores.
Legend: N decoded rows, T prompt length, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .session import CachedSession


def guide(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """log p(x) + scale * (log p(x | c) - log p(x)) from the two rows' logits (N, V), in float."""
    cond, uncond = cond.float().log_softmax(-1), uncond.float().log_softmax(-1)
    return uncond + scale * (cond - uncond)


class ClassifierFreeGuidance:
    def __init__(self, model: Any, uncond_ids: Tensor, scale: float, max_new_tokens: int, expand: int = 1) -> None:
        """`uncond_ids` (B, T): the unconditional prompts, one per conditional prompt, of the same
        length T (the session's rows follow the conditional rows: B x `expand`)."""
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.scale = scale
        self.prompt_len = uncond_ids.shape[1]
        mask = torch.ones_like(uncond_ids, dtype=torch.bool)
        self.session: CachedSession | None = CachedSession(model, uncond_ids, mask, {}, max_new_tokens, expand)

    def __call__(self, ids: Tensor, scores: Tensor) -> Tensor:
        if self.session is None:
            raise RuntimeError("ClassifierFreeGuidance was closed")
        if ids.shape[1] > self.prompt_len:  # the rows grew by the token chosen at the previous step
            uncond = self.session.step(ids[:, -1])
        else:
            uncond = self.session.logits
        return guide(scores, uncond, self.scale)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
