"""CLIP: encode_text / encode_image / logits match HF CLIPModel at fp32 (EOS pooling, padding, quick_gelu)."""

import pytest
import torch
import transformers as hf
from hub_utils import ATOL, features, max_diff, perturb, save

from multimodaltransformer import convert, load_pretrained
from multimodaltransformer.models import CLIP

EOS = 96


def tiny_config(eos: int = EOS) -> hf.CLIPConfig:
    text = dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=2, intermediate_size=60, vocab_size=97,
                max_position_embeddings=20, bos_token_id=95, eos_token_id=eos, pad_token_id=0)
    vision = dict(hidden_size=36, num_attention_heads=3, num_hidden_layers=2, intermediate_size=50, image_size=30,
                  patch_size=10)
    return hf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=20)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    ref = perturb(hf.CLIPModel(tiny_config()))
    return ref, save(ref, tmp_path_factory.mktemp("clip"))


def _text():
    """Right-padded rows with EOS at different places; pad id 0 (and row 2 pads with EOS, as CLIP's tokenizer may)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 95, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[0, 8] = EOS
    ids[1, 5], ids[1, 6:], mask[1, 6:] = EOS, 0, 0
    ids[2, 3], ids[2, 4:], mask[2, 4:] = EOS, EOS, 0
    return ids, mask


def test_text_and_image_features_match_transformers(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    assert isinstance(ours, CLIP)
    ids, mask = _text()
    pv = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        assert max_diff(ours.encode_text(ids, mask), features(ref.get_text_features(input_ids=ids, attention_mask=mask))) < ATOL
        assert max_diff(ours.encode_image(pv), features(ref.get_image_features(pixel_values=pv))) < ATOL


def test_similarity_logits_match_transformers(checkpoint):
    ref, path = checkpoint
    ours = load_pretrained(path)
    ids, mask = _text()
    pv = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        a = ours(input_ids=ids, pixel_values=pv, attention_mask=mask)
        b = ref(input_ids=ids, pixel_values=pv, attention_mask=mask)
    assert a.logits_per_image.shape == (2, 3)
    assert max_diff(a.logits_per_image, b.logits_per_image) < ATOL
    assert max_diff(a.logits_per_text, b.logits_per_text) < ATOL
    assert max_diff(a.text_embeds, b.text_embeds) < ATOL and max_diff(a.image_embeds, b.image_embeds) < ATOL


def test_legacy_eos_token_id_2_pools_at_the_highest_id(tmp_path):
    """Configs from before HF PR #24773 say eos_token_id=2 and mean "argmax of input_ids"."""
    torch.manual_seed(0)
    ref = perturb(hf.CLIPModel(tiny_config(eos=2)))
    ours = load_pretrained(save(ref, tmp_path))
    ids = torch.randint(3, 90, (2, 7))
    ids[0, 4], ids[1, 6] = 96, 96
    with torch.no_grad():
        assert max_diff(ours.encode_text(ids), features(ref.get_text_features(input_ids=ids))) < ATOL


def test_convert_round_trip(checkpoint, tmp_path):
    _, path = checkpoint
    a, b = load_pretrained(path), load_pretrained(convert(path, tmp_path / "ours"))
    ids, mask = _text()
    pv = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        assert torch.equal(a(ids, pv, mask).logits_per_image, b(ids, pv, mask).logits_per_image)
