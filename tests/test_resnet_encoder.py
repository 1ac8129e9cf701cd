"""ResNet as the image encoder of the library's own model (modalities/cnn.py): its feature map as
tokens, config compatibility, training from scratch on ShapesWorld, save / load."""

import json

import pytest
import torch
from conftest import tiny_config

from multimodaltransformer import MultimodalTransformer, MultimodalTransformerModel
from multimodaltransformer.config import ConfigError, from_dict, to_dict
from multimodaltransformer.modalities import ViTConfig, ViTEncoder
from multimodaltransformer.modalities.cnn import CNNEncoder
from multimodaltransformer.models import ResNetClassifier, ResNetClassifierConfig
from multimodaltransformer.nn.resnet import ResNetConfig

TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [16, 24], "depths": [1, 1], "layer_type": "basic"}


def resnet_image(size: int = 32, **kw) -> ViTConfig:
    return ViTConfig(image_size=size, encoder="resnet", resnet=ResNetConfig(**(TINY_RESNET | kw)))


def test_tokens_are_the_feature_map_row_by_row():
    cfg = resnet_image(45, layer_type="bottleneck", downsample_in_first_stage=True)
    enc = CNNEncoder(cfg).eval()
    x = torch.randn(2, 3, 45, 45)
    with torch.no_grad():
        fmap, tokens = enc.resnet.features(x), enc(x)
    side = cfg.resnet.feature_size(45)  # 45 -> 23 -> 12 -> 6 (first stage) -> 3
    assert fmap.shape == (2, 24, side, side) and side == 3
    assert tokens.shape == (2, cfg.num_tokens, cfg.media_dim) == (2, 9, 24)
    assert torch.equal(tokens[:, 4], fmap[:, :, 1, 1])  # token r * w + c is pixel (r, c) of the map
    with pytest.raises(ValueError, match="45x45"):
        enc(torch.randn(1, 3, 32, 32))


def test_configs_without_an_encoder_stay_vit_and_the_choice_is_validated():
    old = from_dict(MultimodalTransformer, {"image": {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1,
                                                      "heads": 2}})
    assert old.image.encoder == "vit" and old.image.resnet is None and old.image.media_dim == 32
    assert isinstance(MultimodalTransformerModel(old).image_encoder, ViTEncoder)
    assert ViTConfig(encoder="resnet").resnet == ResNetConfig()  # ResNet-50's layout by default
    with pytest.raises(ConfigError, match="resnet.*encoder is 'vit'"):
        from_dict(ViTConfig, {"resnet": TINY_RESNET})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(ViTConfig, {"encoder": "alexnet"})
    with pytest.raises(ConfigError, match="too small"):
        from_dict(ViTConfig, {"encoder": "resnet", "image_size": 0, "resnet": TINY_RESNET})
    with pytest.raises(ValueError, match="video encoder is a ViT"):
        from multimodaltransformer.modalities.video import VideoConfig
        VideoConfig(encoder="resnet")


@pytest.mark.parametrize("fusion", ["early", "cross", "graph"])
def test_every_fusion_reads_the_tokens(fusion):
    cfg = from_dict(MultimodalTransformer, {"image": to_dict(resnet_image()), "fusion": {"type": fusion},
                                            "decoder": {"dim": 32, "depth": 1, "heads": 2, "vocab_size": 50,
                                                        "max_seq_len": 64}})
    model = MultimodalTransformerModel(cfg).eval()
    assert model.num_media_tokens == (16 if fusion != "cross" else 0)  # 32 -> 16 -> 8 -> 8 -> 4: 4 x 4 tokens
    ids = torch.randint(0, 50, (2, 7))
    out = model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32), labels=ids)
    assert out.logits.shape[0] == 2 and torch.isfinite(out.loss)


def test_save_and_load_give_identical_logits(tokenizer, tmp_path):
    from dataclasses import replace

    cfg = replace(tiny_config(tokenizer.vocab_size), image=resnet_image())
    torch.manual_seed(0)
    model = MultimodalTransformerModel(cfg)
    model.train()(input_ids=torch.randint(0, 50, (4, 5)), pixel_values=torch.randn(4, 3, 32, 32))  # move BN stats
    model.eval().tokenizer = tokenizer
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["image"]["encoder"] == "resnet"
    loaded = MultimodalTransformerModel.from_pretrained(tmp_path)
    assert loaded.config == model.config
    bn = "image_encoder.resnet.stem.bn.running_mean"
    assert torch.equal(loaded.state_dict()[bn], model.state_dict()[bn]) and model.state_dict()[bn].abs().sum() > 0
    ids, pv = torch.randint(0, 50, (2, 6)), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, pixel_values=pv).logits,
                                   model(input_ids=ids, pixel_values=pv).logits, atol=0, rtol=0)


def test_a_trained_resnet_classifier_loads_into_the_encoder():
    """The encoder keeps the network under `resnet.`, as the classifier model (and its HF import) does."""
    cfg = resnet_image()
    classifier = ResNetClassifier(ResNetClassifierConfig(**TINY_RESNET, num_labels=3))
    enc = CNNEncoder(cfg)
    enc.load_state_dict({k: v for k, v in classifier.state_dict().items() if k.startswith("resnet.")})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc.eval()(x), classifier.eval()(x).last_hidden_state.flatten(2).transpose(1, 2))


def test_resnet_encoder_trains_on_shapes(shapes_dir, tmp_path):
    from multimodaltransformer.train.config import load_run_config
    from multimodaltransformer.train.trainer import train

    m = str(shapes_dir / "manifest.jsonl")
    image = json.dumps(to_dict(resnet_image()))
    run = load_run_config("shapes-tiny", [
        f"model.image={image}", "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 64}",
        "data.tokenizer_vocab_size=300", "train.batch_size=8", "train.max_steps=16", "train.warmup_steps=2",
        "train.save_every=100", "train.eval_every=100", "train.log_every=4", f"data.train={m}", f"data.val={m}"])
    train(run, tmp_path, progress=False)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0], losses
    model = MultimodalTransformerModel.from_pretrained(tmp_path / "model")
    assert isinstance(model.image_encoder, CNNEncoder) and model.config.image.resnet == resnet_image().resnet
