"""LoRA (Hu et al. 2021): low-rank adapters on chosen Linear layers, and merging them for export.

y = W x + (alpha / r) * B A x, with A (r, in) random and B (out, r) zero at the start, so an
adapted model begins exactly equal to its base. Only A and B train; `merge_lora` folds B A into W.
"""

from __future__ import annotations

import fnmatch

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # Linear layers whose qualified name ends with one of these (e.g. "q_proj", "mlp.fc1"), or
    # matches one with `*` ("decoder.*q_proj": only the decoder's)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.rank <= 0 or self.alpha <= 0:
            raise ValueError(f"LoRA rank and alpha must be positive, got rank={self.rank}, alpha={self.alpha}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules is empty")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device,
                                               dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device,
                                               dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises weights
        self.scaling = alpha / rank
        self.drop = nn.Dropout(dropout)

    @property
    def weight(self) -> Tensor:  # code that reads `.weight` (e.g. dtype checks) keeps working
        return self.base.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (self.drop(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear with W + scaling * B A."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * (self.lora_B @ self.lora_A))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _matches(name: str, targets: list[str]) -> bool:
    """`name` is a target, ends with ".target", or matches a target with `*` (fnmatch: "decoder.*q_proj")."""
    return any(fnmatch.fnmatchcase(name, t) if "*" in t else name == t or name.endswith("." + t) for t in targets)


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap every matching nn.Linear in `model` with a LoRALinear, in place; returns their names.

    Only the adapters are trainable afterwards within the wrapped layers; other parameters keep
    their requires_grad (freeze them separately if wanted).
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, cfg.target_modules)]
    if not names:
        raise ValueError(f"LoRA target_modules {cfg.target_modules} match no Linear layer of the model")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), cfg.rank, cfg.alpha, cfg.dropout))
    return names


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged Linear, in place (for export); returns `model`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged())
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied weights counted once."""
    seen: dict[int, tuple[int, bool]] = {}
    for p in model.parameters():
        seen[id(p)] = (p.numel(), p.requires_grad)
    return sum(n for n, t in seen.values() if t), sum(n for n, _ in seen.values())
