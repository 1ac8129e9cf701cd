"""CPU decode fast path: nn.Linear on a few rows computed as W @ x^T.

A decode step multiplies every weight matrix by 1..N rows (N = batch x beams). On CPU, MKL runs
F.linear (x @ W^T) on so few rows through a matrix-vector kernel that reads W at a fraction of
memory bandwidth (measured here: a 50257 x 512 head takes ~10 ms for one row, ~4.5 ms as
W @ x^T with two columns), and decode time is the time to read the weights. Same math, different
kernel: results agree with F.linear to float32 rounding.

`FewRowLinears(model)` routes the model's plain nn.Linear layers through `linear_few_rows` while a
decode session lives, and `restore()` puts them back; calls with more rows (prefill) are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


def _fast_forward(module: nn.Linear) -> Callable[[Tensor], Tensor]:
    """A forward for `module` with the one-row case (every decode step at batch 1) kept short."""
    weight, bias = module.weight, module.bias
    bias_col = None if bias is None else bias[:, None]

    def forward(x: Tensor) -> Tensor:
        C = x.shape[-1]
        if x.numel() != C:
            return linear_few_rows(x, weight, bias)
        row = x.reshape(1, C)
        cols = torch.cat((row, row)).t()
        out = torch.mm(weight, cols) if bias_col is None else torch.addmm(bias_col, weight, cols)
        return out.t()[:1].contiguous().view(*x.shape[:-1], weight.shape[0])

    return forward


class FewRowLinears:
    """Use `linear_few_rows` in the plain nn.Linear layers of `model` (on CPU) until `restore()`.

    Only layers at least as wide out as in: for a narrow output (an MLP's down projection) MKL's
    F.linear kernel is as fast, and the rewrite would only add Python work.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules()
                        if type(m) is nn.Linear and m.weight.device.type == "cpu" and "forward" not in vars(m)
                        and m.out_features >= m.in_features]
        for m in self.modules:
            m.forward = _fast_forward(m)  # an instance attribute: nn.Module.__call__ finds it first

    def restore(self) -> None:
        for m in self.modules:
            vars(m).pop("forward", None)
        self.modules = []
