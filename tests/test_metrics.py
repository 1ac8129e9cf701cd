import math

import pytest

from multimodaltransformer.metrics import bleu, exact_match, normalize_answer


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
