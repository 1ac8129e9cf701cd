"""load_pretrained / convert: dispatch, weight files, tokenizers, and errors that name the problem."""

import json

import pytest
import torch
import transformers as hf
from hub_utils import max_diff, perturb, save
from safetensors.torch import load_file, save_file

from multimodaltransformer import MultimodalTransformerModel, convert, load_pretrained
from multimodaltransformer.cli import main
from multimodaltransformer.hub import CheckpointError


@pytest.fixture
def gpt2_dir(tmp_path):
    torch.manual_seed(0)
    cfg = hf.GPT2Config(n_embd=24, n_head=3, n_layer=1, vocab_size=50, n_positions=16, bos_token_id=None,
                        eos_token_id=None)
    return save(perturb(hf.GPT2LMHeadModel(cfg)), tmp_path / "gpt2")


def _edit_weights(directory, fn):
    state = load_file(str(directory / "model.safetensors"))
    fn(state)
    save_file(state, str(directory / "model.safetensors"))


def test_unknown_model_type_is_named(gpt2_dir):
    cfg = json.loads((gpt2_dir / "config.json").read_text())
    (gpt2_dir / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    with pytest.raises(CheckpointError, match=r"unknown model_type 'mamba'.*gpt2"):
        load_pretrained(gpt2_dir)


def test_missing_tensor_is_named(gpt2_dir):
    _edit_weights(gpt2_dir, lambda s: s.pop("transformer.h.0.mlp.c_fc.weight"))
    with pytest.raises(CheckpointError, match=r"gpt2 checkpoint .*missing tensor 'h.0.mlp.c_fc.weight'"):
        load_pretrained(gpt2_dir)


def test_shape_mismatch_is_named(gpt2_dir):
    _edit_weights(gpt2_dir, lambda s: s.update({"transformer.ln_f.weight": torch.ones(23)}))
    with pytest.raises(CheckpointError, match=r"'transformer.ln_f.weight' has shape \(23,\).*transformer.ln_f.weight"):
        load_pretrained(gpt2_dir)


def test_packed_attention_of_wrong_width_is_named(gpt2_dir):
    _edit_weights(gpt2_dir, lambda s: s.update({"transformer.h.0.attn.c_attn.weight": torch.ones(24, 70)}))
    with pytest.raises(CheckpointError, match=r"'transformer.h.0.attn.c_attn.weight' has shape \(24, 70\)"):
        load_pretrained(gpt2_dir)


def test_unsupported_option_is_named(gpt2_dir):
    cfg = json.loads((gpt2_dir / "config.json").read_text())
    (gpt2_dir / "config.json").write_text(json.dumps({**cfg, "scale_attn_by_inverse_layer_idx": True}))
    with pytest.raises(CheckpointError, match="scale_attn_by_inverse_layer_idx"):
        load_pretrained(gpt2_dir)


def test_missing_files(tmp_path, gpt2_dir):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_pretrained(tmp_path / "nowhere")
    (gpt2_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        load_pretrained(gpt2_dir)


def test_pytorch_model_bin_and_sharded_safetensors_load_the_same(gpt2_dir, tmp_path):
    ids = torch.randint(0, 50, (1, 5))
    with torch.no_grad():
        expected = load_pretrained(gpt2_dir)(ids).logits
    state = load_file(str(gpt2_dir / "model.safetensors"))
    torch.save(state, gpt2_dir / "pytorch_model.bin")
    (gpt2_dir / "model.safetensors").unlink()
    with torch.no_grad():
        assert torch.equal(load_pretrained(gpt2_dir)(ids).logits, expected)
    sharded = tmp_path / "sharded"
    hf.GPT2LMHeadModel.from_pretrained(gpt2_dir).save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    with torch.no_grad():
        assert max_diff(load_pretrained(sharded)(ids).logits, expected) == 0


def test_no_tokenizer_files_gives_none(gpt2_dir):
    assert load_pretrained(gpt2_dir).tokenizer is None


def test_own_multimodal_model_loads_and_converts(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "mm")
    model = load_pretrained(tmp_path / "mm")
    assert isinstance(model, MultimodalTransformerModel) and model.tokenizer is not None
    out = convert(tmp_path / "mm", tmp_path / "mm2")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    ids, pv = torch.randint(0, 50, (1, 6)), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_pretrained(out)(input_ids=ids, pixel_values=pv).logits,
                           tiny_model(input_ids=ids, pixel_values=pv).logits)


def test_cli_convert(gpt2_dir, tmp_path, capsys):
    assert main(["convert", str(gpt2_dir), str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "mmt-gpt2"
    (gpt2_dir / "config.json").write_text(json.dumps({"model_type": "t5"}))
    assert main(["convert", str(gpt2_dir), str(tmp_path / "out2")]) == 2
    assert "unknown model_type 't5'" in capsys.readouterr().err


def test_invalid_config_is_named_with_its_family(gpt2_dir):
    cfg = json.loads((gpt2_dir / "config.json").read_text())
    (gpt2_dir / "config.json").write_text(json.dumps({**cfg, "n_head": 5}))
    with pytest.raises(CheckpointError, match=r"gpt2 config .*config.json: dim 24 must be divisible by heads 5"):
        load_pretrained(gpt2_dir)


def test_convert_resolves_package_sources(tmp_path):
    from multimodaltransformer.config import ConfigError
    from multimodaltransformer.hub import convert

    with pytest.raises(ConfigError, match="no installed package no_such_model_pkg"):
        convert("package:no_such_model_pkg", tmp_path / "out")
