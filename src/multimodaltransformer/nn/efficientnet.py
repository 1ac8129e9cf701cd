"""The EfficientNet-Lite network (Tan & Le 2019; the TensorFlow "lite" variants), without classifier:
what both the saved classifier (models/efficientnet.py) and the image encoder (modalities/cnn.py) hold.

pixel_values (B, 3, H, W) -> stem: 3x3 stride-2 conv -> stages of MBConv blocks (inverted residuals:
1x1 expand -> kxk depthwise (stride s) -> 1x1 project, + identity when shape is kept) -> head: 1x1
conv to 1280 -> feature map (B, C, h, w).
Every conv is followed by BatchNorm and (except the projection) ReLU6.
Lite versus B0-B7: ReLU6 instead of swish, no squeeze-excite, and the stem, the head and the repeats
of the first and last stages are not scaled (`fix_stem_head`).
Weights trained in TensorFlow need its "SAME" padding (`padding: same`: a stride-2 conv pads one
more pixel at the bottom/right than at the top/left); PyTorch-trained ones pad symmetrically.
Legend: B batch, C channels, H x W pixels, h x w feature map (H / 32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EfficientNetFeatures", "EfficientNetNetworkConfig", "StageConfig"]


@dataclass
class StageConfig:
    """One row of the stage table: `repeats` MBConv blocks, the first with `stride`."""

    repeats: int
    kernel: int
    stride: int
    expand: int  # inner width = input width * expand (1: no expansion conv)
    channels: int  # output width before the width multiplier


def _b0_stages() -> list[StageConfig]:
    """EfficientNet-B0's table, which every Lite model scales."""
    rows = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
            (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
    return [StageConfig(*r) for r in rows]


@dataclass
class EfficientNetNetworkConfig:
    """The layers of EfficientNet-Lite0 by default (the image encoder's `efficientnet:` sub-config)."""

    width_multiplier: float = 1.0
    depth_multiplier: float = 1.0
    stages: list[StageConfig] = field(default_factory=_b0_stages)
    stem_channels: int = 32
    head_channels: int = 1280
    fix_stem_head: bool = True  # Lite: stem, head and the first / last stage's repeats unscaled
    padding: Literal["same", "symmetric"] = "same"  # "same": TensorFlow's, for weights trained there
    bn_eps: float = 1e-3  # TensorFlow's BatchNorm epsilon (PyTorch's default is 1e-5)

    def __post_init__(self) -> None:
        for i, s in enumerate(self.stages):
            if min(s.repeats, s.kernel, s.stride, s.expand, s.channels) < 1 or s.kernel % 2 == 0:
                raise ValueError(f"efficientnet: stages[{i}] needs positive values and an odd kernel, got {s}")
        if not self.stages or self.padding not in ("same", "symmetric"):
            raise ValueError(f"efficientnet: need stages, and padding 'same' or 'symmetric' (got {self.padding!r})")
        if min(self.width_multiplier, self.depth_multiplier) <= 0:
            raise ValueError("efficientnet: need positive multipliers")

    def width(self, channels: int) -> int:
        """`channels` times the width multiplier, rounded to a multiple of 8 (never down by over 10%)."""
        scaled = channels * self.width_multiplier
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * scaled else rounded

    def repeats(self, index: int) -> int:
        """Blocks in stage `index` after the depth multiplier (rounded up)."""
        fixed = self.fix_stem_head and index in (0, len(self.stages) - 1)
        reps = self.stages[index].repeats
        return reps if fixed else int(math.ceil(reps * self.depth_multiplier))

    def stage_widths(self) -> tuple[int, list[int], int]:
        """(stem width, each stage's output width, head width)."""
        fixed = self.fix_stem_head
        stem = self.stem_channels if fixed else self.width(self.stem_channels)
        head = self.head_channels if fixed else self.width(self.head_channels)
        return stem, [self.width(s.channels) for s in self.stages], head

    @property
    def channels(self) -> int:
        """C of the feature map: the head's width."""
        return self.stage_widths()[2]

    def feature_size(self, size: int) -> int:
        """Side h of the feature map of a `size` x `size` image: every stride-s conv gives ceil(in / s)
        (SAME padding by definition; symmetric k // 2 padding of an odd kernel too)."""
        for stride in (2, *(s.stride for s in self.stages)):
            size = math.ceil(size / stride)
        return size


class SamePadConv2d(nn.Conv2d):
    """A strided conv padded as TensorFlow's "SAME": output ceil(in / stride), the odd pixel at the end."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # F.pad order: left, right, top, bottom
        return super().forward(F.pad(x, pads))


class ConvBNAct(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU6 (or nothing, for the projection)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, cfg: EfficientNetNetworkConfig,
                 groups: int = 1, act: bool = True) -> None:
        super().__init__()
        if cfg.padding == "same" and stride > 1:
            self.conv: nn.Conv2d = SamePadConv2d(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)
        else:  # stride 1: SAME is symmetric for odd kernels
            self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=cfg.bn_eps)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (if expand > 1) -> kxk depthwise -> 1x1 project, + x when shapes match."""

    def __init__(self, c_in: int, c_out: int, stage: StageConfig, stride: int, cfg: EfficientNetNetworkConfig) -> None:
        super().__init__()
        inner = c_in * stage.expand
        self.expand = ConvBNAct(c_in, inner, 1, 1, cfg) if stage.expand != 1 else None
        self.depthwise = ConvBNAct(inner, inner, stage.kernel, stride, cfg, groups=inner)
        self.project = ConvBNAct(inner, c_out, 1, 1, cfg, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


def efficientnet_layers(cfg: EfficientNetNetworkConfig) -> tuple[ConvBNAct, nn.Sequential, ConvBNAct]:
    """(stem, stages, head): the modules every holder keeps under these three names, so one weight
    table (hub/efficientnet.py) fills the classifier and the encoder alike."""
    stem, widths, head = cfg.stage_widths()
    stages, c_in = [], stem
    for i, (stage, c_out) in enumerate(zip(cfg.stages, widths)):
        blocks = [MBConv(c_in if j == 0 else c_out, c_out, stage, stage.stride if j == 0 else 1, cfg)
                  for j in range(cfg.repeats(i))]
        stages.append(nn.Sequential(*blocks))
        c_in = c_out
    return ConvBNAct(3, stem, 3, 2, cfg), nn.Sequential(*stages), ConvBNAct(c_in, head, 1, 1, cfg)


class EfficientNetFeatures(nn.Module):
    """`features(pixel_values)` (B, 3, H, W) -> (B, C, h, w): the network as an image encoder holds it."""

    def __init__(self, cfg: EfficientNetNetworkConfig) -> None:
        super().__init__()
        self.stem, self.stages, self.head = efficientnet_layers(cfg)
        self.channels = cfg.channels

    def features(self, pixel_values: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(pixel_values)))
