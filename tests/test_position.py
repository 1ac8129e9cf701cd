"""Positional encodings: hand-derived values, naive references, and RoPE against HF Llama's."""

import math

import pytest
import torch
import transformers as hf

from multimodaltransformer.nn import (ALiBi, LearnedPosition, MultiHeadAttention, PositionalEncoding,
                                      RotaryPosition, SinusoidalPosition, apply_rotary, build_position)
from multimodaltransformer.nn.position import alibi_slopes


def test_sinusoidal_table_matches_the_paper_formula_for_an_odd_dim():
    pe = SinusoidalPosition(max_len=9, dim=7)
    for p in range(9):
        for i in range(7):
            angle = p / 10000 ** (2 * (i // 2) / 7)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(pe.table[p, i].item() - expected) < 1e-6
    assert "table" not in pe.state_dict()  # a function of the config, not a weight
    x = torch.zeros(2, 3, 7)
    torch.testing.assert_close(pe.embed(x, torch.tensor([4, 0, 8])), pe.table[[4, 0, 8]].expand(2, 3, 7))


def test_learned_positions_add_their_rows_for_shared_or_per_row_positions():
    pe = LearnedPosition(max_len=10, dim=5)
    x = torch.randn(2, 3, 5)
    torch.testing.assert_close(pe.embed(x, torch.arange(3)), x + pe.weight[:3])
    per_row = torch.tensor([[0, 1, 2], [5, 6, 7]])
    torch.testing.assert_close(pe.embed(x, per_row)[1], x[1] + pe.weight[5:8])


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8).tolist() == pytest.approx([2 ** -(i + 1) for i in range(8)])
    # 6 heads: the 4-head sequence, then every other slope of the 8-head one
    assert alibi_slopes(6).tolist() == pytest.approx([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3])


def test_alibi_bias_in_attention_matches_naive_scores():
    torch.manual_seed(0)
    mha, alibi = MultiHeadAttention(12, 3), ALiBi(3)
    x = torch.randn(2, 5, 12)
    pos = torch.arange(5)
    bias = alibi.bias(pos, pos)  # (H, T, S)
    assert bias[1, 4, 1].item() == pytest.approx(-alibi.slopes[1].item() * 3)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    with torch.no_grad():
        got = mha(x, mask=bias.masked_fill(~causal, float("-inf")))
        q, k, v = (p(x).view(2, 5, 3, 4).transpose(1, 2).double() for p in (mha.q_proj, mha.k_proj, mha.v_proj))
        scores = q @ k.transpose(-1, -2) / 2 + bias.double()
        y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        expected = mha.out_proj(y.transpose(1, 2).reshape(2, 5, 12).float())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rope_rotates_pairs_i_and_i_plus_half():
    rope = RotaryPosition(head_dim=4, base=100.0)
    cos, sin = rope.rotary(torch.tensor([3]))
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    y = apply_rotary(x, cos, sin).flatten()
    for i, freq in enumerate([1.0, 100 ** -0.5]):  # pairs (0, 2) and (1, 3)
        a, b, t = x.flatten()[i].item(), x.flatten()[i + 2].item(), 3 * freq
        assert y[i].item() == pytest.approx(a * math.cos(t) - b * math.sin(t), abs=1e-5)
        assert y[i + 2].item() == pytest.approx(b * math.cos(t) + a * math.sin(t), abs=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryPosition(head_dim=8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        return (apply_rotary(q, *rope.rotary(torch.tensor([m]))) * apply_rotary(k, *rope.rotary(torch.tensor([n])))).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), atol=1e-4, rtol=1e-5)


def test_rope_matches_transformers_llama():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = hf.LlamaConfig(hidden_size=48, num_attention_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    q, k = torch.randn(2, 4, 7, 12), torch.randn(2, 4, 7, 12)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [3, 4, 5, 6, 7, 8, 9]])
    cos, sin = LlamaRotaryEmbedding(cfg)(q, positions)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
    ours = RotaryPosition(12, base=500.0).rotary(positions)
    torch.testing.assert_close(apply_rotary(q, *ours), q_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(apply_rotary(k, *ours), k_ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["none", "sinusoidal", "learned", "alibi", "rope"])
def test_every_encoding_has_the_same_interface(kind):
    pe = build_position(kind, dim=16, heads=4, max_len=32)
    assert isinstance(pe, PositionalEncoding)
    x, pos = torch.randn(2, 5, 16), torch.arange(5)
    acts = [not torch.equal(pe.embed(x, pos), x), pe.rotary(pos) is not None, pe.bias(pos, pos) is not None]
    assert sum(acts) == (0 if kind == "none" else 1)  # each encoding acts in exactly one place


def test_sincos_2d_table_halves_are_the_row_and_column_tables():
    from multimodaltransformer.nn.position import sincos_2d_table, sinusoid_table

    h, w, dim = 3, 4, 16
    table = sincos_2d_table(h, w, dim).reshape(h, w, dim)
    rows, cols = sinusoid_table(h, dim // 2), sinusoid_table(w, dim // 2)
    for y in range(h):
        for x in range(w):
            assert torch.equal(table[y, x, :dim // 2], rows[y]) and torch.equal(table[y, x, dim // 2:], cols[x])
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_table(2, 2, 6)
