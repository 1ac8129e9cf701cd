"""Fashion-MNIST test accuracy of a saved model, through the commands a user runs (issue 17):

    python benchmarks/fashion_eval.py runs/fashion-effnet/model            # the whole test split
    python benchmarks/fashion_eval.py runs/fashion-effnet/model --n 2000   # a seeded 2,000 of them

writes the test manifest (`mmt data fashion --split test`), predicts it (`mmt generate MODEL --data
... --out ...`, greedy) and scores each task by exact match after lower-casing and stripping
punctuation (metrics.normalize_answer): classify (the class name), caption ("a photo of an ankle
boot"), vqa (category / feet / identity questions, also apart). Prints one JSON report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from multimodaltransformer.metrics import normalize_answer


def mmt(*args: str) -> None:
    """Run the CLI of the interpreter running this script (the venv's), failing loudly."""
    subprocess.run([sys.executable, "-m", "multimodaltransformer.cli", *args], check=True)


def score(manifest: Path, predictions: Path) -> dict[str, float]:
    """Exact-match accuracy per task (and per VQA question type) of predictions against the manifest."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    preds = {r["id"]: r["prediction"] for r in map(json.loads, predictions.read_text().splitlines())}
    hits: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        if row["id"] not in preds:
            continue
        ok = normalize_answer(preds[row["id"]]) == normalize_answer(row["target"])
        hits[row["task"]].append(ok)
        if row.get("question_type"):
            hits[f"vqa_{row['question_type']}"].append(ok)
    return {task: round(sum(v) / len(v), 4) for task, v in sorted(hits.items())} | \
        {"n_classify": len(hits["classify"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a saved model directory (OUT/model of mmt train)")
    p.add_argument("--n", type=int, default=0, help="test images, a seeded subset (0: all 10,000)")
    p.add_argument("--tasks", default="classify,caption,vqa", help="which records to predict")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--work", help="folder for the manifest and predictions (default: a temporary one)")
    a = p.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="fashion-eval-"))
    test = work / "test"
    mmt("data", "fashion", "--split", "test", *(["--n", str(a.n)] if a.n else []), "--out", str(test))
    tasks = set(a.tasks.split(","))
    manifest = test / "eval.jsonl"  # beside manifest.jsonl: the same relative image paths
    lines = [line for line in (test / "manifest.jsonl").read_text().splitlines()
             if json.loads(line)["task"] in tasks]
    manifest.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    mmt("generate", a.model, "--data", str(manifest), "--out", str(work / "predictions.jsonl"),
        "--batch-size", str(a.batch_size))
    report = {"model": a.model, "n_images": a.n or 10000, "generate_s": round(time.perf_counter() - started, 1),
              **score(manifest, work / "predictions.jsonl")}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
