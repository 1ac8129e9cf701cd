"""report.py: one self-contained HTML page (inline images and charts), right / wrong answers marked,
curves from a run's log.jsonl, a page without charts when matplotlib is missing, `mmt eval --report`."""

import json
import re
import sys

import pytest

from multimodaltransformer.data import shapes
from multimodaltransformer.data.manifest import read_manifest
from multimodaltransformer.evaluate import score
from multimodaltransformer.report import (SplitResult, image_cards, log_predictions_to_tensorboard, write_report,
                                          write_run_report)

DATA_IMG = re.compile(r"<img src='data:image/(?:png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+' alt=")  # not charts


def _split(root, name: str, n: int = 20) -> SplitResult:
    """Real ShapesWorld images; every third prediction wrong ("blue"), retrieval pairs without one."""
    examples = read_manifest(shapes.generate(root / name, split=name, n=n, seed=3, progress=False))
    preds = [None if e.task == "retrieval" else ("blue" if i % 3 == 0 else (e.target or "").upper() + "!")
             for i, e in enumerate(examples)]  # upper case + punctuation: still right after normalize_answer
    answered = [(e, p) for e, p in zip(examples, preds) if p is not None]
    metrics = {**score(*map(list, zip(*answered))), "retrieval_r1": 0.25}
    return SplitResult(examples, preds, metrics)


def _log(path) -> None:
    rows = []
    for step in range(1, 21):
        rows.append({"step": step, "loss": 3.0 / step, "task": "generate" if step % 2 else "retrieval", "lr": 1e-3})
        if step % 5 == 0:
            rows.append({"step": step, "val_loss": 2.0 / step, "val_loss/generate": 2.2 / step,
                         "vqa_accuracy": step / 25, "caption_exact_match": step / 40})
    path.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 21, "lo')  # a killed run's last line


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-data")
    return {"test": _split(root, "test"), "novel": _split(root, "novel")}


def _assert_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page and "url(" not in page


def test_report_is_self_contained_with_images_answers_and_charts(splits, tmp_path):
    log = tmp_path / "log.jsonl"
    _log(log)
    path = write_report(tmp_path / "out" / "report.html", splits, log_path=log, title="a <b>run</b>")
    page = path.read_text()
    _assert_self_contained(page)
    assert "a &lt;b&gt;run&lt;/b&gt;" in page  # text is escaped
    assert len(DATA_IMG.findall(page)) >= 2 * 16  # both splits' grids, every image inline
    assert page.count("image-rendering:pixelated") == 1
    charts = re.findall(r"<img class='chart' src='data:image/png;base64,[^']+' alt='([^']+)'>", page)
    assert set(charts) == {"VQA accuracy per question type", "task metrics", "training loss per task",
                           "validation loss", "validation metrics"}
    # a wrong answer shows the expected one beside it; a right one (case, punctuation aside) is green
    ex = splits["test"].examples[0]
    assert f"<span class='bad'>blue</span> <span class='want'>(want: {ex.target})</span>" in page
    right = splits["test"].examples[1]
    assert f"<span class='ok'>{right.target.upper()}!</span></li>" in page
    assert "held-out images" in page and "unseen colour-shape pairs" in page
    assert "vqa_accuracy" in page and "retrieval_r1" in page


def test_grid_takes_the_first_images_with_their_answers(splits):
    cards = image_cards(splits["test"], images=16)
    assert len(cards) == 16 and len({image for image, _ in cards}) == 16
    image, answers = cards[0]
    first = [e for e, p in zip(splits["test"].examples, splits["test"].predictions) if e.image == image and p]
    assert [a.task for a in answers] == [e.task for e in first] and "retrieval" not in {a.task for a in answers}
    assert [a.right for a in answers[:2]] == [False, True]
    match = next(a for a in answers if a.task == "match")
    assert "“" in match.prompt  # the caption it asks about is shown with the question


def test_fewer_images_than_the_grid_and_no_log(tmp_path):
    split = _split(tmp_path, "test", n=3)
    page = write_report(tmp_path / "r.html", {"test": split}, log_path=tmp_path / "missing.jsonl").read_text()
    assert len(DATA_IMG.findall(page)) == 3
    assert "no training log at" in page and "validation loss" not in page
    page = write_report(tmp_path / "r.html", {"test": split}).read_text()
    assert "Training" not in page


def test_without_matplotlib_the_page_says_how_to_get_charts(splits, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    log = tmp_path / "log.jsonl"
    _log(log)
    page = write_report(tmp_path / "r.html", splits, log_path=log).read_text()
    assert "pip install matplotlib" in page and "<img class='chart'" not in page
    assert len(DATA_IMG.findall(page)) >= 32  # the images are all there
    assert not log_predictions_to_tensorboard(tmp_path / "tb", splits["test"])  # no figure to draw: skipped


def test_tensorboard_gets_the_first_images_with_answers(splits, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert log_predictions_to_tensorboard(tmp_path / "tb", splits["test"], images=8, step=7, tag="predictions/test")
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    [event] = acc.Images("predictions/test")
    assert event.step == 7 and event.width > event.height > 0


def test_run_report_writes_the_page_and_a_tensorboard_image_at_the_last_step(splits, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log(tmp_path / "log.jsonl")
    path = write_run_report(tmp_path, splits)  # what `mmt demo` calls
    assert path == tmp_path / "report.html" and "training loss per task" in path.read_text()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Images("predictions/test")] == [20]


def test_cli_eval_report(tiny_model, tmp_path, capsys):
    from multimodaltransformer.cli import main

    tiny_model.save_pretrained(tmp_path / "run" / "model")
    _log(tmp_path / "run" / "log.jsonl")  # a run's OUT/model -> OUT/log.jsonl: curves too
    data = shapes.generate(tmp_path / "data", split="test", n=16, seed=3, progress=False,
                           tasks=["caption", "vqa"], questions_per_image=1)
    args = ["eval", str(tmp_path / "run" / "model"), "--data", str(data), "--max-new-tokens", "2", "--device", "cpu"]
    out = tmp_path / "r" / "eval.json"
    assert main([*args, "--out", str(out), "--report"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout stays the JSON report; the page's path goes to stderr
    assert f"report: {out.with_suffix('.html')}" in captured.err
    page = out.with_suffix(".html").read_text()
    _assert_self_contained(page)
    assert len(DATA_IMG.findall(page)) == 16 and "validation loss" in page and "(want: " in page

    assert main([*args, "--report", str(tmp_path / "elsewhere.html")]) == 0
    assert (tmp_path / "elsewhere.html").is_file()
    capsys.readouterr()
    assert main([*args, "--report"]) == 2 and "--report without a path" in capsys.readouterr().err
