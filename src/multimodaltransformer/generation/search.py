"""Greedy search and sampling: one token per row per step, until every row has hit EOS or the budget.

The loop is a generator of (N,) token tensors, so `generate` drains it and `stream` reads it one
token at a time (closing it early frees the cache). Per step: one decoder step, the processors,
argmax or a multinomial draw, and the stopping rule; rows that finished emit `pad` (transformers'
convention). The only host sync is the "all finished?" check.
Legend: N rows, T padded prompt length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from .processors import Processor, apply
from .session import CachedSession, UncachedSession


def choose(processors: Sequence[Processor], ids: Tensor, logits: Tensor, do_sample: bool,
           generator: torch.Generator | None = None) -> Tensor:
    """The next token of each row (N,): the processors on float logits (N, V), then argmax or a draw."""
    scores = apply(processors, ids, logits)
    if do_sample:
        return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
    return scores.argmax(-1)


def sample_steps(session: CachedSession | UncachedSession, ids: Tensor, prompt_len: int, max_new_tokens: int,
                 processors: Sequence[Processor], eos: Tensor, pad: int, do_sample: bool = False,
                 generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """Write each step's tokens into ids[:, prompt_len + step] (ids (N, T + max_new_tokens)) and yield them."""
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    stops = eos.numel() > 0
    tokens: Tensor | None = None
    for step in range(max_new_tokens):
        logits = session.logits if tokens is None else session.step(tokens)
        tokens = choose(processors, ids[:, :prompt_len + step], logits.float(), do_sample, generator)
        if stops:
            tokens = tokens.masked_fill(finished, pad)
            finished |= torch.isin(tokens, eos)
        ids[:, prompt_len + step] = tokens
        yield tokens
        if stops and bool(finished.all()):
            return
