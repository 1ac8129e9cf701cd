"""VQ-VAE: the discrete image tokenizer of text-to-image (DALL-E's dVAE role): image <-> grid of codes.

encoder: strided 4x4 convolutions halve the resolution per stage (64 -> 32 -> 16 -> 8 with three
stages), residual blocks at the grid, a 1x1 projection to the code space; quantizer
(nn/quantize.py) snaps each grid vector to one of K codes; decoder: the mirror image, transposed
convolutions back to pixels in [-1, 1]. `encode` / `decode` are the tokenizer's public face: a
64x64 image becomes an 8x8 (or 16x16 with two stages) grid of integers, and any such grid becomes
an image. Training loss: reconstruction (MSE + L1, optionally + L1 of pixel differences: edges) +
the quantizer's commitment loss.
Legend: B batch, C channels, H x W grid, K codes, D code dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.quantize import QuantizerConfig, VectorQuantizer
from .base import PretrainedModel


@dataclass
class VQVAEConfig:
    image_size: int = 64
    # channels of each downsampling stage (each halves the resolution): grid = image_size / 2**len
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    res_blocks: int = 2  # residual blocks at the grid resolution, in the encoder and in the decoder
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    l1_weight: float = 0.5  # reconstruction = MSE + l1_weight * L1 (L1 keeps edges sharper)
    # + edge_weight * L1 of the horizontal and vertical pixel differences: weighs outlines, which
    # thin parts of small objects (a cross's arms) hardly move in MSE
    edge_weight: float = 0.0
    model_type: Literal["mmt-vqvae"] = "mmt-vqvae"

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"vqvae channels must be a non-empty list of positive ints, got {self.channels}")
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{len(self.channels)} "
                             f"(one halving per entry of channels)")

    @property
    def grid(self) -> int:
        return self.image_size // 2 ** len(self.channels)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def encoder(cfg: VQVAEConfig) -> nn.Sequential:
    """Strided convolutions, a residual block after each but the first (coarse shapes form there)."""
    layers: list[nn.Module] = []
    c_in = 3
    for i, c in enumerate(cfg.channels):
        layers += ([nn.SiLU()] if i else []) + [nn.Conv2d(c_in, c, 4, stride=2, padding=1)]
        layers += [ResBlock(c)] if 0 < i < len(cfg.channels) - 1 else []
        c_in = c
    layers += [ResBlock(c_in) for _ in range(cfg.res_blocks)]
    layers += [nn.SiLU(), nn.Conv2d(c_in, cfg.quantizer.code_dim, 1)]
    return nn.Sequential(*layers)


def decoder(cfg: VQVAEConfig) -> nn.Sequential:
    """The encoder's mirror: transposed convolutions double the resolution, residual blocks between."""
    chans = list(reversed(cfg.channels))
    layers: list[nn.Module] = [nn.Conv2d(cfg.quantizer.code_dim, chans[0], 3, padding=1)]
    layers += [ResBlock(chans[0]) for _ in range(cfg.res_blocks)]
    outs = chans[1:] + [max(chans[-1] // 2, 8)]  # each stage doubles the resolution
    for i, (c, c_out) in enumerate(zip(chans, outs)):
        layers += [nn.SiLU(), nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1)]
        layers += [ResBlock(c_out)] if i < len(chans) - 2 else []
    layers += [nn.SiLU(), nn.Conv2d(outs[-1], 3, 3, padding=1)]  # paint the pixels
    return nn.Sequential(*layers)


class VQVAEOutput(NamedTuple):
    loss: Tensor  # reconstruction + commitment
    reconstruction: Tensor  # (B, 3, S, S) in [-1, 1] (unclamped)
    codes: Tensor  # (B, H, W)
    recon_loss: Tensor
    commit_loss: Tensor


class VQVAE(PretrainedModel):
    """`encode(pixels) -> codes (B, H, W)`, `decode(codes) -> pixels (B, 3, S, S)`; pixels in [-1, 1]."""

    config_class = VQVAEConfig

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__(config)
        self.encoder = encoder(config)
        self.quantizer = VectorQuantizer(config.quantizer)
        self.decoder = decoder(config)

    @property
    def codebook_size(self) -> int:
        return self.config.quantizer.codebook_size

    def _check(self, pixels: Tensor) -> None:
        S = self.config.image_size
        if pixels.dim() != 4 or pixels.shape[1:] != (3, S, S):
            raise ValueError(f"VQ-VAE expects pixels of shape (B, 3, {S}, {S}), got {tuple(pixels.shape)}")

    def forward(self, pixel_values: Tensor, quantize: bool = True) -> VQVAEOutput:
        """`quantize=False` is a plain autoencoder (codes -1, no commitment): the warm-up that lets the
        encoder find features before the codebook starts from them."""
        self._check(pixel_values)
        z = self.encoder(pixel_values)
        if quantize:
            q, codes, commit = self.quantizer(z)
        else:
            q = F.normalize(z, dim=1) if self.config.quantizer.cosine else z
            codes, commit = torch.full_like(z[:, 0], -1, dtype=torch.long), z.new_zeros(())
        recon = self.decoder(q)
        rec = F.mse_loss(recon, pixel_values) + self.config.l1_weight * F.l1_loss(recon, pixel_values)
        if self.config.edge_weight:
            rec = rec + self.config.edge_weight * sum(F.l1_loss(recon.diff(dim=d), pixel_values.diff(dim=d)) for d in (2, 3))
        return VQVAEOutput(rec + commit, recon, codes, rec, commit)

    @torch.no_grad()
    def encode(self, pixel_values: Tensor) -> Tensor:
        self._check(pixel_values)
        return self.quantizer(self.encoder(pixel_values)).codes

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        g = self.config.grid
        if codes.dim() != 3 or codes.shape[1:] != (g, g):
            raise ValueError(f"VQ-VAE decodes code grids of shape (B, {g}, {g}), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must be in [0, {self.codebook_size}), got {int(codes.min())}..{int(codes.max())}")
        return self.decoder(self.quantizer.embed(codes)).clamp(-1, 1)
