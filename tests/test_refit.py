"""Refitting the contrastive projections on frozen towers (train/refit.py), and text pooling."""

import json
import shutil
from dataclasses import replace

import pytest
import torch

from multimodaltransformer.config import ConfigError
from multimodaltransformer.data import read_manifest
from multimodaltransformer.evaluate import pair_features, retrieval_scores
from multimodaltransformer.models.multimodal import HeadsConfig, MultimodalTransformerModel
from multimodaltransformer.nn.sequence import last_token
from multimodaltransformer.train.refit import refit_contrastive
from multimodaltransformer.train.trainer import train

from test_multitask import _run


def _model(tiny_model, tokenizer, **heads):
    torch.manual_seed(0)
    model = MultimodalTransformerModel(replace(tiny_model.config, heads=HeadsConfig(contrastive_dim=8, **heads)))
    model.tokenizer = tokenizer
    return model.eval()


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_text_pooling_reads_only_real_tokens(tiny_model, tokenizer, pool):
    model = _model(tiny_model, tokenizer, text_pool=pool)
    ids = torch.tensor([tokenizer.encode("a red circle") + [tokenizer.pad_id] * 3])
    mask = ids != tokenizer.pad_id
    n = int(mask.sum())
    with torch.no_grad():
        padded = model.text_features(ids, mask)
        alone = model.text_features(ids[:, :n])
        h = model.hidden_states(ids[:, :n], mask[:, :n])
    torch.testing.assert_close(padded, alone)  # padding changes nothing
    want = h.mean(1) if pool == "mean" else last_token(h, mask[:, :n])
    torch.testing.assert_close(alone, want)


def test_refit_moves_only_the_projections_and_is_deterministic(tiny_model, tokenizer, shapes_dir):
    pairs = [e for e in read_manifest(shapes_dir) if e.task == "retrieval"]
    runs = []
    for _ in range(2):
        model = _model(tiny_model, tokenizer, text_pool="mean", contrastive_hidden=16)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        image, text, used = pair_features(model, pairs)
        stats = refit_contrastive(model, pairs, steps=150, batch_size=8, lr=3e-3, seed=1)
        after = model.state_dict()
        changed = {k for k in after if not torch.equal(after[k], before[k])}
        assert changed and all(k.startswith(("image_proj.", "text_proj.", "logit_scale")) for k in changed), changed
        assert stats["refit_pairs"] == len(pairs) and image.shape[0] == text.shape[0] == len(used) == len(pairs)
        runs.append(after)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # same seed, same weights


def test_refit_learns_retrieval_on_fixed_features(tiny_model, tokenizer, shapes_dir):
    pairs = [e for e in read_manifest(shapes_dir) if e.task == "retrieval"]
    model = _model(tiny_model, tokenizer, text_pool="mean", contrastive_hidden=32)
    start = retrieval_scores(model, pairs)["retrieval_r1"]
    refit_contrastive(model, pairs, steps=400, batch_size=16, lr=3e-3)
    end = retrieval_scores(model, pairs)["retrieval_r1"]
    assert end > max(0.5, 2 * start), (start, end)  # fitted on these pairs: most are found


REFIT = ("multitask={sampling: round_robin, tasks: [{name: gen, objective: lm, tasks: [caption, vqa]},"
         "{name: ret, objective: contrastive, tasks: [retrieval], batch_size: 8, lock: [image, text],"
         " refit_steps: 60}]}",
         "model.heads={text_pool: mean}")


def test_runs_refit_at_the_end_log_it_and_resume_to_the_same_bytes(shapes_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(_run(shapes_dir, *REFIT), a, progress=False)
    log = [json.loads(x) for x in (a / "log.jsonl").read_text().splitlines()]
    refit = [r["refit/ret"] for r in log if "refit/ret" in r]
    assert len(refit) == 1 and "retrieval_r1" in refit[0] and refit[0]["refit_pairs"] > 0
    saved = MultimodalTransformerModel.from_pretrained(a / "model")
    assert saved.config.heads.text_pool == "mean"
    train(_run(shapes_dir, *REFIT), b, progress=False)
    shutil.rmtree(b / "model")  # killed after the last checkpoint, before the model was written
    train(_run(shapes_dir, *REFIT), b, resume=True, progress=False)
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()


def test_refit_needs_both_towers_locked(shapes_dir):
    with pytest.raises(ConfigError, match="refit_steps"):
        _run(shapes_dir, "multitask={tasks: [{name: r, objective: contrastive, tasks: [retrieval], refit_steps: 5}]}")
    with pytest.raises(ConfigError, match="text_pool"):
        _run(shapes_dir, "model.heads={text_pool: max}")
