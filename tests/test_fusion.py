"""Fusion modules: shapes for every type, the early / resampler / graph formulas, invariances, late fusion, config errors.

Gated cross-attention and the text-only skip live in the decoder block: see tests/test_blocks.py.
"""

import pytest
import torch
from torch import nn

from multimodaltransformer.fusion import (CrossAttentionFusion, EarlyFusion, FusionConfig, FusionOutput,
                                          GatedCrossAttentionFusion, GraphFusion, LateFusion, Resampler, build_fusion,
                                          decoder_overrides, grid_graph, num_prefix_tokens, uses_cross_attention)
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
                "resampler": Resampler, "graph": GraphFusion, "late": LateFusion}
    for kind, cls in expected.items():
        cfg = FusionConfig(type=kind)
        assert type(build_fusion(cfg, CM, C)) is cls
        # the overrides must make a valid decoder config
        TransformerConfig(dim=C, heads=4, **decoder_overrides(cfg))
    assert decoder_overrides(FusionConfig("gated")) == {"cross_attention": True, "cross_attention_gate": True}
    assert decoder_overrides(FusionConfig("cross")) == {"cross_attention": True}
    assert decoder_overrides(FusionConfig("early")) == {} == decoder_overrides(FusionConfig("late"))
    assert decoder_overrides(FusionConfig("graph")) == {} and not uses_cross_attention(FusionConfig("graph"))
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
    (dict(graph_radius=0), "fusion.graph_radius"),
    (dict(graph_radius=True), "fusion.graph_radius"),
    (dict(graph_pool=-2), "fusion.graph_pool"),
    (dict(graph_pool=1.5), "fusion.graph_pool"),
])
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FusionConfig(**kwargs)


def test_resampler_heads_must_divide_dim():
    with pytest.raises(ValueError, match="fusion.heads 3 must divide"):
        build_fusion(FusionConfig("resampler", heads=3), CM, C)


# ---- graph fusion ----------------------------------------------------------------------------

def _graph(depth=2, radius=1, pool=1, projector="linear", seed=0) -> GraphFusion:
    """A graph fusion with its zero-initialised update outputs opened, so messages reach the nodes."""
    torch.manual_seed(seed)
    g = GraphFusion(CM, C, depth, radius, pool, projector).eval()
    with torch.no_grad():
        for layer in g.layers:
            layer.update[2].weight.normal_(0, 0.3)
            layer.update[2].bias.normal_(0, 0.3)
        g.type_embed.normal_()
    return g


def _naive_graph(g: GraphFusion, media: torch.Tensor) -> torch.Tensor:
    """One image at a time, node by node: m_ij = MLP([x_i, x_j, e_ij]) with the concatenated weights."""
    side = int(media.shape[1] ** 0.5) // g.pool
    pooled = media.view(media.shape[0], side, g.pool, side, g.pool, CM).mean((2, 4)).reshape(media.shape[0], -1, CM)
    outs = []
    for nodes in g.proj(pooled):  # (n, C)
        h = nodes
        for layer in g.layers:
            x = layer.norm(h)
            w = torch.cat([layer.msg_dst.weight, layer.msg_src.weight, layer.msg_edge.weight], 1)  # (C, 3C)
            new = []
            for i in range(side * side):
                yi, xi = divmod(i, side)
                msgs = []
                for j in range(side * side):
                    yj, xj = divmod(j, side)
                    if max(abs(yj - yi), abs(xj - xi)) <= g.radius:
                        e = g.edge_embed(torch.tensor([xj - xi, yj - yi], dtype=torch.float32))
                        pre = torch.cat([x[i], x[j], e]) @ w.T + layer.msg_dst.bias
                        msgs.append(layer.msg_out(nn.functional.gelu(pre)))
                new.append(h[i] + layer.update(torch.cat([x[i], torch.stack(msgs).mean(0)])))
            h = torch.stack(new)
        outs.append(h + g.type_embed[0, 0])
    return torch.stack(outs)


def test_grid_graph_edges_are_neighbours_with_their_offsets():
    edge_index, offset = grid_graph(3, 4, 1)
    # 8 neighbours + self, fewer at the border: sum over nodes of (rows in reach) * (columns in reach)
    assert edge_index.shape == (2, sum(a * b for a in (2, 3, 2) for b in (2, 3, 3, 2))) == (2, 70)
    src, dst = edge_index
    dy, dx = src.div(4, rounding_mode="floor") - dst.div(4, rounding_mode="floor"), src % 4 - dst % 4
    assert torch.equal(offset, torch.stack([dx, dy], -1).float())  # (dx, dy) = where j is from i
    assert int(torch.maximum(dx.abs(), dy.abs()).max()) == 1 and bool((dst[1:] >= dst[:-1]).all())
    assert {(int(s), int(d)) for s, d in zip(src, dst)} >= {(i, i) for i in range(12)}  # self loops
    assert grid_graph(5, 5, 2)[0].shape[1] == sum(a * b for a in (3, 4, 5, 4, 3) for b in (3, 4, 5, 4, 3))


@pytest.mark.parametrize("pool, n", [(1, 16), (2, 4), (4, 1)])
def test_graph_fusion_shapes_and_prefix_length(pool, n):
    cfg = FusionConfig("graph", graph_pool=pool, depth=1)
    out = build_fusion(cfg, CM, C)(torch.randn(B, 16, CM))
    assert out.memory is None and out.prefix.shape == (B, n, C) == (B, num_prefix_tokens(cfg, 16), C)


def test_graph_fusion_at_init_is_early_fusion_over_the_pooled_patches():
    torch.manual_seed(0)
    g = GraphFusion(CM, C, depth=2, pool=2)
    with torch.no_grad():
        g.type_embed.normal_()
    media = torch.randn(B, 16, CM)
    pooled = media.view(B, 2, 2, 2, 2, CM).mean((2, 4)).reshape(B, 4, CM)  # 2 x 2 patches per node, row-major
    torch.testing.assert_close(g(media).prefix, g.proj(pooled) + g.type_embed, atol=ATOL, rtol=1e-5)
    assert not {"edge_index", "edge_offset", "inv_degree"} & set(g.state_dict())  # not in checkpoints


@pytest.mark.parametrize("radius, pool", [(1, 1), (2, 1), (1, 2)])
def test_graph_fusion_matches_naive_message_passing(radius, pool):
    g = _graph(depth=2, radius=radius, pool=pool, projector="mlp")
    media = torch.randn(B, 16, CM)
    torch.testing.assert_close(g(media).prefix, _naive_graph(g, media), atol=ATOL, rtol=1e-5)


def test_graph_batch_is_block_diagonal():
    g = _graph()
    media = torch.randn(3, 25, CM)
    batched = g(media).prefix
    alone = torch.cat([g(media[i:i + 1]).prefix for i in range(3)])
    torch.testing.assert_close(batched, alone, atol=1e-6, rtol=0)
    # no message crosses graphs: change image 0 and only image 0 changes
    changed = media.clone()
    changed[0] = torch.randn(25, CM)
    out = g(changed).prefix
    torch.testing.assert_close(out[1:], batched[1:], atol=1e-6, rtol=0)
    assert not torch.allclose(out[0], batched[0], atol=1e-3)


@pytest.mark.parametrize("depth, radius", [(1, 1), (2, 1), (1, 2)])
def test_graph_node_hears_only_nodes_within_depth_times_radius(depth, radius):
    g = _graph(depth=depth, radius=radius)
    media = torch.randn(1, 49, CM, requires_grad=True)
    i = 3 * 7 + 2  # the node at row 3, column 2 of the 7 x 7 grid
    g(media).prefix[0, i].sum().backward()
    heard = media.grad[0].abs().sum(-1) > 0  # (49,) which input nodes reach node i
    ys, xs = torch.arange(49) // 7, torch.arange(49) % 7
    within = torch.maximum((ys - 3).abs(), (xs - 2).abs()) <= depth * radius
    assert torch.equal(heard, within)
    # the same, perturbing a node just out of reach: node i's output does not move
    far = i + depth * radius + 1  # same row, one column out of reach
    with torch.no_grad():
        changed = media.detach().clone()
        changed[0, far] += 5.0
        torch.testing.assert_close(g(changed).prefix[0, i], g(media.detach()).prefix[0, i], atol=1e-6, rtol=0)


def test_graph_fusion_needs_a_square_grid_the_pool_divides():
    with pytest.raises(ValueError, match="square grid"):
        num_prefix_tokens(FusionConfig("graph"), 12)
    with pytest.raises(ValueError, match="fusion.graph_pool 3 must divide"):
        num_prefix_tokens(FusionConfig("graph", graph_pool=3), 16)
    with pytest.raises(ValueError, match="square grid"):
        build_fusion(FusionConfig("graph"), CM, C)(torch.randn(B, N, CM))
