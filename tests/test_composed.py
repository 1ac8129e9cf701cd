"""Composition from pretrained parts: HF ViT / CLIP / our trained encoder + projector + HF GPT-2, LoRA."""

import pytest
import torch


from multimodaltransformer.data import ManifestDataset, TrainCollator, read_manifest
from multimodaltransformer.hub import compose, load_pretrained
from multimodaltransformer.models import MultimodalTransformerModel
from multimodaltransformer.models.composed import ComposedConfig, ComposedModel
from multimodaltransformer.nn.lora import LoRAConfig, LoRALinear, count_parameters


def _batch(model, shapes_dir, n=2):
    examples = read_manifest(shapes_dir)[:5 * n]
    ds = ManifestDataset(examples, model.tokenizer, model.image_processor, 40, pack=True)
    return TrainCollator(model.tokenizer.pad_id, model.image_processor)([ds[i] for i in range(len(ds))])


def test_compose_vit_and_gpt2_with_lora(parts, shapes_dir):
    cfg = ComposedConfig(vision_source=str(parts / "vit"), language_source=str(parts / "gpt2"),
                         freeze=["vision", "language"], lora=LoRAConfig(rank=4, alpha=8))
    model = compose(cfg)
    assert model.num_media_tokens == 16  # 4 x 4 patches, [CLS] dropped
    trainable, total = count_parameters(model)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    projector = sum(p.numel() for p in model.fusion.parameters())
    assert trainable == lora + projector and lora == 2 * 2 * 4 * (32 + 32)  # q, v in 2 layers
    assert trainable < 0.5 * total
    batch = _batch(model, shapes_dir)
    out = model(batch)
    out.loss.backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is None for n, p in model.decoder.named_parameters() if "lora_" not in n)
    assert all(p.grad is not None for n, p in model.decoder.named_parameters() if "lora_" in n)


def test_lora_starts_at_the_base_model_and_merges_exactly(parts, shapes_dir):
    base = compose(ComposedConfig(vision_source=str(parts / "vit"),
                                                language_source=str(parts / "gpt2"))).eval()
    torch.manual_seed(1)
    adapted = compose(ComposedConfig(vision_source=str(parts / "vit"), language_source=str(parts / "gpt2"),
                                                   lora=LoRAConfig(rank=4, target_modules=["q_proj", "fc1"]))).eval()
    adapted.fusion.load_state_dict(base.fusion.state_dict())
    batch = _batch(base, shapes_dir, 1)
    torch.testing.assert_close(adapted(batch).logits, base(batch).logits, atol=1e-6, rtol=0)  # B = 0 at start
    with torch.no_grad():
        for m in adapted.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(std=0.1)
    unmerged = adapted(batch).logits
    assert (unmerged - base(batch).logits).abs().max() > 1e-3
    adapted.merge_lora()
    assert not any(isinstance(m, LoRALinear) for m in adapted.modules()) and adapted.config.lora is None
    torch.testing.assert_close(adapted(batch).logits, unmerged, atol=1e-5, rtol=0)


def test_save_and_load_pretrained_round_trip(parts, shapes_dir, tmp_path):
    model = compose(ComposedConfig(vision_source=str(parts / "vit"), language_source=str(parts / "gpt2"),
                                                 lora=LoRAConfig(rank=2))).eval()
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert isinstance(loaded, ComposedModel)
    batch = _batch(model, shapes_dir, 1)
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, atol=0, rtol=0)
    ids = torch.tensor([[model.tokenizer.bos_id, *model.tokenizer.encode("describe the image."), model.tokenizer.sep_id]])
    px = batch["pixel_values"][:1]
    assert torch.equal(loaded.generate(ids, pixel_values=px, max_new_tokens=5),
                       loaded.generate(ids, pixel_values=px, max_new_tokens=5, use_cache=False))
    assert not isinstance(loaded, MultimodalTransformerModel)  # composed of parts, not a subclass of ours
    # saved when the LM was wrapped (decoder.lm.*): still loads, to the same logits
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "model.safetensors"))
    save_file({k.replace("decoder.", "decoder.lm.", 1) if k.startswith("decoder.") else k: v.contiguous()
               for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    torch.testing.assert_close(load_pretrained(tmp_path)(batch).logits, model(batch).logits, atol=0, rtol=0)


def test_trained_encoder_as_vision_source(parts, tiny_model, tmp_path, shapes_dir):
    tiny_model.save_pretrained(tmp_path / "trained")
    model = compose(ComposedConfig(vision_source=str(tmp_path / "trained"),
                                                 language_source=str(parts / "gpt2"), projector="linear"))
    assert model.num_media_tokens == tiny_model.num_media_tokens
    torch.testing.assert_close(model.image_encoder.encoder.patch_embed.weight,
                               tiny_model.image_encoder.patch_embed.weight)
    assert torch.isfinite(model(_batch(model, shapes_dir, 1)).loss)


def test_compose_errors_name_the_problem(parts):
    with pytest.raises(ValueError, match="not an image encoder"):
        compose(ComposedConfig(vision_source=str(parts / "gpt2"), language_source=str(parts / "gpt2")))
    with pytest.raises(ValueError, match="match no Linear"):
        compose(ComposedConfig(vision_source=str(parts / "vit"), language_source=str(parts / "gpt2"),
                                             lora=LoRAConfig(target_modules=["nope"])))


def test_train_a_composed_model_and_generate(parts, shapes_dir, tmp_path):
    from multimodaltransformer.cli import main
    from multimodaltransformer.train.config import load_run_config
    from multimodaltransformer.train.trainer import train

    m = str(shapes_dir / "manifest.jsonl")
    run = load_run_config("shapes-tiny", [
        f"compose={{vision_source: {parts / 'vit'}, language_source: {parts / 'gpt2'}, freeze: [vision, language], "
        "lora: {rank: 4}}", f"data.train={m}", f"data.val={m}", "train.max_steps=4", "train.batch_size=4",
        "train.eval_every=4", "train.eval_examples=3"])
    train(run, tmp_path / "run", progress=False)
    assert isinstance(load_pretrained(tmp_path / "run" / "model"), ComposedModel)
    pred = tmp_path / "pred.jsonl"
    assert main(["generate", str(tmp_path / "run" / "model"), "--data", m, "--out", str(pred),
                 "--max-new-tokens", "3"]) == 0
    assert len(pred.read_text().splitlines()) == len(read_manifest(m))


def test_text_only_fine_tuning_of_an_imported_gpt2(parts, tmp_path):
    """The seeds' GPT-2 fine-tuning recipe through `mmt train`: a text manifest, language_source only."""
    import json

    from multimodaltransformer.train.config import load_run_config
    from multimodaltransformer.train.trainer import train

    m = tmp_path / "text.jsonl"
    lines = [{"id": str(i), "task": "lm", "prompt": "", "target": t}
             for i, t in enumerate(["a red circle left of a blue square", "how many objects are there?"] * 8)]
    m.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    run = load_run_config("shapes-tiny", [f"compose={{language_source: {parts / 'gpt2'}, freeze: []}}",
                                          f"data.train={m}", "data.val=null", "train.max_steps=150", "train.log_every=5",
                                          "train.batch_size=8", "train.lr=5e-3", "train.warmup_steps=5"])
    model = train(run, tmp_path / "run", progress=False)
    assert model.image_encoder is None and model.num_media_tokens == 0
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train_log = [r for r in log if "loss" in r]
    assert train_log[-1]["loss"] < 0.5 * train_log[0]["loss"]
    loaded = load_pretrained(tmp_path / "run" / "model")
    tok = loaded.tokenizer
    ids = torch.tensor([[tok.bos_id, tok.sep_id]])
    out = loaded.generate(ids, max_new_tokens=40)
    assert tok.decode(out[0, 2:].tolist()) in {"a red circle left of a blue square", "how many objects are there?"}
