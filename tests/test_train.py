import json
import shutil

import pytest

from multimodaltransformer.train.checkpoint import list_checkpoints
from multimodaltransformer.train.config import load_run_config
from multimodaltransformer.train.trainer import lr_factor, train

TINY = ["model.image={image_size: 32, patch_size: 8, dim: 32, depth: 1, heads: 2}",
        "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 64}",
        "data.tokenizer_vocab_size=300", "train.batch_size=8", "train.max_steps=12", "train.warmup_steps=2",
        "train.save_every=6", "train.eval_every=6", "train.eval_examples=4", "train.log_every=3"]


def _run(shapes_dir, *extra):
    m = str(shapes_dir / "manifest.jsonl")
    return load_run_config("shapes-tiny", [*TINY, f"data.train={m}", f"data.val={m}", *extra])


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[99] == pytest.approx(0.1, abs=1e-3)


def test_wsd_schedule_holds_the_peak_then_decays_linearly_to_the_end():
    f = [lr_factor(s, 10, 110, 0.1, "wsd", 0.25) for s in range(111)]
    assert f[9] == pytest.approx(1.0) and all(x == 1.0 for x in f[10:86])  # decay: the last 25 steps
    assert all(a > b for a, b in zip(f[85:110], f[86:111])) and f[110] == pytest.approx(0.1)
    assert f[98] == pytest.approx(1 - 0.9 * 13 / 25)


def test_training_writes_model_checkpoints_and_logs(shapes_dir, tmp_path):
    train(_run(shapes_dir), tmp_path, progress=False)
    assert {p.name for p in (tmp_path / "model").iterdir()} == {"config.json", "model.safetensors", "tokenizer.json"}
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-6", "step-12"]
    assert not list(tmp_path.glob("checkpoints/.tmp-*"))
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0]
    assert any("val_loss" in r and "vqa_accuracy" in r for r in log)


def test_resume_matches_uninterrupted_run(shapes_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(_run(shapes_dir), a, progress=False)
    train(_run(shapes_dir), b, progress=False)
    shutil.rmtree(b / "checkpoints" / "step-12")  # as if killed between step 6 and step 12
    shutil.rmtree(b / "model")
    train(_run(shapes_dir), b, resume=True, progress=False)
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()


def test_resume_of_a_composed_gpt2_with_dropout_matches_uninterrupted_run(parts, tmp_path):
    """GPT-2's dropout (0.1) reads the global torch RNG every step, so the checkpoint's RNG state must be
    the one the next step sees: nothing may draw from it between the restore and that step."""
    m = tmp_path / "texts.jsonl"
    lines = [{"id": str(i), "task": "lm", "prompt": "", "target": t}
             for i, t in enumerate(["a red circle left of a blue square", "how many objects are there?"] * 8)]
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))
    run = load_run_config("shapes-tiny", [f"compose={{language_source: {parts / 'gpt2'}, freeze: []}}",
                                          f"data.train={m}", "data.val=null", "train.batch_size=8",
                                          "train.max_steps=12", "train.save_every=4", "train.warmup_steps=2"])
    a, b = tmp_path / "a", tmp_path / "b"
    train(run, a, progress=False)
    train(run, b, progress=False)
    shutil.rmtree(b / "checkpoints" / "step-12")  # as if killed between step 8 and step 12
    shutil.rmtree(b / "model")
    train(run, b, resume=True, progress=False)
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()


def test_corrupt_newest_checkpoint_falls_back(shapes_dir, tmp_path):
    train(_run(shapes_dir), tmp_path, progress=False)
    (tmp_path / "checkpoints" / "step-12" / "model.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="step-12 is unreadable"):
        train(_run(shapes_dir, "train.max_steps=13"), tmp_path, resume=True, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == "step-13"


@pytest.mark.slow
def test_tiny_config_learns_shapes(tmp_path):
    """End to end on ShapesWorld: the shipped tiny config beats answer-frequency guessing."""
    from collections import Counter

    from multimodaltransformer.data import read_manifest
    from multimodaltransformer.data.sources import resolve_source
    from multimodaltransformer.evaluate import predict, score
    from multimodaltransformer.metrics import exact_match

    run = load_run_config("shapes-tiny", [f"data.cache_dir={tmp_path / 'cache'}", "train.eval_every=1000"])
    model = train(run, tmp_path / "run", progress=False)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r for r in log if "val_loss" in r][-1]["val_loss"] < 0.5 * log[0]["loss"]
    val = [e for e in read_manifest(resolve_source(run.data.val, run.data.cache_dir)) if e.task == "vqa"]
    train_answers = Counter(e.target for e in read_manifest(resolve_source(run.data.train, run.data.cache_dir))
                            if e.task == "vqa")
    majority = exact_match([train_answers.most_common(1)[0][0]] * len(val), [e.target for e in val])
    acc = score(val, predict(model, val))["vqa_accuracy"]
    assert acc > majority + 0.15, (acc, majority)
