"""Export (issue 18), the multimodal model: a trained model (the demo's) exported to ONNX
(vision_encoder + embed_tokens + decoder_model_merged) and run by onnxruntime against PyTorch, one run.

  * time and size of `mmt export --format onnx`, against the model directory's size;
  * answers to N held-out VQA questions (ShapesWorld, a split and seed the demo did not train on),
    both through `evaluate.predict` (same prompt encoding, image processor, greedy search): how many
    are equal, and the VQA exact-match accuracy of each;
  * decode tokens/s at batch 1 (image + question), onnxruntime vs PyTorch, interleaved, median of
    --reps; min_new_tokens = max_new_tokens so both decode as many tokens.

  python benchmarks/export_multimodal.py runs/demo/model [--n 20] [--new-tokens 32] [--reps 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


from multimodaltransformer import load_pretrained
from multimodaltransformer.data import read_manifest
from multimodaltransformer.data.sources import resolve_source
from multimodaltransformer.evaluate import predict
from multimodaltransformer.export import export
from multimodaltransformer.export.ort_multimodal import OrtMultimodalLM
from multimodaltransformer.train.config import default_cache_dir


def size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def decode_rate(model, example, new_tokens: int) -> float:
    t = time.perf_counter()
    predict(model, [example], max_new_tokens=new_tokens,
            generation_kwargs={"min_new_tokens": new_tokens})
    return new_tokens / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--data", default="shapes:split=test,n=100,seed=7")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    out = export(a.model, "onnx", work / "onnx")
    result = {"export_s": round(time.perf_counter() - t, 2), "onnx_mib": round(size_mib(out), 2),
              "model_mib": round(size_mib(Path(a.model)), 2)}
    examples = [e for e in read_manifest(resolve_source(a.data, default_cache_dir())) if e.task == "vqa"][:a.n]
    torch_model, ort_model = load_pretrained(a.model), OrtMultimodalLM(out)
    answers = {name: predict(m, examples, max_new_tokens=16) for name, m in
               (("torch", torch_model), ("onnxruntime", ort_model))}
    result |= {"questions": len(examples),
               "equal_answers": sum(x == y for x, y in zip(answers["torch"], answers["onnxruntime"])),
               **{f"vqa_exact_{k}": sum(a_.strip() == e.target for a_, e in zip(v, examples)) / len(examples)
                  for k, v in answers.items()}}
    rates: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(a.reps):  # interleaved, so drifting load hits both alike
        rates["torch"].append(decode_rate(torch_model, examples[0], a.new_tokens))
        rates["onnxruntime"].append(decode_rate(ort_model, examples[0], a.new_tokens))
    result |= {f"{k}_tokens_per_s": round(statistics.median(v), 1) for k, v in rates.items()}
    result["speedup"] = round(result["onnxruntime_tokens_per_s"] / result["torch_tokens_per_s"], 2)
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
