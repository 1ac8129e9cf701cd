"""Tracker: JSONL lines, TensorBoard scalars read back, no-op when disabled, optional W&B."""

from __future__ import annotations

import json
import sys
import types

import pytest

from multimodaltransformer.train.tracking import Tracker, TrackingConfig, read_scalars, scalar_tags

TRAIN = {"step": 10, "loss": 2.5, "task": "caption", "lr": 1e-3, "grad_norm": 0.7, "examples_per_s": 120.0,
         "elapsed_s": 3.0, "task_loss": {"caption": 2.5, "vqa": 3.0}}
VAL = {"step": 10, "val_loss": 2.0, "val_loss/caption": 1.9, "caption_accuracy": 0.25, "flag": True}


def test_tags():
    assert scalar_tags(TRAIN) == {
        "train/loss": 2.5, "train/lr": 1e-3, "train/grad_norm": 0.7, "throughput/examples_per_s": 120.0,
        "train/elapsed_s": 3.0, "train/task_loss/caption": 2.5, "train/task_loss/vqa": 3.0}
    assert scalar_tags(VAL) == {"val/loss": 2.0, "val/loss/caption": 1.9, "val/caption_accuracy": 0.25}
    assert scalar_tags({"throughput": {"tokens_per_s": 5, "mfu": 0.1, "peak_dtype": "bf16"}}) == {
        "throughput/tokens_per_s": 5.0, "throughput/mfu": 0.1}


def test_jsonl_and_tensorboard(tmp_path):
    with Tracker(tmp_path, TrackingConfig()) as tracker:
        tracker.log(TRAIN, step=10)
        tracker.log({**TRAIN, "step": 20, "loss": 2.0}, step=20)
        tracker.log(VAL, step=20)
        tracker.log({"tokens_per_s": 9.0}, step=30)  # no "step" in the record: added to the line
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[:3] == [TRAIN, {**TRAIN, "step": 20, "loss": 2.0}, VAL]
    assert lines[3] == {"step": 30, "tokens_per_s": 9.0}
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["train/loss"] == [(10, 2.5), (20, 2.0)]
    assert scalars["train/task_loss/vqa"] == [(10, 3.0), (20, 3.0)]
    assert scalars["throughput/examples_per_s"] == [(10, 120.0), (20, 120.0)]
    assert scalars["throughput/tokens_per_s"] == [(30, 9.0)]
    assert scalars["val/loss"] == [(20, 2.0)]
    assert scalars["val/caption_accuracy"] == [(20, 0.25)]
    assert scalars["train/lr"][0][1] == pytest.approx(1e-3)
    assert not any(tag.endswith(("task", "flag", "step")) for tag in scalars)


def test_jsonl_is_flushed_per_line(tmp_path):
    tracker = Tracker(tmp_path, TrackingConfig(tensorboard=False))
    tracker.log(TRAIN, step=10)
    assert json.loads((tmp_path / "log.jsonl").read_text()) == TRAIN  # readable before close
    tracker.close()
    tracker.close()
    assert not (tmp_path / "tensorboard").exists()


def test_disabled_tracker_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with Tracker(out, TrackingConfig(wandb=True), enabled=False) as tracker:
        tracker.log(TRAIN, step=10)
    assert not out.exists()


def test_missing_tensorboard_warns(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.warns(UserWarning, match="tensorboard is not installed"):
        tracker = Tracker(tmp_path, TrackingConfig())
    tracker.log(TRAIN, step=10)
    tracker.close()
    assert (tmp_path / "log.jsonl").is_file() and not (tmp_path / "tensorboard").exists()


def test_missing_wandb_warns(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.warns(UserWarning, match="wandb is not installed"):
        tracker = Tracker(tmp_path, TrackingConfig(tensorboard=False, wandb=True))
    tracker.log(TRAIN, step=10)
    tracker.close()
    assert (tmp_path / "log.jsonl").is_file()


def test_fake_wandb_receives_calls(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw))
    fake.log = lambda data, step: calls.append(("log", data, step))
    fake.finish = lambda: calls.append(("finish",))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = TrackingConfig(tensorboard=False, wandb=True, wandb_project="p", wandb_run_name="r")
    with Tracker(tmp_path, cfg, run_config={"train": {"lr": 1e-3}}) as tracker:
        tracker.log(VAL, step=10)
    assert calls == [
        ("init", {"project": "p", "name": "r", "config": {"train": {"lr": 1e-3}}, "dir": str(tmp_path)}),
        ("log", {"val/loss": 2.0, "val/loss/caption": 1.9, "val/caption_accuracy": 0.25}, 10),
        ("finish",)]
