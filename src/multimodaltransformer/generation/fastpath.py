"""CPU decode fast path: nn.Linear on a few rows computed as W @ x^T.

A decode step multiplies every weight matrix by 1..N rows (N = batch x beams). On CPU, MKL runs
F.linear (x @ W^T) on so few rows through a matrix-vector kernel that reads W at a fraction of
memory bandwidth (measured here: a 50257 x 512 head takes ~10 ms for one row, ~4.5 ms as
W @ x^T with two columns), and decode time is the time to read the weights. Same math, different
kernel: results agree with F.linear to float32 rounding.

The decode engine runs each decode step inside `few_row_matmuls(enabled)` (a TorchFunctionMode),
an explicit option of the session and the server's worker, on by default on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

MAX_ROWS = 16  # above this MKL's matrix-matrix path is as fast either way


def linear_few_rows(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias) for x (..., C_in), as W @ x^T when x holds at most MAX_ROWS rows."""
    rows = x.reshape(-1, x.shape[-1])
    N = rows.shape[0]
    if N > MAX_ROWS or N == 0:
        return F.linear(x, weight, bias)
    cols = rows.contiguous() if N > 1 else torch.cat((rows, rows))  # one column takes the slow kernel again
    out = torch.mm(weight, cols.t()) if bias is None else torch.addmm(bias[:, None], weight, cols.t())
    return out.t()[:N].contiguous().view(*x.shape[:-1], weight.shape[0])  # (V, N) -> (..., V)


class FewRowMatmuls(TorchFunctionMode):
    """While active (a context manager, in this thread): every `F.linear` over at most MAX_ROWS rows
    of a CPU weight at least as wide out as in runs as `linear_few_rows`. Nothing is patched: the
    call is rerouted where torch dispatches it. Narrow outputs (an MLP's down projection) keep
    F.linear, whose kernel is as fast there; larger inputs (a prefill) are unchanged."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if (weight.device.type == "cpu" and weight.dim() == 2 and weight.shape[0] >= weight.shape[1]
                    and x.dim() >= 1 and 0 < x.numel() <= MAX_ROWS * x.shape[-1]):
                return linear_few_rows(x, weight, bias)
        return func(*args, **kwargs)


def few_row_matmuls(enabled: bool) -> contextlib.AbstractContextManager:
    """The fast path for a decode step when `enabled` (CPU decoding), else nothing."""
    return FewRowMatmuls() if enabled else contextlib.nullcontext()
