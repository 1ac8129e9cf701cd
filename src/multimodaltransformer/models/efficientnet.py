"""EfficientNet-Lite (Tan & Le 2019; the TensorFlow "lite" variants) as a saved image classifier: the
network of nn/efficientnet.py (stem, MBConv stages, 1x1 head to 1280), then the feature map's spatial
mean (B, C) -> dropout -> linear -> logits (B, K).
Legend: B batch, C channels, H x W pixels, h x w feature map (H / 32), K classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from ..modalities.preprocess import CenterCropProcessor, ImagePreprocessConfig
from ..nn.efficientnet import EfficientNetNetworkConfig, SamePadConv2d, StageConfig, efficientnet_layers
from .base import PretrainedModel

__all__ = ["EfficientNet", "EfficientNetConfig", "SamePadConv2d", "StageConfig", "efficientnet_lite"]


@dataclass
class EfficientNetConfig(EfficientNetNetworkConfig):
    """EfficientNet-Lite0 by default; `efficientnet_lite(n)` gives Lite0-4."""

    num_classes: int = 1000  # 0: no classifier (an image encoder: use `features`)
    image_size: int = 224  # the resolution the weights were trained at
    dropout: float = 0.2  # before the classifier
    id2label: dict[int, str] = field(default_factory=dict)
    preprocess: ImagePreprocessConfig = field(default_factory=ImagePreprocessConfig)
    model_type: Literal["mmt-efficientnet"] = "mmt-efficientnet"

    def __post_init__(self) -> None:
        try:  # JSON keeps object keys as strings
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        except ValueError as e:
            keys = sorted(self.id2label)[:8]
            raise ValueError(f"efficientnet: id2label keys must be class indices, got {keys}") from e
        if self.id2label and sorted(self.id2label) != list(range(self.num_classes)):
            raise ValueError(f"efficientnet: id2label must name the classes 0..{self.num_classes - 1}")
        super().__post_init__()
        if self.num_classes < 0 or not 0 <= self.dropout < 1:
            raise ValueError("efficientnet: need num_classes >= 0 and 0 <= dropout < 1")

    @property
    def labels(self) -> list[str]:
        """Class names by index (`LABEL_i` where id2label has none)."""
        return [self.id2label.get(i, f"LABEL_{i}") for i in range(self.num_classes)]


def efficientnet_lite(n: int = 0, **overrides: Any) -> EfficientNetConfig:
    """EfficientNet-Lite`n` (0-4): (width, depth, resolution, dropout) from TensorFlow's lite builder."""
    table = {0: (1.0, 1.0, 224, 0.2), 1: (1.0, 1.1, 240, 0.2), 2: (1.1, 1.2, 260, 0.3),
             3: (1.2, 1.4, 280, 0.3), 4: (1.4, 1.8, 300, 0.3)}
    if n not in table:
        raise ValueError(f"efficientnet_lite: n must be 0-4, got {n}")
    w, d, size, p = table[n]
    return EfficientNetConfig(width_multiplier=w, depth_multiplier=d, image_size=size, dropout=p, **overrides)


class EfficientNet(PretrainedModel):
    """EfficientNet-Lite: `model(pixel_values)` -> logits (B, K); `features(pixel_values)` -> (B, C, h, w).
    As an `ImageClassifier` (classify.py): `classify`, `labels` and `image_processor`."""

    config_class = EfficientNetConfig

    def __init__(self, config: EfficientNetConfig) -> None:
        super().__init__(config)
        self.stem, self.stages, self.head = efficientnet_layers(config)
        head = config.channels
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(head, config.num_classes) if config.num_classes else None
        self.channels = head

    def features(self, pixel_values: Tensor) -> Tensor:
        """The final feature map (B, C, h, w), C = head_channels: what an image encoder reads."""
        return self.head(self.stages(self.stem(pixel_values)))

    def forward(self, pixel_values: Tensor) -> Tensor:
        if self.classifier is None:
            raise ValueError("this EfficientNet has no classifier (num_classes 0); use features()")
        pooled = self.features(pixel_values).mean(dim=(2, 3))  # (B, C)
        return self.classifier(self.dropout(pooled))

    def classify(self, pixel_values: Tensor) -> Tensor:
        """Logits (B, K) over `labels`."""
        return self(pixel_values)

    @property
    def labels(self) -> list[str]:
        return self.config.labels

    @property
    def image_processor(self) -> CenterCropProcessor:
        """Image -> pixel_values (3, H, W) as the weights expect (the config's `preprocess`)."""
        return CenterCropProcessor(self.config.preprocess)
