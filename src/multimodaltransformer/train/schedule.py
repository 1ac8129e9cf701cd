"""The optimisation schedule: warmup + cosine (or warmup-stable-decay) learning rate, weight-decay groups, and the
time budget that fits a run's step count to a wall time."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

CALIBRATION_STEPS = 15  # steps timed before fitting max_steps to a time budget
REPLAN_EVERY = 50  # then the plan follows the measured step time every this many steps


class TimeBudget:
    """Fits the step count to a wall-time budget: planned after a few timed steps, then
    re-planned after each validation, whose cost is then known."""

    def __init__(self, seconds: float, max_steps: int, eval_every: int) -> None:
        self.seconds, self.max_steps, self.eval_every = seconds, max_steps, eval_every
        self.start = time.perf_counter()
        self.step_time, self.steps, self.eval_time, self.evals = 0.0, 0, 0.0, 0

    def plan(self, step: int) -> int:
        per_step = self.step_time / max(1, self.steps)
        eval_cost = self.eval_time / self.evals if self.evals else 0.0
        remaining = self.seconds - (time.perf_counter() - self.start) - eval_cost  # the final validation
        n = int(remaining / (per_step + eval_cost / self.eval_every))
        return max(step + 1, min(self.max_steps, step + n))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float, shape: str = "cosine",
              decay_fraction: float = 0.25) -> float:
    """Linear warmup to 1, then down to `min_ratio` at `total`: a cosine over the whole run, or
    warmup-stable-decay ("wsd": the peak held, then a linear decay over the last `decay_fraction`),
    which spends more of a short run at the peak rate and still ends annealed."""
    if step < warmup:
        return (step + 1) / warmup
    if shape == "wsd":
        decay = max(1, round((total - warmup) * decay_fraction))
        progress = min(1.0, max(0.0, (step - (total - decay)) / decay))
        return 1 - (1 - min_ratio) * progress
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and position/type vectors (1-D or 3-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() == 2 or p.dim() == 4 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
