"""`mmt demo` end to end on a tiny budget: multi-task training, both splits scored, files written."""

import json

import pytest


@pytest.mark.slow
def test_demo_writes_metrics_for_every_task(tmp_path):
    from multimodaltransformer.cli import main

    tiny = ["--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "data.train=shapes:split=train,n=64,seed=0,questions=2",
            "--set", "data.val=shapes:split=val,n=8,seed=0",
            "--set", "model.image={image_size: 64, patch_size: 16, dim: 32, depth: 1, heads: 2}",
            "--set", "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 96}",
            "--set", "train.batch_size=8", "--set", "train.warmup_steps=1", "--set", "train.eval_examples=4",
            "--set", "multitask={tasks: [{name: generate, objective: lm, tasks: [caption, vqa, classify, match]}, "
                     "{name: retrieval, objective: contrastive, tasks: [retrieval], batch_size: 8}]}"]
    assert main(["demo", "--out", str(tmp_path / "run"), "--budget-minutes", "0.05", "--eval-n", "12",
                 "--no-serve", *tiny]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("test", "novel"):
        for key in ("vqa_accuracy", "caption_bleu4", "caption_cider", "classify_accuracy", "match_accuracy",
                    "retrieval_r1"):
            assert key in metrics[split], (split, key)
    preds = (tmp_path / "run" / "predictions-test.jsonl").read_text().splitlines()
    assert {json.loads(p)["task"] for p in preds} == {"caption", "vqa", "classify", "match"}
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    report = (tmp_path / "run" / "report.html").read_text()
    assert report.count("<img") >= 12 and "data:image/png;base64," in report
    examples = json.loads((tmp_path / "run" / "model" / "examples" / "examples.json").read_text())
    assert len(examples) == 6 and all((tmp_path / "run" / "model" / e["image"]).is_file() for e in examples)


@pytest.mark.slow
def test_the_speech_demo_trains_asr_and_spoken_vqa_and_scores_both(tmp_path):
    pytest.importorskip("espeakng_loader")
    from multimodaltransformer.cli import main

    tiny = ["--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "data.train=spoken:split=train,n=24,seed=0",
            "--set", "data.val=spoken:split=val,n=4,seed=0",
            "--set", "model.image={image_size: 64, patch_size: 16, dim: 32, depth: 1, heads: 2}",
            "--set", "model.media={audio: {dim: 32, depth: 1, heads: 2, seconds: 10, stride: 4}}",
            "--set", "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 96}",
            "--set", "train.batch_size=8", "--set", "train.warmup_steps=1", "--set", "train.eval_examples=4",
            "--set", "multitask={sampling: round_robin, tasks: [{name: speech, objective: lm, tasks: [asr, vqa]}, "
                     "{name: text, objective: lm, tasks: [caption, vqa], data: 'shapes:split=train,n=16,seed=0'}]}"]
    assert main(["demo", "speech", "--out", str(tmp_path / "run"), "--budget-minutes", "0.05", "--eval-n", "9",
                 "--no-serve", *tiny]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("test", "novel"):
        assert {"asr_wer", "vqa_accuracy"} <= set(metrics[split]), split
    preds = [json.loads(p) for p in (tmp_path / "run" / "predictions-test.jsonl").read_text().splitlines()]
    assert {p["task"] for p in preds} == {"asr", "vqa"} and all(p["prompt"] == "" for p in preds)
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["media"]["audio"]["dim"] == 32 and config["heads"]["ctc_weight"] == 0.3


@pytest.mark.slow
def test_the_video_demo_trains_video_captions_and_qa_and_reports_them(tmp_path):
    pytest.importorskip("av")
    from multimodaltransformer.cli import main

    tiny = ["--set", f"data.cache_dir={tmp_path / 'cache'}",
            "--set", "data.train=motion:split=train,n=16,seed=0,questions=10",
            "--set", "data.val=motion:split=val,n=4,seed=0",
            "--set", "model.media={video: {image_size: 64, patch_size: 16, dim: 32, depth: 1, heads: 2, frames: 4, "
                     "tubelet: 2}}",
            "--set", "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 160}",
            "--set", "train.batch_size=8", "--set", "train.warmup_steps=1", "--set", "train.eval_examples=4"]
    assert main(["demo", "video", "--out", str(tmp_path / "run"), "--budget-minutes", "0.05", "--eval-n", "12",
                 "--no-serve", *tiny]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split in ("test", "novel"):
        assert {"video_qa_accuracy", "video_caption_exact_match", "video_qa_accuracy_by_type"} <= set(metrics[split])
        assert "direction" in metrics[split]["video_qa_accuracy_by_type"] or split == "novel"
    preds = [json.loads(p) for p in (tmp_path / "run" / "predictions-test.jsonl").read_text().splitlines()]
    assert {p["task"] for p in preds} == {"video_caption", "video_qa"}
    report = (tmp_path / "run" / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 4  # the clips' frame strips
    assert main(["generate", str(tmp_path / "run" / "model"), "--video",
                 str(next((tmp_path / "cache").rglob("*.mp4"))), "--prompt", "which way does it move?"]) == 0
