"""Lower-precision inference: the Linear layers' weights in bf16 or int8, everything else in fp32.

`lower_precision(model, "bf16" | "int8")` swaps every `nn.Linear` (the LM head included; a head tied
to the embedding gets its own copy, the embedding lookup stays fp32) for a `LowPrecisionLinear`:
- bf16: the weight stored in bf16; activations cast to bf16 for the matmul, the output back to fp32.
- int8: weight-only quantisation, symmetric per output channel (scale = max|w| / 127, as gpt-fast and
  llama.cpp's Q8_0 per row); the matmul is `torch._weight_int8pack_mm` (bf16 activations) where the
  device has it, else the weight is dequantised on the fly.
Norms, softmax, residual stream, KV cache and logits stay fp32, so only the matmuls' inputs are
rounded. Decoding memory-bound at batch 1 reads 2x (bf16) or 4x (int8) fewer weight bytes.

Legend: N output features, K input features.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Precision = Literal["f32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("f32", "bf16", "int8")


class LowPrecisionLinear(nn.Module):
    """A frozen Linear with its weight in bf16 or int8 (per-row scales); fp32 in, fp32 out."""

    def __init__(self, linear: nn.Linear, precision: Precision) -> None:
        super().__init__()
        if precision not in ("bf16", "int8"):
            raise ValueError(f"precision must be bf16 or int8, not {precision!r}")
        self.precision, self.in_features, self.out_features = precision, linear.in_features, linear.out_features
        w = linear.weight.detach().float()  # (N, K)
        if precision == "int8":
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (N,)
            self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
            self.register_buffer("scale", scale.to(torch.bfloat16))
        else:
            self.register_buffer("weight", w.to(torch.bfloat16).contiguous())
            self.scale = None
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.precision == "bf16":
            y = F.linear(x2, self.weight)
        elif x2.device.type == "cpu" and x2.shape[0] > 0:
            y = torch._weight_int8pack_mm(x2, self.weight, self.scale)
        else:  # a device without the int8 kernel: dequantise the rows on the fly
            y = F.linear(x2, self.weight.to(torch.bfloat16) * self.scale[:, None])
        y = y.to(x.dtype).reshape(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, precision={self.precision}"


def lower_precision(model: nn.Module, precision: Precision) -> nn.Module:
    """Swap the model's Linear layers in place for inference at `precision` ("f32": unchanged).
    The model is put in eval mode; it cannot be trained or saved in this form."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    model.eval()
    if precision == "f32":
        return model
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:  # subclasses (LoRA) keep their own forward
                setattr(parent, name, LowPrecisionLinear(child, precision))
    model.precision = precision  # what `mmt serve` and the benchmarks report
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (a tied tensor counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
