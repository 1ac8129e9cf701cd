"""Blocks and stacks: pre/post-LN, norms, activations, SwiGLU, GQA, the encoder-decoder, caches.

References: naive formulas, HF Llama layers (RMSNorm, SwiGLU, GQA + RoPE stack) and torch.nn.Transformer.
"""

import math

import pytest
import torch
import transformers as hf
from torch import nn

from multimodaltransformer.nn import (MLP, EncoderDecoderConfig, KVCache, LayerCache, MultiHeadAttention, RMSNorm, Transformer,
                                      TransformerBlock, TransformerConfig, TransformerDecoder, TransformerStack,
                                      build_activation)

ATOL = 1e-5


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_matches_the_pre_and_post_ln_formulas(norm_first):
    torch.manual_seed(0)
    block = TransformerBlock(TransformerConfig(dim=12, heads=3, mlp_dim=20, norm_first=norm_first)).eval()
    x = torch.randn(2, 5, 12)
    attn, mlp = (lambda h: block.attn(h)), block.mlp
    if norm_first:
        h = x + attn(block.ln_1(x))
        expected = h + mlp(block.ln_2(h))
    else:
        h = block.ln_1(x + attn(x))
        expected = block.ln_2(h + mlp(h))
    torch.testing.assert_close(block(x), expected)


def test_rmsnorm_and_activations_match_transformers():
    from transformers.activations import ACT2FN
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = torch.randn(3, 7, 16) * 3
    ref = LlamaRMSNorm(16, eps=1e-6)
    ours = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ref.weight.normal_()
        ours.weight.copy_(ref.weight)
    torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=1e-5)
    for hf_name, kind in [("gelu", "gelu"), ("gelu_new", "gelu_tanh"), ("gelu_pytorch_tanh", "gelu_tanh"),
                          ("quick_gelu", "quick_gelu"), ("silu", "silu"), ("relu", "relu")]:
        torch.testing.assert_close(build_activation(kind)(x), ACT2FN[hf_name](x), atol=ATOL, rtol=1e-5)


def test_swiglu_mlp_matches_llama_mlp():
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    ref = LlamaMLP(hf.LlamaConfig(hidden_size=12, intermediate_size=20, num_attention_heads=2))
    ours = MLP(12, 20, bias=False, activation="swiglu")
    ours.load_state_dict({"gate.weight": ref.gate_proj.weight, "fc1.weight": ref.up_proj.weight,
                          "fc2.weight": ref.down_proj.weight})
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=1e-5)


def test_grouped_query_attention_matches_naive_with_shared_heads():
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, heads=6, kv_heads=2)
    assert mha.k_proj.weight.shape == (8, 24)  # 2 heads x 4 dims
    x = torch.randn(2, 5, 24)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    q = mha.q_proj(x).view(2, 5, 6, 4).transpose(1, 2)
    k = mha.k_proj(x).view(2, 5, 2, 4).transpose(1, 2).repeat_interleave(3, dim=1)  # heads 0-2 share K/V head 0
    v = mha.v_proj(x).view(2, 5, 2, 4).transpose(1, 2).repeat_interleave(3, dim=1)
    scores = (q @ k.transpose(-1, -2) / 2).masked_fill(~mask, float("-inf"))
    expected = mha.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 24))
    torch.testing.assert_close(mha(x, mask=mask), expected, atol=ATOL, rtol=1e-5)


def test_llama_style_stack_matches_transformers_llama():
    """RMSNorm + SwiGLU + GQA + RoPE, no biases: a Llama needs only a weight mapping, not new layers."""
    from transformers.models.llama.modeling_llama import LlamaModel

    torch.manual_seed(0)
    ref = LlamaModel(hf.LlamaConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                                    intermediate_size=80, vocab_size=97, rms_norm_eps=1e-6,
                                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0})).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = TransformerStack(TransformerConfig(dim=48, heads=4, kv_heads=2, depth=2, mlp_dim=80, bias=False,
                                              activation="swiglu", norm="rmsnorm", norm_eps=1e-6, position="rope"))
    names = {"attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
             "attn.out_proj": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.fc1": "mlp.up_proj",
             "mlp.fc2": "mlp.down_proj", "ln_1": "input_layernorm", "ln_2": "post_attention_layernorm"}
    state = {f"blocks.{i}.{a}.weight": ref.state_dict()[f"layers.{i}.{b}.weight"] for i in range(2) for a, b in names.items()}
    ours.load_state_dict(state | {"ln_f.weight": ref.norm.weight})
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    with torch.no_grad():
        got = ours(ref.embed_tokens(ids), mask)
        expected = ref(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


def _copy_torch_layer(ours: TransformerBlock, ref: nn.Module, cross: bool) -> None:
    def attn(dst: MultiHeadAttention, src: nn.MultiheadAttention) -> dict:
        q, k, v = src.in_proj_weight.chunk(3)
        qb, kb, vb = src.in_proj_bias.chunk(3)
        return {"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v, "q_proj.bias": qb, "k_proj.bias": kb,
                "v_proj.bias": vb, "out_proj.weight": src.out_proj.weight, "out_proj.bias": src.out_proj.bias}

    sd = {f"attn.{k}": v for k, v in attn(ours.attn, ref.self_attn).items()}
    norms = ["ln_1", "ln_cross", "ln_2"] if cross else ["ln_1", "ln_2"]
    if cross:
        sd |= {f"cross_attn.{k}": v for k, v in attn(ours.cross_attn, ref.multihead_attn).items()}
    for i, name in enumerate(norms):
        norm = getattr(ref, f"norm{i + 1}")
        sd |= {f"{name}.weight": norm.weight, f"{name}.bias": norm.bias}
    sd |= {"mlp.fc1.weight": ref.linear1.weight, "mlp.fc1.bias": ref.linear1.bias,
           "mlp.fc2.weight": ref.linear2.weight, "mlp.fc2.bias": ref.linear2.bias}
    ours.load_state_dict(sd)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")  # torch's fast path notes our odd head count
def test_encoder_decoder_matches_torch_nn_transformer():
    """Post-LN, ReLU, final norms: our Transformer configured as torch.nn.Transformer computes the same."""
    torch.manual_seed(0)
    ref = nn.Transformer(d_model=24, nhead=3, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=40,
                         dropout=0.0, batch_first=True).eval()
    stack = dict(dim=24, heads=3, depth=2, mlp_dim=40, activation="relu", norm_first=False)
    ours = Transformer(config=EncoderDecoderConfig(TransformerConfig(**stack),
                                                   TransformerConfig(**stack, cross_attention=True))).eval()
    for i in range(2):
        _copy_torch_layer(ours.encoder.stack.blocks[i], ref.encoder.layers[i], cross=False)
        _copy_torch_layer(ours.decoder.stack.blocks[i], ref.decoder.layers[i], cross=True)
    ours.encoder.stack.ln_f.load_state_dict(ref.encoder.norm.state_dict())
    ours.decoder.stack.ln_f.load_state_dict(ref.decoder.norm.state_dict())
    src, tgt = torch.randn(2, 7, 24), torch.randn(2, 5, 24)
    src_mask = torch.ones(2, 7, dtype=torch.bool)
    src_mask[1, 4:] = False
    with torch.no_grad():
        expected = ref(src, tgt, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5), tgt_is_causal=True,
                       src_key_padding_mask=~src_mask, memory_key_padding_mask=~src_mask)
        got = ours(src, tgt, src_attention_mask=src_mask)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


def test_seed_style_transformer_is_causal_on_the_target():
    torch.manual_seed(0)
    model = Transformer(32, 4, 2).eval()  # the seeds' Transformer(d_model, nhead, num_layers)
    src, tgt = torch.randn(2, 6, 32), torch.randn(2, 5, 32)
    out = model(src, tgt)
    assert out.shape == (2, 5, 32)
    tgt2 = tgt.clone()
    tgt2[:, 3:] = torch.randn(2, 2, 32)
    torch.testing.assert_close(model(src, tgt2)[:, :3], out[:, :3])
    assert not torch.allclose(model(src, tgt2)[:, 3:], out[:, 3:])


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "alibi", "rope"])
def test_cached_decoding_with_cross_attention_equals_full(position):
    """Prefill 3 tokens (cross K/V projected once), then one token at a time: same as the full pass."""
    torch.manual_seed(0)
    dec = TransformerDecoder(TransformerConfig(dim=24, heads=4, kv_heads=2, depth=2, position=position,
                                               max_seq_len=16, cross_attention=True)).eval()
    x, memory = torch.randn(2, 7, 24), torch.randn(2, 5, 24)
    with torch.no_grad():
        full = dec(x, memory)
        cache = dec.new_cache(2, 10, context_len=5)
        outs = [dec(x[:, :3], memory, input_pos=torch.arange(3), cache=cache)]
        for t in range(3, 7):
            outs.append(dec(x[:, t:t + 1], input_pos=torch.tensor([t]), cache=cache))  # no memory: its K/V are cached
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=1e-5)


def test_kv_cache_holds_only_kv_heads():
    dec = TransformerDecoder(TransformerConfig(dim=24, heads=6, kv_heads=2, depth=1))
    cache = dec.new_cache(3, 8).layers[0].self_attn
    assert isinstance(cache, KVCache) and cache.k.shape == (3, 2, 8, 4)
    assert not any(isinstance(v, KVCache) for m in dec.modules() for v in vars(m).values())  # the caller owns it


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="kv_heads"):
        TransformerConfig(dim=24, heads=6, kv_heads=4)
    with pytest.raises(ValueError, match="rope needs an even head dim"):
        TransformerConfig(dim=12, heads=4, position="rope")
    with pytest.raises(ValueError, match="cross_attention"):
        EncoderDecoderConfig(TransformerConfig(), TransformerConfig())
    assert math.isclose(TransformerConfig(dim=10, heads=2, mlp_ratio=2.5).hidden_dim, 25)


def _block_pair(gate: bool) -> tuple[TransformerBlock, TransformerBlock]:
    """A block with cross attention (gated or not) and the same block without it, sharing weights."""
    torch.manual_seed(0)
    cfg = dict(dim=16, heads=4, mlp_dim=24)
    cross = TransformerBlock(TransformerConfig(**cfg, cross_attention=True, cross_attention_gate=gate)).eval()
    plain = TransformerBlock(TransformerConfig(**cfg)).eval()
    plain.load_state_dict({k: v for k, v in cross.state_dict().items() if k in plain.state_dict()})
    with torch.no_grad():  # non-zero output projections, so an open gate visibly changes the output
        cross.cross_attn.out_proj.weight.normal_()
    return cross, plain


def test_gated_cross_attention_starts_closed_then_opens():
    """Flamingo: tanh(0) = 0, so at init the gated block is exactly the block without cross attention."""
    gated, plain = _block_pair(gate=True)
    assert gated.cross_gate.shape == () and gated.cross_gate.item() == 0.0
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        assert torch.equal(gated(x, context=ctx), plain(x))
        gated.cross_gate.fill_(0.5)
        h = x + gated.attn(gated.ln_1(x))
        h = h + math.tanh(0.5) * gated.cross_attn(gated.ln_cross(h), context=ctx)
        expected = h + gated.mlp(gated.ln_2(h))
        got = gated(x, context=ctx)
    assert not torch.allclose(got, plain(x), atol=1e-3)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("gate", [False, True])
def test_cross_attention_block_without_context_or_cache_is_a_text_only_pass(gate):
    cross, plain = _block_pair(gate)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(cross(x), plain(x), atol=0, rtol=0)
        # with a cache set up, no context means "use the cache", not "skip"
        context = KVCache(2, 4, 3, 4, torch.float32)
        context.k.normal_()
        context.v.normal_()
        if gate:
            cross.cross_gate.fill_(1.0)
        cache = LayerCache(KVCache(2, 4, 5, 4, torch.float32), context)
        assert not torch.allclose(cross(x, cache=cache), plain(x), atol=1e-3)


def test_gate_config_errors():
    with pytest.raises(ValueError, match="needs cross_attention"):
        TransformerConfig(cross_attention_gate=True)
    with pytest.raises(ValueError, match="pre-LN"):
        TransformerConfig(cross_attention=True, cross_attention_gate=True, norm_first=False)
