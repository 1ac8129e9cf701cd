"""SpokenShapes: eSpeak NG through ctypes, the clips and manifest records, `mmt data spoken`."""

import json
import subprocess
import sys
import wave

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from multimodaltransformer.data import spoken  # noqa: E402
from multimodaltransformer.data.tts import DIALECTS, SpeechError, Voice, speaker, variants  # noqa: E402


def test_espeak_speaks_each_dialect_and_rate_changes_the_length():
    tts = speaker()
    assert tts.sampling_rate == 22050
    text = "is there a small green diamond?"
    for dialect in DIALECTS:
        x = tts.say(text, Voice(dialect))
        assert x.dtype == np.float32 and 0.5 < len(x) / tts.sampling_rate < 5 and 0.05 < np.abs(x).max() <= 1
    slow, fast = (len(tts.say(text, Voice("en-US", "f3", rate))) for rate in (120, 220))
    assert slow > 1.4 * fast


def test_every_shipped_variant_loads():
    names = variants()
    assert len(names) > 50 and "f3" in names
    tts = speaker()
    for v in names[::10]:
        assert len(tts.say("red", Voice("en", v))) > 0


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(SpeechError, match="no voice 'xx-nowhere'"):
        speaker().say("hello", Voice("xx-nowhere"))


@pytest.fixture(scope="module")
def spoken_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("spoken")
    spoken.generate(out, split="test", n=4, seed=3, progress=False)
    return out


def test_records_pair_each_clip_with_its_transcript_and_spoken_questions_with_their_image(spoken_dir):
    rows = [json.loads(line) for line in (spoken_dir / "manifest.jsonl").read_text().splitlines()]
    asr = [r for r in rows if r["task"] == "asr" and r["target"]]
    vqa = [r for r in rows if r["task"] == "vqa"]
    assert len(asr) == 4 * 3 and len(vqa) == 4 * 2  # a caption and two questions an image
    for r in vqa:
        assert r["prompt"] == "" and (spoken_dir / r["image"]).is_file() and r["target"]
        same_clip = next(a for a in asr if a["audio"] == r["audio"])
        assert same_clip["target"] == r["question"]  # the question exists only as audio
    for r in asr:
        with wave.open(str(spoken_dir / r["audio"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert 0.3 < w.getnframes() / 16000 < 10
        assert r["voice"]["dialect"] in DIALECTS and 120 <= r["voice"]["rate"] <= 220
    assert len({json.dumps(r["voice"], sort_keys=True) for r in asr}) == len(asr)  # a voice per clip


def test_some_clips_hold_no_speech_and_an_empty_transcript(tmp_path):
    spoken.generate(tmp_path, split="train", n=60, seed=0, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    silent = [r for r in rows if r["task"] == "asr" and r["target"] == ""]
    assert 0 < len(silent) < 12
    for r in silent:
        with wave.open(str(tmp_path / r["audio"])) as w:
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768
        assert 0.4 < len(x) / 16000 < 3.1 and np.abs(x).max() < 0.05


def test_the_records_are_deterministic_and_the_clips_nearly(spoken_dir, tmp_path):
    """Texts, voices and answers are seeded; eSpeak NG carries some waveform state (its pitch flutter)
    from one utterance to the next, so samples differ slightly between runs, lengths hardly at all."""
    again = spoken.generate(tmp_path, split="test", n=4, seed=3, progress=False)
    assert again.read_text() == (spoken_dir / "manifest.jsonl").read_text()
    for p in sorted((spoken_dir / "audio").iterdir()):
        with wave.open(str(p)) as a, wave.open(str(tmp_path / "audio" / p.name)) as b:
            assert abs(a.getnframes() - b.getnframes()) <= 0.02 * a.getnframes()


def test_cli_writes_a_split(tmp_path):
    out = subprocess.run([sys.executable, "-m", "multimodaltransformer", "data", "spoken", "--split", "val",
                          "--n", "2", "--questions", "1", "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert len(rows) == 2 * 2 + 2 and "wrote" in out.stdout
