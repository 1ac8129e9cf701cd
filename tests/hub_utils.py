"""Helpers shared by the tests/test_hub_*.py parity tests (tiny random Hugging Face checkpoints)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

transformers.logging.set_verbosity_error()

ATOL = 1e-5  # fp32 parity target (the brief's hard limit is 1e-4)


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add noise to every parameter, so norms and biases differ from their init and a swapped
    or missing tensor in a mapping changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def save(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def features(out) -> torch.Tensor:
    """HF get_*_features returns a tensor (v4) or an output whose pooler_output is the projection (v5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
