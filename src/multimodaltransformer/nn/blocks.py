"""The Transformer block and its parts: config, norms, activations, MLP.

Every variation a family needs is a config field, not a copy of the block:
pre-LN (GPT-2, ViT, CLIP, Llama) or post-LN (BERT); LayerNorm or RMSNorm; the MLP activation,
including the gated SwiGLU; grouped-query attention; an optional cross-attention sub-layer.
Legend: B batch, T sequence length, S context length, C model dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .attention import MultiHeadAttention
from .cache import LayerCache
from .position import PositionKind

Activation = Literal["gelu", "gelu_tanh", "quick_gelu", "relu", "silu", "swiglu"]
NormKind = Literal["layernorm", "rmsnorm"]


@dataclass
class TransformerConfig:
    """A stack of Transformer blocks; the defaults are the pre-LN GELU block of GPT-2 / ViT."""

    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    bias: bool = True
    # MLP width; None = dim * mlp_ratio. Checkpoints give it exactly (BERT intermediate_size ...).
    mlp_dim: int | None = None
    # gelu_tanh is GPT-2's "gelu_new"; quick_gelu is CLIP's x * sigmoid(1.702 x); swiglu is Llama's gated MLP.
    activation: Activation = "gelu"
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    # True: x + f(norm(x)) (pre-LN); False: norm(x + f(x)) (post-LN, BERT).
    norm_first: bool = True
    # key/value heads; None = heads; fewer is grouped-query attention (Llama 2 70B, Llama 3).
    kv_heads: int | None = None
    # bias of the q/k/v projections; None = follow `bias` (Qwen has qkv bias but no other).
    qkv_bias: bool | None = None
    # positions applied by the stack itself ("none" when the model adds its own, as GPTDecoder does).
    position: PositionKind = "none"
    max_seq_len: int = 512
    rope_base: float = 10000.0
    # a cross-attention sub-layer after self attention (the decoder of an encoder-decoder).
    cross_attention: bool = False
    # Flamingo's tanh gate on the cross-attention residual: x + tanh(g) * Cross(LN(x), ctx), g = 0 at
    # init, so the gate starts closed and a pretrained LM is unchanged until training opens it.
    cross_attention_gate: bool = False
    # a norm on the embeddings before the first block (BERT's embedding LayerNorm, CLIP's pre_layrnorm).
    embed_norm: bool = False
    # a norm after the last block (pre-LN stacks have one; post-LN BERT does not).
    final_norm: bool = True
    # dropout on the embeddings entering the stack (after positions and embed_norm).
    embed_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.depth < 0 or self.heads <= 0:
            raise ValueError(f"dim, depth and heads must be positive, got {self}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.kv_heads is not None and (self.kv_heads <= 0 or self.heads % self.kv_heads):
            raise ValueError(f"heads {self.heads} must be divisible by kv_heads {self.kv_heads}")
        if self.position == "rope" and (self.dim // self.heads) % 2:
            raise ValueError(f"rope needs an even head dim, got {self.dim // self.heads}")
        if self.mlp_dim is not None and self.mlp_dim <= 0:
            raise ValueError(f"mlp_dim must be positive, got {self.mlp_dim}")
        if self.cross_attention_gate and not self.cross_attention:
            raise ValueError("cross_attention_gate needs cross_attention: true")
        if self.cross_attention_gate and not self.norm_first:
            raise ValueError("cross_attention_gate is defined for pre-LN blocks only (norm_first: true)")

    @property
    def hidden_dim(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else int(self.dim * self.mlp_ratio)


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Zhang & Sennrich 2019), computed in fp32 and cast back as in Llama."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def build_norm(kind: NormKind, dim: int, eps: float) -> nn.Module:
    return nn.LayerNorm(dim, eps=eps) if kind == "layernorm" else RMSNorm(dim, eps)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def build_activation(kind: Activation) -> nn.Module:
    if kind == "gelu":
        return nn.GELU()
    if kind == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if kind == "quick_gelu":
        return QuickGELU()
    if kind == "relu":
        return nn.ReLU()
    if kind in ("silu", "swiglu"):
        return nn.SiLU()
    raise ValueError(f"unknown activation {kind!r}")


class MLP(nn.Module):
    """fc2(act(fc1(x))); with "swiglu", fc2(silu(gate(x)) * fc1(x)) (Shazeer 2020)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True, dropout: float = 0.0,
                 activation: Activation = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.gate = nn.Linear(dim, hidden, bias=bias) if activation == "swiglu" else None
        self.act = build_activation(activation)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.fc1(x)) if self.gate is None else self.act(self.gate(x)) * self.fc1(x)
        return self.drop(self.fc2(h))


class TransformerBlock(nn.Module):
    """Pre-LN: x + Attn(LN(x)); [x + Cross(LN(x), ctx)]; x + MLP(LN(x)).  Post-LN: LN(x + f(x)) each.

    With `cross_attention_gate` the cross residual is x + tanh(cross_gate) * Cross(LN(x), ctx).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first

        def attention(cross: bool) -> MultiHeadAttention:
            return MultiHeadAttention(cfg.dim, cfg.heads, bias=cfg.bias, dropout=cfg.dropout,
                                      kv_heads=cfg.kv_heads, qkv_bias=cfg.qkv_bias, cross=cross)

        self.ln_1 = build_norm(cfg.norm, cfg.dim, cfg.norm_eps)
        self.attn = attention(cross=False)
        if cfg.cross_attention:
            self.ln_cross = build_norm(cfg.norm, cfg.dim, cfg.norm_eps)
            self.cross_attn = attention(cross=True)
        else:
            self.ln_cross = self.cross_attn = None
        # a scalar, zero at init: tanh(0) = 0 closes the gate (Flamingo)
        self.cross_gate = nn.Parameter(torch.zeros(())) if cfg.cross_attention_gate else None
        self.ln_2 = build_norm(cfg.norm, cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg.dim, cfg.hidden_dim, bias=cfg.bias, dropout=cfg.dropout, activation=cfg.activation)
        self.drop = nn.Dropout(cfg.dropout)

    def _residual(self, x: Tensor, norm: nn.Module, f: Callable[[Tensor], Tensor]) -> Tensor:
        if self.norm_first:
            return x + f(norm(x))
        return norm(x + f(x))

    def forward(self, x: Tensor, mask: Tensor | None = None, input_pos: Tensor | None = None,
                rotary: tuple[Tensor, Tensor] | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, cache: LayerCache | None = None) -> Tensor:
        """x (B, T, C); context (B, S, C) for the cross-attention sub-layer; `cache` this block's
        part of a DecodeCache (nn/cache.py).

        With `context` None the cross-attention sub-layer reuses the K/V cached at prefill; with
        none cached either, it is skipped: a text-only pass through self attention and the MLP.
        """
        self_cache, cross_cache = (None, None) if cache is None else (cache.self_attn, cache.cross_attn)
        x = self._residual(x, self.ln_1, lambda h: self.drop(
            self.attn(h, mask=mask, input_pos=input_pos, rotary=rotary, cache=self_cache)))
        if self.cross_attn is not None and (context is not None or cross_cache is not None):
            def cross(h: Tensor) -> Tensor:
                return self.drop(self.cross_attn(h, context=context, mask=context_mask, cache=cross_cache))

            if self.cross_gate is None:
                x = self._residual(x, self.ln_cross, cross)
            else:  # pre-LN only (checked in the config)
                x = x + torch.tanh(self.cross_gate) * cross(self.ln_cross(x))
        return self._residual(x, self.ln_2, self.mlp)
