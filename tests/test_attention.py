import math

import torch

from multimodaltransformer.nn import KVCache, MultiHeadAttention


def naive_attention(mha: MultiHeadAttention, x, context=None, mask=None):
    """Attention written out with explicit matmuls and softmax, fp64."""
    src = x if context is None else context
    B, T, C = x.shape
    H, D = mha.heads, mha.head_dim
    q = mha.q_proj(x).view(B, T, H, D).transpose(1, 2).double()
    k = mha.k_proj(src).view(B, src.shape[1], H, D).transpose(1, 2).double()
    v = mha.v_proj(src).view(B, src.shape[1], H, D).transpose(1, 2).double()
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    y = scores.softmax(-1) @ v
    return mha.out_proj(y.transpose(1, 2).reshape(B, T, C).float())


def test_self_attention_matches_naive_with_causal_mask():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(2, 5, 16)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(mha(x, mask=mask), naive_attention(mha, x, mask=mask), atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_naive():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    torch.testing.assert_close(mha(x, context=ctx), naive_attention(mha, x, context=ctx), atol=1e-5, rtol=1e-5)


def test_causal_mask_blocks_future():
    """Changing a later token must not change earlier outputs."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 6, 8)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    y1 = mha(x, mask=mask)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 8)
    y2 = mha(x2, mask=mask)
    torch.testing.assert_close(y1[:, :4], y2[:, :4])
    assert not torch.allclose(y1[:, 4:], y2[:, 4:])


def test_kv_cache_incremental_equals_full():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    full = mha(x, mask=torch.ones(6, 6, dtype=torch.bool).tril())
    cache = KVCache(2, 4, 10, 4, torch.float32)
    slots = torch.arange(10)
    outs = [mha(x[:, :3], mask=(slots[None, :] <= torch.arange(3)[:, None]), input_pos=torch.arange(3), cache=cache)]
    for t in range(3, 6):
        outs.append(mha(x[:, t:t + 1], mask=(slots <= t)[None, :], input_pos=torch.tensor([t]), cache=cache))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
