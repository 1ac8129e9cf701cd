"""Scores for generated text, retrieval and classification, each equal to a reference package.

| scorer                    | reference definition                                                      |
|---------------------------|---------------------------------------------------------------------------|
| `exact_match`             | fraction equal after `normalize_answer`                                   |
| `bleu`                    | `sacrebleu.corpus_bleu(hyps, refs, tokenize="none")`: BLEU-4, 0-100       |
| `cider`, `cider_per_sentence` | pycocoevalcap `Cider().compute_score` (CIDEr-D, n=4, sigma=6, x10)   |
| `rouge_l`                 | pycocoevalcap `Rouge().compute_score` (LCS F-measure, beta=1.2)           |
| `wer`, `cer`              | `jiwer.wer(references, hypotheses)`, `jiwer.cer(...)`: corpus error rates |
| `vqa_accuracy`            | VQA v2 `vqaEval.py`: answer normalisation, min(1, humans/3), leave-one-out |
| `recall_at_k`             | fraction of queries with a correct gallery item in their top k           |
| `classification_report`   | `sklearn.metrics.classification_report(output_dict=True, zero_division=0)` |

Text is whitespace-tokenised everywhere (no PTB tokenizer): normalise it before scoring. BLEU takes
`references` as reference streams (one string per hypothesis each, as sacrebleu); CIDEr and ROUGE-L
take one list of reference strings per hypothesis (as pycocoevalcap's dicts).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np
import torch

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def _check_pairs(hypotheses: Sequence, references: Sequence) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")


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


# ----------------------------------------------------------------------------- BLEU


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 4) -> float:
    """Corpus BLEU on the 0-100 scale (closest reference length, sacrebleu's 'exp' smoothing)."""
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


# ----------------------------------------------------------------------------- CIDEr-D


def _check_reference_lists(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    _check_pairs(hypotheses, references)
    if any(isinstance(refs, str) or not refs for refs in references):
        raise ValueError("references must hold a non-empty list of reference strings per hypothesis")


def _ngram_counts(text: str, max_order: int) -> Counter:
    tokens = text.split()
    return sum((_ngrams(tokens, n) for n in range(1, max_order + 1)), Counter())


def cider_per_sentence(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                       n: int = 4, sigma: float = 6.0) -> list[float]:
    """CIDEr-D of each hypothesis, with idf taken over this corpus's references (pycocoevalcap's `Cider`)."""
    _check_reference_lists(hypotheses, references)
    hyp_counts = [_ngram_counts(h, n) for h in hypotheses]
    ref_counts = [[_ngram_counts(r, n) for r in refs] for refs in references]
    # document frequency: in how many hypotheses' reference sets each n-gram occurs
    doc_freq = Counter(g for refs in ref_counts for g in set().union(*refs))
    log_docs = math.log(len(references))

    def tfidf(counts: Counter) -> tuple[dict, list[float], int]:
        vec = {g: tf * (log_docs - math.log(max(1.0, doc_freq[g]))) for g, tf in counts.items()}
        norms = [0.0] * n
        for g, w in vec.items():
            norms[len(g) - 1] += w * w
        # pycocoevalcap's quirk: the "length" in the penalty is the number of bigrams
        length = sum(tf for g, tf in counts.items() if len(g) == 2)
        return vec, [math.sqrt(x) for x in norms], length

    scores = []
    for hyp, refs in zip(hyp_counts, ref_counts):
        vec_h, norm_h, len_h = tfidf(hyp)
        total = 0.0
        for ref in refs:
            vec_r, norm_r, len_r = tfidf(ref)
            penalty = math.exp(-((len_h - len_r) ** 2) / (2 * sigma ** 2))
            sims = [0.0] * n
            for g, w in vec_h.items():  # clipped dot product: min(hyp, ref) * ref
                w_ref = vec_r.get(g, 0.0)
                sims[len(g) - 1] += min(w, w_ref) * w_ref
            for k in range(n):
                if norm_h[k] and norm_r[k]:
                    sims[k] /= norm_h[k] * norm_r[k]
            total += penalty * sum(sims) / n
        scores.append(10.0 * total / len(refs))
    return scores


def cider(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr-D (x10 scale): the mean of `cider_per_sentence`."""
    scores = cider_per_sentence(hypotheses, references)
    return sum(scores) / len(scores) if scores else 0.0


# ----------------------------------------------------------------------------- ROUGE-L


def _lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, one dynamic-programming row at a time."""
    prev = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(prev[j] + 1 if x == y else max(prev[j + 1], row[j]))
        prev = row
    return prev[-1]


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """Mean ROUGE-L F-measure, with precision and recall each maximised over the references (pycocoevalcap)."""
    _check_reference_lists(hypotheses, references)
    scores = []
    for hyp, refs in zip(hypotheses, references):
        h = hyp.split() or [""]  # pycocoevalcap splits on " ", so "" is one empty token
        lcs = [(_lcs_length(h, r), len(r)) for r in (ref.split() or [""] for ref in refs)]
        p = max(c / len(h) for c, _ in lcs)
        r = max(c / n for c, n in lcs)
        scores.append((1 + beta ** 2) * p * r / (r + beta ** 2 * p) if p and r else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


# ----------------------------------------------------------------------------- WER / CER


def _edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance with unit-cost substitutions, insertions and deletions."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        diag, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (r != h))
    return row[-1]


def _error_rate(hypotheses: list[Sequence], references: list[Sequence]) -> float:
    _check_pairs(hypotheses, references)
    edits = sum(_edit_distance(r, h) for h, r in zip(hypotheses, references))
    n_ref = sum(len(r) for r in references)
    return edits / n_ref if n_ref else float(edits)  # jiwer: with no reference words, the insertion count


def wer(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus word error rate: total word edits over total reference words (`jiwer.wer(refs, hyps)`)."""
    return _error_rate([h.split() for h in hypotheses], [r.split() for r in references])


def cer(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus character error rate, spaces included, ends stripped (`jiwer.cer(refs, hyps)`)."""
    return _error_rate([list(h.strip()) for h in hypotheses], [list(r.strip()) for r in references])


# ----------------------------------------------------------------------------- VQA accuracy

# Tables of the official VQA evaluation (vqaEval.py).
_VQA_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_VQA_DIGIT_COMMA = re.compile(r"\d,\d")
_VQA_PERIOD = re.compile(r"\.(?!\d)")  # the official "(?!<=\d)" is a lookahead, so only "." before a digit stays
_VQA_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_VQA_NUMBERS["none"] = "0"
_VQA_ARTICLES = {"a", "an", "the"}
# Every spelling of these with one apostrophe dropped maps back to the full form ("dont" -> "don't").
_VQA_CONTRACTED = """
    ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't
    he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've
    mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't
    shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
    something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've
    they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's
    where'd where's where've who'd who'd've who'll who's who've why'll why're why's won't would've
    wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()
_VQA_CONTRACTIONS = {c[:i] + c[i + 1:]: c for c in _VQA_CONTRACTED for i, ch in enumerate(c) if ch == "'"}
_VQA_CONTRACTIONS["somebody'd"] = "somebodyd"  # sic, in the official table


def vqa_normalize(answer: str) -> str:
    """The official VQA answer normalisation: punctuation, number words to digits, no articles, contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    # a mark next to a space, or any mark in an answer with a "1,000"-style number, is deleted; else it splits
    glue = _VQA_DIGIT_COMMA.search(text) is not None
    out = text
    for p in _VQA_PUNCT:
        out = out.replace(p, "" if glue or p + " " in text or " " + p in text else " ")
    out = _VQA_PERIOD.sub("", out)
    words = [_VQA_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(_VQA_CONTRACTIONS.get(w, w) for w in words if w not in _VQA_ARTICLES)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str | Sequence[str]]) -> float:
    """Mean VQA v2 accuracy: min(1, matching humans / 3), averaged over leaving each human answer out.

    `answers` holds per question the human answers (usually 10), or one string, scored as exact match
    after `vqa_normalize`. Both sides are normalised (the official script assumes normalised ground truth).
    """
    _check_pairs(predictions, answers)
    total = 0.0
    for pred, humans in zip(predictions, answers):
        pred = vqa_normalize(pred)
        if isinstance(humans, str):
            total += float(pred == vqa_normalize(humans))
            continue
        if not humans:
            raise ValueError("every question needs at least one human answer")
        hits = [vqa_normalize(a) == pred for a in humans]
        total += sum(min(1.0, (sum(hits) - hit) / 3) for hit in hits) / len(hits)
    return total / len(predictions) if predictions else 0.0


# ----------------------------------------------------------------------------- retrieval


def recall_at_k(similarity: torch.Tensor | np.ndarray, k: int = 1,
                positives: torch.Tensor | np.ndarray | None = None) -> float:
    """Fraction of queries (rows) with a correct gallery item (column) among their k most similar.

    Query i's correct item is column i, or every column j where `positives[i, j]` (bool (Q, G)) is set.
    Pass `similarity` (T, I) for text-to-image retrieval, its transpose for image-to-text.
    """
    sim = torch.as_tensor(similarity)
    if positives is None:
        if sim.shape[0] > sim.shape[1]:
            raise ValueError(f"recall@k needs a match for every row: got {tuple(sim.shape)}")
        positives = torch.eye(*sim.shape, dtype=torch.bool, device=sim.device)
    positives = torch.as_tensor(positives, dtype=torch.bool, device=sim.device)
    if positives.shape != sim.shape:
        raise ValueError(f"positives {tuple(positives.shape)} must match similarity {tuple(sim.shape)}")
    top = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (Q, k)
    return positives.gather(1, top).any(dim=1).float().mean().item()


# ----------------------------------------------------------------------------- classification


def _divide(num: float, den: float) -> float:
    return num / den if den else 0.0  # zero_division=0


def classification_report(y_true: Sequence[Hashable], y_pred: Sequence[Hashable],
                          labels: Sequence[Hashable] | None = None) -> dict:
    """Per-class precision/recall/f1-score/support, accuracy, macro and weighted averages (as scikit-learn).

    Keys are `str(label)`; as in scikit-learn, `labels` that leave out a seen class give "micro avg"
    instead of "accuracy". Single-label classes only.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    seen = set(y_true) | set(y_pred)
    labels = sorted(seen) if labels is None else list(labels)
    true_n, pred_n = Counter(y_true), Counter(y_pred)
    tp = Counter(t for t, p in zip(y_true, y_pred) if t == p)

    def row(tp: int, pred: int, true: int) -> dict:
        return {"precision": _divide(tp, pred), "recall": _divide(tp, true),
                "f1-score": _divide(2 * tp, pred + true), "support": float(true)}

    report = {str(c): row(tp[c], pred_n[c], true_n[c]) for c in labels}
    rows = list(report.values())
    support = np.array([r["support"] for r in rows])
    micro = row(sum(tp[c] for c in labels), sum(pred_n[c] for c in labels), sum(true_n[c] for c in labels))
    if set(labels) >= seen:
        report["accuracy"] = micro["precision"]  # every prediction is counted, so micro precision is accuracy
    else:
        report["micro avg"] = micro
    for name, weights in (("macro avg", None), ("weighted avg", support if support.sum() else None)):
        report[name] = {key: float(np.average([r[key] for r in rows], weights=weights))
                        for key in ("precision", "recall", "f1-score")}
        report[name]["support"] = float(support.sum())
    return report
