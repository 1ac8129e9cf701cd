"""A ResNet image classifier as a saved model: the network of nn/resnet.py and an optional linear
head on the pooled features, its labels kept in the config. `model(pixel_values)` ->
ResNetOutput(last_hidden_state (B, C, h, w), pooler_output (B, C), logits (B, num_labels) or None),
as Hugging Face's `ResNetModel` / `ResNetForImageClassification` (imported by hub/resnet.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from ..nn.resnet import ResNet, ResNetConfig, ResNetOutput
from .base import PretrainedModel

__all__ = ["ResNetClassifier", "ResNetClassifierConfig", "ResNetOutput"]


@dataclass
class ResNetClassifierConfig(ResNetConfig):
    """The network's config plus the head: `num_labels` 0 for none, `id2label` to name the classes."""

    num_labels: int = 0
    id2label: dict[int, str] = field(default_factory=dict)
    model_type: Literal["mmt-resnet"] = "mmt-resnet"

    def __post_init__(self) -> None:
        super().__post_init__()
        try:  # JSON keeps object keys as strings
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        except ValueError as e:
            raise ValueError(f"resnet: id2label keys must be class indices, got {sorted(self.id2label)}") from e
        if self.num_labels < 0:
            raise ValueError(f"resnet: num_labels must be >= 0, got {self.num_labels}")
        if self.id2label and sorted(self.id2label) != list(range(self.num_labels)):
            raise ValueError(f"resnet: id2label must name the classes 0..{self.num_labels - 1}, "
                             f"got keys {sorted(self.id2label)[:8]}")

    @property
    def labels(self) -> list[str]:
        """Class names by index (`LABEL_i` where id2label has none)."""
        return [self.id2label.get(i, f"LABEL_{i}") for i in range(self.num_labels)]


class ResNetClassifier(PretrainedModel):
    """ResNet features + a linear classifier on the pooled map (when `num_labels` > 0)."""

    config_class = ResNetClassifierConfig

    def __init__(self, config: ResNetClassifierConfig) -> None:
        super().__init__(config)
        self.resnet = ResNet(config)
        self.classifier = nn.Linear(config.channels, config.num_labels) if config.num_labels else None

    def forward(self, pixel_values: Tensor) -> ResNetOutput:
        features, pooled, _ = self.resnet(pixel_values)
        logits = self.classifier(pooled) if self.classifier is not None else None
        return ResNetOutput(features, pooled, logits)
