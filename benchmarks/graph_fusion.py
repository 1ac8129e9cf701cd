"""Forward + backward time of graph fusion against early fusion, measured in the same run.

The bench-fusion sizes by default: 32 images x 64 patch tokens (an 8 x 8 grid) of dim 96 into a
decoder of dim 128. Prints ms per step and the ratio to early fusion; the fusion module alone,
no encoder or decoder (the decoder's cost of a longer or shorter prefix is not in it). The
variants take turns, step by step, and each keeps its fastest step: on a shared machine the
minimum is what the code costs, the rest is other people's load.

  python benchmarks/graph_fusion.py [--batch 32] [--tokens 64] [--iters 20] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from multimodaltransformer.fusion import FusionConfig, build_fusion


def step_ms(fusion: torch.nn.Module, media: torch.Tensor) -> float:
    """ms of one forward + backward through `fusion`."""
    if media.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fusion(media).prefix.square().mean().backward()
    if media.is_cuda:
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--media-dim", type=int, default=96)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    media = torch.randn(a.batch, a.tokens, a.media_dim, device=a.device)
    variants = {"early": FusionConfig("early"),
                "graph depth 1": FusionConfig("graph", depth=1),
                "graph depth 2": FusionConfig("graph", depth=2),
                "graph depth 2, radius 2": FusionConfig("graph", depth=2, graph_radius=2),
                "graph depth 2, pool 2": FusionConfig("graph", depth=2, graph_pool=2)}
    fusions = {name: build_fusion(cfg, a.media_dim, a.dim).to(a.device) for name, cfg in variants.items()}
    for fusion in fusions.values():  # warm up (the graph's edge list is built on the first call)
        step_ms(fusion, media)
    best = dict.fromkeys(fusions, float("inf"))
    for _ in range(a.iters):  # round-robin, so a burst of load hits every variant alike
        for name, fusion in fusions.items():
            best[name] = min(best[name], step_ms(fusion, media))
    print(f"{a.batch} x {a.tokens} tokens, {a.media_dim} -> {a.dim}, {a.device}, {torch.get_num_threads()} threads, "
          f"fastest of {a.iters} steps")
    for name, ms in best.items():
        print(f"{name:<26} {ms:8.2f} ms  x{ms / best['early']:.1f}")


if __name__ == "__main__":
    main()
