import pytest
import torch

from multimodaltransformer import MultimodalTransformer, MultimodalTransformerModel
from multimodaltransformer.data import prompt_batch

from conftest import tiny_config


def _batch(tok, prompts, B=None):
    ids, mask = prompt_batch(tok, prompts)
    return ids, mask, torch.randn(ids.shape[0], 3, 32, 32)


def test_forward_shapes_and_loss(tiny_model, tokenizer):
    ids, mask, pv = _batch(tokenizer, ["what color is the circle?", "describe the image."])
    labels = ids.masked_fill(~mask, -100)
    out = tiny_model(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=labels)
    assert out.logits.shape == (*ids.shape, tokenizer.vocab_size)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # the same through a batch dict, as the seeds call it
    out2 = tiny_model({"input_ids": ids, "attention_mask": mask, "pixel_values": pv, "labels": labels})
    torch.testing.assert_close(out.loss, out2.loss)


def test_packages_export_their_configs():
    import multimodaltransformer.models as models
    import multimodaltransformer.nn as nn
    from multimodaltransformer.models import HeadsConfig
    from multimodaltransformer.nn import ResNetConfig

    assert HeadsConfig.__name__ in models.__all__ and ResNetConfig.__name__ in nn.__all__
    assert all(hasattr(models, name) for name in models.__all__) and all(hasattr(nn, name) for name in nn.__all__)


def test_seed_style_construction():
    model = MultimodalTransformerModel(MultimodalTransformer)
    assert isinstance(model.config, MultimodalTransformer)


def test_image_changes_text_logits(tiny_model, tokenizer):
    ids, mask, pv = _batch(tokenizer, ["describe the image."])
    a = tiny_model(input_ids=ids, pixel_values=pv).logits
    b = tiny_model(input_ids=ids, pixel_values=torch.randn_like(pv)).logits
    assert not torch.allclose(a, b)


def test_left_padding_does_not_change_logits(tiny_model, tokenizer):
    """A left-padded row gives the same logits at its real tokens as the row alone."""
    ids, mask, pv = _batch(tokenizer, ["is there a red circle left of the blue square?", "where?"])
    short = ids[1:, mask[1]]
    full = tiny_model(input_ids=ids, attention_mask=mask, pixel_values=pv).logits[1, mask[1]]
    alone = tiny_model(input_ids=short, pixel_values=pv[1:]).logits[0]
    torch.testing.assert_close(full, alone, atol=1e-5, rtol=1e-5)


def test_cached_and_uncached_generation_agree(tiny_model, tokenizer):
    ids, mask, pv = _batch(tokenizer, ["describe the image.", "what shape is the red object?", "how many?"])
    fast = tiny_model.generate(ids, attention_mask=mask, pixel_values=pv, max_new_tokens=12, eos_token_id=[])
    slow = tiny_model.generate(ids, attention_mask=mask, pixel_values=pv, max_new_tokens=12, eos_token_id=[],
                               use_cache=False)
    assert fast.shape == (3, ids.shape[1] + 12)
    assert torch.equal(fast, slow)


def test_batched_generation_equals_one_by_one(tiny_model, tokenizer):
    prompts = ["describe the image.", "what shape is the red object?"]
    ids, mask, pv = _batch(tokenizer, prompts)
    both = tiny_model.generate(ids, attention_mask=mask, pixel_values=pv, max_new_tokens=8, eos_token_id=[])
    for r in range(2):
        one_ids, _ = prompt_batch(tokenizer, [prompts[r]])
        one = tiny_model.generate(one_ids, pixel_values=pv[r:r + 1], max_new_tokens=8, eos_token_id=[])
        assert torch.equal(both[r, -8:], one[0, -8:])


def test_generation_pads_after_eos(tiny_model, tokenizer):
    ids, mask, pv = _batch(tokenizer, ["describe the image.", "what?"])
    free = tiny_model.generate(ids, attention_mask=mask, pixel_values=pv, max_new_tokens=6, eos_token_id=[])
    eos = int(free[0, ids.shape[1] + 1])  # make row 0's second new token an EOS
    out = tiny_model.generate(ids, attention_mask=mask, pixel_values=pv, max_new_tokens=6, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_id)
    row = out[0, ids.shape[1]:].tolist()
    k = row.index(eos)
    assert k <= 1 and all(t == tokenizer.pad_id for t in row[k + 1:])


def test_generation_stops_at_max_seq_len(tiny_model, tokenizer):
    ids, mask, pv = _batch(tokenizer, ["describe the image."])
    out = tiny_model.generate(ids, pixel_values=pv, max_new_tokens=500, eos_token_id=[])
    assert out.shape[1] + tiny_model.config.num_media_tokens == tiny_model.max_seq_len


def test_save_and_load_give_identical_logits(tiny_model, tokenizer, tmp_path):
    ids, mask, pv = _batch(tokenizer, ["describe the image."])
    tiny_model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    loaded = MultimodalTransformerModel.from_pretrained(tmp_path)
    assert loaded.config == tiny_model.config
    assert loaded.tokenizer.encode("red circle") == tokenizer.encode("red circle")
    assert loaded.decoder.lm_head.weight.data_ptr() == loaded.decoder.tok_embed.weight.data_ptr()
    torch.testing.assert_close(loaded(input_ids=ids, pixel_values=pv).logits,
                               tiny_model(input_ids=ids, pixel_values=pv).logits, atol=0, rtol=0)


def test_load_names_mismatched_tensor(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["decoder"]["max_seq_len"] = 65
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="decoder.pos_embed.weight"):
        MultimodalTransformerModel.from_pretrained(tmp_path)


def test_text_only_model():
    torch.manual_seed(0)
    model = MultimodalTransformerModel(tiny_config(image=False)).eval()
    ids = torch.randint(5, 300, (2, 7))
    assert model(input_ids=ids).logits.shape == (2, 7, 320)
    fast = model.generate(ids, max_new_tokens=5, eos_token_id=[])
    assert torch.equal(fast, model.generate(ids, max_new_tokens=5, eos_token_id=[], use_cache=False))
    with pytest.raises(ValueError, match="no image encoder"):
        model(input_ids=ids, pixel_values=torch.randn(2, 3, 32, 32))


def test_packed_segments_equal_separate_sequences(tiny_model, tokenizer):
    """Two examples packed behind one image give the same logits and loss as run apart."""
    from multimodaltransformer.data import ManifestDataset, TrainCollator, read_manifest
    from multimodaltransformer.modalities import ImageProcessor

    tiny_model.train(False)
    examples = read_manifest(_shapes_manifest(tokenizer))[:5]  # one image: caption, 3 questions, class
    assert len({e.image for e in examples}) == 1
    proc = ImageProcessor(32)
    packed_ds = ManifestDataset(examples, tokenizer, proc, 60, pack=True)
    apart_ds = ManifestDataset(examples, tokenizer, proc, 60, pack=False)
    collate = TrainCollator(tokenizer.pad_id, proc)
    packed = collate([packed_ds[0]])
    apart = collate([apart_ds[i] for i in range(len(apart_ds))])
    assert len(packed_ds) == 1 and len(apart_ds) == 5 and "segment_ids" in packed
    lp = tiny_model(packed).logits[0]
    la = tiny_model(apart).logits
    offset = 0
    for r in range(5):
        n = int(apart["attention_mask"][r].sum())
        torch.testing.assert_close(lp[offset:offset + n], la[r, :n], atol=1e-5, rtol=1e-5)
        offset += n
    torch.testing.assert_close(tiny_model(packed).loss, tiny_model(apart).loss, atol=1e-5, rtol=1e-5)


def _shapes_manifest(tokenizer):
    import pathlib
    import tempfile

    from multimodaltransformer.data import shapes

    out = pathlib.Path(tempfile.mkdtemp())
    return shapes.generate(out, "train", n=1, seed=5, progress=False)


def test_sincos_patch_positions_are_fixed_and_not_saved(tokenizer, tmp_path):
    from dataclasses import replace

    cfg = tiny_config(tokenizer.vocab_size)
    cfg = replace(cfg, image=replace(cfg.image, patch_positions="sincos"))
    torch.manual_seed(0)
    model = MultimodalTransformerModel(cfg).eval()
    model.tokenizer = tokenizer
    assert not any("image_encoder.pos_embed" in k for k in model.state_dict())
    assert "image_encoder.pos_embed" not in dict(model.named_parameters())
    ids, mask, pv = _batch(tokenizer, ["describe the image."])
    model.save_pretrained(tmp_path)
    loaded = MultimodalTransformerModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(input_ids=ids, pixel_values=pv).logits,
                               model(input_ids=ids, pixel_values=pv).logits, atol=0, rtol=0)
