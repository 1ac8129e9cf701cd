"""Generation speed: this library vs `transformers.generate`, same GPT-2-shaped random weights, one run.

A GPT-2 (6 layers x 512, vocabulary 50257 by default) is built with random weights by
transformers, saved to a temporary directory and loaded back with `load_pretrained`; both then
decode the same prompts, interleaved (the order alternates per repetition), and the median time
of each case is reported. min_new_tokens = max_new_tokens, so both produce the same number of
tokens. tokens/s counts the new tokens of the returned sequences (beam search: one per prompt).
Peak memory, on CPU, is the peak resident set size (VmHWM, reset through /proc/self/clear_refs
after malloc_trim) above the RSS before the call; tracemalloc would miss torch's buffers. On a
GPU it is torch.cuda.max_memory_allocated. With CUDA the GPU is measured too, and batch-1 decode
is compared with the memory-bandwidth limit: weight bytes read per token / seconds per decode
step vs --bandwidth-gbs (the card's figure, e.g. 3350 for an H100 SXM).

  python benchmarks/generation.py [--reps 5] [--new-tokens 128] [--json benchmarks/generation.json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CASES = {  # name -> (batch, generation kwargs)
    "greedy b1": (1, {}),
    "greedy b8": (8, {}),
    "beam4 b1": (1, {"num_beams": 4}),
}


_libc = ctypes.CDLL("libc.so.6")


def rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, float, torch.Tensor]:
    """(seconds, peak MiB above the start, output) of one call."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        _libc.malloc_trim(0)  # hand freed heap back to the OS, so the RSS before the call is what is live
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = rss_kib("VmRSS") * 1024
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss_kib("VmHWM") * 1024
    return seconds, (peak - base) / 2**20, out


def build(layers: int, dim: int, heads: int, vocab: int) -> tuple[Any, Any, int]:
    import transformers as hf

    from multimodaltransformer import load_pretrained

    hf.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = hf.GPT2Config(n_layer=layers, n_embd=dim, n_head=heads, vocab_size=vocab, n_positions=1024)
    ref = hf.GPT2LMHeadModel(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        ref.save_pretrained(d)
        ours = load_pretrained(d).eval()
    weight_bytes = sum(p.numel() * p.element_size() for n, p in ours.named_parameters()
                       if "position" not in n)  # read once per decode step (the tied head counted once)
    return ref, ours, weight_bytes


def prompts(batch: int, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts, left-padded to `length` (row r is r tokens shorter, so batches mix lengths)."""
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, vocab - 1, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for r in range(batch):
        mask[r, : min(r, length // 2)] = 0
    return ids.masked_fill(mask == 0, vocab - 1), mask


def run_case(ref: Any, ours: Any, device: torch.device, batch: int, kwargs: dict[str, Any], a: argparse.Namespace,
             new_tokens: int) -> dict[str, Any]:
    from multimodaltransformer.generation import generate

    ids, mask = prompts(batch, a.prompt_len, ref.config.vocab_size)
    ids, mask = ids.to(device), mask.to(device)
    eos = ref.config.vocab_size - 1
    common = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=eos, pad_token_id=eos, **kwargs)
    fns = {"hf": lambda: ref.generate(ids, attention_mask=mask, do_sample=False, **common),
           "ours": lambda: generate(ours, ids, mask, compile=a.compile, **common)}
    for fn in fns.values():  # warm-up (and, with --compile, compilation)
        fn()
    times: dict[str, list[float]] = {"hf": [], "ours": []}
    peaks: dict[str, float] = {"hf": 0.0, "ours": 0.0}
    outs: dict[str, torch.Tensor] = {}
    for rep in range(a.reps):
        for name in (("hf", "ours") if rep % 2 == 0 else ("ours", "hf")):
            with torch.inference_mode():
                s, peak, outs[name] = measure(fns[name], device)
            times[name].append(s)
            peaks[name] = max(peaks[name], peak)
    n_new = batch * new_tokens
    res: dict[str, Any] = {"batch": batch, **kwargs, "new_tokens": new_tokens,
                           "same_tokens": bool(outs["hf"].shape == outs["ours"].shape
                                               and torch.equal(outs["hf"].cpu(), outs["ours"].cpu()))}
    for name in ("hf", "ours"):
        med = statistics.median(times[name])
        res[name] = {"median_s": med, "tokens_per_s": n_new / med, "peak_mib": peaks[name],
                     "times_s": times[name]}
    res["ratio"] = res["ours"]["tokens_per_s"] / res["hf"]["tokens_per_s"]
    return res


def decode_bandwidth(ref: Any, ours: Any, device: torch.device, a: argparse.Namespace, weight_bytes: int
                     ) -> dict[str, Any]:
    """Batch-1 greedy seconds per decode step (prefill excluded: (time(n) - time(1)) / (n - 1)) vs bandwidth."""
    from multimodaltransformer.generation import generate

    ids, mask = (t.to(device) for t in prompts(1, a.prompt_len, ref.config.vocab_size))
    eos = ref.config.vocab_size - 1

    def median_s(name: str, n: int) -> float:
        kw = dict(max_new_tokens=n, min_new_tokens=n, eos_token_id=eos, pad_token_id=eos)
        fn = (lambda: ref.generate(ids, attention_mask=mask, do_sample=False, **kw)) if name == "hf" else \
            (lambda: generate(ours, ids, mask, compile=a.compile, **kw))
        fn()
        with torch.inference_mode():
            return statistics.median(measure(fn, device)[0] for _ in range(a.reps))

    out: dict[str, Any] = {}
    for name in ("ours", "hf"):
        step = (median_s(name, a.new_tokens) - median_s(name, 1)) / (a.new_tokens - 1)
        gbs = weight_bytes / step / 1e9
        out[name] = {"s_per_step": step, "weight_gb_per_s": gbs, "fraction_of_bandwidth": gbs / a.bandwidth_gbs}
    return out


def table(rows: list[tuple[str, dict[str, Any]]], device: str) -> str:
    lines = [f"{'case':<12} {'device':<6} {'ours tok/s':>10} {'HF tok/s':>10} {'ours/HF':>8} "
             f"{'ours peak MiB':>13} {'HF peak MiB':>11} {'same tokens':>11}"]
    for name, r in rows:
        lines.append(f"{name:<12} {device:<6} {r['ours']['tokens_per_s']:>10.1f} {r['hf']['tokens_per_s']:>10.1f} "
                     f"{r['ratio']:>7.2f}x {r['ours']['peak_mib']:>13.1f} {r['hf']['peak_mib']:>11.1f} "
                     f"{str(r['same_tokens']):>11}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument("--bandwidth-gbs", type=float, default=3350.0, help="GPU memory bandwidth, GB/s (H100 SXM: 3350)")
    p.add_argument("--compile", action="store_true", help="torch.compile our decode step (GPU)")
    p.add_argument("--no-gpu", action="store_true", help="skip the GPU even when CUDA is available")
    p.add_argument("--json", default="benchmarks/generation.json")
    a = p.parse_args()

    ref, ours, weight_bytes = build(a.layers, a.dim, a.heads, a.vocab)
    report: dict[str, Any] = {
        "model": {"layers": a.layers, "dim": a.dim, "heads": a.heads, "vocab": a.vocab, "weight_bytes": weight_bytes},
        "prompt_len": a.prompt_len, "reps": a.reps, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_avg_before": os.getloadavg(), "memory": {
            "cpu": "peak RSS (VmHWM, reset via /proc/self/clear_refs after malloc_trim) above the RSS before the call",
            "cuda": "torch.cuda.max_memory_allocated above the allocation before the call"},
        "results": {}}
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not a.no_gpu:
        devices.append(torch.device("cuda"))
    for device in devices:
        ref.to(device)
        ours.to(device)
        rows = []
        for name in a.cases:
            batch, kwargs = CASES[name]
            rows.append((name, run_case(ref, ours, device, batch, kwargs, a, a.new_tokens)))
            print(f"  {name} on {device.type}: ours/HF {rows[-1][1]['ratio']:.2f}x", flush=True)
        report["results"][device.type] = dict(rows)
        print(table(rows, device.type))
        if device.type == "cuda":
            bw = decode_bandwidth(ref, ours, device, a, weight_bytes)
            report["results"]["cuda_decode_bandwidth"] = bw
            for name, r in bw.items():
                print(f"batch-1 decode ({name}): {r['s_per_step'] * 1e3:.2f} ms/step, {r['weight_gb_per_s']:.0f} GB/s "
                      f"of weights = {100 * r['fraction_of_bandwidth']:.0f}% of {a.bandwidth_gbs:.0f} GB/s")
    report["load_avg_after"] = os.getloadavg()
    print(f"load average before {report['load_avg_before']}, after {report['load_avg_after']}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
