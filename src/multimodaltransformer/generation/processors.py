"""Logits processors: small callables `(ids (N, t), scores (N, V)) -> scores (N, V)`, applied in order.

`ids` are the rows so far (left padding, prompt and generated tokens); `scores` are float32 logits
(greedy / sampling) or log-probabilities (beam search). `build_processors` assembles the list in
the order `transformers` uses, so results match it token for token:
repetition penalty, no-repeat n-gram, min new tokens, then (sampling only) temperature, top-k, top-p.
A processor may modify `scores` in place (the caller owns them) and returns them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .config import GenerationConfig

Processor = Callable[[Tensor, Tensor], Tensor]
NEG_INF = float("-inf")


class RepetitionPenalty:
    """CTRL (Keskar et al. 2019): a seen token's score s becomes s / p if s > 0 else s * p.

    Every token of the row counts, prompt included, except the left padding: `pad_lengths` (N,)
    leading positions are skipped (transformers does the same from the attention mask).
    """

    def __init__(self, penalty: float, pad_lengths: Tensor | None = None) -> None:
        self.penalty = penalty
        self.pad_lengths = pad_lengths

    def __call__(self, ids: Tensor, scores: Tensor) -> Tensor:
        N, V = scores.shape
        if self.pad_lengths is not None:  # padding goes to a spare column V, dropped below
            pos = torch.arange(ids.shape[1], device=ids.device)
            ids = ids.masked_fill(pos[None, :] < self.pad_lengths[:, None], V)
        seen = torch.zeros(N, V + 1, dtype=torch.bool, device=scores.device)
        seen.scatter_(1, ids.clamp(max=V), True)
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen[:, :V], penalised, scores)


class NoRepeatNGram:
    """Ban any token that would complete an n-gram already present in the row (fairseq's rule).

    The last n-1 tokens are compared with every window of the row; each matching window bans the
    token that followed it. Padding and prompt are part of the row, as in transformers.
    """

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, ids: Tensor, scores: Tensor) -> Tensor:
        t, n = ids.shape[1], self.n
        if t < n:
            return scores
        V = scores.shape[1]
        suffix = ids[:, t - n + 1:]  # (N, n-1)
        windows = ids.unfold(1, n, 1)  # (N, t-n+1, n)
        hit = (windows[..., :-1] == suffix[:, None, :]).all(-1)  # (N, t-n+1)
        banned = torch.zeros(scores.shape[0], V + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, torch.where(hit, windows[..., -1].clamp(max=V), V), True)
        return scores.masked_fill_(banned[:, :V], NEG_INF)


class MinNewTokens:
    """EOS impossible until `min_new` tokens follow the (padded) prompt of length `prompt_len`."""

    def __init__(self, prompt_len: int, min_new: int, eos: Tensor) -> None:
        self.prompt_len, self.min_new, self.eos = prompt_len, min_new, eos

    def __call__(self, ids: Tensor, scores: Tensor) -> Tensor:
        if ids.shape[1] - self.prompt_len < self.min_new:
            scores.index_fill_(1, self.eos, NEG_INF)
        return scores


class SuppressTokens:
    """These ids are never chosen (transformers' SuppressTokensLogitsProcessor)."""

    def __init__(self, ids: Sequence[int], device: torch.device) -> None:
        self.ids = torch.tensor(list(ids), dtype=torch.long, device=device)

    def __call__(self, ids: Tensor, scores: Tensor) -> Tensor:
        return scores.index_fill_(-1, self.ids, NEG_INF)


class Temperature:
    def __init__(self, temperature: float) -> None:
        self.temperature = temperature

    def __call__(self, ids: Tensor, scores: Tensor) -> Tensor:
        return scores / self.temperature


class TopK:
    """Keep the k best scores (ties with the k-th included), the rest -inf."""

    def __init__(self, k: int, min_keep: int = 1) -> None:
        self.k = max(k, min_keep)

    def __call__(self, ids: Tensor, scores: Tensor) -> Tensor:
        k = min(self.k, scores.shape[-1])
        kth = torch.topk(scores, k).values[..., -1:]
        return scores.masked_fill_(scores < kth, NEG_INF)


class TopP:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of tokens whose probability
    reaches p; drop a token when the mass of the tokens below it is <= 1 - p."""

    def __init__(self, p: float, min_keep: int = 1) -> None:
        self.p, self.min_keep = p, min_keep

    def __call__(self, ids: Tensor, scores: Tensor) -> Tensor:
        ascending, order = torch.sort(scores, descending=False)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - self.p
        drop[..., -self.min_keep:] = False
        return scores.masked_fill_(drop.scatter(1, order, drop), NEG_INF)


def build_processors(cfg: GenerationConfig, prompt_len: int, eos: Tensor,
                     pad_lengths: Tensor | None = None) -> list[Processor]:
    """The processors `cfg` asks for, in transformers' order.

    prompt_len: padded prompt length; eos: (E,) ids (may be empty); pad_lengths: (N,) left padding
    per decoded row, or None when there is none.
    """
    out: list[Processor] = []
    if cfg.repetition_penalty != 1.0:
        out.append(RepetitionPenalty(cfg.repetition_penalty, pad_lengths))
    if cfg.no_repeat_ngram_size > 0:
        out.append(NoRepeatNGram(cfg.no_repeat_ngram_size))
    if cfg.min_new_tokens > 0 and eos.numel():
        out.append(MinNewTokens(prompt_len, cfg.min_new_tokens, eos))
    if cfg.suppress_tokens:
        out.append(SuppressTokens(cfg.suppress_tokens, eos.device))
    if cfg.do_sample:
        # beams must keep a non-EOS continuation alive: one more than the EOS ids
        min_keep = eos.numel() + 1 if cfg.num_beams > 1 and eos.numel() else 2 if cfg.num_beams > 1 else 1
        if cfg.temperature != 1.0:
            out.append(Temperature(cfg.temperature))
        if cfg.top_k:
            out.append(TopK(cfg.top_k, min_keep))
        if cfg.top_p < 1.0:
            out.append(TopP(cfg.top_p, min_keep))
    return out


def apply(processors: Sequence[Processor], ids: Tensor, scores: Tensor) -> Tensor:
    for p in processors:
        scores = p(ids, scores)
    return scores
