"""SpokenProse: general English sentences read aloud by eSpeak NG voices, no download.

Fine-tuning a speech recogniser on SpokenShapes alone narrows its language to ShapesWorld's: Whisper
tiny.en tuned that way hears a LibriVox sentence as "is there a yellow triangle?". Rehearsing on
speech whose words are open-ended keeps the decoder listening to the audio. The sentences are the
prose of Python's own documentation, which ships with every Python (the `pydoc_data` topics and the
standard library's docstrings): cased and punctuated, 5 to 24 words, letters and ordinary
punctuation only. Each sentence belongs to one split by a hash of its text (80% train, 10% val,
10% test), so no split shares a sentence with another. Voices, rates, pitch, noise and gain are
drawn as for SpokenShapes (data/spoken.py), seeded per clip. The manifest holds
  ASR  {"id", "audio", "task": "asr", "target": sentence, "split", "voice"}
The pool depends on the Python version's documentation (about 3,100 sentences on 3.11).
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import sysconfig
from functools import cache
from pathlib import Path
from typing import Literal

from .parallel import run_chunks
from .spoken import Job, clip_job, speak_all

VERSION = 1
SPLITS = ("train", "val", "test")
_SENTENCE = re.compile(r"[A-Z][A-Za-z ,;:-]*(?:[a-z]'[a-z][A-Za-z ,;:-]*)*[a-z][.?!]")
_ACRONYM_OR_CODE = re.compile(r"[A-Z]{2}|[a-z][A-Z]")  # "ASCII", "isInstance": read letter by letter


def _documentation() -> list[str]:
    """Python's documentation prose: the pydoc topics and the docstrings of the stdlib's modules."""
    from pydoc_data.topics import topics

    texts = list(topics.values())
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        texts += [d for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and (d := ast.get_docstring(node))]
    return texts


@cache
def _plain_sentences() -> frozenset[str]:
    """The documentation's sentences of plain words, those that read aloud as written."""
    return frozenset(s for text in _documentation() for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
                     if _SENTENCE.fullmatch(s) and 5 <= len(s.split()) <= 24 and not _ACRONYM_OR_CODE.search(s))


def sentences(split: str) -> tuple[str, ...]:
    """The split's sentences, sorted."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (use {', '.join(SPLITS)})")
    bucket = {"train": range(8), "val": (8,), "test": (9,)}[split]
    return tuple(sorted(s for s in _plain_sentences() if int(hashlib.sha1(s.encode()).hexdigest(), 16) % 10 in bucket))


def generate(out: str | Path, split: Literal["train", "val", "test"] = "train", n: int = 1000, seed: int = 0,
             progress: bool = True) -> Path:
    """Write `n` clips of the split's sentences (each once before any repeats) and OUT/manifest.jsonl."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    pool = list(sentences(split))
    if not pool:
        raise ValueError(f"no {split} sentences found in this Python's documentation")
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"spokenprose/{split}/{seed}")
    order: list[str] = []
    while len(order) < n:  # every sentence once per pass, a new order (and new voices) each pass
        order += rng.sample(pool, len(pool))
    jobs: list[Job] = []
    tmp = out / "manifest.jsonl.tmp"
    with tmp.open("w") as f:
        for i, text in enumerate(order[:n]):
            uid = f"prose-{split}-{seed}-{i:06d}"
            clip = f"audio/{uid}.wav"
            jobs.append(clip_job(text, random.Random(f"spokenprose/{uid}"), out / clip))
            f.write(json.dumps({"id": uid, "audio": clip, "task": "asr", "target": text, "split": split,
                                "voice": jobs[-1][1]}) + "\n")
    run_chunks(speak_all, jobs, f"prose {split}", "clip", progress, chunk=50)
    tmp.replace(out / "manifest.jsonl")
    (out / "info.json").write_text(json.dumps({"dataset": "spokenprose", "version": VERSION, "split": split,
                                                "n": n, "seed": seed, "pool": len(pool)}) + "\n")
    return out / "manifest.jsonl"
