"""Continuous batching: rows that joined at different times decode side by side over one cache.

The decode state of a server (serve/worker.py schedules; this owns the cache). `add` prefills a
group of prompts into a scratch cache and joins its rows to the running batch right before the
current slot; `step` runs one position for every row; `keep` drops the rows that finished. Every
row keeps its own slot mask and positions, so a prompt that joins late sees only its own slots.
The cache has L = 2 x max_seq_len slots: any row needs at most max_seq_len of them, and the
leading slots no row uses any more are compacted away when the end is reached.
Legend: N rows, L cache slots, S prefill length, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..nn.cache import DecodeCache, KVCache, LayerCache
from .fastpath import few_row_matmuls
from .session import prefill


class ContinuousBatch:
    """The running batch of a model with the generation interface (interface.py)."""

    def __init__(self, model: Any, fast_matmuls: bool | None = None) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.L = 2 * model.max_seq_len
        self.cache: DecodeCache | None = None
        self.slots = torch.zeros(0, self.L, dtype=torch.bool, device=self.device)  # (N, L) real tokens
        self.next_pos = torch.zeros(0, 1, dtype=torch.long, device=self.device)  # (N, 1) next position
        self.slot = 0  # the next cache slot, shared by every row
        # None: the few-row matmul kernel (fastpath.py) for CPU decode steps
        self.fast_matmuls = self.device.type == "cpu" if fast_matmuls is None else fast_matmuls

    def __len__(self) -> int:
        return self.slots.shape[0]

    def add(self, prompts: list[Tensor], media: dict[str, Tensor], expand: list[int], pad_id: int) -> Tensor:
        """Prefill prompts (each (1, T_i), left-padded together) with their media (batched, one row
        per prompt) and join them, prompt i as expand[i] rows, after the running ones.
        Returns the new rows' next-token logits (sum(expand), V)."""
        dev = self.device
        T = max(p.shape[1] for p in prompts)
        ids = torch.full((len(prompts), T), pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros((len(prompts), T), dtype=torch.bool, device=dev)
        for r, p in enumerate(prompts):
            ids[r, T - p.shape[1]:] = p[0].to(dev)
            mask[r, T - p.shape[1]:] = True
        logits, scratch, key_mask, positions = prefill(self.model, ids, mask, {k: v.to(dev) for k, v in media.items()})
        S = positions.shape[1]
        rows = torch.arange(len(prompts), device=dev).repeat_interleave(torch.tensor(expand, device=dev))
        self._join(scratch, key_mask[rows], positions[rows, -1:] + 1, rows, S)
        return logits[rows].float()

    def step(self, tokens: Tensor) -> Tensor:
        """Append one token per row (N,); returns the next-token logits (N, V)."""
        if self.slot + 1 > self.L - 1:
            self._compact()
        x = self.model.embed_tokens(tokens.to(self.device)[:, None])  # (N, 1, C)
        self.slots[:, self.slot] = True
        with few_row_matmuls(self.fast_matmuls):
            logits = self.model.decode_step(x, self.next_pos, self.slots, self.slot, cache=self.cache)[:, -1]
        self.slot += 1
        self.next_pos += 1
        return logits.float()

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows, in this order (finished ones leave, their cache rows are freed)."""
        if not rows:
            self.cache, self.slot = None, 0
            self.slots, self.next_pos = self.slots[:0], self.next_pos[:0]
            return
        idx = torch.tensor(rows, device=self.device)
        self.cache = self.cache.select(idx)
        self.slots, self.next_pos = self.slots[idx], self.next_pos[idx]

    # ---- slots ---------------------------------------------------------------------------------
    def _join(self, scratch: DecodeCache, key_mask: Tensor, next_pos: Tensor, rows: Tensor, S: int) -> None:
        """Add prefilled rows (their self-attention K/V in slots 0..S) at slots slot-S..slot."""
        first = self.cache is None
        if first:
            self.slot = S
        else:
            if self.slot + 1 > self.L - 1:
                self._compact()
            if S > self.slot:  # make room on the left: shift the running rows right
                self._shift(S - self.slot)
        start, b = self.slot - S, rows.shape[0]
        layers = []
        for c in scratch.layers:
            k = c.self_attn.k
            kv = KVCache(b, k.shape[1], self.L, k.shape[3], k.dtype, self.device)
            kv.k[:, :, start:self.slot] = k.index_select(0, rows)
            kv.v[:, :, start:self.slot] = c.self_attn.v.index_select(0, rows)
            cross = None if c.cross_attn is None else c.cross_attn.select(rows)  # one length for every row
            layers.append(LayerCache(kv, cross))
        joined = DecodeCache(layers, self.L)
        self.cache = joined if first else self.cache.concat(joined)
        slots = torch.zeros(b, self.L, dtype=torch.bool, device=self.device)
        slots[:, start:self.slot] = key_mask
        self.slots, self.next_pos = torch.cat([self.slots, slots]), torch.cat([self.next_pos, next_pos])

    def _shift(self, d: int) -> None:
        """Move every running row's slots d to the right (room for a longer prompt on the left).

        Only called with slot + d = S <= max_seq_len < L, so nothing falls off the end."""
        for buf in self.cache.self_buffers():
            buf[:, :, d:self.slot + d] = buf[:, :, :self.slot].clone()
            buf[:, :, :d] = 0
        self.slots[:, d:self.slot + d] = self.slots[:, :self.slot].clone()
        self.slots[:, :d] = False
        self.slot += d

    def _compact(self) -> None:
        """Drop the leading slots no running row uses (the cache would otherwise run out)."""
        used = self.slots.any(0).nonzero()
        c0 = int(used[0]) if used.numel() else self.slot
        if c0 == 0:
            return
        for buf in self.cache.self_buffers():
            buf[:, :, :self.slot - c0] = buf[:, :, c0:self.slot].clone()
            buf[:, :, self.slot - c0:] = 0
        self.slots[:, :self.slot - c0] = self.slots[:, c0:self.slot].clone()
        self.slots[:, self.slot - c0:] = False
        self.slot -= c0
