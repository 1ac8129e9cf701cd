"""Fusion modules: shapes for every type, the early / resampler formulas, invariances, late fusion, config errors.

Gated cross-attention and the text-only skip live in the decoder block: see tests/test_blocks.py.
"""

import pytest
import torch
from torch import nn

from multimodaltransformer.fusion import (CrossAttentionFusion, EarlyFusion, FusionConfig, FusionOutput,
                                          GatedCrossAttentionFusion, LateFusion, Resampler, build_fusion,
                                          decoder_overrides, num_prefix_tokens, uses_cross_attention)
from multimodaltransformer.nn import TransformerConfig

ATOL = 1e-5
B, N, CM, C = 2, 7, 12, 16


@pytest.mark.parametrize("projector", ["linear", "mlp"])
@pytest.mark.parametrize("kind", ["early", "cross", "gated", "resampler"])
def test_build_fusion_output_shapes(kind, projector):
    cfg = FusionConfig(type=kind, projector=projector, num_queries=5, depth=1, heads=4)
    fusion = build_fusion(cfg, CM, C)
    out = fusion(torch.randn(B, N, CM))
    assert isinstance(out, FusionOutput)
    P = num_prefix_tokens(cfg, N)
    if uses_cross_attention(cfg):
        assert out.prefix is None and out.memory.shape == (B, N, C) and P == 0
    else:
        assert out.memory is None and out.prefix.shape == (B, P, C)
        assert P == (N if kind == "early" else 5)


def test_build_fusion_classes_and_decoder_overrides():
    expected = {"early": EarlyFusion, "cross": CrossAttentionFusion, "gated": GatedCrossAttentionFusion,
                "resampler": Resampler, "late": LateFusion}
    for kind, cls in expected.items():
        cfg = FusionConfig(type=kind)
        assert type(build_fusion(cfg, CM, C)) is cls
        # the overrides must make a valid decoder config
        TransformerConfig(dim=C, heads=4, **decoder_overrides(cfg))
    assert decoder_overrides(FusionConfig("gated")) == {"cross_attention": True, "cross_attention_gate": True}
    assert decoder_overrides(FusionConfig("cross")) == {"cross_attention": True}
    assert decoder_overrides(FusionConfig("early")) == {} == decoder_overrides(FusionConfig("late"))
    assert num_prefix_tokens(FusionConfig("late"), N) == 0
    assert not uses_cross_attention(FusionConfig("resampler"))


@pytest.mark.parametrize("cls, where", [(EarlyFusion, "prefix"), (CrossAttentionFusion, "memory")])
def test_fusion_tokens_are_projection_plus_type_embedding_and_keep_checkpoint_names(cls, where):
    torch.manual_seed(0)
    fusion = cls(CM, C, "linear")
    with torch.no_grad():
        fusion.type_embed.normal_()
    media = torch.randn(B, N, CM)
    out = fusion(media)
    expected = media @ fusion.proj.weight.T + fusion.proj.bias + fusion.type_embed
    torch.testing.assert_close(getattr(out, where), expected, atol=ATOL, rtol=1e-5)
    assert getattr(out, "memory" if where == "prefix" else "prefix") is None
    assert set(fusion.state_dict()) == {"proj.weight", "proj.bias", "type_embed"}
    mlp = cls(CM, C, "mlp")
    assert {"proj.0.weight", "proj.2.weight", "type_embed"} <= set(mlp.state_dict())
    assert torch.equal(mlp.type_embed, torch.zeros(1, 1, C))  # zero init


def _naive_resampler(r: Resampler, media: torch.Tensor) -> torch.Tensor:
    """The Perceiver Resampler written out with explicit per-head softmax attention."""
    x = r.proj(media)
    q = r.queries.expand(media.shape[0], -1, -1)
    for layer in r.layers:
        a = layer.attn
        qn = layer.norm_queries(q)
        kv = torch.cat([layer.norm_media(x), qn], dim=1)
        H, D = a.heads, a.head_dim

        def heads(t):
            return t.view(t.shape[0], t.shape[1], H, D).transpose(1, 2)

        Q, K, V = heads(a.q_proj(qn)), heads(a.k_proj(kv)), heads(a.v_proj(kv))
        att = (Q @ K.transpose(-1, -2) / D ** 0.5).softmax(-1) @ V  # (B, H, Q, D)
        q = q + a.out_proj(att.transpose(1, 2).reshape(q.shape))
        q = q + layer.mlp(layer.norm_mlp(q))
    return r.norm(q) + r.type_embed


def test_resampler_matches_naive_and_ignores_token_order_and_count():
    torch.manual_seed(0)
    r = Resampler(CM, C, num_queries=4, depth=2, heads=4).eval()
    assert r.queries.shape == (4, C) and 0.01 < r.queries.std().item() < 0.03
    media = torch.randn(B, N, CM)
    out = r(media).prefix
    torch.testing.assert_close(out, _naive_resampler(r, media), atol=ATOL, rtol=1e-5)
    perm = torch.randperm(N)
    torch.testing.assert_close(r(media[:, perm]).prefix, out, atol=ATOL, rtol=1e-5)
    for n in (1, 100):
        assert r(torch.randn(B, n, CM)).prefix.shape == (B, 4, C)


def test_late_fusion_pools_media_and_depends_on_both_inputs():
    torch.manual_seed(0)
    late = LateFusion(CM, C)
    assert late.mlp[0].out_features == 2 * C and LateFusion(CM, C, hidden_dim=9).mlp[0].out_features == 9
    media, text = torch.randn(B, N, CM), torch.randn(B, C)
    out = late(media, text)
    assert out.shape == (B, C)
    expected = late.mlp[2](nn.functional.gelu(late.mlp[0](torch.cat([media.mean(1), text], -1))))
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-5)
    assert not torch.allclose(late(torch.randn(B, N, CM), text), out, atol=1e-4)
    assert not torch.allclose(late(media, torch.randn(B, C)), out, atol=1e-4)
    torch.testing.assert_close(late(media[:, torch.randperm(N)], text), out, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(type="middle"), "fusion.type"),
    (dict(projector="conv"), "fusion.projector"),
    (dict(num_queries=0), "fusion.num_queries"),
    (dict(depth=-1), "fusion.depth"),
    (dict(heads=0), "fusion.heads"),
    (dict(heads=2.5), "fusion.heads"),
    (dict(hidden_dim=0), "fusion.hidden_dim"),
])
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FusionConfig(**kwargs)


def test_resampler_heads_must_divide_dim():
    with pytest.raises(ValueError, match="fusion.heads 3 must divide"):
        build_fusion(FusionConfig("resampler", heads=3), CM, C)
