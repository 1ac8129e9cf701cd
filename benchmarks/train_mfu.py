"""Training throughput and MFU of a GPT-2-small-sized decoder built with this library.

A text-only model (decoder 12 x 768, 12 heads, vocabulary 50257, 1024 positions, 124.4M
parameters, as nanoGPT's GPT-2 small) trains on random token batches with AdamW, under
torch.autocast in bf16 (default on CUDA) or in plain fp32 (default on CPU). After --warmup
untimed steps, --steps steps are timed (each ends with loss.item(), so CUDA work is finished);
the model FLOPs (6 N + 12 L H Q T per token, PaLM appendix B) over that time, divided by the
matmul peak measured in the same run and dtype, is the MFU. --small swaps in a tiny decoder for
a CPU smoke run in seconds.

  python benchmarks/train_mfu.py [--device cuda] [--batch-size 8] [--seq-len 1024] [--compile]
  python benchmarks/train_mfu.py --small   # CPU, seconds
  python benchmarks/train_mfu.py --config demo [--set model.image.patch_size=16]   # fp32 and bf16

--config trains a run config's own model (the demo's, by default with its multi-task LM stream)
on that config's real packed ShapesWorld batches, fp32 and bf16 side by side in one process, and
prints steps/s and MFU against the measured matmul peak of each dtype and of fp32.
"""

from __future__ import annotations

import argparse
import time

import torch

from multimodaltransformer import MultimodalTransformer, MultimodalTransformerModel
from multimodaltransformer.models import DecoderConfig
from multimodaltransformer.nn.lora import count_parameters
from multimodaltransformer.train.throughput import (ThroughputReport, dtype_name, has_bf16_units, measure_matmul_peak,
                                                    model_flops_per_token)

GPT2_SMALL = DecoderConfig(dim=768, depth=12, heads=12, vocab_size=50257, max_seq_len=1024, activation="gelu_tanh")
TINY = DecoderConfig(dim=128, depth=2, heads=4, vocab_size=1024, max_seq_len=128, activation="gelu_tanh")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=None, help="default 1024 (GPT-2 small), 128 (--small)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocation, compilation)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                   help="default bf16 on CUDA, fp32 on CPU (few CPUs have bf16 matmul units)")
    p.add_argument("--small", action="store_true", help="a tiny decoder: a CPU smoke run in seconds")
    p.add_argument("--config", help="time a run config's model on its own data instead (e.g. demo)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="with --config: overrides")
    return p.parse_args()


def run_config(args: argparse.Namespace) -> None:
    """The config's first task stream, real batches, fp32 then bf16 (bf16 only where autocast runs)."""
    from multimodaltransformer.train import distributed as dd
    from multimodaltransformer.train.tasks import stream_loss
    from multimodaltransformer.train.trainer import Trainer
    from multimodaltransformer.train.config import load_run_config
    import tempfile

    device = torch.device(args.device)
    run = load_run_config(args.config, ["train.max_steps=1", f"train.device={device.type}", *args.set])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(run, tmp, progress=False)
        trainer.dist = dd.init_distributed(run.train.device)
        trainer._setup(False)
    stream, model = trainer.streams[0], trainer.model
    runner = torch.compile(model) if args.compile else model
    batches = [next(it) for it in [stream.loader(0, 1, [0])] for _ in range(args.warmup + args.steps)]
    batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    positions = [float(b["attention_mask"].sum()) + model.num_media_tokens * b["input_ids"].shape[0] for b in batches]
    seq = sum(positions) / sum(b["input_ids"].shape[0] for b in batches)
    fpt = model_flops_per_token(model, int(seq))
    peak32 = measure_matmul_peak(device, torch.float32)
    print(f"\n{args.config} {' '.join(args.set)}: {count_parameters(model)[1] / 1e6:.2f}M parameters, stream "
          f"{stream.cfg.name}, batch {stream.batch_size} items, {seq:.0f} positions per row "
          f"({model.num_media_tokens} image tokens), {fpt / 1e6:.3g} MFLOPs per position\n")
    print("| dtype | step ms | steps/s | tokens/s | model GFLOP/s | peak (dtype) GFLOP/s | MFU (dtype) "
          "| MFU (fp32 peak) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        g = torch.Generator().manual_seed(0)

        def step(b: dict) -> None:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = stream_loss(runner, stream.cfg, b, g)
            loss.float().backward()
            trainer.opt.step()
            trainer.opt.zero_grad(set_to_none=True)

        # emulated bf16 (no bf16 units) runs tens of times slower: a few steps tell
        warmup, steps = (args.warmup, args.steps) if name == "fp32" or has_bf16_units(device) else (1, 3)
        for b in batches[:warmup]:
            step(b)
        start = time.perf_counter()
        for b in batches[warmup:warmup + steps]:
            step(b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        tokens = sum(positions[warmup:warmup + steps])
        achieved = tokens * fpt / seconds
        peak = measure_matmul_peak(device, dtype)
        label = name if name == "fp32" or has_bf16_units(device) else f"{name} (emulated: no bf16 units)"
        print(f"| {label} | {1000 * seconds / steps:.0f} | {steps / seconds:.2f} | {tokens / seconds:,.0f} | "
              f"{achieved / 1e9:.1f} | {peak / 1e9:.1f} | {100 * achieved / peak:.1f}% | {100 * achieved / peak32:.1f}% |")


def main() -> None:
    args = parse_args()
    if args.config:
        return run_config(args)
    device = torch.device(args.device)
    decoder = TINY if args.small else GPT2_SMALL
    B = args.batch_size
    T = args.seq_len or decoder.max_seq_len
    if T > decoder.max_seq_len:
        raise SystemExit(f"--seq-len {T} exceeds the model's {decoder.max_seq_len} positions")
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 runs use TF32, as the peak then does too
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    model = MultimodalTransformerModel(MultimodalTransformer(image=None, decoder=decoder)).to(device).train()
    _, n_params = count_parameters(model)
    fpt = model_flops_per_token(model, T)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    step_model = torch.compile(model) if args.compile else model
    g = torch.Generator(device=device).manual_seed(0)

    def step() -> float:
        ids = torch.randint(0, decoder.vocab_size, (B, T), device=device, generator=g)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = step_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # .item() synchronises, so each step is finished when it returns

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    seconds = time.perf_counter() - start
    peak = measure_matmul_peak(device, dtype)
    report = ThroughputReport(tokens=args.steps * B * T, samples=args.steps * B, seconds=seconds,
                              flops_per_token=fpt, peak_flops=peak, peak_dtype=dtype_name(dtype))

    name = "tiny decoder (--small)" if args.small else "GPT-2 small"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\n{name}: {n_params / 1e6:.1f}M parameters, {fpt / 1e9:.3g} GFLOPs per token (6N + 12LHQT), "
          f"final loss {loss:.3f}\n")
    print("| device | dtype | compile | batch x seq | step ms | tokens/s | samples/s | model TFLOP/s "
          "| matmul peak TFLOP/s | MFU |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {dev} | {args.dtype} | {'yes' if args.compile else 'no'} | {B} x {T} | "
          f"{1000 * seconds / args.steps:.1f} | {report.tokens_per_s:,.0f} | {report.samples_per_s:,.1f} | "
          f"{report.achieved_flops / 1e12:.3g} | {peak / 1e12:.3g} | {100 * report.mfu:.1f}% |")
    print(f"\n{report.summary()}")


if __name__ == "__main__":
    main()
