"""SpokenShapes: ShapesWorld's captions and questions spoken by eSpeak NG (data/tts.py), no download.

For each image of a ShapesWorld split, its caption and its questions are spoken, each clip by a
voice of its own: one of eSpeak NG's English dialects, one of its voice variants (or none), a rate
of 120-220 words per minute, a pitch, a gain and light white noise (15-40 dB SNR), so that a model
trained on them meets voices and speeds at test time that it did not train on. Clips are 16 kHz
mono 16-bit WAV; one image in twenty also gets a clip of noise alone, transcribed as "". The manifest holds
  ASR          {"id", "audio": caption or question clip, "task": "asr", "target": transcript}
  spoken VQA   {"id", "image", "audio": question clip, "task": "vqa", "prompt": "", "target": answer}
(the spoken question exists only as audio), with the voice of each clip. Every draw (text, voice,
rate, pitch, noise, gain) is seeded per clip, so the records do not depend on how many processes
speak them; the samples themselves vary slightly from run to run, since eSpeak NG carries some
waveform state (its pitch flutter) from one utterance to the next.
"""

from __future__ import annotations

import json
import random
import wave
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np

from . import shapes
from .parallel import run_chunks
from .tts import DIALECTS, Voice, speaker, variants

VERSION = 2  # 2: clips of silence (noise only) with an empty transcript
SAMPLING_RATE = 16000
RATES = (120, 220)  # words per minute
PITCHES = (25, 75)
SNR_DB = (15.0, 40.0)
SILENT = 0.05  # the share of images that also get a clip with no speech (its transcript: "")


def random_voice(rng: random.Random) -> Voice:
    """A dialect, a variant (a fifth of the clips keep the dialect's own voice), a rate and a pitch."""
    variant = "" if rng.random() < 0.2 else rng.choice(variants())
    return Voice(rng.choice(DIALECTS), variant, rng.randint(*RATES), rng.randint(*PITCHES))


def speak(text: str, voice: Voice, noise_seed: int, snr_db: float, gain: float) -> np.ndarray:
    """`text` spoken at 16 kHz with white noise at `snr_db` below the speech's power, int16.
    No text: 0.5-3 s of the noise alone, at the level of a quiet room (a clip with nothing to transcribe)."""
    if not text:
        rng = np.random.default_rng(noise_seed)
        return np.round(rng.normal(0.0, 0.003 * gain, int(rng.uniform(0.5, 3.0) * SAMPLING_RATE)) * 32767
                        ).astype(np.int16)
    tts = speaker()
    x = _resample(tts.say(text, voice), tts.sampling_rate, SAMPLING_RATE)
    power = float(np.mean(x ** 2)) or 1e-8
    x = x + np.random.default_rng(noise_seed).normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), x.shape)
    x = x * (gain / max(1e-6, float(np.abs(x).max())))
    return np.round(np.clip(x, -1.0, 1.0) * 32767).astype(np.int16)


def _resample(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """soxr (C, fast) where installed; else the library's own band-limited resampler (torch)."""
    try:
        import soxr
    except ImportError:
        import torch

        from ..modalities.audio import resample

        return resample(torch.from_numpy(x), rate, new_rate).numpy()
    return soxr.resample(x, rate, new_rate, quality="HQ").astype(np.float32)


def write_wav(path: str | Path, samples: np.ndarray, rate: int = SAMPLING_RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


Job = tuple[str, dict, int, float, float, str]  # text, voice, noise seed, SNR, gain, output path


def clip_job(text: str, rng: random.Random, path: str | Path) -> Job:
    """One clip's draws from its own seeded `rng`: a voice, a noise seed, an SNR and a gain."""
    voice = asdict(random_voice(rng))
    return text, voice, rng.getrandbits(32), rng.uniform(*SNR_DB), rng.uniform(0.5, 0.95), str(path)


def speak_all(jobs: list[Job]) -> int:
    """Speak each job into its WAV file (one worker's chunk: data/parallel.py)."""
    for text, voice, noise_seed, snr, gain, path in jobs:
        write_wav(path, speak(text, Voice(**voice), noise_seed, snr, gain))
    return len(jobs)


def generate(out: str | Path, split: Literal["train", "val", "test", "novel"] = "train", n: int = 1000,
             seed: int = 0, questions_per_image: int = 2, progress: bool = True) -> Path:
    """Write `n` ShapesWorld images, their spoken captions and questions, and OUT/manifest.jsonl."""
    out = Path(out)
    text_rows = shapes.generate(out / "text", split=split, n=n, seed=seed, questions_per_image=questions_per_image,
                                progress=progress, tasks=("caption", "vqa"))
    (out / "audio").mkdir(parents=True, exist_ok=True)
    jobs: list[Job] = []
    tmp = out / "manifest.jsonl.tmp"
    with tmp.open("w") as f:
        for line in text_rows.read_text().splitlines():
            row = json.loads(line)
            text = row["target"] if row["task"] == "caption" else row["prompt"]
            rng = random.Random(f"spokenshapes/{row['id']}")
            clip = f"audio/{row['id']}.wav"
            jobs.append(clip_job(text, rng, out / clip))
            voice = jobs[-1][1]
            common = {"audio": clip, "split": split, "voice": voice}
            f.write(json.dumps({"id": f"{row['id']}-asr", "task": "asr", "target": text, **common}) + "\n")
            if row["task"] == "caption" and rng.random() < SILENT:  # this image's clip of silence
                silent = f"audio/{row['id']}-silence.wav"
                jobs.append(("", voice, rng.getrandbits(32), 0.0, rng.uniform(0.5, 0.95), str(out / silent)))
                f.write(json.dumps({"id": f"{row['id']}-silence-asr", "task": "asr", "target": "", "audio": silent,
                                    "split": split}) + "\n")
            if row["task"] == "vqa":
                f.write(json.dumps({"id": f"{row['id']}-spoken", "image": f"text/{row['image']}", "task": "vqa",
                                    "prompt": "", "target": row["target"], "question": row["prompt"],
                                    "question_type": row["question_type"], **common}) + "\n")
    run_chunks(speak_all, jobs, f"spoken {split}", "clip", progress, chunk=50)
    tmp.replace(out / "manifest.jsonl")
    (out / "info.json").write_text(json.dumps({"dataset": "spokenshapes", "version": VERSION, "split": split, "n": n,
                                                "seed": seed, "questions_per_image": questions_per_image,
                                                "shapes_version": shapes.VERSION}) + "\n")
    return out / "manifest.jsonl"
