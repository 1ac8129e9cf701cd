"""What a decoder reads, and the masks and positions of its sequences: shared by the models and
the decode engine (generation/), which therefore need not know each other.
Legend: B batch, S sequence (prefix + text), M memory tokens, C dim.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Embedded(NamedTuple):
    """What the decoder reads: embeddings with any prefix tokens in front, their key mask, and
    the memory the cross-attention layers read (None without cross-attention fusion), with its
    key mask where some rows lack a modality (None: every memory token is real); and what each
    media encoder produced."""

    x: Tensor  # (B, S, C)
    mask: Tensor  # (B, S) bool
    context: Tensor | None = None  # (B, M, C)
    context_mask: Tensor | None = None  # (B, M) bool
    encoded: dict[str, Tensor] | None = None  # each modality's encoder tokens (B, N, C_m), for auxiliary losses


def causal_mask(mask: Tensor, q_start: int, q_len: int, k_len: int) -> Tensor:
    """Boolean attention mask (B, 1, q_len, k_len) for queries at absolute q_start.. over keys 0..k_len.

    A query sees earlier keys whose `mask` (B, >=k_len) is True, and always itself, so
    padded rows never become all-masked (which would give NaN).
    """
    q = torch.arange(q_start, q_start + q_len, device=mask.device)[:, None]
    k = torch.arange(k_len, device=mask.device)[None, :]
    allowed = (k <= q) & mask[:, None, None, :k_len]
    return allowed | (k == q)


def segment_mask(segments: Tensor, n_prefix: int) -> Tensor:
    """Mask (B, 1, S, S) for packed rows: prefix tokens, then text segments 1..K (0 = padding).

    Each segment sees the shared prefix (the image) and, causally, its own tokens only, so K
    examples packed behind one image train exactly as K separate sequences would.
    """
    S = segments.shape[1]
    idx = torch.arange(S, device=segments.device)
    same = (segments[:, :, None] == segments[:, None, :]) & (segments > 0)[:, None, :]
    allowed = (idx[None, :] <= idx[:, None]) & (same | (idx < n_prefix)[None, None, :])
    return (allowed | torch.eye(S, dtype=torch.bool, device=segments.device))[:, None]


def segment_positions(segment_ids: Tensor, n_prefix: int) -> Tensor:
    """Positions (B, n_prefix + T) for packed rows: each text segment restarts right after the prefix."""
    segments = torch.cat([segment_ids.new_zeros(segment_ids.shape[0], n_prefix), segment_ids], dim=1)
    idx = torch.arange(segments.shape[1], device=segments.device).expand_as(segments)
    starts = torch.cat([torch.ones_like(segments[:, :1], dtype=torch.bool), segments[:, 1:] != segments[:, :-1]], 1)
    seg_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(-1).values
    positions = torch.where(idx < n_prefix, idx, idx - seg_start + n_prefix)
    return positions.masked_fill((idx >= n_prefix) & (segments == 0), 0)  # padding


def last_token(h: Tensor, mask: Tensor) -> Tensor:
    """The hidden state (B, C) at each row's last real token (rows may be left- or right-padded)."""
    last = mask.shape[1] - 1 - mask.flip(1).long().argmax(1)
    return h[torch.arange(h.shape[0], device=h.device), last]
