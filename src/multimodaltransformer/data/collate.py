"""From manifest examples to model batches: the prompt format, a cached dataset, collators.

Text layout (after any image tokens): <bos> prompt <sep> target <eos>. Loss is taken on
`target <eos>` only. Training batches are right-padded; generation prompts left-padded, so
every row's next token is at the last column.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..modalities.image import ImageProcessor, MediaError
from ..modalities.text import TextTokenizer
from ..objectives import IGNORE_INDEX
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


class ImageCache:
    """Images decoded once and kept as uint8 (several examples share one image)."""

    def __init__(self, processor: ImageProcessor | None) -> None:
        self.processor = processor
        self.images: dict[str, Tensor] = {}

    def __call__(self, ex: Example) -> Tensor | None:
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


def pair_text(ex: Example) -> str:
    """The text side of an image-text pair (retrieval, contrastive, matching): the target, else `text`."""
    text = ex.target if ex.target else ex.text
    if not text:
        raise DataError(f"{ex.source}: an image-text pair needs a target or text")
    return text


class ExampleDataset(Dataset):
    """One item per example for the non-generative objectives, images cached:
    "pair": image + <bos> text <sep> (contrastive / matching); "classify": image (or none) + the
    prompt, and the label index; "text": <bos> text <eos>, the whole text of the example (masked LM)."""

    def __init__(self, examples: Sequence[Example], tokenizer: TextTokenizer, image_processor: ImageProcessor | None,
                 max_text_len: int, kind: str, labels: Mapping[str, Sequence[str]] | None = None,
                 skip_bad: bool = False) -> None:
        self.tokenizer, self.kind, self.max_text_len = tokenizer, kind, max_text_len
        self.labels = {task: {label: i for i, label in enumerate(ls)} for task, ls in (labels or {}).items()}
        self.image = ImageCache(image_processor)
        self.examples, self.skipped = [], []
        for ex in examples:
            try:
                self.image(ex)
                if kind == "pair":
                    if ex.image is None:
                        raise DataError(f"{ex.source}: an image-text pair needs an image")
                    pair_text(ex)
                if kind == "classify" and ex.target not in self.labels.get(ex.task, {}):
                    raise DataError(f"{ex.source}: label {ex.target!r} is not one of task {ex.task!r}'s "
                                    f"{sorted(self.labels.get(ex.task, {}))}")
            except DataError as e:
                if not skip_bad:
                    raise
                self.skipped.append(str(e))
                continue
            self.examples.append(ex)
        if self.skipped:
            warnings.warn(f"skipped {len(self.skipped)} example(s); first: {self.skipped[0]}", stacklevel=2)
        if not self.examples:
            raise DataError("no usable examples left")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex, tok = self.examples[i], self.tokenizer
        if self.kind == "pair":
            ids = [tok.bos_id, *tok.encode(pair_text(ex)), tok.sep_id]
        elif self.kind == "classify":
            ids = encode_prompt(tok, ex.prompt, ex.text)
        else:
            body = " ".join(s for s in (ex.text, ex.prompt, ex.target) if s)
            ids = [tok.bos_id, *tok.encode(body), tok.eos_id]
        ids = ids[:self.max_text_len - 1] + ids[-1:] if len(ids) > self.max_text_len else ids  # keep the last token
        item = {"input_ids": ids, "image": self.image(ex), "tasks": [ex.task]}
        if self.kind == "classify":
            item["label"] = self.labels[ex.task][ex.target]
        return item


def collate_examples(items: list[dict[str, Any]], pad_id: int, processor: ImageProcessor | None) -> dict[str, Any]:
    """Right-padded input_ids / attention_mask, pixel_values when every item has an image, labels."""
    T = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), T), dtype=torch.bool)
    for r, it in enumerate(items):
        ids[r, :len(it["input_ids"])] = torch.tensor(it["input_ids"])
        mask[r, :len(it["input_ids"])] = True
    batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "tasks": [it["tasks"] for it in items]}
    images = [it["image"] for it in items]
    if all(im is not None for im in images):
        batch["pixel_values"] = processor.normalize(torch.stack(images))
    elif any(im is not None for im in images):
        raise DataError("a batch mixes examples with and without images; keep them in separate task streams")
    if "label" in items[0]:
        batch["class_labels"] = torch.tensor([it["label"] for it in items])
    return batch


class ManifestDataset(Dataset):
    """Examples with their images decoded once and cached as uint8 (several examples share one).

    With `pack`, an item is one image with all its examples as segments of one sequence
    (see `segment_mask`): the image is encoded once per step instead of once per example.
    """

    def __init__(self, examples: Sequence[Example], tokenizer: TextTokenizer,
                 image_processor: ImageProcessor | None, max_text_len: int,
                 skip_bad: bool = False, pack: bool = False) -> None:
        self.tokenizer, self.processor, self.max_text_len = tokenizer, image_processor, max_text_len
        self._image = ImageCache(image_processor)
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
                raise DataError("a batch mixes examples with and without images; keep them in separate task streams")
            batch["pixel_values"] = self.processor.normalize(torch.stack(images))
        return batch


def prompt_batch(tok: TextTokenizer, prompts: Sequence[str], texts: Sequence[str | None] | None = None,
                 max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids (B, T) and attention mask for generation.

    A prompt longer than `max_len` keeps its <bos> and its last max_len - 1 tokens (the
    question and the separator sit at the end), with a warning.
    """
    encoded = [encode_prompt(tok, p, t) for p, t in zip(prompts, texts or [None] * len(prompts))]
    if max_len is not None and any(len(e) > max_len for e in encoded):
        warnings.warn(f"{sum(len(e) > max_len for e in encoded)} prompt(s) longer than {max_len} tokens were "
                      "cut from the left", stacklevel=2)
        encoded = [e if len(e) <= max_len else e[:1] + e[len(e) - max_len + 1:] for e in encoded]
    T = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), T), dtype=torch.bool)
    for r, e in enumerate(encoded):
        ids[r, T - len(e):] = torch.tensor(e)
        mask[r, T - len(e):] = True
    return ids, mask
