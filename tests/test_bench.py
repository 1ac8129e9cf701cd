"""`mmt bench fusion` end to end on a tiny budget: one table row per method, Markdown, JSON and a plot."""

import json

import pytest


@pytest.mark.slow
def test_bench_fusion_writes_table_and_plot(tmp_path):
    from multimodaltransformer.cli import main

    tiny = ["--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "data.train=shapes:split=train,n=80,seed=0,questions=2",
            "--set", "data.val=shapes:split=val,n=10,seed=0",
            "--set", "model.image={image_size: 64, patch_size: 16, dim: 32, depth: 1, heads: 2}",
            "--set", "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 96}",
            "--set", "model.fusion={num_queries: 4, depth: 1, heads: 2}",
            "--set", "train.batch_size=8", "--set", "train.max_steps=4", "--set", "train.warmup_steps=1"]
    assert main(["bench", "fusion", "--out", str(tmp_path / "b"), "--minutes", "0.02", "--eval-n", "12",
                 "--methods", "resampler;late;joint;early, vqa only", *tiny]) == 0
    rows = json.loads((tmp_path / "b" / "fusion.json").read_text())
    assert [r["method"] for r in rows] == ["resampler", "late", "joint", "early, vqa only"]
    by = {r["method"]: r for r in rows}
    assert by["late"]["caption_bleu4"] is None and by["late"]["vqa_accuracy"] is not None  # heads, no generation
    assert by["joint"]["retrieval_r1"] is not None and by["joint"]["vqa_accuracy"] is None
    assert by["early, vqa only"]["caption_bleu4"] is None and by["early, vqa only"]["retrieval_r1"] is None
    assert all(r["steps"] >= 1 and r["parameters"] > 0 for r in rows)
    # per-question-type VQA accuracy, where the model answered VQA
    assert by["resampler"]["vqa_exist"] is not None and by["joint"]["vqa_exist"] is None
    assert all({"vqa_exist", "vqa_position", "vqa_relation", "match_accuracy"} <= set(r) for r in rows)
    table = (tmp_path / "b" / "fusion.md").read_text()
    assert table.count("\n| ") == 5  # header + 4 methods
    assert "| VQA exist | VQA position | VQA relation |" in table and "match acc" in table
    assert (tmp_path / "b" / "fusion.png").stat().st_size > 1000
    assert main(["bench", "fusion", "--out", str(tmp_path / "c"), "--methods", "nope"]) == 2


def test_markdown_table_shows_vqa_by_type_and_dashes_for_the_missing():
    from multimodaltransformer.bench import COLUMNS, markdown_table

    row = {"method": "graph", "parameters": 2.5e6, "steps": 10, "steps_per_s": 4.0, "vqa_accuracy": 0.5,
           "vqa_exist": 0.75, "vqa_position": None, "vqa_relation": 0.25, "match_accuracy": 0.9}
    head, _, line = markdown_table([row]).splitlines()
    cells = dict(zip(head.strip("| ").split(" | "), line.strip("| ").split(" | ")))
    assert cells["VQA exist"] == "0.750" and cells["VQA position"] == "-" and cells["VQA relation"] == "0.250"
    assert cells["match acc"] == "0.900" and cells["caption BLEU-4"] == "-" and cells["params (M)"] == "2.50"
    assert len(cells) == len(COLUMNS) + 4


@pytest.mark.slow
def test_bench_video_compares_the_encoders_on_clips_and_their_reversals(tmp_path):
    pytest.importorskip("av")
    from multimodaltransformer.cli import main

    tiny = ["--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "data.train=motion:split=train,n=12,seed=0,questions=10",
            "--set", "data.val=motion:split=val,n=4,seed=0",
            "--set", "model.media={video: {image_size: 48, patch_size: 16, dim: 32, depth: 1, heads: 2, frames: 4, "
                     "tubelet: 2}}",
            "--set", "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 160}",
            "--set", "train.batch_size=4", "--set", "train.max_steps=3", "--set", "train.warmup_steps=1"]
    assert main(["bench", "video", "--out", str(tmp_path / "b"), "--minutes", "0.02", "--eval-n", "10", *tiny]) == 0
    rows = json.loads((tmp_path / "b" / "video.json").read_text())
    assert [r["attention"] for r in rows] == ["divided", "mean"]
    assert all(r["video_qa_accuracy"] is not None and r["reversed_direction"] is not None for r in rows)
    reversed_clips = list((tmp_path / "b" / "reversed").glob("*.mp4"))
    assert reversed_clips and "| reversed clips: direction |" in (tmp_path / "b" / "video.md").read_text()
    assert main(["bench", "video", "--out", str(tmp_path / "c"), "--encoders", "joint"]) == 2
