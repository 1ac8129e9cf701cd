"""Continuous batching: rows that joined at different times decode side by side over one cache.

The decode state of a server (serve/worker.py schedules; this owns the cache). `prefill` runs a
group of prompts (their media embedded once) into a scratch cache, in chunks the caller can
interleave with decode steps, and joins its rows to the running batch right before the current
slot; `step` runs one position for every row; `keep` drops the rows that finished. Every row
keeps its own slot mask and positions, so a prompt that joins late sees only its own slots.

The self-attention K/V live in buffers preallocated for R >= N rows and `capacity` slots, grown
by doubling when the batch needs more (never more than L = 2 x max_seq_len: any row needs at
most max_seq_len slots), with the running rows in the first N. A step attends over the window
lo..slot only (lo: the first slot a running row still uses), through views of the buffers, so its
cost follows the rows' lengths, not the cache's size; a leaving row moves only the rows after it,
and a join writes its new rows in place. When the window reaches the end of the buffers it is
moved back to the start (or into larger buffers). Legend: N rows, R allocated rows, G key/value
heads, W window slots, S prefill length, D head dim, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from ..nn.cache import DecodeCache, KVCache, LayerCache
from .fastpath import few_row_matmuls
from .session import context_mask

MIN_CAPACITY = 64  # slots of the smallest buffers


class ContinuousBatch:
    """The running batch of a model with the generation interface (interface.py)."""

    def __init__(self, model: Any, fast_matmuls: bool | None = None) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.L = 2 * model.max_seq_len  # the most slots the buffers ever get
        self.k: list[Tensor] = []  # per layer (R, G, capacity, D); rows 0..N-1 are the running ones
        self.v: list[Tensor] = []
        self.cross: list[KVCache | None] = []  # per layer the context's K/V (N, G, M, D), or None
        self.cross_mask: Tensor | None = None  # (N, M) the context positions rows may attend; None: all
        self.slots = torch.zeros(0, 0, dtype=torch.bool, device=self.device)  # (N, capacity) real tokens
        self.next_pos = torch.zeros(0, 1, dtype=torch.long, device=self.device)  # (N, 1) next position
        self.slot = 0  # the next cache slot, shared by every row
        self.lo = 0  # the first slot a running row uses: steps attend over lo..slot
        # None: the few-row matmul kernel (fastpath.py) for CPU decode steps
        self.fast_matmuls = self.device.type == "cpu" if fast_matmuls is None else fast_matmuls

    def __len__(self) -> int:
        return self.slots.shape[0]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    @property
    def cache(self) -> DecodeCache | None:
        """The running rows' cache over the window lo..slot (views of the buffers), None when empty."""
        if not len(self):
            return None
        n, lo, hi = len(self), self.lo, self.slot
        return DecodeCache([LayerCache(KVCache.of(k[:n, :, lo:hi], v[:n, :, lo:hi]), c)
                            for k, v, c in zip(self.k, self.v, self.cross)], hi - lo, self.cross_mask)

    def add(self, prompts: list[Tensor], media: dict[str, Tensor], expand: list[int], pad_id: int) -> Tensor:
        """Prefill prompts in one piece and join them (see `prefill`); the new rows' logits (sum(expand), V)."""
        *_, logits = self.prefill(prompts, media, expand, pad_id)
        return logits

    def prefill(self, prompts: list[Tensor], media: dict[str, Tensor], expand: list[int], pad_id: int,
                chunk: int | None = None) -> Iterator[Tensor | None]:
        """Prefill prompts (each (1, T_i), left-padded together) with their media (batched, one row
        per prompt, embedded once) about `chunk` tokens at a time, all rows together (None: all at
        once; a chunk holds chunk // B positions of the B prompts), yielding None
        after each chunk but the last; then join them, prompt i as expand[i] rows, after the running
        ones, and yield the new rows' next-token logits (sum(expand), V). The batch may step and
        change between two chunks: the prompts' own cache is apart until they join."""
        dev = self.device
        T = max(p.shape[1] for p in prompts)
        ids = torch.full((len(prompts), T), pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros((len(prompts), T), dtype=torch.bool, device=dev)
        for r, p in enumerate(prompts):
            ids[r, T - p.shape[1]:] = p[0].to(dev)
            mask[r, T - p.shape[1]:] = True
        embedded = self.model.embed(ids, mask, **{k: v.to(dev) for k, v in media.items()})
        x, key_mask, context = embedded[:3]
        B, S = key_mask.shape  # S: the prompt with the media's prefix tokens
        scratch = self.model.new_cache(B, S, None if context is None else context.shape[1])
        if (padding := context_mask(embedded)) is not None:
            scratch.context_mask = padding
        positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
        size = max(1, chunk // B) if chunk else S
        for i in range(0, S, size):  # later chunks attend to the earlier ones through the scratch cache
            j = min(S, i + size)
            logits = self.model.decode_step(x[:, i:j], positions[:, i:j], key_mask, i,
                                            context=context if i == 0 else None, cache=scratch)[:, -1]
            if j < S:
                yield None
        rows = torch.arange(B, device=dev).repeat_interleave(torch.tensor(expand, device=dev))
        self._join(scratch, key_mask[rows], positions[rows, -1:] + 1, rows, S)
        yield logits[rows].float()

    def step(self, tokens: Tensor) -> Tensor:
        """Append one token per row (N,); returns the next-token logits (N, V)."""
        self._fit()
        x = self.model.embed_tokens(tokens.to(self.device)[:, None])  # (N, 1, C)
        self.slots[:, self.slot] = True
        self.slot += 1
        with few_row_matmuls(self.fast_matmuls):
            logits = self.model.decode_step(x, self.next_pos, self.slots[:, self.lo:self.slot],
                                            self.slot - 1 - self.lo, cache=self.cache)[:, -1]
        self.next_pos += 1
        return logits.float()

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows, in this order (finished ones leave; only the rows that move are copied)."""
        n = len(rows)
        if not n:
            self.k, self.v, self.cross, self.slot, self.lo = [], [], [], 0, 0  # the memory goes back
            self.cross_mask = None
            self.slots, self.next_pos = self.slots[:0, :0], self.next_pos[:0]
            return
        idx = torch.tensor(rows, device=self.device)
        first = next((i for i, r in enumerate(rows) if r != i), n)
        if first < n:
            moved, lo, hi = idx[first:], self.lo, self.slot
            for buf in self.k + self.v:
                buf[first:n, :, lo:hi] = buf[moved, :, lo:hi]  # the right side is a copy: no overlap
        self.cross = [None if c is None else c.select(idx) for c in self.cross]
        self.cross_mask = None if self.cross_mask is None else self.cross_mask[idx]
        self.slots, self.next_pos = self.slots[idx], self.next_pos[idx]
        used = self.slots[:, self.lo:self.slot].any(0).nonzero()
        self.lo += int(used[0]) if used.numel() else self.slot - self.lo

    # ---- slots ---------------------------------------------------------------------------------
    def _join(self, scratch: DecodeCache, key_mask: Tensor, next_pos: Tensor, rows: Tensor, S: int) -> None:
        """Add prefilled rows (their self-attention K/V in slots 0..S) at slots slot-S..slot."""
        n, b = len(self), rows.shape[0]
        if not self.k:  # the first rows: buffers of their shape
            cap = _capacity(S + 1, self.L)
            for c in scratch.layers:
                B, G, _, D = c.self_attn.k.shape
                self.k.append(torch.zeros(b, G, cap, D, dtype=c.self_attn.k.dtype, device=self.device))
                self.v.append(torch.zeros_like(self.k[-1]))
            self.slots = torch.zeros(0, cap, dtype=torch.bool, device=self.device)
            self.cross = [None] * len(scratch.layers)
            self.slot = self.lo = S
        self._fit(S, n + b)
        start = self.slot - S
        for k, v, c in zip(self.k, self.v, scratch.layers):
            k[n:n + b, :, start:self.slot] = c.self_attn.k.index_select(0, rows)
            v[n:n + b, :, start:self.slot] = c.self_attn.v.index_select(0, rows)
        self.cross = [None if c.cross_attn is None else  # one context length for every row
                      c.cross_attn.select(rows) if old is None or not n else
                      KVCache.of(torch.cat([old.k, c.cross_attn.k[rows]]), torch.cat([old.v, c.cross_attn.v[rows]]))
                      for old, c in zip(self.cross, scratch.layers)]
        if scratch.context_mask is not None or self.cross_mask is not None:  # rows without one attend to all
            M = next(c.cross_attn.k.shape[2] for c in scratch.layers if c.cross_attn is not None)
            ones = lambda k: torch.ones(k, M, dtype=torch.bool, device=self.device)  # noqa: E731
            old = self.cross_mask if self.cross_mask is not None else ones(n)
            new = scratch.context_mask[rows] if scratch.context_mask is not None else ones(b)
            self.cross_mask = torch.cat([old[:n], new])
        slots = torch.zeros(b, self.capacity, dtype=torch.bool, device=self.device)
        slots[:, start:self.slot] = key_mask
        self.slots, self.next_pos = torch.cat([self.slots, slots]), torch.cat([self.next_pos, next_pos])
        self.lo = min(self.lo, start)

    def _fit(self, S: int = 0, rows: int = 0) -> None:
        """Make the buffers hold `rows` rows, slot >= S (a joining prompt's S slots end at slot) and
        slot < capacity (room for a step): move the window lo..slot back to the start, or into larger
        buffers when it would fill more than half of these."""
        R = self.k[0].shape[0]
        if self.slot >= S and self.slot < self.capacity and rows <= R:
            return
        w = self.slot - self.lo
        lo = max(0, S - w)  # the window's new start: slot becomes lo + w >= S
        cap = self.capacity if lo + w + 1 <= self.capacity // 2 else _capacity(lo + w + 1, self.L)
        n = len(self)
        if cap != self.capacity or rows > R:  # new buffers; the old ones go
            R = max(rows, min(2 * R, rows + R))
            for bufs in (self.k, self.v):
                for i, old in enumerate(bufs):
                    new = old.new_zeros(R, old.shape[1], cap, old.shape[3])
                    new[:n, :, lo:lo + w] = old[:n, :, self.lo:self.slot]
                    bufs[i] = new
        elif lo != self.lo:  # in place
            for buf in self.k + self.v:
                buf[:n, :, lo:lo + w] = buf[:n, :, self.lo:self.slot].clone()
        slots = torch.zeros(n, cap, dtype=torch.bool, device=self.device)
        slots[:, lo:lo + w] = self.slots[:, self.lo:self.slot]
        self.slots, self.lo, self.slot = slots, lo, lo + w


def _capacity(need: int, most: int) -> int:
    """Buffer slots for a window of `need`: a power of two with as much room again, at most `most`."""
    return min(most, max(MIN_CAPACITY, 1 << (2 * need - 1).bit_length()))
