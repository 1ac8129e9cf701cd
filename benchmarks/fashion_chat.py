"""A served real-image chat model names the garment in held-out Fashion-MNIST photos (issue 17):
accuracy through the official `openai` client, images sent as data URLs.

    python benchmarks/fashion_chat.py runs/fashion-chat/model [--n 200] [--seed 4242]

Starts `mmt serve MODEL` on a free loopback port (as serve_vqa.py does), asks `--question` about
each of `--n` test-split images (a seeded class-balanced subset; training reads the train split
only) at temperature 0, and scores a reply right when the class names it mentions are exactly the
true one ("It is a shirt." for a shirt; "a t-shirt/top or a shirt" is wrong). Prints the accuracy,
per class, and the most common confusions.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

from multimodaltransformer.data.fashion import mentioned_classes
from multimodaltransformer.data.manifest import read_manifest
from multimodaltransformer.data.sources import resolve_source
from multimodaltransformer.train.config import default_cache_dir
from serve_load import ask_about_images  # this folder's load test starts the server


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a model directory (e.g. runs/fashion-chat/model)")
    p.add_argument("--n", type=int, default=200, help="held-out test images")
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--question", default="What garment is this?")
    p.add_argument("--workers", type=int, default=4, help="concurrent requests")
    p.add_argument("--out", help="write the per-image results here (JSON lines)")
    a = p.parse_args()
    manifest = resolve_source(f"fashion:split=test,n={a.n},seed={a.seed}", default_cache_dir())
    images = [e for e in read_manifest(manifest) if e.task == "classify"]  # one row per image, target = class
    start = time.perf_counter()
    answers = ask_about_images(a.model, images, lambda e: a.question, max_tokens=16, workers=a.workers)
    seconds = time.perf_counter() - start
    per_class: dict[str, list[bool]] = defaultdict(list)
    confusions: Counter[tuple[str, str]] = Counter()
    rows = []
    for e, answer in zip(images, answers):
        named = mentioned_classes(answer)
        ok = set(named) == {e.target}
        per_class[e.target or "?"].append(ok)
        if not ok:
            confusions[(e.target or "?", "+".join(named) or "(none)")] += 1
        rows.append({"id": e.id, "class": e.target, "answer": answer, "named": named, "ok": ok})
    if a.out:
        Path(a.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    right = [r["ok"] for r in rows]
    print(f"real-image chat accuracy through the openai client: {sum(right) / len(right):.3f} on {len(right)} "
          f"held-out Fashion-MNIST test images (seed {a.seed}), asked {a.question!r}; {seconds:.0f}s")
    for name, oks in sorted(per_class.items()):
        print(f"  {name:<12} {sum(oks) / len(oks):.3f} ({len(oks)})")
    print("  confusions (true -> named):", ", ".join(f"{t} -> {n} x{c}" for (t, n), c in confusions.most_common(6)))
    print("  e.g.:", "; ".join(f"{r['class']}: {r['answer']!r}" for r in rows[:3]))


if __name__ == "__main__":
    main()
