"""ResNet (He et al. 2016) as Hugging Face and torchvision build it, one module for every use.

pixel_values (B, 3, H, W) -> stem: 7x7 stride-2 conv + BN + act, 3x3 stride-2 max-pool -> stages of
residual blocks, each stage after the first halving the map -> feature map (B, C, h, w),
C = hidden_sizes[-1] -> pooled (B, C), the spatial mean. Every conv is followed by BatchNorm.
  basic block:       3x3 (stride s) -> 3x3, + shortcut            (ResNet-18/34)
  bottleneck block:  1x1 -> 3x3 (stride s) -> 1x1 (C/4 inside), + shortcut   (ResNet-50 and up;
                     `downsample_in_bottleneck` puts the stride on the first 1x1, as in the original paper)
The shortcut is a 1x1 conv + BN where the width or the stride changes, the identity elsewhere.
Used by the classifier model (models/resnet.py, Hugging Face import) and as the image modality's
CNN encoder (modalities/cnn.py: the feature map flattened to tokens).
Legend: B batch, C channels, H x W pixels, h x w feature map (H / 32 with four stages, ceil at each halving).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from torch import Tensor, nn

from .blocks import Activation, build_activation


@dataclass
class ResNetConfig:
    """The fields (and defaults: ResNet-50) of Hugging Face's `ResNetConfig`."""

    num_channels: int = 3
    embedding_size: int = 64  # width of the stem
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])  # one width per stage
    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])  # blocks per stage
    layer_type: Literal["basic", "bottleneck"] = "bottleneck"
    # the stem's and each block's output activation; the convs inside a block use ReLU (as HF does)
    hidden_act: Activation = "relu"
    downsample_in_first_stage: bool = False  # the first stage halves the map too (the stem already did twice)
    downsample_in_bottleneck: bool = False  # the stride on a bottleneck's first 1x1 instead of its 3x3

    def __post_init__(self) -> None:
        self.hidden_sizes, self.depths = list(self.hidden_sizes), list(self.depths)
        if not self.hidden_sizes or len(self.hidden_sizes) != len(self.depths):
            raise ValueError(f"resnet: hidden_sizes {self.hidden_sizes} and depths {self.depths} need one entry "
                             "per stage")
        if min(self.depths) < 1 or min(self.hidden_sizes) < 1 or self.embedding_size < 1:
            raise ValueError(f"resnet: widths and depths must be positive, got embedding_size {self.embedding_size}, "
                             f"hidden_sizes {self.hidden_sizes}, depths {self.depths}")
        if self.layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"resnet: layer_type must be 'basic' or 'bottleneck', got {self.layer_type!r}")
        if self.layer_type == "bottleneck" and min(self.hidden_sizes) < 4:
            raise ValueError(f"resnet: a bottleneck narrows to width / 4: hidden_sizes {self.hidden_sizes} "
                             "must be at least 4")
        if self.hidden_act == "swiglu":
            raise ValueError("resnet: hidden_act 'swiglu' gates an MLP; choose relu, gelu, gelu_tanh, quick_gelu "
                             "or silu")

    @property
    def channels(self) -> int:
        """C of the feature map."""
        return self.hidden_sizes[-1]

    def feature_size(self, image_size: int) -> int:
        """The feature map's side h for a square `image_size` input (every stride-2 layer rounds up)."""
        halvings = 2 + len(self.hidden_sizes) - 1 + self.downsample_in_first_stage
        side = image_size
        for _ in range(halvings):
            side = (side + 1) // 2
        return side


class ResNetOutput(NamedTuple):
    last_hidden_state: Tensor  # (B, C, h, w), the feature map
    pooler_output: Tensor  # (B, C), its spatial mean
    logits: Tensor | None = None  # (B, num_labels), from a classifier head (models/resnet.py)


class ConvBN(nn.Module):
    """conv (no bias, 'same' padding) -> BatchNorm -> activation (or none)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
                 act: Activation | None = "relu") -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = build_activation(act) if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """act(convs(x) + shortcut(x)): a basic or a bottleneck block, by `cfg.layer_type`."""

    def __init__(self, cfg: ResNetConfig, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        if cfg.layer_type == "basic":
            convs = [ConvBN(c_in, c_out, stride=stride), ConvBN(c_out, c_out, act=None)]
        else:
            mid, first = c_out // 4, stride if cfg.downsample_in_bottleneck else 1
            convs = [ConvBN(c_in, mid, 1, stride=first), ConvBN(mid, mid, stride=stride // first),
                     ConvBN(mid, c_out, 1, act=None)]
        self.convs = nn.Sequential(*convs)
        changes = c_in != c_out or stride != 1
        self.shortcut = ConvBN(c_in, c_out, 1, stride=stride, act=None) if changes else None
        self.act = build_activation(cfg.hidden_act)

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.convs(x) + residual)


class ResNet(nn.Module):
    """`features(pixel_values)` (B, C, h, w); `forward` -> ResNetOutput(feature map, pooled)."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.stem = ConvBN(cfg.num_channels, cfg.embedding_size, 7, stride=2, act=cfg.hidden_act)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = [cfg.embedding_size, *cfg.hidden_sizes]
        self.stages = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            stride = 2 if i > 0 or cfg.downsample_in_first_stage else 1
            blocks = [ResidualBlock(cfg, widths[i], widths[i + 1], stride)]
            blocks += [ResidualBlock(cfg, widths[i + 1], widths[i + 1]) for _ in range(depth - 1)]
            self.stages.append(nn.Sequential(*blocks))
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for convs (fan out), BN at identity: torchvision's and HF's init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> the last stage's map (B, C, h, w)."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(f"pixel_values must be (batch, {self.config.num_channels}, height, width), "
                             f"got {tuple(pixel_values.shape)}")
        x = self.pool(self.stem(pixel_values))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, pixel_values: Tensor) -> ResNetOutput:
        x = self.features(pixel_values)
        return ResNetOutput(x, x.mean((2, 3)))
