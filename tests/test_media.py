"""Modalities as a keyed interface: an audio encoder beside the image's in one model, batches
with any subset of modalities per row, and the data pipeline and evaluation around them."""

import json
import math
import wave

import numpy as np
import pytest
import torch
from batch_utils import decode_joining

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
    frames = batch["feature_attention_mask"][:1]  # the clip's own frames, not the batch's padding
    ctc = m.ctc_loss(m.audio_encoder(batch["input_features"][:1], frames), batch["ctc_targets"][:1],
                     batch["ctc_lengths"][:1], m.audio_encoder.token_mask(frames).sum(1))
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


# ---- a pretrained (Whisper) audio encoder, and spoken prompts answered through their transcript ----

WHISPER_AUDIO = {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 48, "seconds": 2, "stride": 2}  # 100 positions


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """A tiny random Whisper (2 encoder blocks, 100 positions) saved in Hugging Face format."""
    import transformers as hf
    from hub_utils import perturb, save

    torch.manual_seed(0)
    cfg = hf.WhisperConfig(d_model=32, encoder_attention_heads=2, decoder_attention_heads=2, encoder_layers=2,
                           decoder_layers=1, encoder_ffn_dim=48, decoder_ffn_dim=48, num_mel_bins=80,
                           max_source_positions=100, max_target_positions=16, vocab_size=60,
                           decoder_start_token_id=1, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                           suppress_tokens=None, begin_suppress_tokens=None)
    ref = perturb(hf.WhisperForConditionalGeneration(cfg), scale=0.3).eval()
    return ref, save(ref, tmp_path_factory.mktemp("whisper"))


def test_a_whisper_checkpoint_initialises_the_audio_encoder_and_frozen_keeps_it(whisper_dir, tokenizer):
    """The first `depth` blocks of the checkpoint's encoder (then its final norm) are what the
    model's audio encoder computes; `frozen` leaves them out of training."""
    from multimodaltransformer.train.pretrained import load_network, read_pretrained_audio

    ref, path = whisper_dir
    cfg = speech_config(vocab_size=tokenizer.vocab_size)
    cfg.media["audio"] = AudioConfig(**WHISPER_AUDIO, pretrained=str(path), frozen=True)
    model = MultimodalTransformerModel(cfg)
    load_network(model.audio_encoder, read_pretrained_audio(cfg.media["audio"]), str(path))
    x = torch.randn(2, 80, 200)  # HF's encoder takes exactly its window
    with torch.no_grad():
        hidden = ref.model.encoder(x, output_hidden_states=True).hidden_states[1]  # after block 0
        torch.testing.assert_close(model.audio_encoder(x), ref.model.encoder.layer_norm(hidden), atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in model.audio_encoder.parameters())
    ids, px, feats = _inputs(frames=200)
    model(input_ids=ids, pixel_values=px, input_features=feats, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.audio_fusion.parameters())  # the rest trains

    deep = AudioConfig(**{**WHISPER_AUDIO, "depth": 3}, pretrained=str(path))
    with pytest.raises(ConfigError, match="has 2 encoder blocks"):
        read_pretrained_audio(deep)
    from multimodaltransformer.modalities.audio import AudioEncoder

    two = AudioEncoder(AudioConfig(**{**WHISPER_AUDIO, "depth": 2}).encoder_config())
    with pytest.raises(ConfigError, match=r"differs from the audio encoder's \(missing \['transformer.blocks.1"):
        load_network(two, read_pretrained_audio(cfg.media["audio"]), str(path), "model.media.audio.pretrained")
    with pytest.raises(ValueError, match="stride must be 2"):
        AudioConfig(**{**WHISPER_AUDIO, "stride": 4}, pretrained=str(path))
    with pytest.raises(ValueError, match="'attend' or 'transcribe'"):
        AudioConfig(**WHISPER_AUDIO, prompts="listen")


def test_a_clips_answer_does_not_depend_on_its_batch(whisper_dir, tokenizer):
    """The padding a batch adds to its shorter clips is masked: out of the audio encoder's attention
    (a Whisper's reads every key), out of the decoder's cross-attention and the CTC frames, in
    training and in cached decoding alike. A clip's features, loss and greedy transcript are the
    same alone or beside a longer clip."""
    from multimodaltransformer.data.collate import collate_media
    from multimodaltransformer.generation import generate
    from multimodaltransformer.modalities.text import encode_prompt
    from multimodaltransformer.train.pretrained import load_network, read_pretrained_audio

    _, path = whisper_dir
    cfg = speech_config(vocab_size=tokenizer.vocab_size)
    cfg.media["audio"] = AudioConfig(**WHISPER_AUDIO, pretrained=str(path))
    torch.manual_seed(0)
    model = MultimodalTransformerModel(cfg).eval()
    load_network(model.audio_encoder, read_pretrained_audio(cfg.media["audio"]), str(path))
    model.tokenizer = tokenizer
    proc = model.processors["audio"]
    g = torch.Generator().manual_seed(0)
    short, long = (proc.prepare(torch.randn(n, generator=g) * 0.1) for n in (4000, 28000))  # 0.25 s, 1.75 s
    alone = collate_media([{"audio": short}], {"audio": proc})
    both = collate_media([{"audio": short}, {"audio": long}], {"audio": proc})
    assert alone["input_features"].shape[-1] == 100 and both["input_features"].shape[-1] == 200
    assert both["feature_attention_mask"].sum(1).tolist() == [25, 175]
    enc = model.audio_encoder
    with torch.no_grad():
        a = enc(alone["input_features"], alone["feature_attention_mask"])[0, :13]  # the clip's 13 tokens
        b = enc(both["input_features"], both["feature_attention_mask"])[0, :13]
        unmasked = enc(both["input_features"])[0, :13]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, unmasked, atol=1e-3)  # without the mask the padding leaks in

    ids = torch.tensor([encode_prompt(tokenizer, "")] * 2)
    first = lambda batch, n: {k: v[:n] for k, v in batch.items()}  # noqa: E731
    with torch.no_grad():
        one = generate(model, ids[:1], **alone, max_new_tokens=6)[0]
        two = generate(model, ids, **both, max_new_tokens=6)[0]
        loss = lambda batch: model(input_ids=ids[:1], labels=ids[:1], **first(batch, 1)).logits  # noqa: E731
        torch.testing.assert_close(loss(alone), loss(both), atol=1e-5, rtol=1e-5)
    assert one.tolist() == two.tolist()


def test_a_run_starts_from_the_whisper_encoder_and_its_model_reloads_without_it(whisper_dir, speech_manifest,
                                                                                tmp_path):
    """`mmt train` with model.media.audio.pretrained: the saved model's (frozen) encoder is the checkpoint's."""
    from multimodaltransformer.train.config import load_run_config
    from multimodaltransformer.train.pretrained import read_pretrained_audio
    from multimodaltransformer.train.trainer import train

    _, path = whisper_dir
    m = str(speech_manifest)
    audio = {**WHISPER_AUDIO, "pretrained": str(path), "frozen": True}
    run = load_run_config("shapes-tiny", [
        "model.image={image_size: 32, patch_size: 8, dim: 32, depth: 1, heads: 2}", f"model.media={{audio: {json.dumps(audio)}}}",
        "model.fusion={type: cross}", "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 64}",
        "data.tokenizer_vocab_size=300", "train.batch_size=3", "train.max_steps=2", "train.warmup_steps=1",
        "train.save_every=100", "train.eval_every=100", f"data.train={m}", f"data.val={m}", "train.eval_examples=2"])
    train(run, tmp_path / "run", progress=False)
    model = MultimodalTransformerModel.from_pretrained(tmp_path / "run" / "model")
    state = read_pretrained_audio(model.config.media["audio"])
    ours = model.audio_encoder.state_dict()
    assert set(ours) == set(state) and all(torch.equal(ours[k], state[k]) for k in ours)


@pytest.fixture
def transcribing(tokenizer):
    torch.manual_seed(0)
    cfg = speech_config(vocab_size=tokenizer.vocab_size)
    cfg.media["audio"] = AudioConfig(**{**AUDIO, "prompts": "transcribe"})
    m = MultimodalTransformerModel(cfg).eval()
    m.tokenizer = tokenizer
    return m


def test_a_spoken_prompt_is_transcribed_then_answered_as_text(transcribing, speech_manifest):
    """prompts: transcribe: a clip in place of the prompt is the model's own transcript of it, then the
    answer to that text with the image; written prompts and transcriptions are answered as before."""
    from dataclasses import replace

    from multimodaltransformer.evaluate import heard, predict

    spoken, written = read_manifest(speech_manifest)[1:]
    transcript = predict(transcribing, [replace(spoken, task="asr", image=None)], max_new_tokens=48)[0]
    assert transcript  # a random model still writes something
    as_text = replace(spoken, prompt=transcript, audio=None)
    assert predict(transcribing, [spoken], max_new_tokens=4) == predict(transcribing, [as_text], max_new_tokens=4)
    (h,) = heard(transcribing, [spoken])
    assert (h.prompt, h.audio, h.image, h.meta["heard"]) == (transcript, None, spoken.image, transcript)
    assert heard(transcribing, [written]) == [written]
    clip = read_manifest(speech_manifest)[0]
    assert heard(transcribing, [clip]) == [clip]  # a transcription is not a spoken prompt
    alone = replace(spoken, task="generate", image=None)
    assert heard(transcribing, [alone]) == [alone]  # nor a clip alone (`mmt generate --audio`): it is transcribed


def test_the_server_answers_a_spoken_prompt_through_its_transcript(transcribing, tmp_path, shapes_dir):
    import base64

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from multimodaltransformer.data.manifest import Example
    from multimodaltransformer.evaluate import predict
    from multimodaltransformer.serve.app import ServerConfig, create_app

    image = next(e.image for e in read_manifest(shapes_dir))
    clip = _tone(tmp_path / "q.wav", 1.0)
    parts = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                 + base64.b64encode(image.read_bytes()).decode()}},
             {"type": "input_audio", "input_audio": {"data": base64.b64encode(clip.read_bytes()).decode(),
                                                     "format": "wav"}}]
    with TestClient(create_app(transcribing, ServerConfig(model_name="m", max_batch=4, request_timeout_s=30))) as c:
        r = c.post("/v1/chat/completions", json={"model": "m", "max_tokens": 4, "temperature": 0,
                                                  "messages": [{"role": "user", "content": parts}]})
    want = predict(transcribing, [Example("x", "vqa", "", None, image=image, audio=clip)], max_new_tokens=4)[0]
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == want


def test_the_servers_running_batch_keeps_each_clips_padding_mask(model, tokenizer):
    """Clips of one padded length but different real lengths join the server's running batch
    (generation/batching.py) at different steps and one leaves early: each row's greedy tokens equal
    `generate` on its clip alone, so the rows' cross-attention masks stay with their rows."""
    from multimodaltransformer.data.collate import collate_media
    from multimodaltransformer.generation import generate
    from multimodaltransformer.generation.batching import ContinuousBatch
    from multimodaltransformer.modalities.text import encode_prompt

    with torch.no_grad():  # sharper attention over the clip's tokens: padding read by mistake shows
        for p in model.audio_fusion.parameters():
            p.mul_(8)
    proc = model.processors["audio"]
    g = torch.Generator().manual_seed(3)
    clips = [collate_media([{"audio": proc.prepare(torch.randn(n, generator=g) * 0.1)}], {"audio": proc})
             for n in (1600, 4000, 15000)]  # 0.1, 0.25, 0.94 s: all padded to 1 s
    assert {c["input_features"].shape for c in clips} == {(1, 80, 100)}
    ids = torch.tensor([encode_prompt(tokenizer, "")])
    alone = [generate(model, ids, **c, max_new_tokens=6, eos_token_id=[])[0, ids.shape[1]:].tolist() for c in clips]
    assert len({tuple(a) for a in alone}) > 1  # the masks make a difference to compare
    def solo(clip: dict, n: int) -> list[torch.Tensor]:  # one row's logits, decoding alone
        b = ContinuousBatch(model)
        out = [b.add([ids], clip, [1], tokenizer.pad_id)[0]]
        for _ in range(n - 1):
            out.append(b.step(out[-1].argmax(-1, keepdim=True))[0])
        return out

    batch = ContinuousBatch(model)
    both = {k: torch.cat([clips[1][k], clips[2][k]]) for k in clips[1]}
    with torch.inference_mode():  # row 0 leaves early, the two other clips join at step 1
        got = decode_joining(batch, lambda: batch.add([ids], clips[0], [1], tokenizer.pad_id),
                             lambda: batch.add([ids, ids], both, [1, 1], tokenizer.pad_id), join_at=1,
                             limits=[3, 6, 6], steps=8)
        for r, clip in enumerate(clips):
            assert len(got[r]) >= 3
            assert [int(x.argmax()) for x in got[r]] == alone[r][:len(got[r])]
            torch.testing.assert_close(torch.stack(got[r]), torch.stack(solo(clip, len(got[r]))), atol=1e-4, rtol=1e-4)
