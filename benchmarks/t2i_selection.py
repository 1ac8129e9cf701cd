"""Where text-to-image faithfulness is lost: in the samples, or in choosing among them?

For held-out prompts, draw K candidates each (the model's sampler, guidance 3 and top-k 16 unless
told), score every candidate with benchmarks/t2i_eval.py's independent classifier, and keep the
best n by each of these rankings, reporting of the kept images: count right, per-object shape, and
all objects right:
  random     the first n drawn (no re-ranking)
  base_rate  every candidate (what one sample gets right on average)
  rr<i>      re-ranker i (a contrastive model: `mmt imagine --rerank`'s ranking)
  oracle     the checker itself, all-right first (the most any judge could reach with these samples)
A re-ranker near `random` does not see what the checker sees; one near `oracle` leaves nothing to gain.

    python benchmarks/t2i_selection.py runs/demo-t2i/model [--reranker R ...] [--k 32] [--n 4] \\
        [--split test] [--n-prompts 60] [--guidance 3] [--top-k 16]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from t2i_bench import load_eval


def main(argv: list[str] | None = None) -> int:
    from multimodaltransformer.hub import load_pretrained
    from multimodaltransformer.imagine import Reranker, to_pil

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a text-to-image model directory")
    p.add_argument("--reranker", action="append", help="a contrastive re-ranker (repeatable; default MODEL/reranker)")
    p.add_argument("--k", type=int, default=32, help="candidates per prompt (default 32: n 4 x re-rank 8)")
    p.add_argument("--n", type=int, default=4, help="kept per prompt")
    p.add_argument("--split", default="test")
    p.add_argument("--n-prompts", type=int, default=60)
    p.add_argument("--prompt-seed", type=int, default=5)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--top-k", type=int, default=16)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not 1 <= a.n <= a.k:
        p.error(f"need 1 <= n <= k, got n {a.n} and k {a.k}")
    ev = load_eval()
    net, _ = ev.load_or_train()
    model = load_pretrained(a.model).eval()
    rerankers = [Reranker.load(r) for r in (a.reranker or [f"{a.model}/reranker"])]
    prompts = [ev.shapes.caption(s) for s in ev.make_prompts(a.split, a.n_prompts, a.prompt_seed)]
    g = torch.Generator().manual_seed(a.seed)
    kept: dict[str, list[tuple[float, float, float]]] = {}
    for i, prompt in enumerate(prompts):
        codes = model.generate_codes([prompt], a.k, guidance=a.guidance, top_k=a.top_k or None,
                                     temperature=a.temperature, generator=g)
        images = to_pil(model.decode(codes), model.config.vqvae.image_size)
        seen = ev.classify(net, np.stack([np.asarray(im.convert("RGB")) for im in images]))
        rows = [ev.judge(i, ev.parse_caption(prompt), s) for s in seen]
        right = np.array([r.all_right for r in rows], dtype=float)
        shape = np.array([np.mean(r.shape) for r in rows])
        count = np.array([r.count_right for r in rows], dtype=float)
        orders = {"random": np.arange(a.n), "base_rate": np.arange(a.k), "oracle": np.argsort(-(2 * right + shape))}
        for j, rr in enumerate(rerankers):
            orders[f"rr{j}"] = rr.scores(images, prompt).argsort(descending=True).numpy()
        for name, order in orders.items():
            top = order[:a.k if name == "base_rate" else a.n]
            kept.setdefault(name, []).append((count[top].mean(), shape[top].mean(), right[top].mean()))
    result = {name: dict(zip(("count", "shape", "all_right"), np.round(np.mean(v, axis=0), 3).tolist()))
              for name, v in kept.items()}
    print(json.dumps({"split": a.split, "k": a.k, "n": a.n, "guidance": a.guidance, "top_k": a.top_k,
                      "rerankers": a.reranker or [f"{a.model}/reranker"], **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
