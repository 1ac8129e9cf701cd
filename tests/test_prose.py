"""SpokenProse: English sentences of Python's documentation read by eSpeak NG (rehearsal for ASR fine-tuning)."""

import json
import subprocess
import sys
import wave

import pytest

pytest.importorskip("espeakng_loader")

from multimodaltransformer.data import DataError, prose  # noqa: E402
from multimodaltransformer.data.sources import read_source  # noqa: E402


def test_splits_hold_plain_sentences_and_share_none():
    splits = {s: set(prose.sentences(s)) for s in prose.SPLITS}
    assert len(splits["train"]) > 1000 and len(splits["val"]) > 100 and len(splits["test"]) > 100
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"])
    for s in list(splits["train"])[:300]:
        assert s[0].isupper() and s[-1] in ".?!" and 5 <= len(s.split()) <= 24
        assert not any(c.isdigit() or c in "()[]{}_=\"`" for c in s), s
    with pytest.raises(ValueError, match="unknown split 'novel'"):
        prose.sentences("novel")


def test_clips_and_records(tmp_path):
    path = prose.generate(tmp_path, split="val", n=3, seed=5, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["task"] for r in rows] == ["asr"] * 3 and len({r["target"] for r in rows}) == 3
    assert all(r["target"] in prose.sentences("val") for r in rows)
    for r in rows:
        with wave.open(str(tmp_path / r["audio"])) as w:
            assert (w.getframerate(), w.getnchannels()) == (16000, 1)
            assert 1.0 < w.getnframes() / 16000 < 15  # 5-24 words at 120-220 words a minute
    again = prose.generate(tmp_path / "again", split="val", n=3, seed=5, progress=False)
    assert again.read_text().replace("again/", "") == path.read_text()  # seeded per clip
    other = prose.generate(tmp_path / "other", split="val", n=3, seed=6, progress=False)
    assert other.read_text() != path.read_text()


def test_a_builtin_source_and_its_errors(tmp_path):
    examples, _ = read_source("prose:split=test,n=2,seed=1", tmp_path, progress=False)
    assert len(examples) == 2 and all(e.audio and e.target in prose.sentences("test") for e in examples)
    with pytest.raises(DataError, match="unknown split"):
        read_source("prose:split=novel,n=2", tmp_path, progress=False)
    with pytest.raises(DataError, match="n must be positive"):
        read_source("prose:split=val,n=0", tmp_path, progress=False)


def test_cli_writes_a_split(tmp_path):
    out = subprocess.run([sys.executable, "-m", "multimodaltransformer", "data", "prose", "--split", "val",
                          "--n", "2", "--out", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 2 and "wrote" in out.stdout
