"""Modalities as a keyed interface: an audio encoder beside the image's in one model, batches
with any subset of modalities per row, and the data pipeline and evaluation around them."""

import json
import math
import wave

import numpy as np
import pytest
import torch

from multimodaltransformer import MultimodalTransformer, MultimodalTransformerModel
from multimodaltransformer.config import ConfigError, from_dict
from multimodaltransformer.data import ManifestDataset, TrainCollator, read_manifest
from multimodaltransformer.fusion import FusionConfig
from multimodaltransformer.modalities import MODALITIES, AudioConfig, MediaError, ViTConfig, input_keys
from multimodaltransformer.models import DecoderConfig

AUDIO = {"dim": 32, "depth": 1, "heads": 2, "seconds": 2, "stride": 4}


def speech_config(fusion: str = "cross", vocab_size: int = 320) -> MultimodalTransformer:
    return MultimodalTransformer(image=ViTConfig(image_size=32, patch_size=8, dim=32, depth=1, heads=2),
                                 media={"audio": dict(AUDIO)}, fusion=FusionConfig(fusion),
                                 decoder=DecoderConfig(dim=32, depth=2, heads=4, vocab_size=vocab_size,
                                                       max_seq_len=96))


def test_registry_names_the_modalities_and_their_model_keywords():
    assert {"image", "audio"} <= set(MODALITIES)
    assert input_keys()["pixel_values"] == "image" and input_keys()["input_features"] == "audio"


def test_media_config_is_parsed_validated_and_round_trips():
    cfg = speech_config()
    assert isinstance(cfg.media["audio"], AudioConfig) and cfg.media["audio"].num_tokens == 50
    assert list(cfg.modalities) == ["image", "audio"]
    again = from_dict(MultimodalTransformer, json.loads(json.dumps(__import__("dataclasses").asdict(cfg))))
    assert again == cfg
    with pytest.raises(ValueError, match="not a modality"):
        MultimodalTransformer(media={"smell": {}})
    with pytest.raises(ConfigError, match="unknown field"):
        MultimodalTransformer(media={"audio": {"depht": 2}})
    with pytest.raises(ValueError, match="stride"):
        MultimodalTransformer(media={"audio": {"stride": 3}})
    with pytest.raises(ValueError, match="reads images only"):
        MultimodalTransformerModel(MultimodalTransformer(media={"audio": dict(AUDIO)}, fusion=FusionConfig("late")))


@pytest.fixture
def model(tokenizer):
    torch.manual_seed(0)
    m = MultimodalTransformerModel(speech_config(vocab_size=tokenizer.vocab_size)).eval()
    m.tokenizer = tokenizer
    return m


def _inputs(B=3, frames=200):
    torch.manual_seed(1)
    return (torch.randint(5, 300, (B, 7)), torch.randn(B, 3, 32, 32), torch.randn(B, 80, frames))


def test_both_modalities_reach_the_text(model):
    ids, px, feats = _inputs()
    both = model(input_ids=ids, pixel_values=px, input_features=feats).logits
    image_only = model(input_ids=ids, pixel_values=px).logits
    audio_only = model(input_ids=ids, input_features=feats).logits
    assert both.shape[:2] == (3, 7)
    assert not torch.allclose(both, image_only) and not torch.allclose(both, audio_only)
    with pytest.raises(TypeError, match="unknown model input"):
        model.embed(ids, None, px, smell_values=feats)
    cfg = speech_config()
    no_audio = MultimodalTransformerModel(MultimodalTransformer(image=cfg.image, decoder=cfg.decoder,
                                                                fusion=FusionConfig("cross")))
    with pytest.raises(ValueError, match=r"no audio encoder \(model.media.audio\)"):
        no_audio(input_ids=ids, input_features=feats)


def test_a_row_without_a_modality_answers_as_if_run_without_it(model):
    """media_mask: row 1 has no image in a batch where the others do; its logits equal the row run
    alone with audio only (the padded image memory is masked out of its attention)."""
    ids, px, feats = _inputs()
    mask = {"image": torch.tensor([True, False, True])}
    mixed = model(input_ids=ids, pixel_values=px, input_features=feats, media_mask=mask).logits
    alone = model(input_ids=ids[1:2], input_features=feats[1:2]).logits
    torch.testing.assert_close(mixed[1], alone[0], atol=1e-5, rtol=1e-5)
    full = model(input_ids=ids[[0]], pixel_values=px[[0]], input_features=feats[[0]]).logits
    torch.testing.assert_close(mixed[0], full[0], atol=1e-5, rtol=1e-5)


def test_prefix_fusion_refuses_rows_without_a_modality():
    m = MultimodalTransformerModel(speech_config("early")).eval()
    ids, px, feats = _inputs()
    assert m(input_ids=ids, pixel_values=px, input_features=feats).logits.shape[:2] == (3, 7)
    assert m.config.num_media_tokens == 16 + 50
    with pytest.raises(ValueError, match="need cross or gated fusion"):
        m(input_ids=ids, pixel_values=px, input_features=feats, media_mask={"image": torch.tensor([1, 0, 1]).bool()})


def test_a_shorter_batch_reads_fewer_audio_tokens_and_a_longer_one_is_refused(model):
    enc = model.audio_encoder
    assert enc(torch.randn(2, 80, 100)).shape == (2, 25, 32)
    with pytest.raises(ValueError, match="up to 200"):
        enc(torch.randn(2, 80, 204))


def test_save_and_load_keep_the_audio_encoder(model, tmp_path, tokenizer):
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["media"]["audio"]["seconds"] == 2
    again = MultimodalTransformerModel.from_pretrained(tmp_path)
    ids, px, feats = _inputs()
    torch.testing.assert_close(again(input_ids=ids, pixel_values=px, input_features=feats).logits,
                               model(input_ids=ids, pixel_values=px, input_features=feats).logits)


def _tone(path, seconds, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * math.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())
    return path


@pytest.fixture
def speech_manifest(tmp_path, shapes_dir):
    image = next(e.image for e in read_manifest(shapes_dir))
    rows = [{"id": "a", "task": "asr", "audio": str(_tone(tmp_path / "a.wav", 0.5)), "target": "red circle"},
            {"id": "b", "task": "vqa", "audio": str(_tone(tmp_path / "b.wav", 1.2)), "image": str(image),
             "prompt": "", "target": "yes"},
            {"id": "c", "task": "vqa", "image": str(image), "prompt": "is there a red circle?", "target": "no"}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "manifest.jsonl"


def test_collator_batches_any_subset_of_modalities_per_row(model, speech_manifest, tokenizer):
    ds = ManifestDataset(read_manifest(speech_manifest), tokenizer, model.processors, 60, pack=True)
    assert len(ds) == 3  # each row its own media
    batch = TrainCollator(tokenizer.pad_id, model.processors)([ds[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["input_features"].shape == (3, 80, 200)  # the longest clip (1.2 s) rounded up to whole seconds
    assert batch["media_mask"]["image"].tolist() == [False, True, True]
    assert batch["media_mask"]["audio"].tolist() == [True, True, False]
    model.tokenizer = tokenizer
    loss = model(batch).loss
    assert torch.isfinite(loss)
    short = TrainCollator(tokenizer.pad_id, model.processors)([ds[0]])
    assert short["input_features"].shape == (1, 80, 100) and "media_mask" not in short


def test_a_clip_longer_than_the_window_is_a_clear_error(model, tmp_path, tokenizer):
    from multimodaltransformer.data import DataError

    long = _tone(tmp_path / "long.wav", 2.5)
    with pytest.raises(MediaError, match="2.50 s is longer than the model's 2 s window"):
        model.processors["audio"].prepare(long)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "x", "task": "asr", "audio": str(long), "target": "a"}) + "\n")
    with pytest.raises(DataError, match="long.wav"):
        ManifestDataset(read_manifest(tmp_path / "m.jsonl"), tokenizer, model.processors, 60)


def test_an_image_only_model_refuses_audio_rows(tiny_model, speech_manifest, tokenizer):
    from multimodaltransformer.data import DataError

    with pytest.raises(DataError, match="has an audio but the model has no audio encoder"):
        ManifestDataset(read_manifest(speech_manifest), tokenizer, tiny_model.processors, 60)


def test_predict_groups_rows_by_their_modalities(model, speech_manifest, tokenizer):
    from multimodaltransformer.evaluate import predict

    model.tokenizer = tokenizer
    examples = read_manifest(speech_manifest)
    preds = predict(model, examples, max_new_tokens=4)
    assert len(preds) == 3
    for ex, p in zip(examples, preds):  # each as if predicted alone
        assert predict(model, [ex], max_new_tokens=4) == [p]


def test_the_server_hears_input_audio_beside_an_image(model, tokenizer, tmp_path, shapes_dir):
    """A spoken question with an image, and a clip alone, through the chat API: the answers are the
    ones `predict` gives for the same rows; a clip too long or not audio is a 400."""
    import base64

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from multimodaltransformer.data.manifest import Example
    from multimodaltransformer.evaluate import predict
    from multimodaltransformer.serve.app import ServerConfig, create_app

    model.tokenizer = tokenizer
    image = next(e.image for e in read_manifest(shapes_dir))
    clip = _tone(tmp_path / "q.wav", 1.0)
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip.read_bytes()).decode(),
                                                    "format": "wav"}}
    picture = {"type": "image_url",
               "image_url": {"url": "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()}}
    app = create_app(model, ServerConfig(model_name="m", max_batch=4, request_timeout_s=30))
    with TestClient(app) as c:
        assert c.get("/v1/examples").json()["kind"]["inputs"] == ["image", "audio", "text"]

        def ask(*parts):
            r = c.post("/v1/chat/completions", json={"model": "m", "max_tokens": 6, "temperature": 0, "messages": [
                {"role": "user", "content": list(parts)}]})
            return r.status_code, r.json()

        status, body = ask(picture, audio)
        want = predict(model, [Example("x", "vqa", "", None, image=image, audio=clip)], max_new_tokens=6)[0]
        assert status == 200 and body["choices"][0]["message"]["content"] == want
        status, body = ask(audio)
        want = predict(model, [Example("x", "asr", "", None, audio=clip)], max_new_tokens=6)[0]
        assert status == 200 and body["choices"][0]["message"]["content"] == want
        long = _tone(tmp_path / "long.wav", 3.0)
        status, body = ask({**audio, "input_audio": {"data": base64.b64encode(long.read_bytes()).decode(),
                                                     "format": "wav"}})
        assert status == 400 and "3.0 s of audio" in body["error"]["message"]
        status, body = ask({**audio, "input_audio": {"data": base64.b64encode(b"not a wav").decode(), "format": "wav"}})
        assert status == 400 and "input_audio" in body["error"]["message"]


def test_a_ctc_head_adds_its_loss_on_the_transcribed_rows(speech_manifest, tokenizer):
    from dataclasses import replace

    from multimodaltransformer.models.multimodal import HeadsConfig

    torch.manual_seed(0)
    cfg = replace(speech_config(vocab_size=tokenizer.vocab_size), heads=HeadsConfig(ctc_weight=0.5))
    m = MultimodalTransformerModel(cfg)
    ds = ManifestDataset(read_manifest(speech_manifest), tokenizer, m.processors, 60, pack=True)
    batch = TrainCollator(tokenizer.pad_id, m.processors)([ds[i] for i in range(3)])
    assert batch["ctc_lengths"].tolist() == [len(tokenizer.encode("red circle")), 0, 0]
    assert batch["ctc_targets"][0, :batch["ctc_lengths"][0]].tolist() == tokenizer.encode("red circle")
    with_ctc = m(batch).loss
    without = m({k: v for k, v in batch.items() if not k.startswith("ctc")}).loss
    ctc = m.ctc_loss(m.audio_encoder(batch["input_features"][:1]), batch["ctc_targets"][:1], batch["ctc_lengths"][:1])
    torch.testing.assert_close(with_ctc, without + 0.5 * ctc)
    with_ctc.backward()
    assert m.ctc_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs an audio encoder"):
        MultimodalTransformerModel(replace(cfg, media={}))


def test_generate_takes_audio_on_the_command_line_and_names_bad_clips(model, tmp_path, shapes_dir, capsys):
    """`mmt generate MODEL --audio PATH [--image PATH]`: a transcript, a spoken question; an empty,
    truncated, non-audio or too long clip is a clear error naming the file; stereo and 44.1 kHz are read."""
    from multimodaltransformer.cli import main
    from multimodaltransformer.data.manifest import Example
    from multimodaltransformer.evaluate import predict

    model.save_pretrained(tmp_path / "m")
    clip = _tone(tmp_path / "q.wav", 1.0)
    assert main(["generate", str(tmp_path / "m"), "--audio", str(clip), "--max-new-tokens", "5"]) == 0
    want = predict(model, [Example("x", "generate", "", None, audio=clip)], max_new_tokens=5)[0]
    assert capsys.readouterr().out.strip() == want
    image = next(e.image for e in read_manifest(shapes_dir))
    assert main(["generate", str(tmp_path / "m"), "--audio", str(clip), "--image", str(image)]) == 0
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * math.pi * 300 * t), np.sin(2 * math.pi * 500 * t)], 1) * 0.3 * 32767
    with wave.open(str(tmp_path / "stereo.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(stereo.astype("<i2").tobytes())
    assert main(["generate", str(tmp_path / "m"), "--audio", str(tmp_path / "stereo.wav")]) == 0
    capsys.readouterr()
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio at all")
    (tmp_path / "cut.wav").write_bytes(clip.read_bytes()[:30])
    for bad in ("empty.wav", "text.wav", "cut.wav", "missing.wav"):
        assert main(["generate", str(tmp_path / "m"), "--audio", str(tmp_path / bad)]) == 2
        assert bad in capsys.readouterr().err
    _tone(tmp_path / "long.wav", 2.5)
    assert main(["generate", str(tmp_path / "m"), "--audio", str(tmp_path / "long.wav")]) == 2
    assert "longer than the model's 2 s window" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "m"), "--prompt", "hi"]) == 2
    assert "reads image and audio: pass --image PATH and/or --audio PATH" in capsys.readouterr().err


def test_web_page_records_from_the_microphone_in_headless_chromium(model):
    """A model that sees and hears: the page offers the record button (Chromium's fake microphone):
    record, stop, send with no text; the clip reaches the API as WAV and an answer comes back."""
    import shutil

    pytest.importorskip("fastapi")
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: apt-get install -y chromium (make test installs it)")
    from test_serve import live_server

    from multimodaltransformer.serve.app import ServerConfig, create_app

    with live_server(create_app(model, ServerConfig(model_name="m"))) as port:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#model:has-text('model: m')")
            assert page.locator("#kind").inner_text() == "image + audio + text -> text"
            page.fill("#max_tokens", "4")
            page.click("#record")
            page.wait_for_selector("#record:has-text('stop recording')")
            page.wait_for_timeout(500)
            page.click("#record")
            page.wait_for_selector("#drop .clip:has-text('recording.wav')")
            page.press("#prompt", "Enter")
            page.wait_for_selector("[data-done='1']", state="attached", timeout=20_000)
            assert page.locator(".error").count() == 0, page.inner_text("#log")
            assert page.locator(".user audio").count() == 1
            browser.close()


def test_load_image_refuses_images_over_max_pixels_from_the_header():
    import io as _io

    from PIL import Image as _Image

    from multimodaltransformer.modalities.base import MediaError
    from multimodaltransformer.modalities.image import load_image

    buf = _io.BytesIO()
    _Image.new("RGB", (20, 30), "red").save(buf, format="PNG")
    with pytest.raises(MediaError, match="20x30 pixels, over the limit of 500"):
        load_image(buf.getvalue(), "upload", max_pixels=500)
    assert load_image(buf.getvalue(), "upload", max_pixels=600).size == (20, 30)
