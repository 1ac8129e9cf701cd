"""benchmarks/t2i_eval.py: prompts, the column classifier (tiny, in tmp_path) and the scorer."""

import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from multimodaltransformer.data import shapes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def t2i():
    spec = importlib.util.spec_from_file_location("t2i_eval", ROOT / "benchmarks" / "t2i_eval.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["t2i_eval"] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("t2i_eval", None)


@pytest.fixture(scope="module")
def tiny_classifier(t2i, tmp_path_factory):
    """A classifier trained on 400 renders for 80 steps (~10 s): exact on empty, colour and size,
    weaker on shape than the real one (6,000 renders, 600 steps), so shape bounds here are loose."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("t2i-cache")
    try:
        net, info = t2i.load_or_train(cache, n_images=400, steps=80, check_n=50, log=False)
    finally:
        torch.set_num_threads(threads)
    assert (cache / f"{info['key']}.safetensors").exists()
    assert json.loads((cache / f"{info['key']}.json").read_text())["accuracy"]["test"]["images"] == 50
    return net, cache, info


def test_prompts_are_held_out_captions_with_objects(t2i, tmp_path):
    out = tmp_path / "p" / "novel.txt"
    assert t2i.main(["prompts", "--split", "novel", "--n", "12", "--seed", "5", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    rows = [json.loads(r) for r in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(lines) == len(rows) == 12 and [r["prompt"] for r in rows] == lines
    for r in rows:
        wants = t2i.parse_caption(r["prompt"])
        assert [w.__dict__ for w in wants] == r["objects"]
        assert any((o["color"], o["shape"]) in shapes.NOVEL_PAIRS for o in r["objects"])
    assert t2i.make_prompts("novel", 12, 5) == t2i.make_prompts("novel", 12, 5)  # seeded
    with pytest.raises(ValueError):
        t2i.parse_caption("a huge red circle")


def test_judge_compares_objects_left_to_right(t2i):
    W, s = t2i.Want, t2i.Seen
    wants = [W("red", "circle", "large"), W("blue", "square", "small")]
    right = t2i.judge(0, wants, [s("red", "circle", "large"), None, s("blue", "square", "small")])
    assert right.count_right and right.all_right
    one_missing = t2i.judge(0, wants, [None, s("red", "circle", "small"), None])
    assert not one_missing.count_right and one_missing.color == [True, False] and one_missing.size == [False, False]
    assert not one_missing.all_right
    extra = t2i.judge(0, wants[:1], [s("red", "circle", "large"), s("red", "circle", "large"), None])
    assert extra.color == [True] and not extra.count_right and not extra.all_right


def test_scores_real_renders_high_and_blank_images_low(t2i, tiny_classifier, tmp_path):
    net, cache, _ = tiny_classifier
    prompts = [shapes.caption(objs) for objs in t2i.make_prompts("test", 12, 5)]
    real = tmp_path / "real"
    t2i.render_prompts(prompts, 2, real)
    assert sorted(p.name for p in real.iterdir())[:3] == ["0000-0.png", "0000-1.png", "0001-0.png"]
    r = t2i.score(prompts, real, 2, net, train_dir=real)
    o = r["overall"]
    assert o["images"] == 24 and o["count_right"] >= 0.95 and o["color"] >= 0.95 and o["size"] >= 0.95
    assert o["shape"] >= 0.6 and o["all_right"] >= 0.4 and o["distinct"] == 1.0
    assert o["train_copies"] == 24 and o["nearest_mad_min"] == o["nearest_mad_median"] == 0.0
    assert sum(s["images"] for s in r["by_objects"].values()) == 24

    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(len(prompts)):
        for k in range(2):
            shapes.render([], random.Random(f"blank/{i}/{k}")).save(blank / f"{i:04d}-{k}.png")
    b = t2i.score(prompts, blank, 2, net, train_dir=real)["overall"]
    assert b["count_right"] <= 0.1 and b["color"] == 0 and b["all_right"] == 0
    assert b["train_copies"] == 0 and b["nearest_mad_min"] > 1

    (blank / "0003-1.png").unlink()
    with pytest.raises(SystemExit, match="0003-1.png"):
        t2i.score(prompts, blank, 2, net)


def test_cli_score_uses_the_cache_and_writes_json(t2i, tiny_classifier, tmp_path, capsys):
    _, cache, _ = tiny_classifier
    prompts = tmp_path / "p.txt"
    t2i.main(["prompts", "--n", "3", "--out", str(prompts)])
    t2i.main(["render", "--prompts", str(prompts), "--n", "1", "--out", str(tmp_path / "img")])
    out = tmp_path / "s.json"
    threads = torch.get_num_threads()
    try:
        code = t2i.main(["score", "--prompts", str(prompts), "--images", str(tmp_path / "img"), "--n", "1",
                         "--json", str(out), "--cache-dir", str(cache), "--train-n", "400", "--steps", "80",
                         "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    result = json.loads(out.read_text())
    assert result["overall"]["images"] == 3 and result["overall"]["distinct"] is None  # n=1: undefined
    assert "count" in capsys.readouterr().out


def test_nearest_train_finds_the_closest_image(t2i):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (50, 64, 64, 3), dtype=np.uint8)
    gen = train[[7, 30]].astype(np.int16)
    gen[0] += 2
    gen = np.clip(gen, 0, 255).astype(np.uint8)
    mad = t2i.nearest_train(gen, train, k=4, chunk=16)
    exact = [np.abs(train.astype(np.int16) - g.astype(np.int16)).mean(axis=(1, 2, 3)).min() for g in gen]
    assert np.allclose(mad, exact) and mad[1] == 0


def test_reranker_probe_scores_every_kind_of_near_miss(tokenizer, tmp_path, capsys):
    """benchmarks/reranker_probe.py on a tiny random contrastive model: a share per edit kind, in [0, 1]."""
    from dataclasses import replace

    from multimodaltransformer import MultimodalTransformerModel
    from multimodaltransformer.models.multimodal import HeadsConfig

    from conftest import tiny_config

    torch.manual_seed(0)
    clip = MultimodalTransformerModel(replace(tiny_config(tokenizer.vocab_size), heads=HeadsConfig(contrastive_dim=8)))
    clip.tokenizer = tokenizer
    clip.eval().save_pretrained(tmp_path / "rr")
    spec = importlib.util.spec_from_file_location("reranker_probe", ROOT / "benchmarks" / "reranker_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    assert probe.main([str(tmp_path / "rr"), "--n", "4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) >= {"color", "shape", "size", "pairs"} and out["pairs"] > 4
    assert all(0.0 <= out[k] <= 1.0 for k in ("color", "shape", "size"))
