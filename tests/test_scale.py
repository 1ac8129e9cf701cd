"""Training at scale: SIGKILL + resume is bit-identical, torchrun (gloo) matches one process,
FSDP sharded checkpoints load in one process, accumulation, precision, NaN policy, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from multimodaltransformer.train import trainer as trainer_mod
from multimodaltransformer.train.checkpoint import list_checkpoints, read_checkpoint
from multimodaltransformer.train.config import load_run_config
from multimodaltransformer.train.trainer import train

TINY = ["model.image={image_size: 32, patch_size: 8, dim: 32, depth: 1, heads: 2}",
        "model.decoder={dim: 32, depth: 2, heads: 2, max_seq_len: 64}",
        "data.tokenizer_vocab_size=300", "train.batch_size=8", "train.warmup_steps=2", "train.threads=1",
        "train.eval_every=1000", "train.eval_examples=4", "train.log_every=1", "train.device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _sets(shapes_dir, *extra: str) -> list[str]:
    m = str(shapes_dir / "manifest.jsonl")
    return [*TINY, f"data.train={m}", f"data.val={m}", *extra]


def _run(shapes_dir, *extra: str):
    return load_run_config("shapes-tiny", _sets(shapes_dir, *extra))


def _cli(shapes_dir, out, *extra: str, resume: bool = False, launcher: list[str] | None = None) -> list[str]:
    cmd = [*(launcher or [sys.executable, "-m"]), "multimodaltransformer", "train", "shapes-tiny", "--out", str(out)]
    for s in _sets(shapes_dir, *extra):
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def _log(out) -> list[dict]:
    path = out / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _log(out) if "loss" in r and "task" in r}


def _weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def _kill_after(cmd: list[str], out, step: int) -> None:
    """Start a run, SIGKILL it once its log reaches `step` (not at a checkpoint boundary)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if max(_losses(out), default=0) >= step:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_is_byte_identical(shapes_dir, tmp_path):
    extra = ("train.max_steps=24", "train.save_every=5", "train.keep_last=2")
    a, b = tmp_path / "a", tmp_path / "b"
    subprocess.run(_cli(shapes_dir, a, *extra), env=ENV, check=True, capture_output=True)
    _kill_after(_cli(shapes_dir, b, *extra), b, 7)  # checkpoints at 5, 10, ...: killed between them
    assert not (b / "model").exists()
    _kill_after(_cli(shapes_dir, b, *extra, resume=True), b, 13)  # killed again after resuming
    assert [p.name for p in list_checkpoints(b / "checkpoints")][-1] in ("step-10", "step-15")
    subprocess.run(_cli(shapes_dir, b, *extra, resume=True), env=ENV, check=True, capture_output=True)
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()
    assert len(list_checkpoints(b / "checkpoints")) == 2  # keep_last rotated the older ones


def test_grad_accumulation_matches_the_whole_batch(shapes_dir, tmp_path):
    extra = ("train.max_steps=4", "train.save_every=100")
    train(_run(shapes_dir, *extra), tmp_path / "one", progress=False)
    train(_run(shapes_dir, *extra, "train.grad_accum=2"), tmp_path / "two", progress=False)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert one.keys() == two.keys() and all(abs(one[s] - two[s]) < 1e-5 for s in one)
    wa, wb = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_batch_must_split_into_micro_batches(shapes_dir, tmp_path):
    with pytest.raises(ValueError, match="equal micro-batches"):
        train(_run(shapes_dir, "train.max_steps=2", "train.grad_accum=3"), tmp_path, progress=False)


def test_dataloader_workers_give_the_same_run(shapes_dir, tmp_path):
    extra = ("train.max_steps=4", "train.save_every=100")
    train(_run(shapes_dir, *extra), tmp_path / "w0", progress=False)
    train(_run(shapes_dir, *extra, "data.workers=2"), tmp_path / "w2", progress=False)
    assert (tmp_path / "w0/model/model.safetensors").read_bytes() == (tmp_path / "w2/model/model.safetensors").read_bytes()


def test_activation_checkpointing_changes_nothing_but_memory(shapes_dir, tmp_path):
    extra = ("train.max_steps=3", "train.save_every=100")
    train(_run(shapes_dir, *extra), tmp_path / "plain", progress=False)
    train(_run(shapes_dir, *extra, "train.activation_checkpointing=true"), tmp_path / "ckpt", progress=False)
    wa, wb = _weights(tmp_path / "plain"), _weights(tmp_path / "ckpt")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes_its_scaler(shapes_dir, tmp_path, precision):
    run = _run(shapes_dir, "train.max_steps=6", "train.save_every=3", f"train.precision={precision}")
    train(run, tmp_path, progress=False)
    losses = list(_losses(tmp_path).values())
    assert all(map(lambda x: x == x and abs(x) < 1e4, losses)) and losses[-1] < losses[0]
    state = json.loads((tmp_path / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert (state["scaler"] is not None) == (precision == "fp16")
    train(_run(shapes_dir, "train.max_steps=8", "train.save_every=3", f"train.precision={precision}"), tmp_path,
          resume=True, progress=False)


def _nan_at(step: int, monkeypatch) -> None:
    real = trainer_mod.stream_loss

    def loss(model, cfg, batch, g, gather=None):
        value = real(model, cfg, batch, g, gather)
        return value * float("nan") if g.initial_seed() == step else value  # seed 0: the step

    monkeypatch.setattr(trainer_mod, "stream_loss", loss)


def test_nan_loss_stops_the_run_naming_step_and_batch(shapes_dir, tmp_path, monkeypatch):
    _nan_at(2, monkeypatch)
    with pytest.raises(FloatingPointError, match=r"at step 2 \(task lm, batch \{'epoch': 0, 'pos': \d+\}"):
        train(_run(shapes_dir, "train.max_steps=4"), tmp_path, progress=False)


def test_nan_loss_can_skip_the_step(shapes_dir, tmp_path, monkeypatch):
    _nan_at(2, monkeypatch)
    with pytest.warns(UserWarning, match="non-finite loss at step 2"):
        train(_run(shapes_dir, "train.max_steps=4", "train.nan_policy=skip"), tmp_path, progress=False)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["steps"] == 4


def test_run_reports_throughput_and_writes_tensorboard(shapes_dir, tmp_path):
    from multimodaltransformer.train.tracking import read_scalars

    train(_run(shapes_dir, "train.max_steps=8", "train.save_every=100", "train.eval_every=4"), tmp_path,
          progress=False)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["tokens_per_s"] > 0 and summary["samples_per_s"] > 0 and 0 < summary["mfu"] < 1
    scalars = read_scalars(tmp_path / "tensorboard")
    assert len(scalars["train/loss"]) == 8 and "train/lr" in scalars
    assert any(tag.startswith("val/") for tag in scalars)


def test_too_many_unreadable_examples_fail_loudly(shapes_dir, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    lines = (shapes_dir / "manifest.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    for r in rows:
        r["image"] = str(shapes_dir / r["image"])
    (bad / "broken.png").write_bytes(b"not an image")
    rows[0]["image"] = str(bad / "broken.png")
    (bad / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sets = [f"data.train={bad / 'manifest.jsonl'}", "data.skip_bad=true", "train.max_steps=2", "train.save_every=100"]
    with pytest.raises(ValueError, match="unreadable"):
        train(_run(shapes_dir, *sets, "data.max_bad_fraction=0"), tmp_path / "strict", progress=False)
    train(_run(shapes_dir, *sets, "data.max_bad_fraction=0.5"), tmp_path / "lenient", progress=False)


def test_bad_lines_and_unreadable_media_count_together_against_max_bad_fraction(shapes_dir, tmp_path):
    """Lines that fail to parse are skipped examples too: judged with the unreadable images, out of all."""
    rows = [json.loads(x) for x in (shapes_dir / "manifest.jsonl").read_text().splitlines()]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    k = len(rows) // 10  # 10% unreadable images + 10% unparsable lines: 20% > 15%, each alone under it
    for i, r in enumerate(rows):
        r["image"] = str(tmp_path / "broken.png") if i < k else str(shapes_dir / r["image"])
    m = tmp_path / "manifest.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n" * k)
    sets = [f"data.train={m}", "data.skip_bad=true", "train.max_steps=1", "train.save_every=100"]
    with pytest.raises(ValueError, match=rf"task lm: {2 * k} of {len(rows) + k} examples were skipped, {k} line\(s\) "
                                         rf"that failed to parse and {k} whose media are unreadable"):
        train(_run(shapes_dir, *sets, "data.max_bad_fraction=0.15"), tmp_path / "strict", progress=False)


def _torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m"]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_follow_the_single_process_trajectory(shapes_dir, tmp_path, parallel):
    extra = ("train.max_steps=6", "train.save_every=3", f"train.parallel={parallel}")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli(shapes_dir, one, *extra), env=ENV, check=True, capture_output=True)
    r = subprocess.run(_cli(shapes_dir, two, *extra, launcher=_torchrun(2)), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    la, lb = _losses(one), _losses(two)
    assert la.keys() == lb.keys() == set(range(1, 7))
    assert all(abs(la[s] - lb[s]) < 1e-4 * max(1, abs(la[s])) for s in la), (la, lb)
    wa, wb = _weights(one), _weights(two)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    assert json.loads((two / "train_summary.json").read_text())["processes"] == 2
    # rank 0 alone logs; the checkpoint (sharded under FSDP) reads back whole in this one process
    assert len(_log(two)) == len(_log(one))
    _, weights, _ = read_checkpoint(two / "checkpoints" / "step-6")
    assert all(torch.equal(weights[k], wb[k]) for k in wb)
    if parallel == "fsdp":
        assert (two / "checkpoints" / "step-6" / "model-00001-of-00002.safetensors").is_file()
    # one process resumes what two wrote, and continues as one process would have
    more = ("train.max_steps=8", "train.save_every=3", f"train.parallel={parallel}")
    train(_run(shapes_dir, *more), one, resume=True, progress=False)
    train(_run(shapes_dir, *more), two, resume=True, progress=False)
    wa, wb = _weights(one), _weights(two)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


@pytest.mark.slow
def test_torchrun_multitask_with_gathered_contrastive_loss(shapes_dir, tmp_path):
    mt = ("multitask={tasks: [{name: lm, objective: lm, tasks: [caption, vqa]}, "
          "{name: itc, objective: contrastive, tasks: [caption], batch_size: 8}], sampling: round_robin}")
    extra = ("train.max_steps=4", "train.save_every=100", mt)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli(shapes_dir, one, *extra), env=ENV, check=True, capture_output=True)
    r = subprocess.run(_cli(shapes_dir, two, *extra, launcher=_torchrun(2)), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    la, lb = _losses(one), _losses(two)
    assert all(abs(la[s] - lb[s]) < 1e-4 * max(1, abs(la[s])) for s in la), (la, lb)
    wa, wb = _weights(one), _weights(two)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_trains_from_webdataset_shards(shapes_dir, tmp_path):
    from multimodaltransformer.data.shards import write_shards

    write_shards(shapes_dir / "manifest.jsonl", tmp_path / "shards", shard_size=100, progress=False)
    run = _run(shapes_dir, f"data.train=wds:{tmp_path / 'shards'}", "train.max_steps=3", "train.save_every=100")
    train(run, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(shapes_dir, tmp_path):
    extra = ("train.max_steps=2", "train.save_every=100")
    train(_run(shapes_dir, *extra), tmp_path / "eager", progress=False)
    train(_run(shapes_dir, *extra, "train.compile=true"), tmp_path / "compiled", progress=False)
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert all(abs(eager[s] - compiled[s]) < 1e-4 for s in eager), (eager, compiled)


@pytest.mark.slow
@pytest.mark.parametrize("streaming", ["false", "true"])
def test_torchrun_ranks_read_their_own_shards_and_agree_on_heads(shapes_dir, tmp_path, streaming):
    from multimodaltransformer import MultimodalTransformerModel
    from multimodaltransformer.data import read_manifest
    from multimodaltransformer.data.shards import write_shards

    write_shards(shapes_dir / "manifest.jsonl", tmp_path / "shards", shard_size=70, progress=False)
    mt = ("multitask={tasks: [{name: lm, objective: lm, tasks: [caption, vqa]}, "
          "{name: cls, objective: classify, tasks: [classify], batch_size: 4}]}")
    out = tmp_path / "out"
    cmd = _cli(shapes_dir, out, f"data.train=wds:{tmp_path / 'shards'}", "train.max_steps=4", "train.save_every=100",
               "train.batch_size=4", mt, f"data.streaming={streaming}", "data.workers=1", launcher=_torchrun(2))
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    labels = sorted({e.target for e in read_manifest(shapes_dir) if e.task == "classify"})
    assert MultimodalTransformerModel.from_pretrained(out / "model").head_labels["classify"] == labels
