"""The multimodal model with every fusion method and its heads: invariances and save/load."""

from dataclasses import replace

import pytest
import torch

from multimodaltransformer import MultimodalTransformerModel
from multimodaltransformer.data import prompt_batch
from multimodaltransformer.fusion import FusionConfig
from multimodaltransformer.models.multimodal import HeadsConfig

from conftest import tiny_config

GENERATIVE = ["early", "cross", "gated", "resampler", "graph", "cross-null"]  # cross-null: 2 null tokens


def _model(tokenizer, fusion: str, **heads) -> MultimodalTransformerModel:
    torch.manual_seed(0)
    null = 2 if fusion == "cross-null" else 0
    fusion = "cross" if null else fusion
    cfg = replace(tiny_config(tokenizer.vocab_size),
                  fusion=FusionConfig(fusion, num_queries=4, depth=1, heads=2, null_tokens=null), heads=HeadsConfig(**heads))
    model = MultimodalTransformerModel(cfg).eval()
    if fusion == "gated":  # open the gates: at init they are closed and the image has no effect
        for block in model.decoder.transformer.blocks:
            block.cross_gate.data.fill_(0.7)
    if fusion == "graph":  # open the zero-initialised updates: at init graph fusion is early fusion
        for layer in model.fusion.layers:
            layer.update[2].weight.data.normal_(0, 0.3)
    model.tokenizer = tokenizer
    return model


def _batch(tok, prompts):
    ids, mask = prompt_batch(tok, prompts)
    torch.manual_seed(1)
    return ids, mask, torch.randn(ids.shape[0], 3, 32, 32)


@pytest.mark.parametrize("fusion", GENERATIVE)
def test_generative_fusions_condition_on_the_image(tokenizer, fusion):
    model = _model(tokenizer, fusion)
    ids, mask, pv = _batch(tokenizer, ["describe the image.", "what shape is the red object?"])
    a = model(input_ids=ids, attention_mask=mask, pixel_values=pv).logits
    b = model(input_ids=ids, attention_mask=mask, pixel_values=torch.randn_like(pv)).logits
    assert a.shape == (*ids.shape, tokenizer.vocab_size)
    assert not torch.allclose(a, b)
    expected_prefix = {"early": 16, "resampler": 4, "graph": 16, "cross": 0, "gated": 0, "cross-null": 0}[fusion]
    assert model.num_media_tokens == expected_prefix


@pytest.mark.parametrize("fusion", GENERATIVE)
def test_cached_generation_equals_uncached(tokenizer, fusion):
    model = _model(tokenizer, fusion)
    ids, mask, pv = _batch(tokenizer, ["describe the image.", "what shape is the red object?", "how many?"])
    kw = dict(attention_mask=mask, pixel_values=pv, max_new_tokens=8, eos_token_id=[])
    fast = model.generate(ids, **kw)
    assert torch.equal(fast, model.generate(ids, use_cache=False, **kw))
    beams = dict(kw, num_beams=3)
    assert torch.equal(model.generate(ids, **beams), model.generate(ids, use_cache=False, **beams))


@pytest.mark.parametrize("fusion", GENERATIVE)
def test_packed_segments_equal_separate_sequences(tokenizer, fusion):
    model = _model(tokenizer, fusion)
    tok = tokenizer
    a, b = [tok.bos_id, *tok.encode("describe the image."), tok.sep_id], [tok.bos_id, *tok.encode("how many?")]
    pv = torch.randn(1, 3, 32, 32)
    packed = model(input_ids=torch.tensor([a + b]), pixel_values=pv,
                   segment_ids=torch.tensor([[1] * len(a) + [2] * len(b)])).logits[0]
    alone_a = model(input_ids=torch.tensor([a]), pixel_values=pv).logits[0]
    alone_b = model(input_ids=torch.tensor([b]), pixel_values=pv).logits[0]
    torch.testing.assert_close(packed, torch.cat([alone_a, alone_b]), atol=1e-5, rtol=1e-5)


def test_closed_gates_ignore_the_image(tokenizer):
    torch.manual_seed(0)
    model = MultimodalTransformerModel(replace(tiny_config(tokenizer.vocab_size), fusion=FusionConfig("gated"))).eval()
    ids, mask, pv = _batch(tokenizer, ["describe the image."])
    with_image = model(input_ids=ids, pixel_values=pv).logits
    torch.testing.assert_close(with_image, model(input_ids=ids).logits)  # text-only pass skips cross-attention


@pytest.mark.parametrize("fusion", ["early", "cross", "late"])
def test_heads_and_contrastive_space(tokenizer, fusion, tmp_path):
    model = _model(tokenizer, fusion, contrastive_dim=16, itm=True, classes={"classify": ["circle", "square"]})
    ids, mask, pv = _batch(tokenizer, ["what is the main shape in the image?"] * 3)
    logits = model.classify("classify", ids, mask, pv)
    assert logits.shape == (3, 2)
    assert model.itm_logits(ids, mask, pv).shape == (3, 2)
    assert model.encode_image(pv).shape == model.encode_text(ids, mask).shape == (3, 16)
    # the pooled features read the last real token: left padding changes nothing
    short, short_mask = prompt_batch(tokenizer, ["what?", "what is the main shape in the image?"])
    n = int(short_mask[0].sum())
    alone = model.classify("classify", short[:1, -n:], short_mask[:1, -n:], pv[:1])
    torch.testing.assert_close(model.classify("classify", short, short_mask, pv[:2])[:1], alone, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "m")
    loaded = MultimodalTransformerModel.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded.classify("classify", ids, mask, pv), logits)
    assert loaded.head_labels == {"classify": ["circle", "square"]}
    with pytest.raises(KeyError, match="no classification head"):
        model.classify("vqa", ids, mask, pv)


def test_mlp_contrastive_projections_save_and_load(tokenizer, tmp_path):
    model = _model(tokenizer, "early", contrastive_dim=16, contrastive_hidden=24)
    ids, mask, pv = _batch(tokenizer, ["a red circle", "a blue square"])
    image, text = model.encode_image(pv), model.encode_text(ids, mask)
    assert image.shape == text.shape == (2, 16) and isinstance(model.image_proj, torch.nn.Sequential)
    model.save_pretrained(tmp_path / "m")
    loaded = MultimodalTransformerModel.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded.encode_image(pv), image)
    torch.testing.assert_close(loaded.encode_text(ids, mask), text)
    with pytest.raises(ValueError, match="contrastive_hidden must be positive"):
        HeadsConfig(contrastive_dim=16, contrastive_hidden=0)


def test_late_fusion_cannot_generate(tokenizer):
    model = _model(tokenizer, "late", classes={"vqa": ["yes", "no"]})
    ids, mask, pv = _batch(tokenizer, ["is there a red circle?"])
    with pytest.raises(ValueError, match="late fusion"):
        model.generate(ids, attention_mask=mask, pixel_values=pv, max_new_tokens=3)
    assert model.classify("vqa", ids, mask, pv).shape == (1, 2)


def test_text_only_pass_through_an_image_model(tiny_model, tokenizer):
    ids, mask = prompt_batch(tokenizer, ["is this review positive or negative?"])
    out = tiny_model(input_ids=ids, attention_mask=mask).logits
    assert out.shape == (*ids.shape, tokenizer.vocab_size)
    gen = tiny_model.generate(ids, attention_mask=mask, max_new_tokens=4, eos_token_id=[])
    assert torch.equal(gen, tiny_model.generate(ids, attention_mask=mask, max_new_tokens=4, eos_token_id=[],
                                                use_cache=False))


def test_bidirectional_pass_sees_later_tokens(tiny_model, tokenizer):
    ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode("a red circle"), tokenizer.eos_id]])
    changed = ids.clone()
    changed[0, -2] = tokenizer.encode("square")[0]
    causal = tiny_model.hidden_states(ids)[0, 1], tiny_model.hidden_states(changed)[0, 1]
    both = tiny_model.hidden_states(ids, bidirectional=True)[0, 1], tiny_model.hidden_states(changed, bidirectional=True)[0, 1]
    torch.testing.assert_close(*causal)  # position 1 cannot see the change at -2 causally
    assert not torch.allclose(*both)


def test_graph_fusion_trains_and_round_trips(tokenizer, tmp_path):
    torch.manual_seed(0)
    cfg = replace(tiny_config(tokenizer.vocab_size), fusion=FusionConfig("graph", depth=2, graph_pool=2))
    model = MultimodalTransformerModel(cfg).train()
    assert model.num_media_tokens == 4  # 4 x 4 patches pooled 2 x 2
    ids, mask, pv = _batch(tokenizer, ["describe the image.", "what shape is the red object?"])
    labels = ids.masked_fill(~mask, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(2):  # step 1 opens the zero-initialised updates; from step 2 the messages learn too
        opt.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[1] < losses[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())
    model.eval().save_pretrained(tmp_path / "m")
    loaded = MultimodalTransformerModel.from_pretrained(tmp_path / "m")
    assert loaded.config.fusion == cfg.fusion
    torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask, pixel_values=pv).logits,
                               model(input_ids=ids, attention_mask=mask, pixel_values=pv).logits, atol=0, rtol=0)


def test_null_tokens_follow_the_media_in_the_memory(tokenizer, tmp_path):
    model = _model(tokenizer, "cross-null")
    _, _, pv = _batch(tokenizer, ["describe the image."])
    media = model.image_encoder(pv)
    memory = model.fusion(media).memory
    assert memory.shape[1] == media.shape[1] + 2
    torch.testing.assert_close(memory[:, -2:], model.fusion.null.expand(1, -1, -1))
    model.save_pretrained(tmp_path)
    assert MultimodalTransformerModel.from_pretrained(tmp_path).fusion.null.shape == (1, 2, 32)
    with pytest.raises(ValueError, match="null_tokens"):
        FusionConfig("early", null_tokens=1)
    with pytest.raises(ValueError, match="null_tokens"):
        FusionConfig("cross", null_tokens=-1)


def test_graph_pool_must_divide_the_patch_grid(tokenizer):
    with pytest.raises(ValueError, match="fusion.graph_pool 3 must divide"):
        replace(tiny_config(tokenizer.vocab_size), fusion=FusionConfig("graph", graph_pool=3))
