"""ViT: our VisionTransformer matches HF ViTModel at fp32 (CLS token, pre-LN, eps 1e-12, tanh pooler)."""

import pytest
import torch
import transformers as hf
from hub_utils import ATOL, max_diff, perturb, save

from multimodaltransformer import convert, load_pretrained
from multimodaltransformer.models import VisionTransformer


def tiny_config(**kw) -> hf.ViTConfig:
    return hf.ViTConfig(hidden_size=48, num_attention_heads=3, num_hidden_layers=2, intermediate_size=60,
                        image_size=30, patch_size=10, **kw)  # 3 x 3 patches + [CLS] = 10 tokens


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    ref = perturb(hf.ViTModel(tiny_config()))
    return ref, save(ref, tmp_path_factory.mktemp("vit"))


def test_hidden_states_and_pooler_match_transformers(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    assert isinstance(ours, VisionTransformer) and ours.config.transformer.norm_eps == 1e-12
    pv = torch.randn(3, 3, 30, 30)
    with torch.no_grad():
        a, b = ours(pixel_values=pv), ref(pixel_values=pv)
    assert a.last_hidden_state.shape == (3, 10, 48)
    assert max_diff(a.last_hidden_state, b.last_hidden_state) < ATOL
    assert max_diff(a.pooler_output, b.pooler_output) < ATOL


def test_classifier_checkpoint_without_pooler_or_qkv_bias(tmp_path):
    """ViTForImageClassification saves "vit."-prefixed tensors and no pooler; qkv_bias=False drops q/k/v biases."""
    torch.manual_seed(0)
    ref = perturb(hf.ViTForImageClassification(tiny_config(qkv_bias=False, hidden_act="gelu_new", num_labels=5)))
    ours = load_pretrained(save(ref, tmp_path))
    assert ours.transformer.blocks[0].attn.q_proj.bias is None
    pv = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        out = ours(pixel_values=pv)
        assert out.pooler_output is None
        assert max_diff(out.last_hidden_state, ref.vit(pixel_values=pv).last_hidden_state) < ATOL


def test_wrong_image_size_is_an_error(checkpoint):
    with pytest.raises(ValueError, match="30x30"):
        load_pretrained(checkpoint[1])(pixel_values=torch.randn(1, 3, 32, 32))


def test_convert_round_trip(checkpoint, tmp_path):
    _, path = checkpoint
    a, b = load_pretrained(path), load_pretrained(convert(path, tmp_path / "ours"))
    pv = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        assert torch.equal(a(pv).last_hidden_state, b(pv).last_hidden_state)
        assert torch.equal(a(pv).pooler_output, b(pv).pooler_output)


def test_one_vit_serves_the_image_modality_and_hf():
    """The library's image encoder is the same ViT (nn/vit.py) as the imported HF one, configured
    without [CLS] or pooler: its output is the stack over patches + their fixed 2-D positions."""
    import torch

    from multimodaltransformer.modalities.image import ViTConfig, ViTEncoder
    from multimodaltransformer.nn.position import sincos_2d_table
    from multimodaltransformer.nn.vit import ViT

    enc = ViTEncoder(ViTConfig(image_size=32, patch_size=8, dim=16, depth=1, heads=2, patch_positions="sincos")).eval()
    assert isinstance(enc, ViT) and issubclass(VisionTransformer, ViT)
    assert enc.cls_token is None and enc.pooler is None and "pos_embed" not in enc.state_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        patches = enc.patch_embed(x).flatten(2).transpose(1, 2)
        expected = enc.transformer(patches + sincos_2d_table(4, 4, 16)[None])
        assert torch.allclose(enc(x), expected, atol=1e-6)
