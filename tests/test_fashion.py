"""Fashion-MNIST from IDX files: tiny hand-written files (gz and raw), the error cases, the real split."""

import gzip
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from multimodaltransformer.cli import main
from multimodaltransformer.data import DataError, fashion, read_manifest
from multimodaltransformer.data.sources import read_source


def _idx(array: np.ndarray, magic: int) -> bytes:
    """An IDX file: big-endian magic, the dims, then the bytes."""
    return np.array([magic, *array.shape], ">u4").tobytes() + array.astype(np.uint8).tobytes()


def write_split(folder, split="train", n=30, gz=True, images=None, labels=None, size=(28, 28)):
    """Random pixels and labels 0..9 in turn, as the split's two IDX files; returns (images, labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, *size), dtype=np.uint8) if images is None else images
    labels = np.arange(n, dtype=np.uint8) % 10 if labels is None else labels
    for stem, data in zip(fashion.FILES[split], (_idx(images, 2051), _idx(labels, 2049)), strict=True):
        path = folder / (stem + ".gz" if gz else stem)
        path.write_bytes(gzip.compress(data) if gz else data)
    return images, labels


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("gz", [True, False])
def test_manifest_targets_and_pixels(tmp_path, gz):
    images, labels = write_split(tmp_path / "idx", "test", n=12, gz=gz)
    path = fashion.generate(tmp_path / "out", "test", idx=tmp_path / "idx", progress=False)
    rows = _rows(path)
    assert len(rows) == 12 * 5 and len(read_manifest(path)) == 60
    for r in rows:
        i = int(r["image"].split("-")[1].removesuffix(".png"))
        name = fashion.CLASSES[labels[i]]
        assert r["label"] == labels[i] and r["split"] == "test"
        if r["task"] == "classify":
            assert r["prompt"] == fashion.CLASSIFY_PROMPT and r["target"] == name
            im = Image.open(path.parent / r["image"])
            assert im.mode == "L" and im.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(im), images[i])  # PNG is lossless
        if r["task"] == "caption":
            assert r["target"] == f"a photo of {'an' if name == 'ankle boot' else 'a'} {name}"
        if r.get("question_type") == "feet":
            assert r["target"] == ("yes" if name in ("sandal", "sneaker", "ankle boot") else "no")
        if r.get("question_type") == "category":
            assert r["target"] == {"sandal": "footwear", "sneaker": "footwear", "ankle boot": "footwear",
                                   "bag": "bag"}.get(name, "clothing")
        if r.get("question_type") == "identity":
            asked = r["prompt"].removeprefix("is this ").removesuffix("?").split(" ", 1)[1]
            assert asked in fashion.CLASSES and r["target"] == ("yes" if asked == name else "no")
    assert Counter(r["task"] for r in rows) == {"classify": 12, "caption": 12, "vqa": 36}


def test_class_names_and_articles():
    assert fashion.CLASSES == ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                               "sneaker", "bag", "ankle boot")
    assert [fashion.rows(0, k, "train", 0)[1]["target"] for k in (0, 9, 8)] == [
        "a photo of a t-shirt/top", "a photo of an ankle boot", "a photo of a bag"]


def test_subset_is_seeded_and_stratified(tmp_path):
    write_split(tmp_path / "idx", n=200, labels=np.repeat(np.arange(10, dtype=np.uint8), 20))
    a = _rows(fashion.generate(tmp_path / "a", n=10, seed=3, idx=tmp_path / "idx", progress=False))
    b = _rows(fashion.generate(tmp_path / "b", n=10, seed=3, idx=tmp_path / "idx", progress=False))
    c = _rows(fashion.generate(tmp_path / "c", n=10, seed=4, idx=tmp_path / "idx", progress=False))
    assert a == b and a != c
    assert sorted(r["target"] for r in a if r["task"] == "classify") == sorted(fashion.CLASSES)
    picked = fashion.stratified_subset(np.repeat(np.arange(10), 20), 55, seed=0)
    assert len(set(picked)) == 55 and sorted(Counter(picked // 20).values()) == [5] * 5 + [6] * 5
    # an image's rows do not depend on the subset it is in
    whole = {r["id"]: r for r in _rows(fashion.generate(tmp_path / "w", seed=3, idx=tmp_path / "idx",
                                                         progress=False))}
    assert all(whole[r["id"]] == r for r in a)


def test_identity_answers_are_balanced():
    answers = [fashion.rows(i, i % 10, "train", 0)[-1]["target"] for i in range(400)]
    assert 0.4 < answers.count("yes") / len(answers) < 0.6


def _error(tmp_path, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        fashion.generate(tmp_path / "out", idx=tmp_path / "idx", progress=False, **kwargs)
    return str(e.value)


def test_errors_name_the_file(tmp_path):
    assert "not found" in _error(tmp_path) and "idx" in _error(tmp_path)  # no folder
    write_split(tmp_path / "idx", "test")
    assert "train-images-idx3-ubyte" in _error(tmp_path)  # no train files
    write_split(tmp_path / "idx", "train", n=30)
    assert "n=31" in _error(tmp_path, n=31) and "30 images" in _error(tmp_path, n=31)
    assert "positive" in _error(tmp_path, n=0)
    labels = tmp_path / "idx" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx(np.zeros(29, np.uint8), 2049)))
    assert "30 images" in _error(tmp_path) and "29 labels" in _error(tmp_path)
    labels.write_bytes(gzip.compress(_idx(np.zeros(30, np.uint8), 2051)))
    assert str(labels) in _error(tmp_path) and "magic number 2051, expected 2049" in _error(tmp_path)
    labels.write_bytes(gzip.compress(_idx(np.full(30, 10, np.uint8), 2049)))
    assert "label 10" in _error(tmp_path)
    images = tmp_path / "idx" / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(_idx(np.zeros((30, 28, 28), np.uint8), 2051)[:-5]))
    assert str(images) in _error(tmp_path) and "truncated" in _error(tmp_path)
    images.write_bytes(gzip.compress(_idx(np.zeros((30, 28, 28), np.uint8), 2051))[:-20])  # cut .gz
    assert str(images) in _error(tmp_path)
    images.write_bytes(gzip.compress(b"\0\0\x08"))
    assert "truncated" in _error(tmp_path)


def test_without_the_debian_package_the_error_says_where_to_get_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion, "default_idx_dir", lambda: None)
    with pytest.raises(DataError, match="dataset-fashion-mnist.*zalandoresearch/fashion-mnist"):
        fashion.generate(tmp_path, progress=False)


def test_cli_and_source(tmp_path, capsys):
    write_split(tmp_path / "idx", "train", n=20, gz=False)
    idx, out = str(tmp_path / "idx"), str(tmp_path / "out")
    assert main(["data", "fashion", "--idx", idx, "--n", "10", "--seed", "1", "--out", out]) == 0
    assert "manifest.jsonl" in capsys.readouterr().out and len(_rows(tmp_path / "out" / "manifest.jsonl")) == 50
    assert main(["data", "fashion", "--idx", idx, "--n", "21", "--out", out]) == 2
    assert "21" in capsys.readouterr().err
    assert main(["data", "fashion", "--idx", str(tmp_path / "nope"), "--out", out]) == 2
    assert "nope" in capsys.readouterr().err
    examples, _ = read_source(f"fashion:split=train,n=10,seed=1,idx={idx}", tmp_path / "cache", progress=False)
    assert [e.target for e in examples] == [r["target"] for r in _rows(tmp_path / "out" / "manifest.jsonl")]
    with pytest.raises(DataError, match="unknown split"):
        read_source("fashion:split=val", tmp_path / "cache", progress=False)


@pytest.mark.skipif(fashion.default_idx_dir() is None, reason="needs the Debian package dataset-fashion-mnist")
def test_real_files(tmp_path):
    images, labels, _ = fashion.read_split(None, "test")
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    path = fashion.generate(tmp_path, "test", n=20, seed=0, progress=False)
    rows = _rows(path)
    assert {r["target"] for r in rows if r["task"] == "classify"} == set(fashion.CLASSES)
    r = rows[0]
    i = int(r["image"].split("-")[1].removesuffix(".png"))
    np.testing.assert_array_equal(np.asarray(Image.open(path.parent / r["image"])), images[i])
    assert fashion.CLASSES[labels[i]] == r["target"]
