"""ResNet: our ResNetClassifier matches HF ResNetModel / ResNetForImageClassification at fp32 in eval
mode (BatchNorm on random running statistics), both block types and every downsampling option."""

import pytest
import torch
import transformers as hf
from hub_utils import ATOL, max_diff, perturb, save

from multimodaltransformer import convert, load_pretrained
from multimodaltransformer.cli import main
from multimodaltransformer.hub import CheckpointError
from multimodaltransformer.models import ResNetClassifier, ResNetClassifierConfig


def tiny_config(**kw) -> hf.ResNetConfig:
    return hf.ResNetConfig(embedding_size=12, hidden_sizes=[8, 20, 24], depths=[1, 2, 1], **kw)


def randomize_batchnorm(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Running statistics away from (0, 1) and a step count, so eval-mode BN is exercised and mapped."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.num_batches_tracked.fill_(int(torch.randint(1, 100, (1,), generator=g)))
    return perturb(model)


def reference(cls, tmp_path, **kw):
    torch.manual_seed(0)
    ref = randomize_batchnorm(cls(tiny_config(**kw)))
    return ref, save(ref, tmp_path / "hf")


def compare(ours: ResNetClassifier, ref, size: int = 45) -> None:
    pv = torch.randn(2, 3, size, size)
    with torch.no_grad():
        a = ours(pixel_values=pv)
        base = ref.resnet if isinstance(ref, hf.ResNetForImageClassification) else ref
        b = base(pixel_values=pv)
        assert a.last_hidden_state.shape == b.last_hidden_state.shape
        assert a.last_hidden_state.shape[-1] == ours.config.feature_size(size)
        assert max_diff(a.last_hidden_state, b.last_hidden_state) < ATOL
        assert max_diff(a.pooler_output, b.pooler_output.flatten(1)) < ATOL
        if isinstance(ref, hf.ResNetForImageClassification):
            assert max_diff(a.logits, ref(pixel_values=pv).logits) < ATOL
        else:
            assert a.logits is None


@pytest.mark.parametrize("layer_type", ["basic", "bottleneck"])
@pytest.mark.parametrize("first_stage", [False, True])
def test_base_model_matches_transformers(tmp_path, layer_type, first_stage):
    ref, path = reference(hf.ResNetModel, tmp_path, layer_type=layer_type, downsample_in_first_stage=first_stage)
    ours = load_pretrained(path)
    assert isinstance(ours, ResNetClassifier) and ours.classifier is None and not ours.training
    assert ours.config.layer_type == layer_type
    compare(ours, ref)


@pytest.mark.parametrize("in_bottleneck", [False, True])
def test_classifier_matches_transformers_and_keeps_labels(tmp_path, in_bottleneck):
    labels = {0: "circle", 1: "square", 2: "triangle", 3: "star", 4: "cross"}
    ref, path = reference(hf.ResNetForImageClassification, tmp_path, layer_type="bottleneck",
                          downsample_in_bottleneck=in_bottleneck, hidden_act="gelu", id2label=labels)
    ours = load_pretrained(path)
    assert ours.config.num_labels == 5 and ours.config.labels == list(labels.values())
    assert ours.config.hidden_act == "gelu" and ours.config.downsample_in_bottleneck is in_bottleneck
    compare(ours, ref)


def test_batchnorm_statistics_are_mapped(tmp_path):
    ref, path = reference(hf.ResNetModel, tmp_path)
    ours = load_pretrained(path)
    bn, theirs = ours.resnet.stages[1][0].shortcut.bn, ref.encoder.stages[1].layers[0].shortcut.normalization
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(bn, name), getattr(theirs, name))


def test_convert_round_trip_through_the_cli(tmp_path):
    ref, path = reference(hf.ResNetForImageClassification, tmp_path, layer_type="basic",
                          id2label={0: "cat", 1: "dog", 2: "fish"})
    assert main(["convert", str(path), str(tmp_path / "ours")]) in (0, None)
    again = load_pretrained(tmp_path / "ours")
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors"]
    assert isinstance(again, ResNetClassifier) and again.config.id2label == {0: "cat", 1: "dog", 2: "fish"}
    compare(again, ref)
    assert again.config == load_pretrained(convert(tmp_path / "ours", tmp_path / "twice")).config


def test_missing_running_statistics_name_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = reference(hf.ResNetModel, tmp_path)
    state = load_file(path / "model.safetensors")
    del state["encoder.stages.0.layers.0.layer.1.normalization.running_var"]
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"layer\.1\.normalization\.running_var"):
        load_pretrained(path)


def test_config_validates_stages():
    with pytest.raises(ValueError, match="one entry per stage"):
        ResNetClassifierConfig(hidden_sizes=[8, 16], depths=[1])
    with pytest.raises(ValueError, match="id2label"):
        ResNetClassifierConfig(num_labels=2, id2label={0: "a", 5: "b"})
