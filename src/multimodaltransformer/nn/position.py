"""Positional encodings, one small class each, all with the same three-method interface.

An encoding acts in exactly one place, and the other two methods are no-ops:
  embed(x, positions)        absolute encodings add a vector to each token (sinusoidal, learned);
  rotary(positions)          RoPE returns (cos, sin) that attention applies to queries and keys;
  bias(q_pos, k_pos)         ALiBi returns an additive attention bias (H, T, S).
The stack calls all three, so swapping encodings is a config change (`TransformerConfig.position`).
Legend: B batch, T query length, S key length, H heads, C model dim, D head dim.
`positions` are (T,) or (B, T) integer tensors.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

PositionKind = Literal["none", "sinusoidal", "learned", "alibi", "rope"]


class PositionalEncoding(nn.Module):
    """No positional information (also the base class: every method is a no-op)."""

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor] | None:
        return None

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor | None:
        return None


def sinusoid_table(max_len: int, dim: int, base: float = 10000.0) -> Tensor:
    """Vaswani et al. (2017): PE[p, 2i] = sin(p / base^(2i/C)), PE[p, 2i+1] = cos(same); (max_len, C)."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(max_len, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.float()


def sincos_2d_table(height: int, width: int, dim: int, base: float = 10000.0) -> Tensor:
    """A 2-D grid's fixed positions (MAE, He et al. 2022): the first half of the C channels is the
    1-D sin/cos table of the row, the second half that of the column; (height * width, C), row-major."""
    if dim % 4:
        raise ValueError(f"a 2-D sin/cos table needs a dim divisible by 4, got {dim}")
    rows = sinusoid_table(height, dim // 2, base)[:, None, :].expand(height, width, dim // 2)
    cols = sinusoid_table(width, dim // 2, base)[None, :, :].expand(height, width, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim)


class SinusoidalPosition(PositionalEncoding):
    """Fixed sin/cos table added to the token embeddings (not saved: it is a function of the config).

    Whisper's encoder table uses a different layout ([sin | cos] halves); its checkpoints carry the
    table, so a Whisper mapping loads it into a `LearnedPosition` instead.
    """

    def __init__(self, max_len: int, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("table", sinusoid_table(max_len, dim, base), persistent=False)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.table[positions].to(x.dtype)


class LearnedPosition(PositionalEncoding):
    """A learned vector per absolute position (GPT-2, BERT, ViT, CLIP), added to the tokens."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(max_len, dim) * 0.02)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.weight[positions]


def alibi_slopes(heads: int) -> Tensor:
    """Press et al. (2022): geometric slopes 2^(-8/n * i); for non-powers of two, interleave the next power."""
    def powers(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    n = 2 ** math.floor(math.log2(heads))
    slopes = powers(n) + powers(2 * n)[0::2][: heads - n]
    return torch.tensor(slopes)


class ALiBi(PositionalEncoding):
    """Attention with linear biases: score(q, k) -= slope_h * |q - k|; nothing is added to tokens.

    For causal attention this equals ALiBi's slope * (k - q) up to a per-row constant, which the
    softmax ignores; for bidirectional attention it is the symmetric variant.
    """

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)

    def bias(self, q_positions: Tensor, k_positions: Tensor) -> Tensor:
        dist = (q_positions[..., :, None] - k_positions[..., None, :]).abs().float()  # (T, S) or (B, T, S)
        bias = -self.slopes[:, None, None] * dist[..., None, :, :]  # (H, T, S) or (B, H, T, S)
        return bias


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, D) by the angles in cos/sin (broadcast to it); computed in fp32, cast back."""
    return (x.float() * cos + rotate_half(x.float()) * sin).to(x.dtype)


class RotaryPosition(PositionalEncoding):
    """RoPE (Su et al. 2021) in the half-split layout of GPT-NeoX / HF Llama: pairs are (i, i + D/2)."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotary(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions.float()[..., None] * self.inv_freq  # (T, D/2) or (B, T, D/2)
        angles = torch.cat([angles, angles], dim=-1)
        # broadcast over heads: (1, 1, T, D) or (B, 1, T, D)
        angles = angles[None, None] if positions.dim() == 1 else angles[:, None]
        return angles.cos(), angles.sin()


def build_position(kind: PositionKind, *, dim: int, heads: int, max_len: int,
                   rope_base: float = 10000.0) -> PositionalEncoding:
    """The encoding named by `kind` (`TransformerConfig.position`)."""
    if kind == "none":
        return PositionalEncoding()
    if kind == "sinusoidal":
        return SinusoidalPosition(max_len, dim)
    if kind == "learned":
        return LearnedPosition(max_len, dim)
    if kind == "alibi":
        return ALiBi(heads)
    if kind == "rope":
        return RotaryPosition(dim // heads, rope_base)
    raise ValueError(f"unknown position encoding {kind!r}")
