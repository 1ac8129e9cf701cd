"""Streaming shards: split across ranks and workers, every sample once per epoch, exact resume."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest
from torch.utils.data import DataLoader

from multimodaltransformer.data.manifest import DataError
from multimodaltransformer.data.shards import write_shards
from multimodaltransformer.data.streaming import ShardStream, scan_shards
from multimodaltransformer.train.config import load_run_config
from multimodaltransformer.train.trainer import train

TINY = ["model.image={image_size: 32, patch_size: 8, dim: 32, depth: 1, heads: 2}",
        "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 64}", "data.tokenizer_vocab_size=300",
        "train.batch_size=8", "train.warmup_steps=2", "train.eval_every=1000", "train.log_every=1",
        "train.device=cpu", "train.threads=1", "data.streaming=true", "data.val=null"]


@pytest.fixture(scope="module")
def shards(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "shards"
    write_shards(shapes_dir / "manifest.jsonl", out, shard_size=70, progress=False)  # 4 shards of 70
    return out


def _ids(loader, n: int) -> list[str]:
    got: list[str] = []
    for batch in loader:
        got += batch
        if len(got) >= n:
            return got[:n]
    return got


def _stream(shards, **kw) -> ShardStream:
    defaults = dict(tasks=None, rank=0, world=1, seed=0, batch_size=10)
    return ShardStream(str(shards), lambda ex: {"id": ex.id}, **{**defaults, **kw})


def test_every_sample_once_per_epoch_across_workers(shards):
    total = json.loads((shards / "shards.json").read_text())["samples"]
    loader = DataLoader(_stream(shards), batch_size=10, num_workers=2,
                        collate_fn=lambda items: [it["id"] for it in items])
    ids = _ids(loader, total)
    assert len(set(ids)) == total  # two workers, two shards each, nothing read twice


def test_ranks_read_disjoint_shards(shards):
    total = json.loads((shards / "shards.json").read_text())["samples"]
    per_rank = [_ids(DataLoader(_stream(shards, rank=r, world=2), batch_size=10,
                                collate_fn=lambda items: [it["id"] for it in items]), total // 2) for r in (0, 1)]
    assert not set(per_rank[0]) & set(per_rank[1]) and len(set(per_rank[0]) | set(per_rank[1])) == total


def test_epochs_reshuffle_and_skip_resumes_the_order(shards):
    collate = lambda items: [it["id"] for it in items]  # noqa: E731
    full = _ids(DataLoader(_stream(shards), batch_size=10, collate_fn=collate), 600)
    assert full[:280] != full[280:560] and set(full[:280]) == set(full[280:560])
    for workers in (0, 2):
        whole = _ids(DataLoader(_stream(shards), batch_size=10, num_workers=workers, collate_fn=collate), 300)
        rest = _ids(DataLoader(_stream(shards, skip=13), batch_size=10, num_workers=workers, collate_fn=collate), 170)
        assert rest == whole[130:]


def test_scan_reads_metadata_only(shards):
    examples = scan_shards(str(shards), limit=50)
    assert len(examples) == 50 and all(e.image is not None for e in examples)


def test_streamed_training_resumes_exactly(shapes_dir, shards, tmp_path):
    def run(*extra):
        return load_run_config("shapes-tiny", [*TINY, f"data.train=wds:{shards}", *extra])

    extra = ("train.max_steps=8", "train.save_every=4", "data.workers=2")
    train(run(*extra), tmp_path / "a", progress=False)
    train(run(*extra), tmp_path / "b", progress=False)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-8")  # as if killed between step 4 and 8
    shutil.rmtree(tmp_path / "b" / "model")
    train(run(*extra), tmp_path / "b", resume=True, progress=False)
    a, b = (tmp_path / x / "model" / "model.safetensors" for x in "ab")
    assert a.read_bytes() == b.read_bytes()


def test_unusable_streamed_samples_are_counted_or_fail(shapes_dir, shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    first = sorted(bad.glob("*.tar"))[0]
    with tarfile.open(first) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(first, "w") as tar:
        for m, data in members:
            if m.name.endswith(".png") and m.name.startswith("000000000"):
                data = b"garbage"
            m.size = len(data)
            tar.addfile(m, __import__("io").BytesIO(data))

    def run(*extra):
        return load_run_config("shapes-tiny", [*TINY, f"data.train=wds:{bad}", "train.max_steps=40",
                                               "train.save_every=100", *extra])

    with pytest.raises(DataError, match="unusable"):
        train(run(), tmp_path / "strict", progress=False)
    train(run("data.skip_bad=true", "data.max_bad_fraction=0.5"), tmp_path / "lenient", progress=False)
    summary = json.loads((tmp_path / "lenient" / "train_summary.json").read_text())
    assert list(summary["skipped_examples"].values())[0] >= 1


def test_idle_workers_and_absent_tasks_are_errors_not_hangs(shards):
    with pytest.raises(DataError, match="4 shard\\(s\\) but has 5 DataLoader workers"):
        next(iter(DataLoader(_stream(shards), batch_size=10, num_workers=5)))
    with pytest.raises(DataError, match="gave no usable example of tasks \\['nope'\\]"):
        next(iter(_stream(shards, tasks=["nope"])))
