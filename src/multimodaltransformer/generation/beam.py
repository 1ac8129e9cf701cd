"""Beam search over batched beams (B prompts x K beams decoded as N = B*K rows), as transformers does it.

Per step, each prompt's K beams propose their K*V continuations; the best 2K (more when there are
several EOS ids, so K unfinished ones survive) are kept, by score or, with do_sample, drawn without
replacement. Of those, the K best that did not just stop (EOS, or the length budget) run on, and
the cache rows follow them (`session.reorder`); the stopped ones among the top K become finished
hypotheses scored sum(log p) / generated_len ** length_penalty, and each prompt keeps its K best.
Decoding ends when no prompt can still improve (the `early_stopping` heuristic below), every
prompt has K finished hypotheses (early_stopping=True), or nothing can continue.
Returns the best `num_return_sequences` per prompt, cropped to the longest, padded with `fill`.
Legend: B prompts, K beams, C = candidates kept per step, T prompt length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .processors import Processor, apply
from .session import CachedSession, UncachedSession

NEG = -1.0e9  # the "impossible" score transformers uses (finite, so sums stay ordered)


def _take(x: Tensor, index: Tensor) -> Tensor:
    """x (B, K, ...) -> x[b, index[b, j], ...] (B, J, ...)."""
    while index.dim() < x.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(x, index, dim=1)


def beam_search(session: CachedSession | UncachedSession, prompt: Tensor, num_beams: int, max_new_tokens: int,
                processors: Sequence[Processor], eos: Tensor, fill: int, *, length_penalty: float = 1.0,
                early_stopping: bool | Literal["never"] = False, num_return_sequences: int = 1,
                do_sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
    """prompt (B*K, T) rows (each prompt repeated K times, as the session decodes them) -> (B*R, T + n)."""
    K = num_beams
    N, T = prompt.shape
    B = N // K
    max_len = T + max_new_tokens
    C = max(2, 1 + eos.numel()) * K
    top_k = torch.arange(C, device=prompt.device) < K  # (C,) candidates eligible to finish
    stop_early = early_stopping is True

    seqs = torch.full((B, K, max_len), fill, dtype=torch.long, device=prompt.device)
    seqs[:, :, :T] = prompt.view(B, K, T)
    scores = torch.zeros(B, K, device=prompt.device)
    scores[:, 1:] = NEG  # all beams start equal: only the first may propose, or the K would repeat
    done_seqs, done_scores = seqs.clone(), torch.full((B, K), NEG, device=prompt.device)
    done = torch.zeros(B, K, dtype=torch.bool, device=prompt.device)
    done_len = torch.zeros(B, K, dtype=torch.long, device=prompt.device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=prompt.device)
    batch_offset = torch.arange(B, device=prompt.device)[:, None] * K

    for step in range(max_new_tokens):
        cur = T + step
        logits = session.logits if step == 0 else session.step(seqs[:, :, cur - 1].reshape(N))
        logp = apply(processors, seqs.view(N, max_len)[:, :cur], torch.log_softmax(logits.float(), dim=-1))
        V = logp.shape[-1]
        total = (logp.view(B, K, V) + scores[:, :, None]).view(B, K * V)
        if do_sample:
            index = torch.multinomial(total.softmax(-1), C, generator=generator)
            # best first, as topk gives them: the beams kept are the best-scoring of the sampled
            # candidates (transformers >= 5.24 sorts them too; earlier releases kept draw order)
            cand_scores, order = total.gather(1, index).sort(dim=-1, descending=True)
            index = index.gather(1, order)
        else:
            cand_scores, index = torch.topk(total, C)  # (B, C)
        parent, token = index // V, index % V
        cand = _take(seqs, parent)  # (B, C, max_len)
        cand[:, :, cur] = token
        if cur + 1 >= max_len:
            stopped = torch.ones_like(token, dtype=torch.bool)
        else:
            stopped = torch.isin(token, eos)

        # the K best candidates that go on
        run = cand_scores + stopped.float() * NEG
        keep = torch.topk(run, K).indices
        seqs, scores, parent = _take(cand, keep), _take(run, keep), _take(parent, keep)

        # finished hypotheses: the top-K candidates that stopped, merged with the earlier ones
        new = cand_scores / float((cur + 1 - T) ** length_penalty)
        new = new + (done.all(-1, keepdim=True) & stop_early).float() * NEG
        new = new + (~improvable).float() * NEG
        just_done = stopped & top_k
        new = new + (~just_done).float() * NEG
        best = torch.topk(torch.cat([done_scores, new], 1), K).indices
        done_seqs = _take(torch.cat([done_seqs, cand], 1), best)
        done_scores = _take(torch.cat([done_scores, new], 1), best)
        done = _take(torch.cat([done, just_done], 1), best)
        done_len = _take(torch.cat([done_len, torch.full_like(token, step + 1)], 1), best)

        # can a running beam still beat the worst finished one? (length-penalty heuristic)
        length = max_len - T if early_stopping == "never" and length_penalty > 0 else cur + 1 - T
        best_running = scores[:, :1] / float(length ** length_penalty)
        worst_done = torch.where(done, done_scores.min(1, keepdim=True).values, NEG)
        improvable = improvable & (best_running > worst_done).any(-1, keepdim=True)
        go_on = improvable.any() & ~(done.all() & stop_early) & ~stopped.all()
        if not bool(go_on):
            break
        session.reorder((parent + batch_offset).view(N))

    R = num_return_sequences
    out, lengths = done_seqs[:, :R].reshape(B * R, max_len), done_len[:, :R]
    return out[:, :T + int(lengths.max())]
