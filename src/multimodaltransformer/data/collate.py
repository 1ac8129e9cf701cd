"""From manifest examples to model batches: the prompt format, a cached dataset, collators.

Text layout (after any media tokens): <bos> prompt <sep> target <eos>. Loss is taken on
`target <eos>` only. Training batches are right-padded; generation prompts left-padded, so
every row's next token is at the last column. Media (image, audio ...) go through the model's
processors by modality name: prepared once per file and cached, collated per batch under the
model's keyword (pixel_values, input_features ...), with `media_mask` {modality: (B,)} where only
some rows of a batch have that modality.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..modalities.base import MODALITIES, MediaError, Processor
from ..modalities.image import ImageProcessor
from ..modalities.text import TextTokenizer, encode_prompt, prompt_batch  # noqa: F401  (re-exported)
from ..objectives import IGNORE_INDEX
from .manifest import TRANSCRIPTION_TASKS, DataError, Example
from .regions import collate_regions, region_items


def encode_example(tok: TextTokenizer, ex: Example, max_len: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) for one training example, at most `max_len` tokens."""
    prompt = encode_prompt(tok, ex.prompt, ex.text)
    target = [*tok.encode(ex.target or ""), tok.eos_id]
    ids = prompt + target
    labels = [IGNORE_INDEX] * len(prompt) + target
    truncated = len(ids) > max_len
    return ids[:max_len], labels[:max_len], truncated


Processors = Mapping[str, Processor]


def as_processors(processors: Processors | ImageProcessor | None) -> dict[str, Processor]:
    """{modality: processor}; a lone ImageProcessor (or None) is the image-only case."""
    if processors is None:
        return {}
    return {"image": processors} if isinstance(processors, ImageProcessor) else dict(processors)


def media_of(ex: Example) -> dict[str, Any]:
    """The example's media by modality name (the manifest fields image, audio ...)."""
    return {name: getattr(ex, name) for name in MODALITIES if getattr(ex, name, None) is not None}


class MediaCache:
    """Media prepared once by their modality's processor and kept in its compact form (uint8 images,
    float16 waveforms): several examples share one image."""

    def __init__(self, processors: Processors | ImageProcessor | None) -> None:
        self.processors = as_processors(processors)
        self.items: dict[tuple[str, str], Tensor] = {}

    def __call__(self, ex: Example) -> dict[str, Tensor]:
        out = {}
        for name, source in media_of(ex).items():
            if name not in self.processors:
                raise DataError(f"{ex.source}: has {'an' if name[0] in 'aeiou' else 'a'} {name} but the model has "
                                f"no {name} encoder")
            key = (name, str(source))
            if key not in self.items:
                try:
                    self.items[key] = self.processors[name].prepare(source, str(source))
                except MediaError as e:
                    raise DataError(f"{ex.source}: {e}") from e
            out[name] = self.items[key]
        return out

    def prefetch(self, examples: Sequence[Example]) -> None:
        """Prepare the examples' media over the machine's cores (threads: decoding and resizing release
        the GIL), so that thousands of clips do not wait in line. Failures are left for `__call__`,
        which raises them with the example's line (or lets the caller skip it)."""
        todo = {(name, str(src)): (name, src) for ex in examples for name, src in media_of(ex).items()
                if name in self.processors and (name, str(src)) not in self.items}
        workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
        if len(todo) < 64 or workers < 2:
            return

        def prepare(item: tuple[str, Any]) -> Tensor | None:
            name, src = item
            try:
                return self.processors[name].prepare(src, str(src))
            except (MediaError, DataError):
                return None

        with ThreadPoolExecutor(workers) as pool:
            for key, x in zip(todo, pool.map(prepare, todo.values())):
                if x is not None:
                    self.items[key] = x


def readable_examples(examples: Sequence[Example], processors: Processors | ImageProcessor | None,
                      skip_bad: bool = False) -> tuple[list[Example], list[str]]:
    """The examples whose media `processors` can prepare, and the messages (each naming its line) of
    those skipped with `skip_bad`, warned about as training's skip_bad does; without it the first
    unreadable one raises DataError. A check before inference: the prepared media are not kept."""
    cache, good = MediaCache(processors), set()
    kept, skipped = [], []
    for ex in examples:
        keys = {(name, str(src)) for name, src in media_of(ex).items()}
        if not keys <= good:
            try:
                cache(ex)
            except DataError as e:
                if not skip_bad:
                    raise
                skipped.append(str(e))
                continue
            finally:
                cache.items.clear()
            good |= keys
        kept.append(ex)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} example(s) with unreadable media; first: {skipped[0]}", stacklevel=2)
    if examples and not kept:
        raise DataError("no usable examples left")
    return kept, skipped


def collate_media(items: list[dict[str, Tensor]], processors: Mapping[str, Processor]) -> dict[str, Any]:
    """Per-row prepared media -> {keyword: batch}, a modality's padding mask (`feature_attention_mask`)
    where its processor pads items to the longest, and `media_mask` for modalities only some rows
    have (their other rows hold zeros, which the model masks out)."""
    batch: dict[str, Any] = {}
    for name in sorted({n for it in items for n in it}, key=list(MODALITIES).index):
        present = [name in it for it in items]
        blank = torch.zeros_like(next(it[name] for it in items if name in it))
        spec, rows = MODALITIES[name], [it.get(name, blank) for it in items]
        batch[spec.input_key] = processors[name].collate(rows)
        frame_mask = getattr(processors[name], "frame_mask", None) if spec.mask_key else None
        if frame_mask is not None and (m := frame_mask(rows, batch[spec.input_key].shape[-1])) is not None:
            batch[spec.mask_key] = m
        if not all(present):
            batch.setdefault("media_mask", {})[name] = torch.tensor(present)
    return batch


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

    def __init__(self, examples: Sequence[Example], tokenizer: TextTokenizer,
                 image_processor: Processors | ImageProcessor | None, max_text_len: int, kind: str,
                 labels: Mapping[str, Sequence[str]] | None = None, skip_bad: bool = False) -> None:
        self.tokenizer, self.kind, self.max_text_len = tokenizer, kind, max_text_len
        self.labels = {task: {label: i for i, label in enumerate(ls)} for task, ls in (labels or {}).items()}
        self.media = MediaCache(image_processor)
        self.examples, self.skipped = [], []
        for ex in examples:
            try:
                if set(media_of(ex)) - {"image"}:
                    raise DataError(f"{ex.source}: the {kind} objective reads images and text only")
                self.media(ex)
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
        item = {"input_ids": ids, "image": self.media(ex).get("image"), "tasks": [ex.task]}
        if self.kind == "classify":
            item["label"] = self.labels[ex.task][ex.target]
        return item


def collate_examples(items: list[dict[str, Any]], pad_id: int, processor: Processors | ImageProcessor | None
                     ) -> dict[str, Any]:
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
        batch["pixel_values"] = as_processors(processor)["image"].collate(images)
    elif any(im is not None for im in images):
        raise DataError("a batch mixes examples with and without images; keep them in separate task streams")
    if "label" in items[0]:
        batch["class_labels"] = torch.tensor([it["label"] for it in items])
    return batch


class ManifestDataset(Dataset):
    """Examples with their media prepared once and cached (several examples share one image).

    With `pack`, an item is one set of media (an image; an image and a clip ...) with all its
    examples as segments of one sequence (see `segment_mask`): the media are encoded once per step
    instead of once per example. `processors`: {modality: processor}, or an ImageProcessor.
    """

    def __init__(self, examples: Sequence[Example], tokenizer: TextTokenizer,
                 processors: Processors | ImageProcessor | None, max_text_len: int,
                 skip_bad: bool = False, pack: bool = False) -> None:
        self.tokenizer, self.max_text_len = tokenizer, max_text_len
        self._media = MediaCache(processors)
        self.examples: list[Example] = []
        self.skipped: list[str] = []
        truncated = 0
        self._media.prefetch(examples)
        for ex in examples:
            try:
                self._media(ex)
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
            media = media_of(ex)
            key = repr(sorted((n, str(m)) for n, m in media.items())) if (pack and media) else f"#{i}"
            groups.setdefault(key, []).append(i)
        self.groups = list(groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def audio_lengths(self) -> list[int]:
        """Each item's clip length in samples (0: no clip), from the prepared waveforms."""
        return [int(self._media(self.examples[g[0]]).get("audio", torch.empty(0)).shape[-1]) for g in self.groups]

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids, labels, segments = [], [], []
        for k, j in enumerate(self.groups[i], 1):
            e_ids, e_labels, _ = encode_example(self.tokenizer, self.examples[j], self.max_text_len)
            ids += e_ids
            labels += e_labels
            segments += [k] * len(e_ids)
        first = self.examples[self.groups[i][0]]
        item = {"input_ids": ids, "labels": labels, "segment_ids": segments, "media": self._media(first),
                "tasks": [self.examples[j].task for j in self.groups[i]]}
        if first.meta.get("objects"):  # the scene's objects, for region heads (models/regions.py)
            item["objects"] = first.meta["objects"]
        if len(self.groups[i]) == 1 and first.task in TRANSCRIPTION_TASKS and first.audio is not None:
            item["ctc"] = self.tokenizer.encode(first.target or "")  # the transcript, for a CTC head
        return item


class TrainCollator:
    """Right-pads text (segment id 0 marks padding); collates each modality by its processor; with
    `region_classes` ({attribute: values} of a model's region heads), the items' objects too (for a
    video, `region_frames(total frames)` gives the source frame of each token step)."""

    def __init__(self, pad_id: int, processors: Processors | ImageProcessor | None,
                 region_classes: dict[str, list[str]] | None = None,
                 region_frames: Callable[[int], list[int] | None] | None = None) -> None:
        self.pad_id, self.processors = pad_id, as_processors(processors)
        self.region_classes, self.region_frames = region_classes or {}, region_frames

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
        if any("ctc" in it for it in items):  # transcripts (rows without one: length 0)
            lengths = torch.tensor([len(it.get("ctc", ())) for it in items])
            batch["ctc_targets"] = torch.zeros(len(items), max(1, int(lengths.max())), dtype=torch.long)
            for r, it in enumerate(items):
                batch["ctc_targets"][r, :lengths[r]] = torch.tensor(it.get("ctc", []), dtype=torch.long)
            batch["ctc_lengths"] = lengths
        if self.region_classes and any("objects" in it for it in items):
            batch |= collate_regions([region_items(it.get("objects"), self.region_classes, self._frames(it))
                                      for it in items], len(self.region_classes))
        return batch | collate_media([it["media"] for it in items], self.processors)

    def _frames(self, item: dict[str, Any]) -> list[int] | None:
        """The source frame of each token step of the item's clip (None: an image)."""
        if self.region_frames is None:
            return None
        boxes = next((o["boxes"] for o in item.get("objects") or () if isinstance(o, dict) and o.get("boxes")), None)
        return self.region_frames(len(boxes)) if boxes else None
