"""Objectives against naive re-implementations: per-position / per-row loops in fp32.

Tolerances: losses atol 1e-5 (contrastive 1e-6, as a loop over the same fp32 numbers); sampling
statistics over ~100k draws within 1-2 percentage points.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from multimodaltransformer.objectives import (IGNORE_INDEX, causal_lm_loss, classification_loss, contrastive_loss,
                                              hard_negatives, itm_loss, logit_scale_init, mask_tokens,
                                              masked_lm_loss)


def _naive_ce(rows: list[tuple[torch.Tensor, int]], smoothing: float = 0.0) -> torch.Tensor:
    """Mean over (logits (V,), target) pairs of -(1-s) log p[target] - s * mean(log p)."""
    losses = []
    for logits, target in rows:
        logp = logits.double().log_softmax(-1)
        losses.append(-(1 - smoothing) * logp[target] - smoothing * logp.mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_causal_lm_loss_matches_a_shifted_loop(smoothing):
    torch.manual_seed(0)
    B, T, V = 3, 6, 11
    logits, labels = torch.randn(B, T, V), torch.randint(0, V, (B, T))
    labels[0, :3] = IGNORE_INDEX  # a prompt
    labels[2, 4:] = IGNORE_INDEX  # padding
    rows = [(logits[b, t], labels[b, t + 1].item()) for b in range(B) for t in range(T - 1)
            if labels[b, t + 1] != IGNORE_INDEX]
    got = causal_lm_loss(logits, labels, smoothing)
    torch.testing.assert_close(got.double(), _naive_ce(rows, smoothing), atol=1e-5, rtol=1e-5)
    assert causal_lm_loss(logits.bfloat16(), labels).dtype == torch.float32  # fp32 CE


def test_losses_with_no_labels_are_zero_not_nan():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    loss = causal_lm_loss(logits, torch.full((2, 4), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_masked_lm_and_classification_losses_match_loops(smoothing):
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    labels[labels % 2 == 0] = IGNORE_INDEX
    rows = [(logits[b, t], labels[b, t].item()) for b in range(2) for t in range(5) if labels[b, t] != IGNORE_INDEX]
    torch.testing.assert_close(masked_lm_loss(logits, labels, smoothing).double(), _naive_ce(rows, smoothing),
                               atol=1e-5, rtol=1e-5)
    logits, labels = torch.randn(8, 4), torch.randint(0, 4, (8,))
    torch.testing.assert_close(classification_loss(logits, labels, smoothing),
                               F.cross_entropy(logits, labels, label_smoothing=smoothing), atol=1e-6, rtol=1e-6)


def test_itm_loss_matches_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(10, 2), torch.randint(0, 2, (10,))
    torch.testing.assert_close(itm_loss(logits, labels), F.cross_entropy(logits, labels), atol=1e-6, rtol=1e-6)


def test_mask_tokens_statistics_and_labels():
    B, T, V, MASK = 64, 2048, 50, 99
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (B, T), generator=g)
    special = torch.zeros(B, T, dtype=torch.bool)
    special[:, 0] = special[:, -100:] = True  # bos and padding
    special[::3, 7] = True
    original = ids.clone()
    masked, labels = mask_tokens(ids, mask_id=MASK, vocab_size=V, special=special, prob=0.15, generator=g)
    assert torch.equal(ids, original)  # input untouched
    chosen = labels != IGNORE_INDEX
    assert not (chosen & special).any()
    assert torch.equal(masked[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing outside the chosen changes
    assert abs(chosen.sum().item() / (~special).sum().item() - 0.15) < 0.005
    n = chosen.sum().item()
    to_mask = (masked == MASK) & chosen
    unchanged = (masked == ids) & chosen
    changed = chosen & ~to_mask & ~unchanged
    assert abs(to_mask.sum().item() / n - 0.8) < 0.01
    # a random replacement lands on the original id 1 time in V: count it among the unchanged
    assert abs(changed.sum().item() / n - 0.1 * (1 - 1 / V)) < 0.01
    assert abs(unchanged.sum().item() / n - 0.1 * (1 + 1 / V)) < 0.01
    assert masked[changed].min() >= 0 and masked[changed].max() < V

    def seeded():
        return mask_tokens(original, mask_id=MASK, vocab_size=V, special=special,
                           generator=torch.Generator().manual_seed(1))

    assert all(torch.equal(x, y) for x, y in zip(seeded(), seeded()))  # a seeded generator repeats
    with pytest.raises(ValueError, match="mask prob"):
        mask_tokens(ids, mask_id=MASK, vocab_size=V, special=special, prob=1.5)


def _naive_contrastive(img, txt, scale, same=None):
    """Per-row log-softmax loops over the (B, B) similarity, matches other than the diagonal left out."""
    img, txt = F.normalize(img.double(), dim=-1), F.normalize(txt.double(), dim=-1)
    B = img.shape[0]
    s = math.exp(min(scale, math.log(100)))
    sim = [[s * float(img[i] @ txt[j]) for j in range(B)] for i in range(B)]
    keep = [[i == j or same is None or not bool(same[i, j]) for j in range(B)] for i in range(B)]

    def row_loss(values, allowed, target):
        vals = torch.tensor([v for v, a in zip(values, allowed) if a], dtype=torch.float64)
        pos = sum(allowed[:target])
        return -(vals[pos] - vals.logsumexp(0))

    rows = [row_loss(sim[i], keep[i], i) for i in range(B)]
    cols = [row_loss([sim[i][j] for i in range(B)], [keep[i][j] for i in range(B)], j) for j in range(B)]
    return (torch.stack(rows).mean() + torch.stack(cols).mean()) / 2


def test_contrastive_loss_matches_row_and_column_loops():
    torch.manual_seed(0)
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    scale = torch.tensor(logit_scale_init(0.07))
    torch.testing.assert_close(contrastive_loss(img, txt, scale).double(), _naive_contrastive(img, txt, scale.item()),
                               atol=1e-6, rtol=0)
    same = torch.zeros(6, 6, dtype=torch.bool)
    same[0, 3] = same[3, 0] = True  # pairs 0 and 3 have the same caption
    same[2, 5] = True  # and a one-sided mark
    torch.testing.assert_close(contrastive_loss(img, txt, scale, same).double(),
                               _naive_contrastive(img, txt, scale.item(), same), atol=1e-6, rtol=0)
    assert not torch.allclose(contrastive_loss(img, txt, scale, same), contrastive_loss(img, txt, scale))


def test_contrastive_logit_scale_is_clamped_to_100():
    torch.manual_seed(0)
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    at_max = contrastive_loss(img, txt, torch.tensor(math.log(100)))
    torch.testing.assert_close(contrastive_loss(img, txt, torch.tensor(9.0)), at_max, atol=0, rtol=0)
    scale = torch.tensor(9.0, requires_grad=True)
    contrastive_loss(img, txt, scale).backward()
    assert scale.grad.item() == 0.0  # clamped: no gradient pushes it further
    assert math.isclose(logit_scale_init(0.07), math.log(1 / 0.07))
    assert math.isclose(logit_scale_init(1.0), 0.0)


def test_hard_negatives_never_return_matches():
    g = torch.Generator().manual_seed(0)
    B = 8
    same = torch.zeros(B, B, dtype=torch.bool)
    same[1, 2] = same[2, 1] = True
    same[4, 5] = True
    for _ in range(200):
        sim = torch.randn(B, B, generator=g) * 3
        neg_text, neg_image = hard_negatives(sim, same, g)
        assert neg_text.shape == neg_image.shape == (B,)
        rows = torch.arange(B)
        assert not (neg_text == rows).any() and not (neg_image == rows).any()
        assert not same[rows, neg_text].any()  # image i's negative text is no match of it
        assert not same[neg_image, rows].any()  # text j's negative image is no match of it


def test_hard_negatives_follow_the_similarity():
    B = 5
    sim = torch.zeros(B, B)
    sim[0, 0], sim[0, 3] = 100.0, 50.0  # image 0: the diagonal is highest, text 3 the hardest negative
    sim[2, 4] = 60.0  # text 4: image 2 the hardest negative
    same = torch.zeros(B, B, dtype=torch.bool)
    same[1, 4] = True
    sim[1, 4] = 80.0  # a marked match is never picked, however similar
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        neg_text, neg_image = hard_negatives(sim, same, g)
        assert neg_text[0] == 3 and neg_image[4] == 2 and neg_text[1] != 4
    # sampled in proportion to softmax: a flat row is close to uniform over the 4 others
    counts = torch.bincount(torch.stack([hard_negatives(torch.zeros(B, B), None, g)[0] for _ in range(4000)])[:, 0],
                            minlength=B)
    assert counts[0] == 0 and ((counts[1:] / 4000 - 0.25).abs() < 0.03).all()


def test_hard_negatives_errors_and_fallback():
    with pytest.raises(ValueError, match="at least 2"):
        hard_negatives(torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"\(B, B\)"):
        hard_negatives(torch.zeros(2, 3))
    # every caption identical: no true negative exists; fall back to any other column
    neg_text, neg_image = hard_negatives(torch.randn(3, 3), torch.ones(3, 3, dtype=torch.bool))
    assert not (neg_text == torch.arange(3)).any() and not (neg_image == torch.arange(3)).any()
    sim = torch.randn(3, 3, requires_grad=True)
    assert not hard_negatives(sim)[0].requires_grad


def test_drop_inputs_masks_only_target_tokens_at_the_rate():
    from multimodaltransformer.objectives import drop_inputs

    ids = torch.randint(5, 50, (64, 40))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 20:] = ids[:, 20:]  # the target half
    out = drop_inputs(ids, labels, mask_id=1, prob=0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :20], ids[:, :20])  # prompts are never touched
    dropped = (out[:, 20:] == 1).float().mean().item()
    assert 0.25 < dropped < 0.35
    assert torch.equal(out[out != 1], ids[out != 1])
    assert torch.equal(drop_inputs(ids, labels, mask_id=1, prob=0.0), ids)
    with pytest.raises(ValueError):
        drop_inputs(ids, labels, mask_id=1, prob=1.0)


def test_example_weights_count_every_packed_example_once():
    from multimodaltransformer.objectives import IGNORE_INDEX as I, causal_lm_loss, count_examples, example_weights

    labels = torch.tensor([[I, I, 5, 6, I, I, 7, I], [I, 3, 4, 5, 6, I, I, I]])
    segments = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 0, 0, 0]])
    w = example_weights(labels, segments)
    assert w[0, 2:4].tolist() == [0.5, 0.5] and w[0, 6] == 1.0 and w[1, 1:5].tolist() == [0.25] * 4
    assert count_examples(labels, segments) == 3 and count_examples(labels) == 2
    logits = torch.randn(2, 8, 10)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 10), labels[:, 1:].reshape(-1),
                                           ignore_index=I, reduction="none").view(2, 7)
    # the mean of the three examples' own mean losses
    expected = (ce[0, 1:3].mean() + ce[0, 5] + ce[1, 0:4].mean()) / 3
    torch.testing.assert_close(causal_lm_loss(logits, labels, 0.0, w), expected)


def test_loss_weighting_is_checked():
    from multimodaltransformer.train.tasks import TaskConfig

    with pytest.raises(ValueError, match="loss_weighting"):
        TaskConfig(name="x", loss_weighting="rows")
    with pytest.raises(ValueError, match="lm objective"):
        TaskConfig(name="x", objective="contrastive", loss_weighting="example")
