"""How well a text-to-image re-ranker tells a caption from its near misses, by the kind of edit.

For fresh real ShapesWorld test renders, the re-ranker (`mmt imagine --rerank`'s contrastive model,
MODEL/reranker) scores the true caption against every near miss of each kind (one object's colour,
shape or size changed, or two objects swapped: `shapes.near_misses`); the figure per kind is the share
of (image, near miss) pairs where the true caption scores higher. Re-ranking can only pick the right
shape among candidates if the re-ranker ranks shapes: this says which attributes it sees.

    python benchmarks/reranker_probe.py runs/demo-t2i/model/reranker [--n 200] [--seed 11]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict

import torch


def main(argv: list[str] | None = None) -> int:
    from multimodaltransformer.data import shapes
    from multimodaltransformer.imagine import Reranker

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reranker", help="a contrastive model directory (MODEL/reranker)")
    p.add_argument("--n", type=int, default=200, help="test scenes (default 200)")
    p.add_argument("--seed", type=int, default=11)
    a = p.parse_args(argv)
    rr = Reranker.load(a.reranker)
    rng = random.Random(f"reranker-probe/{a.seed}")
    wins: dict[str, list[bool]] = defaultdict(list)
    with torch.inference_mode():
        for _ in range(a.n):
            objs = shapes.sample_scene(rng, "test")
            image = shapes.render(objs, rng)
            texts = {"true": [shapes.caption(objs)]}
            for kind, scenes in shapes.near_misses(objs, "test").items():
                texts[kind] = [shapes.caption(s) for s in scenes]
            true = float(rr.scores([image], texts["true"][0])[0])
            for kind, captions in texts.items():
                if kind != "true":
                    wins[kind] += [true > float(rr.scores([image], c)[0]) for c in captions]
    result = {k: round(sum(v) / len(v), 4) for k, v in sorted(wins.items())}
    result["pairs"] = sum(len(v) for v in wins.values())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
