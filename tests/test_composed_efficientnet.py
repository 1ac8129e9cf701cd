"""A CNN (EfficientNet) as the composed model's vision source: its feature map as image tokens,
frozen BatchNorm, the weights' preprocessing, save/load; `package:NAME` sources; the Fashion-MNIST
chat rows and the class-name scorer the real-image chat benchmark uses."""

import pytest
import torch

from multimodaltransformer.chat import ImageChat, SamplingOptions
from multimodaltransformer.data import ManifestDataset, TrainCollator, read_manifest
from multimodaltransformer.data.fashion import CHAT_QUESTIONS, CLASSES, mentioned_classes, rows
from multimodaltransformer.hub import compose, load_pretrained
from multimodaltransformer.hub.packages import resolve_model_source
from multimodaltransformer.modalities.preprocess import ImagePreprocessConfig
from multimodaltransformer.models.composed import ComposedConfig, ComposedModel
from multimodaltransformer.models.efficientnet import EfficientNet, EfficientNetConfig, StageConfig
from multimodaltransformer.nn.lora import LoRAConfig

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def effnet(tmp_path_factory):
    """A tiny random EfficientNet saved as `mmt-efficientnet`: 64 px -> 8x8x32 feature map, with
    BatchNorm statistics that are not the defaults (so eval vs train mode shows)."""
    torch.manual_seed(0)
    cfg = EfficientNetConfig(stages=[StageConfig(1, 3, 2, 1, 8), StageConfig(1, 3, 2, 2, 16)], stem_channels=8,
                             head_channels=32, num_classes=5, image_size=64,
                             preprocess=ImagePreprocessConfig(resize=64, crop_size=64, mean=MEAN, std=STD))
    model = EfficientNet(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    out = tmp_path_factory.mktemp("effnet") / "model"
    model.save_pretrained(out)
    return out


def _compose(effnet, parts, **kw):
    return compose(ComposedConfig(vision_source=str(effnet), language_source=str(parts / "gpt2"),
                                  freeze=["vision", "language"], lora=LoRAConfig(rank=2), **kw))


def _batch(model, shapes_dir):
    examples = read_manifest(shapes_dir)[:6]
    ds = ManifestDataset(examples, model.tokenizer, model.image_processor, 40, pack=True)
    return TrainCollator(model.tokenizer.pad_id, model.image_processor)([ds[i] for i in range(len(ds))])


def test_feature_map_tokens_pooling_and_preprocessing(effnet, parts):
    full = _compose(effnet, parts)
    assert full.num_media_tokens == 64  # 8 x 8 feature map, row-major
    proc = full.image_processor
    assert proc.image_size == 64 and list(proc.mean) == MEAN and list(proc.std) == STD  # as the weights expect
    pooled = _compose(effnet, parts, vision_pool=2, image_size=32)
    assert pooled.num_media_tokens == 4 and pooled.image_processor.image_size == 32
    assert full.max_seq_len == 96 and _compose(effnet, parts, max_seq_len=40).max_seq_len == 40  # a capped context
    assert not any("classifier" in n for n, _ in pooled.named_parameters())  # an encoder: no ImageNet head
    px = torch.randn(2, 3, 64, 64)
    ref = EfficientNet.from_pretrained(effnet).eval().features(px)  # (B, C, h, w)
    torch.testing.assert_close(full.eval().image_encoder(px), ref.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match="vision_pool apply to a CNN"):
        compose(ComposedConfig(vision_source=str(parts / "vit"), language_source=str(parts / "gpt2"), vision_pool=2))


def test_trains_a_step_with_frozen_batchnorm_and_reloads_equal(effnet, parts, shapes_dir, tmp_path):
    model = _compose(effnet, parts, vision_pool=2).train()
    stats = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    batch = _batch(model, shapes_dir)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = model(batch).loss
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is not None for p in model.fusion.parameters())
    for k, v in model.image_encoder.state_dict().items():  # frozen: BatchNorm kept its running statistics
        assert torch.equal(v, stats[k]), k
    model.eval().save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert isinstance(loaded, ComposedModel) and loaded.num_media_tokens == 4
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, atol=0, rtol=0)
    ids = torch.tensor([[model.tokenizer.bos_id, *model.tokenizer.encode("what is this?"), model.tokenizer.sep_id]])
    px = batch["pixel_values"][:1]
    assert torch.equal(loaded.generate(ids, pixel_values=px, max_new_tokens=4),
                       model.generate(ids, pixel_values=px, max_new_tokens=4))


def test_image_chat_prompts_as_the_server_does(effnet, parts, shapes_dir):
    from multimodaltransformer.modalities.text import encode_prompt

    model = _compose(effnet, parts, vision_pool=2).eval()
    image = read_manifest(shapes_dir)[0].image
    chat = ImageChat(model, image, options=SamplingOptions(max_new_tokens=8))
    first = chat.ask("what is this?")
    assert isinstance(first, str)
    px = model.image_processor(image)[None]
    ids = torch.tensor([encode_prompt(model.tokenizer, "what is this?")])
    ref = model.generate(ids, pixel_values=px, max_new_tokens=8)
    assert first == model.tokenizer.decode(ref[0, ids.shape[1]:].tolist())
    chat.ask("and its colour?")  # the second turn reads the first as context, as serve/template.py builds it
    assert chat.prompt_ids()[1:] != encode_prompt(model.tokenizer, "and its colour?")[1:]
    with pytest.raises(ValueError, match="takes no images"):
        ImageChat(load_pretrained(parts / "gpt2"), image)


def test_package_sources_resolve_to_the_one_model_file(tmp_path, monkeypatch):
    pkg = tmp_path / "mmt_fake_weights"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never imported')\n")
    (pkg / "models" / "net.pth").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_model_source("package:mmt_fake_weights") == str(pkg / "models" / "net.pth")
    assert resolve_model_source("some/dir") == "some/dir"
    (pkg / "other.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="expected one model file"):
        resolve_model_source("package:mmt_fake_weights")
    with pytest.raises(ValueError, match="no installed package"):
        resolve_model_source("package:mmt_no_such_package")


def test_fashion_chat_rows_name_the_class_and_are_deterministic():
    for label, name in enumerate(CLASSES):
        chat = [r for r in rows(7, label, "train", 0, chat=3) if r["task"] == "chat"]
        assert len(chat) == 3 and len({r["prompt"] for r in chat}) == 3
        assert all(r["prompt"] in CHAT_QUESTIONS and mentioned_classes(r["target"]) == [name] for r in chat)
        assert chat == [r for r in rows(7, label, "train", 0, chat=3) if r["task"] == "chat"]
        assert rows(7, label, "train", 0) == [r for r in rows(7, label, "train", 0, chat=3) if r["task"] != "chat"]
    assert mentioned_classes("It is a t-shirt/top.") == ["t-shirt/top"]  # not "shirt" too
    assert mentioned_classes("a Shirt, or trousers; an ankle boot") == ["shirt", "trouser", "ankle boot"]
    assert mentioned_classes("a sweatshirt in a handbag") == []


def test_served_like_our_own_models_with_the_same_answer(effnet, parts, shapes_dir):
    """A chat completion with the image as a data URL answers what ImageChat answers."""
    import base64

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from multimodaltransformer.serve.app import ServerConfig, create_app

    model = _compose(effnet, parts, vision_pool=2).eval()
    image = read_manifest(shapes_dir)[0].image
    expected = ImageChat(model, image, options=SamplingOptions(max_new_tokens=6)).ask("what is this?")
    url = "data:image/png;base64," + base64.b64encode(open(image, "rb").read()).decode()
    with TestClient(create_app(model, ServerConfig(model_name="m", max_batch=2, request_timeout_s=30))) as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "temperature": 0, "max_tokens": 6, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "what is this?"}]}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected.strip()  # the server strips the answer
