import json
import warnings

import pytest
import torch

from multimodaltransformer.data import DataError, ManifestDataset, TrainCollator, read_manifest, shapes
from multimodaltransformer.data.sources import parse_shapes_spec, resolve_source
from multimodaltransformer.modalities import ImageProcessor


def test_shapes_is_deterministic(tmp_path):
    a = shapes.generate(tmp_path / "a", "test", n=5, seed=3, progress=False)
    b = shapes.generate(tmp_path / "b", "test", n=5, seed=3, progress=False)
    assert a.read_text() == b.read_text()
    for f in (tmp_path / "a" / "images").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / "images" / f.name).read_bytes()
    c = shapes.generate(tmp_path / "c", "train", n=5, seed=3, progress=False)
    assert c.read_text().replace("train", "test") != a.read_text()  # splits draw different scenes


def test_shapes_rows_are_consistent(shapes_dir):
    rows = [json.loads(line) for line in (shapes_dir / "manifest.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"caption", "vqa", "classify"}
    for r in rows:
        objs = r["objects"]
        assert 1 <= len(objs) <= 3
        assert [o["column"] for o in objs] == sorted({o["column"] for o in objs})
        assert all((o["color"], o["shape"]) not in shapes.NOVEL_PAIRS for o in objs)
        if r["task"] == "caption":
            assert r["target"] == " left of ".join(f"a {o['size']} {o['color']} {o['shape']}" for o in objs)
        if r.get("question_type") == "count" and r["prompt"] == "how many objects are there?":
            assert r["target"] == shapes.NUMBERS[len(objs)]
        if r.get("question_type") == "color":
            shape = r["prompt"].split("the ")[1].rstrip("?")
            assert [o["color"] for o in objs if o["shape"] == shape] == [r["target"]]


def test_novel_split_holds_unseen_pairs(tmp_path):
    path = shapes.generate(tmp_path, "novel", n=30, seed=0, progress=False)
    for line in path.read_text().splitlines():
        objs = json.loads(line)["objects"]
        assert any((o["color"], o["shape"]) in shapes.NOVEL_PAIRS for o in objs)


def test_existence_answers_are_balanced(tmp_path):
    path = shapes.generate(tmp_path, "train", n=300, seed=1, progress=False)
    answers = [json.loads(x)["target"] for x in path.read_text().splitlines() if '"exist"' in x]
    assert 0.35 < answers.count("yes") / len(answers) < 0.65


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_bad_lines_name_file_and_line(tmp_path, shapes_dir):
    img = str(next((shapes_dir / "images").iterdir()))
    good = {"id": "a", "task": "vqa", "prompt": "q?", "target": "yes", "image": img}
    m = tmp_path / "m.jsonl"
    _write(m, [good, "{not json"])
    with pytest.raises(DataError, match=r"m.jsonl:2: invalid JSON"):
        read_manifest(m)
    _write(m, [good, {**good, "image": "missing.png"}])
    with pytest.raises(DataError, match=r"m.jsonl:2: image file not found"):
        read_manifest(m)
    _write(m, [{k: v for k, v in good.items() if k != "task"}])
    with pytest.raises(DataError, match=r"m.jsonl:1: missing required field 'task'"):
        read_manifest(m)
    _write(m, [{**good, "target": 3}])
    with pytest.raises(DataError, match=r"m.jsonl:1: field 'target' must be a string"):
        read_manifest(m)
    _write(m, [good, "[1, 2]", good])
    with pytest.warns(UserWarning, match="skipped 1 bad line"):
        assert len(read_manifest(m, skip_bad=True)) == 2


def test_corrupt_image_is_named_or_skipped(tmp_path, shapes_dir, tokenizer):
    img = next((shapes_dir / "images").iterdir())
    bad = tmp_path / "bad.png"
    bad.write_bytes(img.read_bytes()[:60])  # truncated PNG
    m = tmp_path / "m.jsonl"
    rows = [{"id": "a", "task": "vqa", "prompt": "q?", "target": "yes", "image": str(img)},
            {"id": "b", "task": "vqa", "prompt": "q?", "target": "no", "image": "bad.png"}]
    _write(m, rows)
    examples = read_manifest(m)
    with pytest.raises(DataError, match=r"m.jsonl:2: cannot read image .*bad.png"):
        ManifestDataset(examples, tokenizer, ImageProcessor(32), 40)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = ManifestDataset(examples, tokenizer, ImageProcessor(32), 40, skip_bad=True)
    assert len(ds) == 1 and len(ds.skipped) == 1 and "skipped 1" in str(w[0].message)


def test_collator_masks_prompt_and_padding(shapes_dir, tokenizer):
    examples = read_manifest(shapes_dir)[:6]
    ds = ManifestDataset(examples, tokenizer, ImageProcessor(32), 60)
    batch = TrainCollator(tokenizer.pad_id, ImageProcessor(32))([ds[i] for i in range(6)])
    assert batch["pixel_values"].shape == (6, 3, 32, 32)
    for r, ex in enumerate(examples):
        supervised = batch["labels"][r][batch["labels"][r] != -100].tolist()
        assert supervised == tokenizer.encode(ex.target) + [tokenizer.eos_id]
        assert batch["attention_mask"][r].sum() == len(ds[r]["input_ids"])


def test_shapes_spec_resolves_and_caches(tmp_path):
    assert parse_shapes_spec("shapes:split=val,n=7,seed=2") == {"split": "val", "n": 7, "seed": 2, "questions": 3}
    with pytest.raises(DataError, match="unknown key"):
        parse_shapes_spec("shapes:colour=red")
    p = resolve_source("shapes:split=val,n=3,seed=2", tmp_path, progress=False)
    mtime = p.stat().st_mtime_ns
    assert resolve_source("shapes:split=val,n=3,seed=2", tmp_path, progress=False).stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="manifest not found"):
        resolve_source(str(tmp_path / "nope.jsonl"), tmp_path)


def test_image_processor_resizes_and_normalises(shapes_dir):
    x = ImageProcessor(32)(next((shapes_dir / "images").iterdir()))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
