"""Vector quantisation (VQ-VAE, van den Oord et al. 2017) with the fixes that keep a codebook alive.

Each encoder vector snaps to its nearest code; the decoder sees the code, and gradients pass
straight through to the encoder (z + (q - z).detach()). The codebook is not trained by gradients
but as an exponential moving average of the vectors assigned to each code (k-means online,
Razavi et al. 2019), the encoder is pulled towards its codes by the commitment loss
beta * |z - sg(q)|^2, and three things stop codes from dying (the usual failure: a few codes
take every vector, the rest never move again):
- the codebook starts as encoder outputs of the first training batch, not as random vectors;
- a code whose moving-average usage falls below `dead_threshold` vectors a batch restarts at a
  random encoder vector of the current batch (Dhariwal et al. 2020, Jukebox);
- optional low-dimensional, l2-normalised ("cosine") codes (Yu et al. 2022, ViT-VQGAN): lookup in
  a small space where distances mean direction, which spreads usage.
Legend: B batch, D code dim, H x W grid, N = B*H*W vectors, K codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerConfig:
    codebook_size: int = 512
    code_dim: int = 32
    beta: float = 0.25  # commitment loss weight
    decay: float = 0.99  # EMA decay of the codebook statistics
    cosine: bool = True  # l2-normalised codes: lookup by cosine similarity
    dead_threshold: float = 1.0  # restart codes whose EMA usage is below this many vectors a batch

    def __post_init__(self) -> None:
        if self.codebook_size < 2 or self.code_dim < 1:
            raise ValueError(f"codebook_size must be >= 2 and code_dim >= 1, got {self}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"quantizer decay must be in (0, 1), got {self.decay}")


class Quantized(NamedTuple):
    q: Tensor  # (B, D, H, W) codes, with the straight-through gradient to the encoder
    codes: Tensor  # (B, H, W) indices
    loss: Tensor  # commitment loss (a scalar)


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        K, D = cfg.codebook_size, cfg.code_dim
        self.register_buffer("codebook", F.normalize(torch.randn(K, D), dim=-1))
        self.register_buffer("ema_count", torch.ones(K))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def _prepare(self, flat: Tensor) -> Tensor:
        return F.normalize(flat, dim=-1) if self.cfg.cosine else flat

    def lookup(self, flat: Tensor) -> Tensor:
        """Nearest code of each vector (N, D) -> (N,)."""
        if self.cfg.cosine:
            return (flat @ self.codebook.t()).argmax(-1)
        dist = flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(-1)
        return dist.argmin(-1)

    def embed(self, codes: Tensor) -> Tensor:
        """Indices (B, H, W) -> code vectors (B, D, H, W)."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    def forward(self, z: Tensor) -> Quantized:
        B, D, H, W = z.shape
        flat = self._prepare(z.permute(0, 2, 3, 1).reshape(-1, D).float())  # (N, D)
        if self.training:
            self._update(flat.detach())
        codes = self.lookup(flat)
        q = self.codebook[codes]
        loss = self.cfg.beta * F.mse_loss(flat, q)
        q = flat + (q - flat).detach()  # straight-through
        return Quantized(q.view(B, H, W, D).permute(0, 3, 1, 2).to(z.dtype), codes.view(B, H, W), loss)

    @torch.no_grad()
    def _update(self, flat: Tensor) -> None:
        cfg = self.cfg
        if not bool(self.initialised):  # start from the data (repeated if the batch is small)
            pick = torch.randint(0, flat.shape[0], (cfg.codebook_size,), device=flat.device)
            self.codebook.copy_(flat[pick])
            self.ema_sum.copy_(flat[pick])
            self.ema_count.fill_(1.0)
            self.initialised.fill_(True)
        codes = self.lookup(flat)
        count = torch.bincount(codes, minlength=cfg.codebook_size).to(flat.dtype)  # (K,)
        total = torch.zeros_like(self.ema_sum).index_add_(0, codes, flat)  # (K, D)
        self.ema_count.mul_(cfg.decay).add_(count, alpha=1 - cfg.decay)
        self.ema_sum.mul_(cfg.decay).add_(total, alpha=1 - cfg.decay)
        means = self.ema_sum / self.ema_count.clamp(min=1e-5)[:, None]
        self.codebook.copy_(self._prepare(means))
        dead = self.ema_count < cfg.dead_threshold
        if bool(dead.any()):
            fresh = flat[torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)]
            self.codebook[dead] = fresh
            self.ema_sum[dead] = fresh
            self.ema_count[dead] = 1.0


def codebook_usage(codes: Tensor, codebook_size: int) -> dict[str, float]:
    """Perplexity (exp of the code distribution's entropy), codes used and dead codes, over `codes`."""
    count = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = count / count.sum()
    nz = p[p > 0]
    return {"perplexity": float(torch.exp(-(nz * nz.log()).sum())), "codes_used": int((count > 0).sum()),
            "dead_codes": int((count == 0).sum()), "codebook_size": codebook_size}
