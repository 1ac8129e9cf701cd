"""CNN encoders of the image modality: a convolutional network's last feature map (B, C, h, w),
flattened row by row into tokens (B, h*w, C) that every fusion reads as it reads ViT patch tokens
(graph fusion too: the tokens are a row-major square grid).

The image config (modalities/image.py `ViTConfig`) picks one with `encoder: <name>` and holds the
network's own config in its field of the same name (`resnet: {...}`, `efficientnet: {...}`). Plugging
in another CNN is three lines: its entry in `CNNS` below, its name in `ImageEncoder`, and that config
field. `pretrained:` on the image config fills the network from a checkpoint (train/pretrained.py).
Its module must expose `features(pixel_values) -> (B, C, h, w)`.
Legend: B batch, C channels, H x W pixels, h x w feature map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from ..nn.efficientnet import EfficientNetFeatures, EfficientNetNetworkConfig
from ..nn.resnet import ResNet, ResNetConfig

ImageEncoder = Literal["vit", "resnet", "efficientnet"]  # "vit": the image config's own transformer fields


@dataclass(frozen=True)
class CNN:
    """How the image modality builds one CNN family and sizes its tokens."""

    config: type  # its config dataclass, built with defaults when the image config gives none
    build: Callable[[Any], nn.Module]  # config -> module with `features(pixel_values)` (B, C, h, w)
    channels: Callable[[Any], int]  # config -> C, the width of the tokens
    feature_size: Callable[[Any, int], int]  # (config, image side H) -> side h of the feature map


CNNS: dict[str, CNN] = {
    "resnet": CNN(ResNetConfig, ResNet, lambda c: c.channels, lambda c, size: c.feature_size(size)),
    "efficientnet": CNN(EfficientNetNetworkConfig, EfficientNetFeatures, lambda c: c.channels,
                        lambda c, size: c.feature_size(size)),
}


def check_cnn(cfg: Any) -> None:
    """Validate the CNN choice of image config `cfg`; give its network the family's defaults when unset."""
    if cfg.encoder not in CNNS:
        raise ValueError(f"image encoder must be one of {['vit', *CNNS]}, got {cfg.encoder!r}")
    if getattr(cfg, cfg.encoder) is None:
        setattr(cfg, cfg.encoder, CNNS[cfg.encoder].config())
    if cnn_tokens(cfg) < 1:
        raise ValueError(f"image_size {cfg.image_size} is too small for the {cfg.encoder} encoder")


def unused_cnn_configs(cfg: Any) -> list[str]:
    """The CNN sub-configs set on `cfg` that its `encoder` does not read (a likely mistake)."""
    return [name for name in CNNS if name != cfg.encoder and getattr(cfg, name, None) is not None]


def cnn_channels(cfg: Any) -> int:
    return CNNS[cfg.encoder].channels(getattr(cfg, cfg.encoder))


def cnn_tokens(cfg: Any) -> int:
    """h * w tokens of a `cfg.image_size` square image."""
    return CNNS[cfg.encoder].feature_size(getattr(cfg, cfg.encoder), cfg.image_size) ** 2


class CNNEncoder(nn.Module):
    """pixel_values (B, 3, H, W) -> tokens (B, h*w, C) from the network `cfg.encoder` names. The network
    sits under that name (`resnet.stem...`), as in the classifier model, so its weights carry over."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.add_module(cfg.encoder, CNNS[cfg.encoder].build(getattr(cfg, cfg.encoder)))
        self.train()  # frozen BatchNorm (cfg.freeze_bn) from the start

    def train(self, mode: bool = True) -> "CNNEncoder":
        """With `cfg.freeze_bn`, BatchNorm keeps normalising by its running statistics while the rest
        trains: for tiny batches of images like the pretraining data, whose statistics describe them
        better than a few images do. Not for a shifted domain: on Fashion-MNIST, ImageNet's statistics
        kept the classify records at chance (benchmarks/README.md)."""
        super().train(mode)
        if getattr(self.cfg, "freeze_bn", False):
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    @property
    def network(self) -> nn.Module:
        return getattr(self, self.cfg.encoder)

    def patch_tokens(self, pixel_values: Tensor) -> Tensor:
        size = self.cfg.image_size
        if pixel_values.shape[-2:] != (size, size):
            raise ValueError(f"pixel_values are {tuple(pixel_values.shape[-2:])}, the model takes {size}x{size}")
        return self.network.features(pixel_values).flatten(2).transpose(1, 2)  # (B, h*w, C), row-major

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.patch_tokens(pixel_values)
