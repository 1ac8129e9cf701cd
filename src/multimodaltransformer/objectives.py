"""Training objectives as plain functions: language modelling, masked LM, contrastive, matching, classification.

Every loss is computed in fp32 (logits may arrive in bf16) and ignores labels equal to IGNORE_INDEX.
Legend: B batch, T tokens, V vocabulary, P embedding dim, N rows, K classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt, padding, the image prefix)
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its learned temperature so logits stay <= 100 x cosine


def _cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float) -> Tensor:
    """Mean CE over non-ignored rows; logits (N, V), labels (N,). An all-ignored batch gives 0
    (with a graph), not NaN, so a stream whose batch happens to have no labels does no harm."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX,
                            label_smoothing=label_smoothing, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def causal_lm_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0,
                   weights: Tensor | None = None) -> Tensor:
    """Next-token loss. logits (B, T, V) and labels (B, T) both aligned with input_ids: position t
    predicts labels[t + 1], so the shift happens here. Scalar, mean over non-ignored targets, or
    with `weights` (B, T), aligned with labels, the weighted mean (see `example_weights`)."""
    V = logits.shape[-1]
    if weights is None:
        return _cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), label_smoothing)
    target, w = labels[:, 1:].reshape(-1), weights[:, 1:].reshape(-1).float()
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), target, ignore_index=IGNORE_INDEX,
                         label_smoothing=label_smoothing, reduction="none")
    return (ce * w).sum() / w[target != IGNORE_INDEX].sum().clamp(min=1e-6)


def example_weights(labels: Tensor, segment_ids: Tensor | None = None) -> Tensor:
    """Weights (B, T) that make every example count once in `causal_lm_loss`, however many tokens
    its target has: 1 / (the example's target count) on its targets, 0 elsewhere. An example is a
    row, or with `segment_ids` (B, T) (packed rows, 0 = padding) one segment of a row. Under the
    plain token mean a one-word answer weighs as little as one word of a caption beside it."""
    target = labels != IGNORE_INDEX
    target[:, 0] = False  # labels[:, 0] is never predicted (nothing comes before it)
    seg = segment_ids if segment_ids is not None else target.long()
    key, K = _example_keys(seg)
    counts = torch.zeros(seg.shape[0] * K, device=seg.device).index_add_(
        0, key[target], torch.ones(int(target.sum()), device=seg.device))
    return torch.where(target, 1.0 / counts[key].clamp(min=1), 0.0)


def count_examples(labels: Tensor, segment_ids: Tensor | None = None) -> int:
    """How many examples (rows, or segments of packed rows) have at least one predicted target."""
    target = labels[:, 1:] != IGNORE_INDEX
    if segment_ids is None:
        return int(target.any(1).sum())
    return int(_example_keys(segment_ids[:, 1:])[0][target].unique().numel())


def _example_keys(seg: Tensor) -> tuple[Tensor, int]:
    """One id per (row, segment) for segment ids (B, T), and K, the segments a row can have."""
    K = int(seg.max()) + 1
    return torch.arange(seg.shape[0], device=seg.device)[:, None] * K + seg, K


def masked_lm_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """BERT's loss: logits (B, T, V), labels (B, T) from `mask_tokens` (no shift). Scalar."""
    return _cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), label_smoothing)


def mask_tokens(input_ids: Tensor, *, mask_id: int, vocab_size: int, special: Tensor, prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT masking (Devlin et al. 2019). input_ids (B, T); special (B, T) bool, True = never chosen
    (padding, bos, sep). Each other token is chosen with `prob`; of the chosen, 80% become
    `mask_id`, 10% a random id in [0, vocab_size), 10% stay as they are (so the model cannot
    trust unmasked tokens blindly). Returns (masked ids (B, T), labels (B, T)): labels hold the
    original id at chosen positions and IGNORE_INDEX elsewhere. input_ids is not modified."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mask prob must be in [0, 1], got {prob}")
    if special.shape != input_ids.shape:
        raise ValueError(f"special {tuple(special.shape)} must match input_ids {tuple(input_ids.shape)}")
    device = input_ids.device
    chosen = (torch.rand(input_ids.shape, generator=generator, device=device) < prob) & ~special.bool()
    action = torch.rand(input_ids.shape, generator=generator, device=device)  # 80 / 10 / 10 split
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device,
                               dtype=input_ids.dtype)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def drop_inputs(input_ids: Tensor, labels: Tensor, *, mask_id: int, prob: float,
                generator: torch.Generator | None = None) -> Tensor:
    """Word dropout (Bowman et al. 2016) on the target side of a causal-LM batch: each input token
    that is also a target (labels != IGNORE_INDEX) becomes `mask_id` with `prob`; labels stay. The
    next word must then come from the image and the position more than from the words before it,
    which weakens a language prior such as "red is never followed by circle". Returns new ids."""
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"input dropout must be in [0, 1), got {prob}")
    chosen = (torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < prob) & \
        (labels != IGNORE_INDEX)
    return input_ids.masked_fill(chosen, mask_id)


def logit_scale_init(temperature: float = 0.07) -> float:
    """Initial value of CLIP's learned log scale: ln(1 / temperature)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return math.log(1.0 / temperature)


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, same: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE (CLIP). image_emb, text_emb (B, P), row i of each a matching pair;
    logit_scale a scalar log scale (clamped to <= ln 100, as CLIP does). Scalar loss:
    mean of CE over rows (image -> texts) and over columns (text -> images), diagonal targets.

    same (B, B) bool, optional: [i, j] True marks image i and text j as also matching (identical
    captions); those off-diagonal pairs are removed from the softmax denominators rather than
    pushed apart as negatives.
    """
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    scale = logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * img @ txt.T  # (B, B): image i x text j
    B = logits.shape[0]
    targets = torch.arange(B, device=logits.device)
    if same is not None:
        off_diagonal = same.bool() & ~torch.eye(B, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(off_diagonal, float("-inf"))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@torch.no_grad()
def hard_negatives(similarity: Tensor, same: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """ALBEF's hard-negative mining for image-text matching (Li et al. 2021).

    similarity (B, B): image i x text j (already scaled). Each image draws one negative text with
    probability softmax(similarity row) over its non-matching texts (the diagonal and `same`
    excluded), and each text one negative image likewise from its column: similar-but-wrong pairs
    are the informative ones. Returns (neg_text_for_image (B,), neg_image_for_text (B,)) indices.
    A row where every other column is marked `same` has no true negative; it falls back to a
    uniform draw among the other columns.
    """
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"similarity must be (B, B), got {tuple(similarity.shape)}")
    B = similarity.shape[0]
    if B < 2:
        raise ValueError(f"hard negatives need a batch of at least 2 pairs, got {B}")
    eye = torch.eye(B, dtype=torch.bool, device=similarity.device)
    excluded = eye if same is None else eye | same.bool()

    def draw(sim: Tensor, excluded: Tensor) -> Tensor:
        # rows with nothing left fall back to "anything but the diagonal" (still >= 1 column, B >= 2)
        empty = excluded.all(dim=1, keepdim=True)
        excluded = torch.where(empty, eye, excluded)
        weights = sim.float().masked_fill(excluded, float("-inf")).softmax(dim=1)  # (B, B)
        return torch.multinomial(weights, 1, generator=generator).squeeze(1)  # (B,)

    return draw(similarity, excluded), draw(similarity.T, excluded.T)


def itm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Image-text matching: logits (N, 2), labels (N,) with 1 = the pair matches. Scalar mean CE."""
    return _cross_entropy(logits, labels, 0.0)


def classification_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """logits (N, K), labels (N,) class indices (IGNORE_INDEX skipped). Scalar mean CE."""
    return _cross_entropy(logits, labels, label_smoothing)
