import hashlib
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from multimodaltransformer.data import DataError, ManifestDataset, TrainCollator, read_manifest, shapes
from multimodaltransformer.data.sources import parse_spec, read_source, resolve_source
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
    assert {r["task"] for r in rows} == set(shapes.TASKS)
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


def test_the_data_package_exports_its_generators():
    """shapes, reviews, fashion come with the package; spoken and motion only when first used."""
    import subprocess
    import sys

    import multimodaltransformer.data as data

    assert {"shapes", "reviews", "fashion", "spoken", "motion"} <= set(data.__all__)
    assert all(hasattr(data, name) for name in data.__all__) and data.spoken.generate and data.motion.generate
    code = ("import sys, multimodaltransformer.data as d; assert d.shapes.generate and d.reviews.generate; "
            "print(sorted(m for m in ('spoken', 'motion', 'tts') if f'multimodaltransformer.data.{m}' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


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
    with pytest.warns(UserWarning):  # the skipped lines are returned too, for data.max_bad_fraction
        examples, skipped = read_source(str(m), tmp_path, skip_bad=True)
    assert len(examples) == 2 and len(skipped) == 1 and skipped[0].startswith(f"{m}:2: expected a JSON object")


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
    assert parse_spec("shapes:split=val,n=7,seed=2") == (
        "shapes", {"split": "val", "n": 7, "seed": 2, "questions": 3, "tasks": "all", "counts": 0, "matches": 1,
                   "opposite": 0})
    with pytest.raises(DataError, match="unknown key"):
        parse_spec("shapes:colour=red")
    with pytest.raises(DataError, match="must be an integer"):
        parse_spec("shapes:n=many")
    with pytest.raises(DataError, match="unknown split"):
        resolve_source("shapes:split=dev", tmp_path)
    p = resolve_source("shapes:split=val,n=3,seed=2", tmp_path, progress=False)
    mtime = p.stat().st_mtime_ns
    assert resolve_source("shapes:split=val,n=3,seed=2", tmp_path, progress=False).stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="manifest not found"):
        resolve_source(str(tmp_path / "nope.jsonl"), tmp_path)


def test_image_processor_resizes_and_normalises(shapes_dir):
    x = ImageProcessor(32)(next((shapes_dir / "images").iterdir()))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


# --- ShapesWorld retrieval and match tasks -------------------------------------------------------

def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _phrases(text):
    """A caption -> [(size, color, shape), ...] left to right."""
    return [tuple(p.split()[1:]) for p in text.split(" left of ")]


@pytest.fixture(scope="module")
def train300(tmp_path_factory):
    return _rows(shapes.generate(tmp_path_factory.mktemp("train300"), "train", n=300, seed=1, progress=False))


def test_shapes_old_rows_are_unchanged(tmp_path):
    """Caption, VQA and classify rows and images equal those written before retrieval/match existed,
    but for the count questions that version 3 balanced."""
    path = shapes.generate(tmp_path, "train", n=30, seed=0, progress=False)
    old = [line for line in path.read_text().splitlines() if json.loads(line)["task"] in ("caption", "vqa", "classify")]
    rows = {r["id"]: r for r in map(json.loads, old)}
    assert rows["train-0-000000-cap"]["target"] == "a large cyan circle"
    assert rows["train-0-000001-cap"]["target"] == ("a large pink circle left of a small pink diamond left of "
                                                    "a large yellow square")
    assert (rows["train-0-000001-q0"]["prompt"], rows["train-0-000001-q0"]["target"]) == (
        "is the pink circle left of the yellow square?", "yes")
    assert (rows["train-0-000001-q2"]["prompt"], rows["train-0-000001-q2"]["target"]) == (
        "where is the pink diamond?", "middle")
    assert (rows["train-0-000002-q0"]["prompt"], rows["train-0-000002-q0"]["target"]) == (
        "what shape is the pink object?", "circle")
    # Digests taken from the generator before this change: every old row (count questions aside;
    # the objects' boxes, which version 4 added, taken out), and every image's pixels.
    def without_boxes(line: str) -> str:
        row = json.loads(line)
        return json.dumps({**row, "objects": [{k: v for k, v in o.items() if k != "box"} for o in row["objects"]]})

    kept = [without_boxes(line) for line in old if json.loads(line).get("question_type") != "count"]
    assert hashlib.sha256("\n".join(kept).encode()).hexdigest() == (
        "b6d44defa65d76a48991c02378018c335d068c2c84ea114100b26dd9f824c9de")
    pixels = hashlib.sha256()
    for i in range(30):
        pixels.update(np.asarray(Image.open(tmp_path / "images" / f"train-0-{i:06d}.png")).tobytes())
    assert pixels.hexdigest() == "ba72f394b4cd881dab00c7902fb107e5c1b098c2f11f26ba0d91cbaed5e7a6ce"


def test_count_questions_are_balanced(train300):
    counts = [r for r in train300 if r.get("question_type") == "count" and "objects" not in r["prompt"]]
    zero = sum(r["target"] == "zero" for r in counts) / len(counts)
    assert len(counts) > 50 and 0.2 < zero < 0.45  # uniform shapes gave "zero" about 60% of the time


def test_retrieval_and_match_rows(shapes_dir):
    rows = _rows(shapes_dir / "manifest.jsonl")
    captions = {r["image"]: r["target"] for r in rows if r["task"] == "caption"}
    ret = [r for r in rows if r["task"] == "retrieval"]
    match = [r for r in rows if r["task"] == "match"]
    assert len(ret) == len(match) == len(captions) == 40
    for r in ret:
        assert r["id"].endswith("-ret") and r["prompt"] == "" and r["target"] == captions[r["image"]]
    for r in match:
        assert r["id"].endswith("-match") and r["prompt"] == shapes.MATCH_PROMPT
        assert r["target"] in ("yes", "no") and isinstance(r["text"], str)
        assert r["match_type"] in ("none", "color", "shape", "size", "order")
    ex = next(e for e in read_manifest(shapes_dir) if e.task == "match")
    assert ex.text and ex.meta["match_type"]  # the manifest reader keeps both


def _check_near_miss(true, text, kind):
    """`text` is `true` with exactly one edit of type `kind`."""
    got = _phrases(text)
    assert len(got) == len(true) and got != true
    diff = [k for k in range(len(true)) if got[k] != true[k]]
    if kind == "order":
        a, b = diff
        assert len(diff) == 2 and (got[a], got[b]) == (true[b], true[a])
    else:
        (k,) = diff
        field = ("size", "color", "shape").index(kind)
        assert [j for j in range(3) if got[k][j] != true[k][j]] == [field]


def test_match_labels_are_correct(train300):
    for r in [r for r in train300 if r["task"] == "match"]:
        true = [(o["size"], o["color"], o["shape"]) for o in r["objects"]]
        if r["target"] == "yes":
            assert r["match_type"] == "none" and _phrases(r["text"]) == true
        else:
            _check_near_miss(true, r["text"], r["match_type"])
            assert not any((c, s) in shapes.NOVEL_PAIRS for _, c, s in _phrases(r["text"]))


def test_match_is_balanced_and_varied(train300):
    match = [r for r in train300 if r["task"] == "match"]
    assert 0.42 < sum(r["target"] == "yes" for r in match) / len(match) < 0.58
    assert {r["match_type"] for r in match if r["target"] == "no"} == {"color", "shape", "size", "order"}


def test_training_extras_add_rows_and_change_no_other(tmp_path):
    """counts=2, matches=2, opposite: extra count questions, the other match example, the yes/no
    questions with the other answer; every default row stays as it was."""
    rows = _rows(shapes.generate(tmp_path, "train", n=150, seed=0, questions_per_image=7, progress=False,
                                 counts=2, matches=2, opposite=True))
    base = _rows(shapes.generate(tmp_path / "b", "train", n=150, seed=0, questions_per_image=7, progress=False))
    assert [r for r in rows if not r["id"].endswith(("-c0", "-c1", "-match2", "-o0", "-o1"))] == base
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r)
    extra_answers = []
    for group in by_image.values():
        shapes_in = [o["shape"] for o in group[0]["objects"]]
        counts = [r for r in group if r.get("question_type") == "count"]
        assert len({r["prompt"] for r in counts}) == len(counts)  # no question asked twice of one image
        for r in counts:
            if r["prompt"] != "how many objects are there?":
                shape = next(s for s in shapes.SHAPES if shapes.PLURALS[s] in r["prompt"])
                assert r["target"] == shapes.NUMBERS[shapes_in.count(shape)]
        names = [f"{o['color']} {o['shape']}" for o in group[0]["objects"]]
        columns = {f"{o['color']} {o['shape']}": o["column"] for o in group[0]["objects"]}
        for qtype in ("exist", "relation"):
            asked = [r for r in group if r.get("question_type") == qtype]
            assert len(asked) in (0, 2) and sorted(r["target"] for r in asked) in ([], ["no", "yes"])
            for r in asked:  # every answer right
                if qtype == "exist":
                    assert (r["prompt"][len("is there a "):-1] in names) == (r["target"] == "yes")
                else:
                    a, b = r["prompt"][len("is the "):-1].split(" left of the ")
                    assert (columns[a] < columns[b]) == (r["target"] == "yes")
        extra = [r for r in group if r["id"].endswith(("-c0", "-c1"))]
        assert len(extra) == 2
        extra_answers += [r["target"] for r in extra]
        match = sorted((r for r in group if r["task"] == "match"), key=lambda r: r["target"])
        assert [r["target"] for r in match] == ["no", "yes"]  # both: a near miss and the true caption
        true = [(o["size"], o["color"], o["shape"]) for o in match[1]["objects"]]
        assert _phrases(match[1]["text"]) == true
        _check_near_miss(true, match[0]["text"], match[0]["match_type"])
    # one present and one absent shape per image: "zero" about half the time, "two" well represented
    assert 0.4 < extra_answers.count("zero") / len(extra_answers) < 0.6
    assert extra_answers.count("two") / len(extra_answers) > 0.06
    p = resolve_source("shapes:split=val,n=3,seed=2,counts=1,matches=2,opposite=1", tmp_path / "c", progress=False)
    assert p.parent.name == "val-n3-seed2-c1-m2-o"
    with pytest.raises(DataError, match="matches 1 or 2"):
        resolve_source("shapes:split=val,n=3,matches=3", tmp_path / "c")


def test_novel_near_misses_stay_novel(tmp_path):
    for r in _rows(shapes.generate(tmp_path, "novel", n=80, seed=0, progress=False, tasks=["match"])):
        true = [(o["size"], o["color"], o["shape"]) for o in r["objects"]]
        if r["target"] == "no":
            _check_near_miss(true, r["text"], r["match_type"])
        assert any((c, s) in shapes.NOVEL_PAIRS for _, c, s in _phrases(r["text"]))


def _naive_bayes_accuracy(train, test):
    """Unigram multinomial naive Bayes with add-one smoothing on (words, label) pairs."""
    labels = sorted({y for _, y in train})
    vocab = sorted({w for ws, _ in train for w in ws} | {w for ws, _ in test for w in ws})
    index = {w: i for i, w in enumerate(vocab)}
    counts = np.ones((len(labels), len(vocab)))
    prior = np.zeros(len(labels))
    for ws, y in train:
        np.add.at(counts[labels.index(y)], [index[w] for w in ws], 1)
        prior[labels.index(y)] += 1
    logp = np.log(counts / counts.sum(1, keepdims=True))
    hits = [labels[int(np.argmax(np.log(prior) + logp[:, [index[w] for w in ws]].sum(1)))] == y for ws, y in test]
    return float(np.mean(hits))


def test_match_text_alone_is_at_chance(tmp_path):
    """Near misses are distributed like true captions: a bag of words of the text alone learns nothing."""
    def data(split, n):
        rows = _rows(shapes.generate(tmp_path / split, split, n=n, seed=2, progress=False, tasks=["match"]))
        return [(r["text"].split(), r["target"]) for r in rows]

    assert _naive_bayes_accuracy(data("train", 600), data("val", 300)) < 0.6


def test_tasks_filter_and_validation(tmp_path, shapes_dir):
    path = shapes.generate(tmp_path, "train", n=40, seed=0, progress=False, tasks=["retrieval", "vqa"])
    full = [r for r in _rows(shapes_dir / "manifest.jsonl") if r["task"] in ("vqa", "retrieval")]
    assert _rows(path) == full  # same rows (and ids) as in the full manifest, nothing else
    assert json.loads((tmp_path / "info.json").read_text())["tasks"] == ["vqa", "retrieval"]
    with pytest.raises(ValueError, match=r"unknown ShapesWorld task\(s\) \['captions'\]"):
        shapes.generate(tmp_path, n=1, tasks=["captions"])
    with pytest.raises(ValueError, match="no ShapesWorld tasks"):
        shapes.generate(tmp_path, n=1, tasks=[])


def test_shapes_spec_tasks_are_in_the_cache_key(tmp_path):
    p = resolve_source("shapes:split=val,n=3,seed=2,tasks=retrieval+caption", tmp_path, progress=False)
    assert p.parent.name == "val-n3-seed2-caption+retrieval"
    assert {r["task"] for r in _rows(p)} == {"caption", "retrieval"}
    q = resolve_source("shapes:split=val,n=3,seed=2", tmp_path, progress=False)
    assert q.parent.name == "val-n3-seed2" and {r["task"] for r in _rows(q)} == set(shapes.TASKS)
    with pytest.raises(DataError, match=r"tasks.*unknown ShapesWorld task"):
        resolve_source("shapes:tasks=caption+colour", tmp_path)


def test_stale_shapes_cache_is_regenerated(tmp_path):
    """A cache written before retrieval/match (no version in info.json) is rebuilt, not reused."""
    p = resolve_source("shapes:split=val,n=2,seed=0", tmp_path, progress=False)
    old = [r for r in _rows(p) if r["task"] == "caption"]
    p.write_text("".join(json.dumps(r) + "\n" for r in old))
    (p.parent / "info.json").write_text(json.dumps({"dataset": "shapesworld", "split": "val", "n": 2}))
    assert {r["task"] for r in _rows(resolve_source("shapes:split=val,n=2,seed=0", tmp_path))} == set(shapes.TASKS)


def test_data_shapes_command_tasks(tmp_path):
    from multimodaltransformer.cli import main

    assert main(["data", "shapes", "--n", "2", "--tasks", "match+caption", "--out", str(tmp_path)]) == 0
    assert {r["task"] for r in _rows(tmp_path / "manifest.jsonl")} == {"caption", "match"}
    assert main(["data", "shapes", "--n", "2", "--tasks", "nope", "--out", str(tmp_path)]) != 0


def test_images_drawn_in_workers_equal_those_drawn_inline(tmp_path, monkeypatch):
    """The draws are made before the drawing, so worker processes give the same pixels."""
    parallel = shapes.generate(tmp_path / "workers", "val", n=300, seed=5, progress=False)
    from multimodaltransformer.data import parallel as pool

    monkeypatch.setattr(pool.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    inline = shapes.generate(tmp_path / "inline", "val", n=300, seed=5, progress=False)
    assert parallel.read_text() == inline.read_text()
    for i in (0, 149, 299):
        name = f"images/val-5-{i:06d}.png"
        assert np.array_equal(np.asarray(Image.open(parallel.parent / name)), np.asarray(Image.open(inline.parent / name)))
