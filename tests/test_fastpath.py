"""The few-row matmul fast path: an explicit option of the decode engine, no forward replaced."""

import torch
import torch.nn.functional as F
from torch import nn

from multimodaltransformer.generation.fastpath import MAX_ROWS, FewRowMatmuls, few_row_matmuls, linear_few_rows
from multimodaltransformer.generation.session import CachedSession


def test_it_reroutes_few_row_linears_only_and_agrees_with_f_linear():
    torch.manual_seed(0)
    wide, narrow = nn.Linear(16, 64), nn.Linear(64, 16)
    calls = []

    class Counting(FewRowMatmuls):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.linear:
                calls.append(args[1].shape)
            return super().__torch_function__(func, types, args, kwargs)

    for rows in (1, 3, MAX_ROWS, MAX_ROWS + 1):
        x = torch.randn(rows, 16)
        with Counting():
            y = wide(x)
        torch.testing.assert_close(y, F.linear(x, wide.weight, wide.bias), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(linear_few_rows(torch.randn(2, 1, 16), wide.weight).shape, torch.Size([2, 1, 64]))
    with few_row_matmuls(True):
        torch.testing.assert_close(narrow(torch.randn(2, 64)).shape, torch.Size([2, 16]))
    assert len(calls) == 4 and "forward" not in vars(wide)  # the module itself is untouched


def test_decoding_with_and_without_it_gives_the_same_tokens(tiny_model, tokenizer):
    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode("describe the image."), tokenizer.sep_id]])
    px = torch.randn(1, 3, 32, 32)
    out = {}
    for fast in (True, False):
        s = CachedSession(tiny_model, ids, torch.ones_like(ids, dtype=torch.bool), {"pixel_values": px}, 8,
                          fast_matmuls=fast)
        logits = [s.logits]
        for _ in range(6):
            logits.append(s.step(logits[-1].argmax(-1)))
        s.close()
        out[fast] = torch.stack(logits)
    torch.testing.assert_close(out[True], out[False], atol=1e-5, rtol=1e-5)
    assert torch.equal(out[True].argmax(-1), out[False].argmax(-1))
