"""Prompt faithfulness of a text-to-image model with and without guidance and re-ranking, one table.

For each split (held-out `test` prompts; `novel` prompts holding a colour-shape pair training never
showed) and each variant (guidance scale, re-rank K), it runs the CLI exactly as a user would,
`mmt imagine MODEL --prompts FILE --n 4 --seed 0 --guidance G [--rerank K]`, and scores the images
with benchmarks/t2i_eval.py's independent classifier (trained on real renders only). The images/s
column is `mmt imagine`'s own figure (sampling + decoding + re-ranking, model load excluded).

    python benchmarks/t2i_bench.py runs/demo-t2i/model --out runs/t2i-bench \\
        [--variants "1,1;3,1;3,8,1,16"] [--splits test,novel] [--n-prompts 60]

Writes OUT/results.json and OUT/results.md (the table benchmarks/README.md quotes).

Given a VQ-VAE directory instead (`mmt train t2i-tokenizer`'s OUT/tokenizer, or a t2i run's), it
measures the tokenizer's ceiling: real renders of the prompts, encoded and decoded, scored the same
way (what a perfect prior could reach with these codes):

    python benchmarks/t2i_bench.py runs/vqvae/tokenizer --out runs/t2i-ceiling
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_eval():
    spec = importlib.util.spec_from_file_location("t2i_eval", HERE / "t2i_eval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["t2i_eval"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def round_trip(tokenizer: str, prompts: Path, ev, n: int, out: Path) -> Path:
    """Real renders of the prompts through the VQ-VAE (encode, decode) into OUT, as {line:04d}-{k}.png."""
    import torch

    from multimodaltransformer.hub import load_pretrained
    from multimodaltransformer.imagine import to_pil
    from multimodaltransformer.modalities.image import ImageProcessor

    vq = load_pretrained(tokenizer)
    real = out / "real"
    ev.render_prompts(ev.read_prompts(prompts), n, real)
    (out / "decoded").mkdir(parents=True, exist_ok=True)
    processor = ImageProcessor(image_size=vq.config.image_size)  # uint8 -> [-1, 1], as the tokenizer trained
    for f in sorted(real.glob("*.png")):
        x = processor(f)[None]
        with torch.no_grad():
            to_pil(vq.decode(vq.encode(x)))[0].save(out / "decoded" / f.name)
    return out / "decoded"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default="1,1;3,1;3,8,1,16",
                   help="';'-separated guidance,rerank[,temperature[,top_k]] (default temperature 1, top-k off)")
    p.add_argument("--splits", default="test,novel")
    p.add_argument("--n-prompts", type=int, default=60)
    p.add_argument("--prompt-seed", type=int, default=5)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-dir", help="the training images, to look for copies (default: none)")
    a = p.parse_args(argv)
    ev = load_eval()
    net, _ = ev.load_or_train()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    is_tokenizer = json.loads((Path(a.model) / "config.json").read_text()).get("model_type") == "mmt-vqvae"
    for split in a.splits.split(","):
        prompts = out / f"{split}.txt"
        ev.write_prompts(split, a.n_prompts, a.prompt_seed, prompts)
        if is_tokenizer:
            result = ev.score(ev.read_prompts(prompts), round_trip(a.model, prompts, ev, a.n, out / split), a.n, net)
            rows.append({"split": split, "tokenizer": a.model, **result})
            print(split, json.dumps(result["overall"]))
            continue
        for variant in a.variants.split(";"):
            parts = variant.split(",")
            guidance, rerank, temperature, top_k = parts + ["1", "1", "0"][len(parts) - 1:]
            images = out / f"{split}-g{guidance}-r{rerank}-t{temperature}-k{top_k}"
            cmd = [sys.executable, "-m", "multimodaltransformer", "imagine", a.model, "--prompts", str(prompts),
                   "--n", str(a.n), "--seed", str(a.seed), "--guidance", guidance, "--rerank", rerank,
                   "--temperature", temperature, "--top-k", top_k,  # 0: off (not the model's default)
                   "--out", str(images)]
            subprocess.run(cmd, check=True)
            result = ev.score(ev.read_prompts(prompts), images, a.n, net,
                              Path(a.train_dir).expanduser() if a.train_dir and split == "test" else None)
            speed = json.loads((images / "imagine.json").read_text())["images_per_second"]
            rows.append({"split": split, "guidance": float(guidance), "rerank": int(rerank),
                         "temperature": float(temperature), "top_k": int(top_k),
                         "images_per_second": speed, **result})
            (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    if is_tokenizer:
        return 0
    head = "| split | guidance | rerank | temperature | top-k | count | colour | shape | size | all objects right | all (colour+shape) | distinct | copies | images/s |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        o = r["overall"]
        copies = o.get("train_copies", "-")
        lines.append(f"| {r['split']} | {r['guidance']:g} | {r['rerank']} | {r['temperature']:g} | "
                     f"{r['top_k'] or '-'} | {o['count_right']:.3f} | {o['color']:.3f} | "
                     f"{o['shape']:.3f} | {o['size']:.3f} | {o['all_right']:.3f} | {o['all_right_color_shape']:.3f} | "
                     f"{o['distinct']:.3f} | {copies} | {r['images_per_second']:.1f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
