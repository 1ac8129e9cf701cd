"""Decoding state of one generate call: the prompt runs once, then one position per token.

A session yields next-token logits for N = B x expand rows (expand = beams or samples per prompt):
  logits              (N, V) after the prompt
  step(tokens (N,))   -> (N, V) after appending one token per row
  reorder(rows (N,))  row i continues from row rows[i] (beam search; rows stay within a prompt)
  close()             frees the cache
`CachedSession` owns a preallocated KV cache (a DecodeCache, nn/cache.py) of L = S + max_new_tokens
slots (gpt-fast): the prompt (S positions, media tokens included) is computed once for the B prompts and its cache
copied to their `expand` rows; each step then runs a single position, with a slot mask updated
in place, and a beam reorder copies the moved rows' filled slots in place, so memory stays that
of the cache. On CPU each step runs the few-row matmul kernel of fastpath.py (`few_row_matmuls`,
an option of the session; the prefill, with its many rows, is unchanged). `UncachedSession` recomputes
every row from scratch each step, as a prefill into a throwaway cache (the reference path).
Legend: B prompts, N decoded rows, S prefill length, L cache slots, V vocabulary.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..nn.cache import DecodeCache
from .fastpath import few_row_matmuls


def context_mask(embedded: tuple) -> Tensor | None:
    """The (B, M) mask of the context's padding (a batch of clips of several lengths), where embed gives one."""
    return embedded[3] if len(embedded) > 3 else None


class Prefill(NamedTuple):
    logits: Tensor  # (B, V) at the last prompt position
    cache: DecodeCache  # S + extra slots, the first S written
    slots: Tensor  # (B, S + extra) True at the slots holding real tokens
    positions: Tensor  # (B, S) counted from each row's first real token (left padding shifts nothing)


def prefill(model: Any, input_ids: Tensor, mask: Tensor, media: dict[str, Tensor], extra: int = 0) -> Prefill:
    """Run left-padded prompts (B, T) and their media once into a new cache of S + `extra` slots
    (S: the prompt with the media's prefix tokens); every decode state starts here."""
    embedded = model.embed(input_ids, mask, **media)
    x, key_mask, context = embedded[:3]  # (B, S, C), (B, S), (B, M, C) | None
    B, S = key_mask.shape
    cache = model.new_cache(B, S + extra, None if context is None else context.shape[1])
    if (padding := context_mask(embedded)) is not None:  # clips of several lengths: keep it for every step
        cache.context_mask = padding
    slots = torch.zeros(B, S + extra, dtype=torch.bool, device=x.device)
    slots[:, :S] = key_mask
    positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model.decode_step(x, positions, slots, 0, context=context, cache=cache)[:, -1]
    return Prefill(logits, cache, slots, positions)


class CachedSession:
    """Prefill once into a preallocated KV cache, then decode one position per step."""

    def __init__(self, model: Any, input_ids: Tensor, mask: Tensor, media: dict[str, Tensor],
                 max_new_tokens: int, expand: int = 1, compile: bool = False,
                 fast_matmuls: bool | None = None) -> None:
        self.model = model
        B = input_ids.shape[0]
        logits, cache, slots, positions = prefill(model, input_ids, mask, media, max_new_tokens)
        self.cache: DecodeCache | None = cache
        S = positions.shape[1]
        if expand > 1:  # the prompt ran once per prompt; its rows are copied to every beam / sample
            rows = torch.arange(B, device=slots.device).repeat_interleave(expand)
            self.cache = self.cache.select(rows)
            slots, positions, logits = slots[rows], positions[rows], logits[rows]
        self.logits: Tensor = logits
        self.slots = slots  # (N, L) True at the cache slots holding real tokens
        self.next_pos = positions[:, -1:] + 1  # (N, 1) position of the next token, per row
        self.slot = S  # next cache slot (the same for every row)
        self.identity = torch.arange(slots.shape[0], device=slots.device)
        # torch.compile fuses the step's small kernels (worth it on a GPU). No CUDA graphs: the slot
        # index is a Python int in the model interface, and a graph would be recorded per value.
        self._step = torch.compile(model.decode_step) if compile else model.decode_step
        # None: on for CPU decoding (not under torch.compile, which traces the step itself)
        self.fast_matmuls = slots.device.type == "cpu" and not compile if fast_matmuls is None else fast_matmuls

    def step(self, tokens: Tensor) -> Tensor:
        self.slots[:, self.slot] = True
        x = self.model.embed_tokens(tokens[:, None])  # (N, 1, C)
        with few_row_matmuls(self.fast_matmuls):
            logits = self._step(x, self.next_pos, self.slots, self.slot, cache=self.cache)[:, -1]
        self.next_pos += 1
        self.slot += 1
        return logits

    def reorder(self, rows: Tensor) -> None:
        """Row i continues from row rows[i]: copy, in place, the filled slots of the rows that move."""
        if self.identity.device.type == "cpu":  # the host sync is free here: copy only the moved rows
            moved = (rows != self.identity).nonzero().squeeze(1)
            if moved.numel() == 0:
                return
            src = rows[moved]
        else:
            moved, src = self.identity, rows
        self.cache.copy_rows_(moved, src, self.slot)
        # slots and positions are equal across the rows of one prompt: nothing else moves

    def close(self) -> None:
        self.cache = None  # the session owns its cache: dropping it frees the memory


class UncachedSession:
    """Every step runs the whole (growing) sequence from scratch, as a prefill: slow, and the reference."""

    def __init__(self, model: Any, input_ids: Tensor, mask: Tensor, media: dict[str, Tensor],
                 expand: int = 1) -> None:
        rows = torch.arange(input_ids.shape[0], device=input_ids.device).repeat_interleave(expand)
        self.model = model
        self.ids, self.mask = input_ids[rows], mask[rows]
        self.media = {k: v[rows] for k, v in media.items()}
        self.logits: Tensor = self._forward()

    def _forward(self) -> Tensor:
        return prefill(self.model, self.ids, self.mask, self.media).logits

    def step(self, tokens: Tensor) -> Tensor:
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self._forward()

    def reorder(self, rows: Tensor) -> None:
        self.ids, self.mask = self.ids[rows], self.mask[rows]

    def close(self) -> None:
        pass
