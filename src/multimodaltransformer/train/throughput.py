"""Throughput and model FLOPs utilisation (MFU) against the machine's measured matmul peak.

MFU = achieved model FLOP/s / peak FLOP/s. The model FLOPs are the usual estimate (PaLM,
Chowdhery et al. 2022, appendix B; nanoGPT's `estimate_mfu`): 6 per parameter per token for the
forward and backward matmuls, plus the attention scores. The peak is measured here, with a
large dense matmul in the run's dtype, rather than read from a datasheet: it is what this machine
(CPU threads, GPU clocks, TF32 setting) can actually do, so MFU says how far the model's
kernels are from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.transformer import TransformerStack

_PEAK_CACHE: dict[tuple[str, torch.dtype, int], float] = {}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def has_bf16_units(device: torch.device) -> bool:
    """Whether `device` has bf16 matmul hardware: a GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 matmuls are emulated and far slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up defensively
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve_precision(precision: str, device: torch.device, step: Callable[[str], None] | None = None) -> str:
    """`auto` -> "bf16" where the device has bf16 units and bf16 measures at least 1.2x faster, else
    "fp32"; any other precision is returned as it is. Faster means: with `step` (one forward and
    backward of the run's model on a real batch, in the precision given), the step itself, timed in
    both (best of two after a warm-up); without it, the dense matmul peak. The step is what counts on
    a CPU: a small model's step is mostly not matmuls, and bf16's 2.5x faster matmuls made the demo's
    step 8% slower on an AVX512-BF16 EPYC (benchmarks/README.md)."""
    if precision != "auto":
        return precision
    if not has_bf16_units(device):
        return "fp32"
    if step is not None:
        def timed(p: str) -> float:
            step(p)  # warm-up: kernel selection, weight casts
            best = float("inf")
            for _ in range(2):
                _sync(device)
                t = time.perf_counter()
                step(p)
                _sync(device)
                best = min(best, time.perf_counter() - t)
            return best

        fp32, bf16 = timed("fp32"), timed("bf16")
        return "bf16" if fp32 >= 1.2 * bf16 else "fp32"
    faster = measure_matmul_peak(device, torch.bfloat16) >= 1.2 * measure_matmul_peak(device, torch.float32)
    return "bf16" if faster else "fp32"


def step_probe(model: nn.Module, stream: Any, device: torch.device, opt: torch.optim.Optimizer,
               seed: int = 0) -> Callable[[str], None] | None:
    """One forward + backward of `stream`'s first batch in a given precision, for `resolve_precision`
    to time: gradients dropped, buffers (BatchNorm statistics) restored. None for a streamed source."""
    from .tasks import stream_loss

    if stream.dataset is None:
        return None
    items = [stream.dataset[i] for i in range(min(stream.batch_size, len(stream.dataset)))]
    def move(v: Any) -> Any:  # nested: media_mask is a dict of tensors
        return v.to(device) if isinstance(v, torch.Tensor) else {k: move(x) for k, x in v.items()} \
            if isinstance(v, dict) else v

    batch = move(stream.collate(items))
    g = torch.Generator().manual_seed(seed)

    def step(precision: str) -> None:
        kept = {k: v.clone() for k, v in model.named_buffers()}
        with torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32"):
            loss = stream_loss(model, stream.cfg, batch, g)
        loss.backward()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(kept[k])

    return step


def measure_matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        size: int | None = None, seconds: float = 0.5, repeats: int = 3) -> float:
    """Measured dense matmul FLOP/s of `device` in `dtype`: (n, n) @ (n, n) counts 2 n^3 FLOPs.

    The matmul is `F.linear`, the op nn.Linear runs: on CPUs without bf16 units `torch.mm` in
    bf16 takes a fallback path ~7x slower than the one nn.Linear gets, which would inflate MFU.
    n defaults to 1024 on CPU and 8192 on CUDA (large enough to saturate the device). After a
    warm-up, `repeats` timed chunks of about `seconds / repeats` each run; the best chunk counts
    (other load only ever slows a chunk down). Cached per (device, dtype, n): a run measures once.
    """
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 1024)
    key = (str(device), dtype, n)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    g = torch.Generator(device=device).manual_seed(0)
    x, w = (torch.randn(n, n, device=device, dtype=dtype, generator=g) for _ in range(2))

    def run(k: int) -> float:
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, enabled=False):  # measure `dtype`, even inside a caller's autocast
            for _ in range(k):
                F.linear(x, w)
        _sync(device)
        return time.perf_counter() - t

    run(2)  # warm-up: kernel selection, caches, clocks
    per_mm = max(run(2) / 2, 1e-9)
    k = max(1, int(seconds / repeats / per_mm))
    best = min(run(k) for _ in range(repeats))
    _PEAK_CACHE[key] = peak = 2 * n**3 * k / max(best, 1e-9)
    return peak


def flops_per_token(n_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int) -> float:
    """Training FLOPs per token, forward + backward: 6 N + 12 L H Q T.

    PaLM (Chowdhery et al. 2022), appendix B, as in nanoGPT's `estimate_mfu`: N matmul
    (non-embedding) parameters cost 2 FLOPs each forward and 4 backward; attention scores QK^T
    and the weighted sum over T keys add 2 * 2 * H Q T per layer forward, times 3 with backward.
    """
    return 6 * n_params + 12 * n_layers * n_heads * head_dim * seq_len


def _stack(module: nn.Module) -> TransformerStack | None:
    return next((m for m in module.modules() if isinstance(m, TransformerStack)), None)


def matmul_params(module: nn.Module) -> int:
    """Parameters of `module` that do matmuls: all of them, counted once, except lookup tables
    (nn.Embedding weights, `pos_embed` parameters), which cost no FLOPs. A token embedding tied
    to the LM head is a matmul there, so it counts (nanoGPT counts its tied wte the same way)."""
    linear = {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}
    lookup = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    lookup |= {id(p) for name, p in module.named_parameters() if name.split(".")[-1] == "pos_embed"}
    params = {id(p): p for p in module.parameters()}
    return sum(p.numel() for i, p in params.items() if i not in lookup or i in linear)


def model_flops_per_token(model: nn.Module, seq_len: int, images_per_sequence: float = 1.0) -> float:
    """Training FLOPs per decoder position of a MultimodalTransformerModel (or a composed one).

    The decoder: `flops_per_token` over its matmul parameters (`matmul_params`; the LM head
    included) and attention over `seq_len` positions, image prefix tokens included. The image
    encoder and fusion, if the model has them: the same formula over the image's tokens, per
    image, spread over the `seq_len` positions of its sequence (`images_per_sequence`: 0 for
    text-only batches). Exact for a text-only decoder; an estimate with images (cross-attention
    K/V projections count per text position, not per memory token; their scores are left out; a
    late-fusion MLP counts per image token). Frozen parameters count in full, as in PaLM's
    convention, so they make MFU an overestimate.
    """
    stack = _stack(model.decoder)
    cfg = stack.cfg
    total = flops_per_token(matmul_params(model.decoder), cfg.depth, cfg.heads, cfg.dim // cfg.heads, seq_len)
    encoder = getattr(model, "image_encoder", None)
    if encoder is not None and images_per_sequence:
        n_media = getattr(getattr(model.config, "image", None), "num_patches", None) or model.num_media_tokens
        enc = _stack(encoder)
        n = matmul_params(encoder) + (matmul_params(model.fusion) if model.fusion is not None else 0)
        per_image = n_media * (flops_per_token(n, enc.cfg.depth, enc.cfg.heads, enc.cfg.dim // enc.cfg.heads, n_media)
                               if enc is not None else 6 * n)
        total += images_per_sequence * per_image / seq_len
    return float(total)


def _si(x: float) -> str:
    for div, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


@dataclass
class ThroughputReport:
    """Tokens and samples processed in `seconds`; with the model FLOPs per token and the measured
    peak FLOP/s (in `peak_dtype`), the model FLOPs utilisation."""

    tokens: int
    samples: int
    seconds: float
    flops_per_token: float | None = None
    peak_flops: float | None = None
    peak_dtype: str = "fp32"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.nan

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan

    @property
    def achieved_flops(self) -> float | None:
        return None if self.flops_per_token is None else self.flops_per_token * self.tokens_per_s

    @property
    def mfu(self) -> float | None:
        """Achieved / peak FLOP/s, a fraction (0.31 = 31%); None when either is unknown."""
        if self.achieved_flops is None or not self.peak_flops:
            return None
        return self.achieved_flops / self.peak_flops

    def summary(self) -> str:
        text = f"throughput: {_si(self.tokens_per_s)} tokens/s, {_si(self.samples_per_s)} samples/s"
        if self.mfu is not None:
            text += (f", MFU {100 * self.mfu:.1f}% of a measured {_si(self.peak_flops)}FLOP/s "
                     f"{self.peak_dtype} matmul peak")
        return text

    def as_dict(self) -> dict[str, float | int | str | None]:
        """Every field and figure, for the JSONL log (log it as {"throughput": report.as_dict()})."""
        return {"tokens": self.tokens, "samples": self.samples, "seconds": self.seconds,
                "tokens_per_s": self.tokens_per_s, "samples_per_s": self.samples_per_s,
                "flops_per_token": self.flops_per_token, "achieved_flops": self.achieved_flops,
                "peak_flops": self.peak_flops, "peak_dtype": self.peak_dtype, "mfu": self.mfu}


def dtype_name(dtype: torch.dtype) -> str:
    """"bf16" / "fp16" / "fp32" for a report's peak_dtype."""
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def throughput_report(model: nn.Module, totals: dict[str, float], device: torch.device, precision: str,
                      world: int = 1) -> ThroughputReport | None:
    """tokens/s, samples/s and MFU over a run's timed steps (`totals`: tokens, samples, rows, seconds
    of all processes), against this machine's measured matmul peak for `precision`, times `world`."""
    if totals["seconds"] <= 0:
        return None
    if not hasattr(getattr(model, "decoder", None), "hidden"):  # not a MultimodalLM (Whisper): no FLOPs model,
        return ThroughputReport(tokens=int(totals["tokens"]), samples=int(totals["samples"]),  # so no MFU
                                seconds=totals["seconds"], peak_dtype=precision)
    peak = measure_matmul_peak(device, DTYPES[precision]) * world
    seq = max(1.0, totals["tokens"] / max(totals["rows"], 1.0))  # positions per sequence, image tokens included
    return ThroughputReport(tokens=int(totals["tokens"]), samples=int(totals["samples"]), seconds=totals["seconds"],
                            flops_per_token=model_flops_per_token(model, int(seq)), peak_flops=peak,
                            peak_dtype=precision)
