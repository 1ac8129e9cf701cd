"""ResNet checkpoints (`model_type: resnet`: `ResNetModel`, `ResNetForImageClassification`) ->
`models.resnet.ResNetClassifier`. Every BatchNorm brings its running statistics and step count."""

from __future__ import annotations

from typing import Any

from ..models.resnet import ResNetClassifier, ResNetClassifierConfig
from .mapping import CheckpointError, WeightTable, activation

FAMILY = "resnet"
MODEL = ResNetClassifier
PREFIXES = ("resnet.", "")  # ResNetForImageClassification saves "resnet.embedder...", ResNetModel "embedder..."
HEAD = "classifier.1."  # nn.Sequential(Flatten(), Linear): the head, outside the "resnet." prefix
BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def config_from_hf(hf: dict[str, Any], names: set[str]) -> ResNetClassifierConfig:
    has_head = HEAD + "weight" in names
    id2label = hf.get("id2label") or {}
    num_labels = len(id2label) if id2label else hf.get("num_labels", 0)
    if has_head and not num_labels:
        raise CheckpointError(f"{FAMILY}: the checkpoint has a classifier but its config names no labels")
    return ResNetClassifierConfig(
        num_channels=hf.get("num_channels", 3), embedding_size=hf.get("embedding_size", 64),
        hidden_sizes=list(hf.get("hidden_sizes", [256, 512, 1024, 2048])), depths=list(hf.get("depths", [3, 4, 6, 3])),
        layer_type=hf.get("layer_type", "bottleneck"), hidden_act=activation(hf.get("hidden_act", "relu"), FAMILY),
        downsample_in_first_stage=hf.get("downsample_in_first_stage", False),
        downsample_in_bottleneck=hf.get("downsample_in_bottleneck", False),
        num_labels=num_labels if has_head else 0, id2label=id2label if has_head else {})


def _conv_bn(table: WeightTable, ours: str, hf: str) -> None:
    """Our ConvBN `ours` <- HF's ResNetConvLayer / ResNetShortCut `hf`: the conv and the BN's five tensors."""
    table[f"{ours}.conv.weight"] = f"{hf}.convolution.weight"
    for name in BN_TENSORS:
        table[f"{ours}.bn.{name}"] = f"{hf}.normalization.{name}"


def weight_map(cfg: ResNetClassifierConfig) -> WeightTable:
    table: WeightTable = {}
    _conv_bn(table, "resnet.stem", "embedder.embedder")
    widths = [cfg.embedding_size, *cfg.hidden_sizes]
    convs = 2 if cfg.layer_type == "basic" else 3
    for i, depth in enumerate(cfg.depths):
        for j in range(depth):
            ours, hf = f"resnet.stages.{i}.{j}", f"encoder.stages.{i}.layers.{j}"
            for k in range(convs):
                _conv_bn(table, f"{ours}.convs.{k}", f"{hf}.layer.{k}")
            stride = 2 if i > 0 or cfg.downsample_in_first_stage else 1
            if j == 0 and (widths[i] != widths[i + 1] or stride != 1):  # as ResidualBlock decides
                _conv_bn(table, f"{ours}.shortcut", f"{hf}.shortcut")
    if cfg.num_labels:
        table |= {"classifier.weight": HEAD + "weight", "classifier.bias": HEAD + "bias"}
    return table
