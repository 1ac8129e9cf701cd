"""Zero-shot classification and text-image retrieval with a dual encoder (CLIP-style).

Works with any model exposing `encode_text(input_ids, attention_mask)` and
`encode_image(pixel_values)` plus a `tokenizer` (HF `tokenizers.Tokenizer`); embeddings are
L2-normalised here, so scores are cosine similarities. Legend: I images, T texts, K classes, P dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import recall_at_k  # retrieval scores live with the other metrics

__all__ = ["embed_images", "embed_texts", "recall_at_k", "retrieval_similarity", "zero_shot_classify"]


def _tokenize(tokenizer: Any, texts: Sequence[str], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    encoded = [e.ids for e in tokenizer.encode_batch(list(texts))]  # with the tokenizer's own specials
    T = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), T), dtype=torch.long)
    for r, e in enumerate(encoded):
        ids[r, :len(e)] = torch.tensor(e)
        mask[r, :len(e)] = 1
    return ids, mask


@torch.no_grad()
def embed_texts(model: Any, texts: Sequence[str], tokenizer: Any | None = None) -> Tensor:
    """Normalised text embeddings (T, P)."""
    tokenizer = tokenizer or model.tokenizer
    if tokenizer is None:
        raise ValueError("no tokenizer: pass one, or load a model directory that has tokenizer.json")
    ids, mask = _tokenize(tokenizer, texts)
    device = next(model.parameters()).device
    return F.normalize(model.encode_text(ids.to(device), attention_mask=mask.to(device)), dim=-1)


@torch.no_grad()
def embed_images(model: Any, pixel_values: Tensor) -> Tensor:
    """Normalised image embeddings (I, P)."""
    return F.normalize(model.encode_image(pixel_values.to(next(model.parameters()).device)), dim=-1)


@torch.no_grad()
def zero_shot_classify(model: Any, pixel_values: Tensor, class_names: Sequence[str],
                       template: str = "a photo of a {}.", tokenizer: Any | None = None) -> Tensor:
    """Class probabilities (I, K): softmax over scaled cosine similarity to one prompt per class."""
    text = embed_texts(model, [template.format(c) for c in class_names], tokenizer)
    scale = model.logit_scale.exp() if hasattr(model, "logit_scale") else torch.tensor(100.0)
    return (scale * embed_images(model, pixel_values) @ text.t()).softmax(dim=-1)


@torch.no_grad()
def retrieval_similarity(model: Any, texts: Sequence[str], pixel_values: Tensor,
                         tokenizer: Any | None = None) -> Tensor:
    """Cosine similarities (T, I) between every text and every image."""
    return embed_texts(model, texts, tokenizer) @ embed_images(model, pixel_values).t()
