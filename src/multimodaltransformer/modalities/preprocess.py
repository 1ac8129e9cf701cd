"""The preprocessing an ImageNet-style classifier's weights expect: resize the shorter side, crop the
centre square, normalise per channel. It travels in the model's config (models/efficientnet.py), so a
converted checkpoint classifies photos the way it was trained, with nothing to download.

Legend: H x W pixels of the crop (crop_size x crop_size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .image import load_image

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass
class ImagePreprocessConfig:
    """Resize so the shorter side is `resize`, crop `crop_size` x `crop_size` from the centre, then
    (x / 255 - mean) / std per RGB channel. Defaults: torchvision's / timm's ImageNet evaluation."""

    resize: int = 256
    crop_size: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"

    def __post_init__(self) -> None:
        self.mean, self.std = [float(m) for m in self.mean], [float(s) for s in self.std]
        if not 0 < self.crop_size <= self.resize:
            raise ValueError(f"preprocess: need 0 < crop_size <= resize, got {self.crop_size} and {self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"preprocess: mean and std need 3 values (std > 0), got {self.mean}, {self.std}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"preprocess: interpolation must be one of {sorted(_RESAMPLE)}, "
                             f"got {self.interpolation!r}")


class CenterCropProcessor:
    """An image (file path or PIL image) -> `pixel_values` (3, H, W) float32, as `ImagePreprocessConfig` says."""

    def __init__(self, config: ImagePreprocessConfig) -> None:
        self.config = config

    def __call__(self, image: Image.Image | str | Path) -> Tensor:
        cfg = self.config
        if not isinstance(image, Image.Image):
            image = load_image(image)
        image = center_crop(resize_shorter(image.convert("RGB"), cfg.resize, _RESAMPLE[cfg.interpolation]),
                            cfg.crop_size)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
        mean = torch.tensor(cfg.mean).reshape(3, 1, 1)
        std = torch.tensor(cfg.std).reshape(3, 1, 1)
        return ((x - mean) / std).contiguous()


def resize_shorter(image: Image.Image, size: int, resample: int) -> Image.Image:
    """Scale so the shorter side is `size`; the longer side rounds down (as torchvision's Resize(int))."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    return image if new == (w, h) else image.resize(new, resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The centre `size` x `size` square (offsets rounded as torchvision's CenterCrop)."""
    w, h = image.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))
