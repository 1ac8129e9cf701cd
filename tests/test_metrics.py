import math
import random

import numpy as np
import pytest
import torch

from multimodaltransformer.metrics import (bleu, cer, cider, cider_per_sentence, classification_report, exact_match,
                                           normalize_answer, recall_at_k, rouge_l, vqa_accuracy, vqa_normalize, wer)


def test_normalize_and_exact_match():
    assert normalize_answer("  A Red, circle! ") == "a red circle"
    assert exact_match(["Yes.", "two", "left"], ["yes", "three", "left"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        exact_match(["a"], [])


def test_bleu_perfect_and_disjoint():
    hyp = ["a small red circle left of a blue square"]
    assert bleu(hyp, [hyp]) == pytest.approx(100.0)
    assert bleu(["x y z w"], [["a b c d"]]) == 0.0


def test_bleu_hand_computed():
    # hyp 6 tokens vs ref 7: p1=5/6, p2=3/5, p3=2/4, p4=1/3, brevity penalty exp(1 - 7/6)
    p = [5 / 6, 3 / 5, 2 / 4, 1 / 3]
    expected = 100 * math.exp(1 - 7 / 6) * math.exp(sum(math.log(x) for x in p) / 4)
    assert bleu(["the cat sat on a mat"], [["the cat sat on the red mat"]]) == pytest.approx(expected, rel=1e-9)


def test_bleu_exp_smoothing_of_zero_counts():
    # p1=4/6, p2=1/5, p3=0/4 -> 1/(2*4), p4=0/3 -> 1/(4*3) (sacrebleu's 'exp' smoothing)
    p = [4 / 6, 1 / 5, 1 / 8, 1 / 12]
    expected = 100 * math.exp(sum(math.log(x) for x in p) / 4)
    assert bleu(["the cat sat on a mat"], [["the cat is on the mat"]]) == pytest.approx(expected, rel=1e-9)


def test_bleu_uses_closest_reference_and_clipping():
    assert bleu(["the the the the"], [["the cat"], ["the the the the"]]) == pytest.approx(100.0)
    low = bleu(["the the the the"], [["the cat the dog"]])
    assert 0 < low < 20


# ----------------------------------------------------------------------------- generated corpora

VOCAB = [f"w{i}" for i in range(30)]


def _sentence(rng: random.Random, lo: int = 1, hi: int = 12) -> str:
    words = VOCAB[:rng.randint(6, 30)]  # a smaller vocabulary gives more n-gram matches
    return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))


def _hypothesis(rng: random.Random, refs: list[str]) -> str:
    """An edge case (empty, single word, longer than the references) or a perturbed reference."""
    kind = rng.random()
    if kind < 0.05:
        return ""
    if kind < 0.10:
        return rng.choice(VOCAB)
    if kind < 0.20:
        return _sentence(rng, 13, 20)
    words = rng.choice(refs).split()
    return " ".join(rng.choice(VOCAB) if rng.random() < 0.3 else w for w in words)


def _corpus(seed: int, n_refs: int | None = None) -> tuple[list[str], list[list[str]]]:
    """50-200 hypotheses, each with 1-5 references (or exactly `n_refs`), from a seeded RNG."""
    rng = random.Random(seed)
    refs = [[_sentence(rng) for _ in range(n_refs or rng.randint(1, 5))] for _ in range(rng.randint(50, 200))]
    return [_hypothesis(rng, r) for r in refs], refs


def _coco(hyps: list[str], refs: list[list[str]]) -> tuple[dict, dict]:
    return {i: r for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}


EDGE_CASES = [
    (["", "w1 w2", ""], [["w1 w2 w3"], ["w1 w2"], [""]]),             # empty hypothesis (and reference)
    (["w1 w2 w3 w4 w5 w6 w7 w8 w9 w1 w2"], [["w1 w2", "w3 w4 w5"]]),  # longer than the references
    (["w1", "w2", "w3"], [["w1"], ["w2 w3"], ["w4", "w3"]]),          # single words
]


@pytest.mark.parametrize("seed", range(4))
def test_bleu_matches_sacrebleu(seed):
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps, refs = _corpus(seed, n_refs=seed % 4 + 1)
    streams = [list(s) for s in zip(*refs)]
    assert bleu(hyps, streams) == pytest.approx(sacrebleu.corpus_bleu(hyps, streams, tokenize="none").score, abs=0.01)


@pytest.mark.parametrize("hyps,refs", EDGE_CASES)
def test_bleu_edge_cases_match_sacrebleu(hyps, refs):
    sacrebleu = pytest.importorskip("sacrebleu")
    streams = [[r[0] for r in refs]]
    assert bleu(hyps, streams) == pytest.approx(sacrebleu.corpus_bleu(hyps, streams, tokenize="none").score, abs=0.01)
    assert bleu([""], [[""]]) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_cider_matches_pycocoevalcap(seed):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider

    hyps, refs = _corpus(seed)
    score, per_sentence = Cider().compute_score(*_coco(hyps, refs))
    assert cider(hyps, refs) == pytest.approx(score, abs=1e-4)
    assert cider_per_sentence(hyps, refs) == pytest.approx(list(per_sentence), abs=1e-4)


@pytest.mark.parametrize("hyps,refs", EDGE_CASES)
def test_cider_and_rouge_edge_cases_match_pycocoevalcap(hyps, refs):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = _coco(hyps, refs)
    assert cider(hyps, refs) == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-4)
    assert rouge_l(hyps, refs) == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)


def test_cider_hand_computed():
    # one image: log(1 document) = 0 gives every n-gram zero weight
    assert cider(["w1 w2"], [["w1 w2"]]) == 0.0
    # two images, identical hypothesis and single reference: cosine 1 for orders 1-2, no 3-/4-grams
    # -> 10 * (1 + 1 + 0 + 0) / 4 = 5 each
    assert cider_per_sentence(["w1 w2", "w3 w4"], [["w1 w2"], ["w3 w4"]]) == pytest.approx([5.0, 5.0])
    with pytest.raises(ValueError):
        cider(["w1"], [[]])


@pytest.mark.parametrize("seed", range(3))
def test_rouge_l_matches_pycocoevalcap(seed):
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.rouge.rouge import Rouge

    hyps, refs = _corpus(seed)
    assert rouge_l(hyps, refs) == pytest.approx(Rouge().compute_score(*_coco(hyps, refs))[0], abs=1e-12)


def test_rouge_l_hand_computed():
    # LCS("a b c d", "a c d e") = 3: P = R = 3/4, so F = 3/4 whatever beta
    assert rouge_l(["a b c d"], [["a c d e"]]) == pytest.approx(0.75)
    # P = 2/2, R = 2/4: F = (1 + 1.44) * 1 * 0.5 / (0.5 + 1.44)
    assert rouge_l(["a b"], [["a x b y"]]) == pytest.approx(2.44 * 0.5 / 1.94)


@pytest.mark.parametrize("seed", range(4))
def test_wer_and_cer_match_jiwer(seed):
    jiwer = pytest.importorskip("jiwer")
    hyps, refs = _corpus(seed)
    first = [r[0] for r in refs]
    assert wer(hyps, first) == jiwer.wer(first, hyps)
    assert cer(hyps, first) == jiwer.cer(first, hyps)


def test_wer_hand_computed_and_edge_cases():
    # one substitution + one deletion over 4 + 2 reference words
    assert wer(["a x c", "d"], ["a b c d", "d e"]) == pytest.approx(3 / 6)
    assert wer([""], ["a b"]) == 1.0
    assert wer(["a b"], [""]) == 2.0  # jiwer: no reference words -> the number of insertions
    assert cer(["abd"], ["abc"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("text,expected", [
    ("Two.", "2"), ("The dog", "dog"), ("none", "0"), ("yes!", "yes"), ("dont", "don't"),
    ("1,000", "1000"), ("black/white", "black white"), ("black / white", "black white"),
    ("3.5", "3.5"), ("x-ray", "x ray"), ("  A\tRed\nBall ", "red ball"), ("it's", "it's"),
])
def test_vqa_normalize_follows_the_official_script(text, expected):
    assert vqa_normalize(text) == expected


def test_vqa_accuracy_hand_computed():
    def humans(k: int) -> list[str]:
        return ["two"] * k + ["three"] * (10 - k)

    # k of 10 humans agree: the k left-out subsets see k-1 matches, the others k
    for k, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        assert vqa_accuracy(["2"], [humans(k)]) == pytest.approx(expected)
    assert vqa_accuracy(["Two.", "a cat"], ["2", "dog"]) == 0.5  # single reference: normalised exact match


def _official_vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The official vqaEval.py loop: each answer is a dict, and `!=` leaves exactly one of them out."""
    gts = [{"answer_id": i, "answer": vqa_normalize(a)} for i, a in enumerate(answers)]
    res = vqa_normalize(prediction)
    accs = []
    for datum in gts:
        others = [item for item in gts if item != datum]
        accs.append(min(1, float(len([item for item in others if item["answer"] == res])) / 3))
    return float(sum(accs)) / len(accs)


@pytest.mark.parametrize("seed", range(3))
def test_vqa_accuracy_matches_official_loop(seed):
    rng = random.Random(seed)
    pool = ["yes", "no", "2", "two", "the dog", "Dog.", "red", "blue", "3"]
    answers = [[rng.choice(pool[:rng.randint(2, 9)]) for _ in range(10)] for _ in range(rng.randint(50, 200))]
    preds = [rng.choice(pool) for _ in answers]
    expected = sum(_official_vqa_accuracy(p, a) for p, a in zip(preds, answers)) / len(preds)
    assert vqa_accuracy(preds, answers) == pytest.approx(expected, abs=1e-12)


def test_recall_at_k_hand_computed():
    sim = torch.tensor([[0.9, 0.1, 0.0],
                        [0.8, 0.7, 0.1],    # correct item second
                        [0.5, 0.6, 0.2]])   # correct item third
    assert recall_at_k(sim, k=1) == pytest.approx(1 / 3)
    assert recall_at_k(sim, k=2) == pytest.approx(2 / 3)
    assert recall_at_k(sim.numpy(), k=5) == 1.0
    positives = np.array([[0, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=bool)
    assert recall_at_k(sim, k=1, positives=positives) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(3, 2))


@pytest.mark.parametrize("seed", range(3))
def test_recall_at_k_matches_naive_ranking(seed):
    rng = np.random.default_rng(seed)
    sim = rng.standard_normal((60, 80))
    positives = rng.random((60, 80)) < 0.05
    order = np.argsort(-sim, axis=1)  # (Q, G) gallery indices, most similar first
    for k in (1, 5, 10):
        top = order[:, :k]
        assert recall_at_k(sim, k) == pytest.approx(np.mean([i in top[i] for i in range(60)]))
        expected = np.mean([positives[i, top[i]].any() for i in range(60)])
        assert recall_at_k(torch.from_numpy(sim), k, positives=positives) == pytest.approx(expected)


def _assert_report_equal(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        if isinstance(value, dict):
            assert list(ours[key]) == list(value)
            assert ours[key] == pytest.approx(value, abs=1e-12, rel=0), key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-12, rel=0), key


@pytest.mark.parametrize("seed", range(4))
def test_classification_report_matches_sklearn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = random.Random(seed)
    n = rng.randint(50, 200)
    y_true = [rng.randint(0, 6) for _ in range(n)]
    y_pred = [rng.choice([0, 1, 2, 3, 4, 5, 8]) for _ in range(n)]  # 6 never predicted, 8 never true
    for labels in (None, [0, 1, 2, 3], [9, 0, 1, 2, 3, 4, 5, 6, 8]):
        expected = sk.classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
        _assert_report_equal(classification_report(y_true, y_pred, labels), expected)
    words = ["cat", "dog", "bird"]
    y_true, y_pred = [rng.choice(words) for _ in range(n)], [rng.choice(words[:2]) for _ in range(n)]
    expected = sk.classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    _assert_report_equal(classification_report(y_true, y_pred), expected)
