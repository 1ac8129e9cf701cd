"""Evaluation: each task answered the right way (head, generation, contrastive space) and scored."""

import json
from dataclasses import replace

import pytest
import torch

from multimodaltransformer import MultimodalTransformerModel
from multimodaltransformer.data import read_manifest
from multimodaltransformer.evaluate import evaluate, retrieval_scores, score
from multimodaltransformer.models.multimodal import HeadsConfig

from conftest import tiny_config


@pytest.fixture
def headed_model(tokenizer):
    torch.manual_seed(0)
    cfg = replace(tiny_config(tokenizer.vocab_size), heads=HeadsConfig(
        contrastive_dim=8, classes={"match": ["no", "yes"]}))
    cfg.decoder.max_seq_len = 96
    model = MultimodalTransformerModel(cfg).eval()
    model.tokenizer = tokenizer
    return model


def test_every_task_is_answered_its_way(headed_model, shapes_dir):
    examples = read_manifest(shapes_dir)[:70]
    report, preds = evaluate(headed_model, examples, max_new_tokens=4)
    tasks = {e.task for e in examples}
    assert {"caption", "vqa", "classify", "match", "retrieval"} <= tasks
    for key in ("retrieval_r1", "retrieval_t2i_r5", "retrieval_i2t_r10", "caption_cider", "caption_rouge_l",
                "caption_bleu4", "vqa_accuracy", "vqa_accuracy_by_type", "classify_accuracy", "match_accuracy",
                "match_report"):
        assert key in report, key
    assert report["count"]["retrieval"] == sum(e.task == "retrieval" for e in examples)
    for e, p in zip(examples, preds):
        if e.task == "retrieval":
            assert p is None
        elif e.task == "match":
            assert p in ("yes", "no")  # the head's labels, not generated text
        else:
            assert isinstance(p, str)
    assert set(report["match_report"]) >= {"accuracy", "macro avg", "weighted avg"}


class _Oracle(torch.nn.Module):
    """Embeds an image and a caption as the one-hot of the caption's id: perfect retrieval."""

    def __init__(self, model, captions):
        super().__init__()
        self.m, self.captions = model, sorted(set(captions))
        self.image_proj = torch.nn.Identity()
        self.tokenizer, self.image_processor, self.max_seq_len = model.tokenizer, model.image_processor, 96
        self.next_images: list[str] = []

    def encode_text(self, ids, mask):
        texts = [self.tokenizer.decode(row[m][1:-1].tolist()) for row, m in zip(ids, mask)]
        return torch.nn.functional.one_hot(torch.tensor([self.captions.index(t) for t in texts]),
                                           len(self.captions)).float()

    def encode_image(self, pixels):
        ids = [self.captions.index(c) for c in self.next_images[:len(pixels)]]
        del self.next_images[:len(pixels)]
        return torch.nn.functional.one_hot(torch.tensor(ids), len(self.captions)).float()


def test_retrieval_counts_identical_captions_as_correct(headed_model, shapes_dir):
    pairs = [e for e in read_manifest(shapes_dir) if e.task == "retrieval"][:12]
    pairs[5].target = pairs[3].target  # two images that share a caption: either is a right answer
    oracle = _Oracle(headed_model, [e.target for e in pairs])
    oracle.next_images = [e.target for e in pairs]
    scores = retrieval_scores(oracle, pairs, batch_size=5)
    assert scores["retrieval_t2i_r1"] == scores["retrieval_i2t_r1"] == scores["retrieval_r1"] == 1.0
    # a random space is far from perfect
    random = retrieval_scores(headed_model, pairs)
    assert random["retrieval_r1"] < 1.0 and random["retrieval_t2i_r10"] >= random["retrieval_t2i_r1"]


def test_score_uses_the_reference_metrics():
    from multimodaltransformer.data.manifest import Example

    ex = [Example("a", "caption", "describe", "a red circle"), Example("b", "vqa", "q", "two"),
          Example("c", "asr", "", "hello world"), Example("d", "sentiment", "", "positive")]
    r = score(ex, ["a red circle", "2", "hello word", "negative"])
    assert r["caption_exact_match"] == 1.0 and r["caption_cider"] == pytest.approx(0.0)  # one image: idf is 0
    assert r["vqa_accuracy"] == 1.0  # the VQA normalisation maps number words to digits
    assert r["asr_wer"] == 0.5
    assert r["sentiment_accuracy"] == 0.0 and r["sentiment_report"]["accuracy"] == 0.0


def test_models_that_cannot_answer_a_task_skip_it(tokenizer, shapes_dir):
    torch.manual_seed(0)
    cfg = replace(tiny_config(tokenizer.vocab_size), heads=HeadsConfig(contrastive_dim=8))
    cfg.fusion.type = "joint"
    model = MultimodalTransformerModel(cfg).eval()
    model.tokenizer = tokenizer
    report, preds = evaluate(model, read_manifest(shapes_dir)[:30])
    assert "retrieval_r1" in report and "vqa_accuracy" not in report
    assert set(report["skipped"]) >= {"caption", "vqa"}
    assert all(p is None for p in preds)


def test_cli_eval_writes_report_and_predictions(headed_model, shapes_dir, tmp_path):
    from multimodaltransformer.cli import main

    headed_model.save_pretrained(tmp_path / "model")
    out = tmp_path / "r" / "report.json"
    assert main(["eval", str(tmp_path / "model"), "--data", str(shapes_dir / "manifest.jsonl"), "--out", str(out),
                 "--max-new-tokens", "3", "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    assert "retrieval_r1" in report and "match_accuracy" in report
    preds = [json.loads(x) for x in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
    assert preds and all(p["task"] != "retrieval" for p in preds)
    assert main(["eval", str(tmp_path / "model"), "--data", str(tmp_path / "missing.jsonl")]) == 2


def test_cli_eval_skip_bad_skips_unreadable_images_and_reports_the_count(tiny_model, shapes_dir, tmp_path, capsys):
    from multimodaltransformer.cli import main

    tiny_model.save_pretrained(tmp_path / "model")
    img = next((shapes_dir / "images").iterdir())
    (tmp_path / "bad.png").write_bytes(img.read_bytes()[:60])  # truncated PNG
    rows = [{"id": str(i), "task": "vqa", "prompt": "how many objects are there?", "target": "two",
             "image": "bad.png" if i == 2 else str(img)} for i in range(4)]
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows) + "[1, 2]\n")
    out = tmp_path / "report.json"
    args = ["eval", str(tmp_path / "model"), "--data", str(m), "--out", str(out), "--max-new-tokens", "2",
            "--device", "cpu"]
    with pytest.warns(UserWarning, match=r"m.jsonl:3: cannot read image"):
        assert main([*args, "--skip-bad"]) == 0
    report = json.loads(out.read_text())
    assert report["skipped_examples"] == 2 and report["count"] == {"vqa": 3}
    assert "skipped 2 example(s): 1 line(s) that failed to parse, 1 whose media" in capsys.readouterr().err
    assert [json.loads(x)["id"] for x in out.with_suffix(".predictions.jsonl").read_text().splitlines()] == \
        ["0", "1", "3"]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(args) == 2  # without --skip-bad the unreadable image stops the run, naming its line
    assert "m.jsonl:3: cannot read image" in capsys.readouterr().err
