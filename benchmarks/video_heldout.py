"""A video model scored as issue 15 checks it: on a held-out MovingShapes seed, through the CLI.

    python benchmarks/video_heldout.py runs/demo-video/model [--seed 4242] [--n 300] [--out DIR]

1. `mmt data motion --split test --n N --seed S` writes clips the run never saw (and `novel`: clips
   with unseen colour-shape pairs);
2. `mmt generate MODEL --data manifest.jsonl --out pred.jsonl` answers every record;
3. exact match after lower-casing and stripping punctuation: video QA overall and per question
   type, video caption exact match;
4. every `direction` clip re-encoded with its frames in reverse order (PyAV, here, not by the
   library's reader), asked again: the answer must be the opposite direction.
Prints one JSON object and writes it to OUT/heldout.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import av

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def mmt(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "multimodaltransformer", *args], check=True)


def reverse_clip(src: Path, dst: Path) -> None:
    """The clip's frames in reverse order, re-encoded as H.264 (or MPEG-4) at the same size and rate."""
    with av.open(str(src)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(dst), "w", format="mp4") as out:
        s = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=8)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for f in frames[::-1]:
            out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")))
        out.mux(s.encode())


def score(rows: list[dict], preds: dict[str, str]) -> dict:
    qa, caps, by_type = [], [], defaultdict(list)
    for r in rows:
        ok = norm(preds[r["id"]]) == norm(r["target"])
        if r["task"] == "video_qa":
            qa.append(ok)
            by_type[r["question_type"]].append(ok)
        elif r["task"] == "video_caption":
            caps.append(ok)
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"video_qa": mean(qa), "questions": len(qa), "video_caption_em": mean(caps), "captions": len(caps),
            "by_type": {t: mean(v) for t, v in sorted(by_type.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--n", type=int, default=300, help="clips per split")
    ap.add_argument("--out", default="runs/video-heldout")
    a = ap.parse_args()
    out = Path(a.out)
    result: dict = {"model": a.model, "seed": a.seed, "n": a.n}
    for split in ("test", "novel"):
        data = out / split
        if not (data / "manifest.jsonl").is_file():
            mmt("data", "motion", "--split", split, "--n", str(a.n), "--seed", str(a.seed), "--out", str(data))
        mmt("generate", a.model, "--data", str(data / "manifest.jsonl"), "--out", str(out / f"pred-{split}.jsonl"))
        rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
        preds = {p["id"]: p["prediction"] for p in map(json.loads, (out / f"pred-{split}.jsonl").read_text().splitlines())}
        result[split] = score(rows, preds)
        if split == "test":  # the direction clips, time reversed
            rev = out / "reversed"
            (rev / "videos").mkdir(parents=True, exist_ok=True)
            back = []
            for r in rows:
                if r["task"] == "video_qa" and r["question_type"] == "direction":
                    dst = rev / r["video"]
                    if not dst.is_file():
                        reverse_clip(data / r["video"], dst)
                    back.append({**r, "target": OPPOSITE[r["target"]]})
            (rev / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in back))
            mmt("generate", a.model, "--data", str(rev / "manifest.jsonl"), "--out", str(out / "pred-reversed.jsonl"))
            preds = {p["id"]: p["prediction"]
                     for p in map(json.loads, (out / "pred-reversed.jsonl").read_text().splitlines())}
            result["reversed_direction"] = score(back, preds)["video_qa"]
            result["reversed_clips"] = len(back)
    (out / "heldout.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
