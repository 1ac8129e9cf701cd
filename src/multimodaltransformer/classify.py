"""Classify one image with any model that has a classification head (`mmt classify`).

A model plugs in by being an `ImageClassifier`: `classify(pixel_values) -> logits`, `labels` and
an `image_processor` (image -> (3, H, W)), as models/efficientnet.py is. Two adapters cover the rest:
the library's multimodal models (a head per task in `heads.classes`, read with a prompt) and models
whose forward returns `.logits` with `config.labels` (the ResNet classifier), ImageNet preprocessing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from PIL import Image
from torch import Tensor, nn

from .config import ConfigError
from .data.shapes import CLASSIFY_PROMPT
from .modalities.image import load_image
from .modalities.preprocess import CenterCropProcessor, ImagePreprocessConfig
from .modalities.text import prompt_batch
from .models.core import MultimodalLM

__all__ = ["ImageClassifier", "Prediction", "as_classifier", "classify_file", "classify_image", "format_predictions",
           "top_k"]


@runtime_checkable
class ImageClassifier(Protocol):
    """What `mmt classify` needs of a model."""

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def image_processor(self) -> Callable[[Image.Image], Tensor]: ...

    def classify(self, pixel_values: Tensor) -> Tensor: ...


class Prediction(NamedTuple):
    index: int
    label: str
    score: float  # softmax probability


class HeadClassifier:
    """A multimodal model's classification head for `task`, conditioned on the image and `prompt`."""

    def __init__(self, model: MultimodalLM, task: str, prompt: str) -> None:
        if model.tokenizer is None:
            raise ConfigError("the model has no tokenizer (tokenizer.json) to read the classification prompt")
        if model.processors.get("image") is None:
            raise ConfigError("the model reads no images (it has no image encoder)")
        self.model, self.task = model, task
        self.labels = list(model.head_labels[task])
        self.image_processor = model.processors["image"]
        self.input_ids, self.attention_mask = prompt_batch(model.tokenizer, [prompt])

    def classify(self, pixel_values: Tensor) -> Tensor:
        ids, mask = (t.expand(len(pixel_values), -1).to(pixel_values.device)
                     for t in (self.input_ids, self.attention_mask))
        return self.model.classify(self.task, ids, mask, pixel_values=pixel_values)


class LogitsClassifier:
    """A model whose forward returns `.logits` and whose config names `labels` (ImageNet preprocessing
    unless the config has `preprocess`)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.labels = model, list(model.config.labels)
        self.image_processor = CenterCropProcessor(getattr(model.config, "preprocess", None) or ImagePreprocessConfig())

    def classify(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values).logits


def _pick_task(model: MultimodalLM, task: str | None) -> str:
    heads = sorted(model.head_labels)
    if task is not None and task not in heads:
        raise ConfigError(f"no classification head for task {task!r}; heads: {heads}")
    if task is None and len(heads) != 1:
        raise ConfigError(f"the model has {len(heads)} classification heads {heads}: choose one with --task")
    return task or heads[0]


def as_classifier(model: Any, task: str | None = None, prompt: str | None = None) -> ImageClassifier:
    """`model` as an ImageClassifier; a ConfigError when it has no classification head."""
    if isinstance(model, MultimodalLM):
        if not model.head_labels:
            raise ConfigError("the model has no classification head (heads.classes is empty)")
        return HeadClassifier(model, _pick_task(model, task), CLASSIFY_PROMPT if prompt is None else prompt)
    if isinstance(model, ImageClassifier):
        classifier = model
    elif hasattr(getattr(model, "config", None), "labels"):
        classifier = LogitsClassifier(model)
    else:
        raise ConfigError(f"a {type(model).__name__} has no image classification head")
    if not classifier.labels:
        raise ConfigError(f"this {type(model).__name__} has no classification head (no labels)")
    return classifier


def top_k(logits: Tensor, labels: Sequence[str], k: int) -> list[Prediction]:
    """The `k` most probable classes of one row of logits (K,), best first."""
    probs = logits.float().softmax(-1)
    scores, indices = probs.topk(min(k, probs.numel()))
    return [Prediction(i, labels[i], s) for s, i in zip(scores.tolist(), indices.tolist())]


def _check_k(k: int) -> None:
    if k < 1:
        raise ConfigError(f"--top must be at least 1, got {k}")


@torch.no_grad()
def classify_image(classifier: ImageClassifier, image: Image.Image | str | Path, k: int = 5) -> list[Prediction]:
    """The top `k` classes of one image (a PIL image or a file), best first."""
    _check_k(k)
    if not isinstance(image, Image.Image):
        image = load_image(image)
    model = getattr(classifier, "model", classifier)
    device = next(model.parameters()).device
    pixel_values = classifier.image_processor(image).unsqueeze(0).to(device)
    return top_k(classifier.classify(pixel_values)[0].cpu(), classifier.labels, k)


def classify_file(model_path: str | Path, image: str | Path, k: int = 5, task: str | None = None,
                  prompt: str | None = None, device: str = "cpu") -> list[Prediction]:
    """Load the model at `model_path` and classify the image file `image`; errors name the file."""
    from .hub import load_pretrained

    _check_k(k)
    image = load_image(image)  # before the model: a bad image fails fast
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_pretrained(model_path, map_location=device)
    try:
        classifier = as_classifier(model, task, prompt)
    except ConfigError as e:
        raise ConfigError(f"{model_path}: {e}") from e
    return classify_image(classifier, image, k)


def format_predictions(predictions: Sequence[Prediction], as_json: bool = False) -> str:
    """One JSON list of {index, label, score}, or "score label" lines; best first."""
    if as_json:
        return json.dumps([p._asdict() for p in predictions])
    return "\n".join(f"{p.score:.4f} {p.label}" for p in predictions)
