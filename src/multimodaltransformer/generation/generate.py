"""Greedy decoding with a preallocated KV cache (and an uncached reference path).

The prompt (plus any image prefix) is run once (prefill); each new token then costs one
decoder step over a single position. Legend: B batch, T prompt length, S prefill length,
L = S + max_new_tokens cache slots, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _eos_tensor(eos_token_id: int | Sequence[int] | None, device: torch.device) -> Tensor:
    ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device)


@torch.no_grad()
def generate(model: Any, input_ids: Tensor, attention_mask: Tensor | None = None,
             pixel_values: Tensor | None = None, max_new_tokens: int = 32,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             use_cache: bool = True) -> Tensor:
    """Greedy search. Returns (B, T + n) ids, n <= max_new_tokens; rows that hit EOS are padded.

    Prompts in a batch must be left-padded (attention_mask 0 on the left).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    tokenizer = getattr(model, "tokenizer", None)
    if eos_token_id is None and tokenizer is not None:
        eos_token_id = tokenizer.eos_id
    if pad_token_id is None:
        pad_token_id = tokenizer.pad_id if tokenizer is not None else 0
    device = input_ids.device
    B = input_ids.shape[0]
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    eos = _eos_tensor(eos_token_id, device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    new_tokens: list[Tensor] = []
    # The decoder has max_seq_len positions: stop when they are used up.
    n_media = model.num_media_tokens if pixel_values is not None else 0
    room = model.max_seq_len - n_media - int(mask.sum(-1).max())
    if room < 0:
        raise ValueError(f"prompt of {int(mask.sum(-1).max())} tokens (+{n_media} media) exceeds "
                         f"max_seq_len {model.max_seq_len}")
    max_new_tokens = min(max_new_tokens, room)
    if max_new_tokens == 0:
        return input_ids

    def pick(logits: Tensor) -> Tensor:
        nonlocal finished
        tok = logits.argmax(-1)
        tok = torch.where(finished, torch.full_like(tok, pad_token_id), tok)
        finished = finished | torch.isin(tok, eos)
        new_tokens.append(tok)
        return tok

    if not use_cache:
        ids, m = input_ids, mask
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=m, pixel_values=pixel_values).logits[:, -1]
            tok = pick(logits)
            ids = torch.cat([ids, tok[:, None]], dim=1)
            m = torch.cat([m, torch.ones_like(tok[:, None], dtype=torch.bool)], dim=1)
            if finished.all():
                break
        return ids

    x, key_mask = model.embed(input_ids, mask, pixel_values)
    S = x.shape[1]
    L = S + max_new_tokens
    slots = torch.zeros(B, L, dtype=torch.bool, device=device)
    slots[:, :S] = key_mask
    positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
    model.setup_caches(B, L)
    try:
        tok = pick(model.decode_step(x, positions, slots, 0)[:, -1])
        next_pos = positions[:, -1:] + 1  # (B, 1)
        for step in range(1, max_new_tokens):
            if finished.all():
                break
            slot = S + step - 1
            slots[:, slot] = True
            logits = model.decode_step(model.decoder.embed(tok[:, None]), next_pos, slots, slot)
            tok = pick(logits[:, -1])
            next_pos = next_pos + 1
    finally:
        model.clear_caches()
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)
