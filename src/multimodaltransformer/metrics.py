"""Scores for generated text: exact match (VQA style) and corpus BLEU-4.

BLEU follows sacrebleu's corpus BLEU (0-100 scale, closest reference length, 'exp'
smoothing) on whitespace tokens; `references` is a list of reference streams, each with
one string per hypothesis, as in `sacrebleu.corpus_bleu`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
    """Fraction of predictions equal to their target after `normalize_answer`."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    if not targets:
        return 0.0
    return sum(normalize_answer(p) == normalize_answer(t) for p, t in zip(predictions, targets)) / len(targets)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 4) -> float:
    """Corpus BLEU on the 0-100 scale."""
    for stream in references:
        if len(stream) != len(hypotheses):
            raise ValueError(f"a reference stream has {len(stream)} lines for {len(hypotheses)} hypotheses")
    correct, total = [0] * max_order, [0] * max_order
    sys_len = ref_len = 0
    for i, hyp in enumerate(hypotheses):
        h = hyp.split()
        refs = [stream[i].split() for stream in references]
        sys_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in refs)[1]  # closest, shorter on ties
        for n in range(1, max_order + 1):
            max_ref: Counter = Counter()
            for r in refs:
                max_ref |= _ngrams(r, n)
            hyp_ngrams = _ngrams(h, n)
            correct[n - 1] += sum(min(c, max_ref[g]) for g, c in hyp_ngrams.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if not any(correct):
        return 0.0
    precisions = [0.0] * max_order
    smooth = 1.0
    for n in range(max_order):
        if total[n] == 0:
            break
        if correct[n] == 0:
            smooth *= 2
            precisions[n] = 100.0 / (smooth * total[n])
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    if sys_len == 0:
        return 0.0
    bp = math.exp(1 - ref_len / sys_len) if sys_len < ref_len else 1.0
    logs = [math.log(p) if p > 0 else -9999999999 for p in precisions]
    return bp * math.exp(sum(logs) / max_order)
