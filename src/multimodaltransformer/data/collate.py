"""From manifest examples to model batches: the prompt format, a cached dataset, collators.

Text layout (after any image tokens): <bos> prompt <sep> target <eos>. Loss is taken on
`target <eos>` only. Training batches are right-padded; generation prompts left-padded, so
every row's next token is at the last column.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..modalities.image import ImageProcessor, MediaError
from ..modalities.text import TextTokenizer
from ..models.multimodal import IGNORE_INDEX
from .manifest import DataError, Example


def encode_prompt(tok: TextTokenizer, prompt: str, text: str | None = None) -> list[int]:
    """<bos> [text] prompt <sep>: the part the model is conditioned on."""
    body = f"{text}\n{prompt}" if text else prompt
    return [tok.bos_id, *tok.encode(body), tok.sep_id]


def encode_example(tok: TextTokenizer, ex: Example, max_len: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) for one training example, at most `max_len` tokens."""
    prompt = encode_prompt(tok, ex.prompt, ex.text)
    target = [*tok.encode(ex.target or ""), tok.eos_id]
    ids = prompt + target
    labels = [IGNORE_INDEX] * len(prompt) + target
    truncated = len(ids) > max_len
    return ids[:max_len], labels[:max_len], truncated


class ManifestDataset(Dataset):
    """Examples with their images decoded once and cached as uint8 (several examples share one).

    With `pack`, an item is one image with all its examples as segments of one sequence
    (see `segment_mask`): the image is encoded once per step instead of once per example.
    """

    def __init__(self, examples: Sequence[Example], tokenizer: TextTokenizer,
                 image_processor: ImageProcessor | None, max_text_len: int,
                 skip_bad: bool = False, pack: bool = False) -> None:
        self.tokenizer, self.processor, self.max_text_len = tokenizer, image_processor, max_text_len
        self.images: dict[str, Tensor] = {}
        self.examples: list[Example] = []
        self.skipped: list[str] = []
        truncated = 0
        for ex in examples:
            try:
                self._image(ex)
            except DataError as e:
                if not skip_bad:
                    raise
                self.skipped.append(str(e))
                continue
            truncated += encode_example(tokenizer, ex, max_text_len)[2]
            self.examples.append(ex)
        if self.skipped:
            warnings.warn(f"skipped {len(self.skipped)} example(s) with unreadable media; first: {self.skipped[0]}",
                          stacklevel=2)
        if truncated:
            warnings.warn(f"{truncated} example(s) longer than {max_text_len} text tokens were truncated",
                          stacklevel=2)
        if not self.examples:
            raise DataError("no usable examples left")
        groups: dict[str, list[int]] = {}
        for i, ex in enumerate(self.examples):
            key = str(ex.image) if (pack and ex.image is not None) else f"#{i}"
            groups.setdefault(key, []).append(i)
        self.groups = list(groups.values())

    def _image(self, ex: Example) -> Tensor | None:
        if ex.image is None:
            return None
        if self.processor is None:
            raise DataError(f"{ex.source}: has an image but the model has no image encoder")
        key = str(ex.image)
        if key not in self.images:
            try:
                self.images[key] = self.processor.to_uint8(ex.image)
            except MediaError as e:
                raise DataError(f"{ex.source}: {e}") from e
        return self.images[key]

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids, labels, segments = [], [], []
        for k, j in enumerate(self.groups[i], 1):
            e_ids, e_labels, _ = encode_example(self.tokenizer, self.examples[j], self.max_text_len)
            ids += e_ids
            labels += e_labels
            segments += [k] * len(e_ids)
        first = self.examples[self.groups[i][0]]
        return {"input_ids": ids, "labels": labels, "segment_ids": segments, "image": self._image(first),
                "tasks": [self.examples[j].task for j in self.groups[i]]}


class TrainCollator:
    """Right-pads text (segment id 0 marks padding); stacks and normalises images."""

    def __init__(self, pad_id: int, image_processor: ImageProcessor | None) -> None:
        self.pad_id, self.processor = pad_id, image_processor

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        T = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), T), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), T), IGNORE_INDEX, dtype=torch.long)
        segments = torch.zeros((len(items), T), dtype=torch.long)
        for r, it in enumerate(items):
            n = len(it["input_ids"])
            ids[r, :n] = torch.tensor(it["input_ids"])
            labels[r, :n] = torch.tensor(it["labels"])
            segments[r, :n] = torch.tensor(it["segment_ids"])
        batch = {"input_ids": ids, "attention_mask": segments > 0, "labels": labels, "tasks": [it["tasks"] for it in items]}
        if int(segments.max()) > 1:  # packed rows: the model restarts positions per segment
            batch["segment_ids"] = segments
        images = [it["image"] for it in items]
        if any(im is not None for im in images):
            if any(im is None for im in images):
                raise DataError("a batch mixes examples with and without images; this model needs an image for each")
            batch["pixel_values"] = self.processor.normalize(torch.stack(images))
        return batch


def prompt_batch(tok: TextTokenizer, prompts: Sequence[str], texts: Sequence[str | None] | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids (B, T) and attention mask for generation."""
    encoded = [encode_prompt(tok, p, t) for p, t in zip(prompts, texts or [None] * len(prompts))]
    T = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), T), dtype=torch.bool)
    for r, e in enumerate(encoded):
        ids[r, T - len(e):] = torch.tensor(e)
        mask[r, T - len(e):] = True
    return ids, mask
