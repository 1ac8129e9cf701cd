"""Fine-tuning a pretrained Whisper with LoRA through `mmt train` (`finetune:` in the run config)."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest
import torch
import yaml

from multimodaltransformer import load_pretrained
from multimodaltransformer.cli import main as cli
from multimodaltransformer.config import ConfigError
from multimodaltransformer.models import Whisper
from multimodaltransformer.train.build import resolve_source

from test_hub_whisper import _special_tokens_checkpoint


def _clips(directory, n: int = 8) -> None:
    """n short tone clips (inside the tiny model's 0.3 s window) with one of two transcripts each."""
    directory.mkdir()
    rows = []
    for i in range(n):
        t = np.arange(4000) / 16000
        x = 0.3 * np.sin(2 * np.pi * (300 if i % 2 else 1200) * t)
        with wave.open(str(directory / f"{i}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
            w.writeframes((x * 32767).astype("<i2").tobytes())
        rows.append({"id": str(i), "audio": f"{i}.wav", "task": "asr", "target": "the fox" if i % 2 else "lazy dog"})
    (directory / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("whisper")
    _special_tokens_checkpoint(path)
    return path


def test_the_prompt_layout_is_whispers(whisper_dir):
    model = load_pretrained(whisper_dir)
    tok = model.text_tokenizer()
    raw = model.tokenizer
    assert (tok.bos_id, tok.sep_id, tok.eos_id) == (raw.token_to_id("<|startoftranscript|>"),
                                                   raw.token_to_id("<|notimestamps|>"), model.config.eos_token_id)
    # transcripts are trained as Whisper writes them, after a space: " the fox", not "the fox"
    assert tok.encode("the fox") == tok.encode(" the fox") == raw.encode(" the fox").ids != raw.encode("the fox").ids
    assert tok.encode("") == tok.encode("  ") == []
    cased = model.text_tokenizer(sentence_case=True)  # finetune.sentence_case: as Whisper writes a sentence
    assert cased.encode("the fox") == raw.encode(" The fox").ids and cased.encode("") == []


def test_lora_finetune_trains_the_adapters_and_saves_a_plain_whisper(whisper_dir, tmp_path):
    _clips(tmp_path / "data")
    config = {"finetune": {"source": str(whisper_dir), "lora": {"rank": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}},
              "data": {"train": str(tmp_path / "data" / "manifest.jsonl"), "val": None, "pack": False},
              "train": {"batch_size": 4, "max_steps": 6, "lr": 1e-2, "warmup_steps": 1, "eval_every": 100,
                        "save_every": 3, "log_every": 1}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    cli(["train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run")])
    before, after = load_pretrained(whisper_dir), load_pretrained(tmp_path / "run" / "model")
    assert isinstance(after, Whisper) and after.state_dict().keys() == before.state_dict().keys()  # merged
    a, b = before.state_dict(), after.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)  # only adapted layers
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < losses[0]


def test_bad_finetune_sources_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not installed"):
        resolve_source("package:no_such_package_here")
    from multimodaltransformer.train.build import finetune_model
    from multimodaltransformer.train.config import FinetuneConfig

    torch.manual_seed(0)
    from multimodaltransformer.models import MultimodalTransformer, MultimodalTransformerModel

    MultimodalTransformerModel(MultimodalTransformer()).save_pretrained(tmp_path / "mm")
    with pytest.raises(ConfigError, match="cannot be fine-tuned as it is"):
        finetune_model(FinetuneConfig(source=str(tmp_path / "mm")))


def test_lora_targets_may_be_patterns(whisper_dir):
    """`*` patterns pick layers by place: the decoder's query projections only, not the encoder's."""
    from multimodaltransformer.nn.lora import LoRAConfig, LoRALinear, apply_lora

    model = load_pretrained(whisper_dir)
    names = apply_lora(model, LoRAConfig(rank=2, target_modules=["decoder.*q_proj", "encoder.*.1.attn.v_proj"]))
    assert names and all(n.startswith("decoder.") and n.endswith("q_proj") or n.endswith("blocks.1.attn.v_proj")
                         for n in names)
    assert any(n.startswith("encoder.") for n in names)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == len(names)
