"""WebDataset shards and Hugging Face directories: round trips against the manifest, rank splits, bad data."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import wave
from pathlib import Path

import pytest
from PIL import Image

from multimodaltransformer import cli
from multimodaltransformer.data.manifest import DataError, read_manifest
from multimodaltransformer.data.shards import MediaBytes, decode_image, read_shards, write_shards
from multimodaltransformer.data.sources import read_source
from multimodaltransformer.modalities.image import ImageProcessor, MediaError

pytest.importorskip("webdataset")
PROC = ImageProcessor(image_size=16)


def _png(color: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> Image.Image:
    im = Image.new("RGB", size, color)
    im.putpixel((1, 2), (0, 0, 0))
    return im


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """7 examples: shared and distinct PNGs, a JPEG, a text-only row and an audio row; odd ids."""
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 128, 255), (20, 200, 20)]):
        _png(color).save(root / "img" / f"{i}.png")
    _png((9, 90, 9), (8, 8)).save(root / "img" / "3.jpg")
    with wave.open(str(root / "a.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"\x01\x00" * 160)
    rows = [
        {"id": "a/0", "task": "caption", "prompt": "describe", "target": "red", "image": "img/0.png", "split": "x"},
        {"id": "a.1", "task": "vqa", "prompt": "what colour?", "target": "red", "image": "img/0.png",
         "objects": [{"color": "red"}]},
        {"id": "b", "task": "caption", "prompt": "describe", "target": "blue", "image": "img/1.png"},
        {"id": "c", "task": "caption", "prompt": "", "target": "green", "image": "img/2.png"},
        {"id": "d", "task": "caption", "prompt": "describe", "target": "dark", "image": "img/3.jpg"},
        {"id": "e", "task": "sentiment", "prompt": "mood?", "target": "positive", "text": "a great film"},
        {"id": "f", "task": "asr", "prompt": "transcribe", "target": "hello", "audio": "a.wav"},
    ]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "manifest.jsonl"


@pytest.fixture(scope="module")
def shards(manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    write_shards(manifest, out, shard_size=2, progress=False)
    return out


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    _png(color).save(buf, format="PNG")
    return buf.getvalue()


def _same_examples(got, want) -> None:
    assert [e.id for e in got] == [e.id for e in want]
    for g, w in zip(got, want):
        assert (g.task, g.prompt, g.target, g.text, g.meta) == (w.task, w.prompt, w.target, w.text, w.meta)
        assert (g.image is None) == (w.image is None) and (g.audio is None) == (w.audio is None)
        if w.image is not None:
            assert isinstance(g.image, MediaBytes)
            assert PROC.to_uint8(decode_image(g.image)).equal(PROC.to_uint8(w.image))
        if w.audio is not None:
            assert g.audio.data == w.audio.read_bytes() and str(g.audio).endswith(".wav")


def test_round_trip(manifest, shards):
    info = json.loads((shards / "shards.json").read_text())
    assert info["samples"] == 7 and info["counts"] == [2, 2, 2, 1] and info["shard_size"] == 2
    assert info["shards"] == [f"shard-{i:06d}.tar" for i in range(4)]
    got, skipped = read_shards(shards)
    want = read_manifest(manifest)
    assert skipped == []
    _same_examples(got, want)
    assert got[0].image is got[1].image  # one image shared by two examples: one copy, one cache key
    assert str(got[2].image).endswith(".png") and str(got[4].image).endswith(".jpg")
    assert "shard-000000.tar" in got[0].source and "shard-000000.tar" in str(got[0].image)


def test_patterns_and_sources(manifest, shards, tmp_path):
    ids = [e.id for e in read_manifest(manifest)]
    pattern = f"{shards}/shard-{{000000..000003}}.tar"
    for spec in (pattern, f"wds:{pattern}", str(shards), f"wds:{shards}", f"pipe:cat {shards}/shard-000000.tar"):
        got, skipped = read_source(spec, tmp_path)
        assert [e.id for e in got] == (ids[:2] if spec.startswith("pipe:") else ids) and skipped == []
    assert [e.id for e in read_shards([str(shards / "shard-000003.tar"), str(shards / "shard-000001.tar")])[0]] \
        == ids[6:] + ids[2:4]
    bare = tmp_path / "bare"  # a folder of tars without shards.json
    bare.mkdir()
    for i in (2, 3):
        shutil.copy(shards / f"shard-{i:06d}.tar", bare)
    assert [e.id for e in read_shards(bare)[0]] == ids[4:]
    assert [e.id for e in read_source(str(manifest), tmp_path)[0]] == ids  # manifests still work
    assert len(read_source("shapes:split=val,n=1", tmp_path, progress=False)[0]) > 1  # and built-ins
    with pytest.raises(DataError, match="shard not found"):
        read_shards(f"{shards}/shard-{{000000..000009}}.tar")


def test_rank_split(manifest, shards):
    parts = [read_shards(shards, rank=r, world=2)[0] for r in range(2)]
    ids = [{e.id for e in part} for part in parts]
    assert ids[0].isdisjoint(ids[1]) and ids[0] | ids[1] == {e.id for e in read_manifest(manifest)}
    assert len(parts[0]) == 4  # shards 0 and 2
    with pytest.raises(DataError, match="4 shard"):
        read_shards(shards, rank=0, world=5)
    with pytest.raises(DataError, match="rank"):
        read_shards(shards, rank=2, world=2)


def test_corrupt_samples(tmp_path):
    row = {"id": "x", "task": "caption", "prompt": "p", "target": "t"}
    shard = tmp_path / "bad.tar"
    _tar(shard, [("k0.png", _png_bytes((1, 2, 3))), ("k0.json", json.dumps(row).encode()),
                 ("k1.png", b"not a png at all"), ("k1.json", json.dumps(row).encode()),
                 ("k2.json", b"{oops"),
                 ("k3.json", json.dumps({"id": "y"}).encode()),
                 ("k4.png", _png_bytes((4, 5, 6))),
                 ("k5.json", json.dumps({**row, "text": "only text"}).encode())])
    got, skipped = read_shards(str(shard), skip_bad=True)
    assert [e.text for e in got] == [None, "only text"] and len(skipped) == 4
    for key, why in zip(("k1", "k2", "k3", "k4"), ("cannot read image", "invalid JSON", "'task'", "no json")):
        assert [m for m in skipped if f"bad.tar/{key}" in m and why in m], (key, skipped)
    with pytest.raises(DataError, match=r"cannot read image .*bad\.tar/k1\.png"):
        read_shards(str(shard))
    with pytest.raises(MediaError, match="junk"):
        decode_image(MediaBytes(b"\x89PNG\r\n\x1a\n broken", "junk.png"))


def test_truncated_shard(manifest, tmp_path):
    out = tmp_path / "one"
    (shard,) = write_shards(manifest, out, shard_size=10, progress=False)
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    cuts = {"middle": members[4].offset_data + 50,  # inside sample 2's image
            "boundary": members[3].offset_data + 512}  # after sample 1's json: tarfile sees a clean end
    for kind, cut in cuts.items():
        bad = tmp_path / kind
        shutil.copytree(out, bad)
        with open(bad / shard.name, "r+b") as f:
            f.truncate(cut)
        got, skipped = read_shards(bad, skip_bad=True)
        assert [e.id for e in got] == ["a/0", "a.1"], kind
        assert any("shard-000000.tar" in m and "5 of 7 samples lost" in m for m in skipped), skipped
        with pytest.raises(DataError, match="shard-000000.tar"):
            read_shards(bad)


def test_write_errors_and_replace(manifest, tmp_path):
    with pytest.raises(DataError, match="positive"):
        write_shards(manifest, tmp_path / "x", shard_size=0, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        write_shards(manifest, tmp_path / "busy", shard_size=2, progress=False)
    out = tmp_path / "out"
    assert len(write_shards(manifest, out, shard_size=2, progress=False)) == 4
    assert len(write_shards(manifest, out, shard_size=5, progress=False)) == 2  # older shards replaced
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar", "shards.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "out"]  # no temporary folders left


def test_cli_shard(manifest, tmp_path, capsys):
    assert cli.main(["data", "shard", str(manifest), "--out", str(tmp_path / "s"), "--shard-size", "3"]) == 0
    assert "wrote 7 samples in 3 shard(s)" in capsys.readouterr().out
    assert len(read_shards(tmp_path / "s")[0]) == 7
    assert cli.main(["data", "shard", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "t")]) == 2
    assert "mmt: error: manifest not found" in capsys.readouterr().err


# ---- Hugging Face datasets ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf():
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    return datasets


def _hf_dataset(hf, n: int, with_task: bool = True):
    columns = {"id": [f"r{i}" for i in range(n)], "prompt": ["describe"] * n,
               "target": [f"colour {i}" for i in range(n)], "image": [_png((20 * i, 0, 0)) for i in range(n)],
               "score": list(range(n))}
    if with_task:
        columns["task"] = ["caption"] * n
    features = {k: hf.Value("string") for k in columns if k not in ("image", "score")}
    features |= {"image": hf.Image(), "score": hf.Value("int32")}
    return hf.Dataset.from_dict(columns, features=hf.Features(features))


def test_hf_dataset(hf, tmp_path):
    _hf_dataset(hf, 5).save_to_disk(tmp_path / "ds")
    for spec in (f"hf:{tmp_path / 'ds'}", str(tmp_path / "ds")):
        got, skipped = read_source(spec, tmp_path)
        assert [e.id for e in got] == [f"r{i}" for i in range(5)] and skipped == []
        assert got[3].task == "caption" and got[3].target == "colour 3" and got[3].meta == {"score": 3}
        assert PROC.to_uint8(decode_image(got[3].image)).equal(PROC.to_uint8(_png((60, 0, 0))))
    parts = [read_source(f"hf:{tmp_path / 'ds'}", tmp_path, rank=r, world=2)[0] for r in range(2)]
    assert [e.id for e in parts[0]] == ["r0", "r2", "r4"] and [e.id for e in parts[1]] == ["r1", "r3"]
    assert "row 3" in parts[1][1].source


def test_hf_dataset_dict_and_errors(hf, tmp_path):
    from multimodaltransformer.data.hf import read_hf_dataset

    hf.DatasetDict({"train": _hf_dataset(hf, 3), "val": _hf_dataset(hf, 2)}).save_to_disk(tmp_path / "dd")
    assert len(read_source(str(tmp_path / "dd"), tmp_path)[0]) == 3  # default split: train
    assert len(read_hf_dataset(tmp_path / "dd", split="val")[0]) == 2
    assert len(read_source(f"hf:{tmp_path / 'dd' / 'val'}", tmp_path)[0]) == 2
    with pytest.raises(DataError, match="no split 'test' .splits: train, val"):
        read_hf_dataset(tmp_path / "dd", split="test")

    _hf_dataset(hf, 2, with_task=False).save_to_disk(tmp_path / "notask")
    with pytest.raises(DataError, match=r"notask: missing required column 'task'"):
        read_source(f"hf:{tmp_path / 'notask'}", tmp_path)

    bad = hf.Dataset.from_dict({"task": ["caption"] * 2, "target": ["a", "b"],
                                "image": [_png((1, 1, 1)), {"bytes": b"garbage", "path": None}]},
                               features=hf.Features({"task": hf.Value("string"), "target": hf.Value("string"),
                                                     "image": hf.Image()}))
    bad.save_to_disk(tmp_path / "bad")
    got, skipped = read_hf_dataset(tmp_path / "bad", skip_bad=True)
    assert [e.id for e in got] == ["0"] and len(skipped) == 1 and "row 1/image" in skipped[0]
    with pytest.raises(DataError, match="row 1/image"):
        read_hf_dataset(tmp_path / "bad")
