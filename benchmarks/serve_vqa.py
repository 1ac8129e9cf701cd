"""A served model's VQA accuracy through the official `openai` client, images sent as data URLs.

    python benchmarks/serve_vqa.py runs/demo/model [--n 150] [--seed 4242] [--workers 8]
    python benchmarks/serve_vqa.py runs/demo-speech/model --spoken    # questions as WAV clips only

Starts `mmt serve MODEL` on a free loopback port, asks every VQA question of `--n` held-out
ShapesWorld test images (generated with `--seed`, which training never used) as a chat
completion with the image as a base64 data URL, temperature 0, and scores the replies by exact
match after lower-casing and stripping punctuation: overall and per question type. The same
questions asked through `mmt generate --data` should score the same; this checks the server
path (media decoding, prompt format, batching) end to end. With `--spoken` the images are
SpokenShapes' and each question is sent only as audio (an `input_audio` part, base64 WAV), as a
speech model's users would ask it.
"""

from __future__ import annotations

import argparse
import base64
import json
from collections import defaultdict
from pathlib import Path

from multimodaltransformer.data.manifest import read_manifest
from multimodaltransformer.data.sources import resolve_source
from multimodaltransformer.metrics import normalize_answer
from multimodaltransformer.train.config import default_cache_dir
from serve_load import ask_about_images  # this folder's load test starts the server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a model directory (e.g. runs/demo/model)")
    p.add_argument("--n", type=int, default=150, help="held-out test images (3 questions each)")
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--workers", type=int, default=8, help="concurrent requests")
    p.add_argument("--out", help="write the per-question results here (JSON lines)")
    p.add_argument("--spoken", action="store_true", help="SpokenShapes: each question only as a WAV clip")
    a = p.parse_args()
    source = "spoken" if a.spoken else "shapes"
    manifest = resolve_source(f"{source}:split=test,n={a.n},seed={a.seed}", default_cache_dir())
    questions = [e for e in read_manifest(manifest) if e.task == "vqa"]

    def ask(e) -> str | dict:
        if not a.spoken:
            return e.prompt
        return {"type": "input_audio",
                "input_audio": {"data": base64.b64encode(Path(e.audio).read_bytes()).decode(), "format": "wav"}}

    answers = ask_about_images(a.model, questions, ask, max_tokens=8, workers=a.workers)
    right: dict[str, list[bool]] = defaultdict(list)
    rows = []
    for e, answer in zip(questions, answers):
        ok = normalize_answer(answer) == normalize_answer(e.target or "")
        right["all"].append(ok)
        right[e.meta.get("question_type", "?")].append(ok)
        rows.append({"id": e.id, "prompt": e.prompt, "answer": answer, "target": e.target, "ok": ok})
    if a.out:
        Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"served {'spoken ' if a.spoken else ''}VQA accuracy through the openai client: "
          f"{sum(right['all']) / len(right['all']):.3f} on {len(right['all'])} questions of {a.n} held-out "
          f"images (seed {a.seed})")
    for t, oks in sorted(right.items()):
        if t != "all":
            print(f"  {t:<10} {sum(oks) / len(oks):.3f} ({len(oks)})")


if __name__ == "__main__":
    main()
