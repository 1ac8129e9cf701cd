import json
import subprocess
import sys

import pytest

from multimodaltransformer.cli import main

TINY = ["--set", "model.image={image_size: 32, patch_size: 8, dim: 32, depth: 1, heads: 2}",
        "--set", "model.decoder={dim: 32, depth: 1, heads: 2, max_seq_len: 64}",
        "--set", "train.max_steps=6", "--set", "train.batch_size=4", "--set", "train.save_every=3",
        "--set", "train.eval_every=6", "--set", "train.eval_examples=4", "--set", "data.tokenizer_vocab_size=300"]


def test_data_shapes_command(tmp_path, capsys):
    assert main(["data", "shapes", "--split", "novel", "--n", "3", "--seed", "4", "--out", str(tmp_path)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert len({r["image"] for r in rows}) == 3 and all((tmp_path / r["image"]).is_file() for r in rows)


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--prompt", "hi"]) == 2
    assert "not a model directory" in capsys.readouterr().err


def test_generate_skip_bad_skips_and_counts_unreadable_images(tiny_model, shapes_dir, tmp_path, capsys):
    """--skip-bad skips a file that exists but cannot be decoded, as it skips lines that fail to parse;
    without it the truncated image stops the run naming its line."""
    tiny_model.save_pretrained(tmp_path / "model")
    img = next((shapes_dir / "images").iterdir())
    (tmp_path / "bad.png").write_bytes(img.read_bytes()[:60])  # truncated PNG
    rows = [{"id": str(i), "task": "caption", "prompt": "describe the image.", "image": str(img)} for i in range(3)]
    rows[1]["image"] = "bad.png"
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pred = tmp_path / "pred.jsonl"
    args = ["generate", str(tmp_path / "model"), "--data", str(m), "--out", str(pred), "--max-new-tokens", "2",
            "--device", "cpu"]
    assert main(args) == 2
    assert "m.jsonl:2: cannot read image" in capsys.readouterr().err
    with m.open("a") as f:
        f.write("{not json\n")
    with pytest.warns(UserWarning, match=r"skipped 1 example\(s\) with unreadable media; first: .*m.jsonl:2: "):
        assert main([*args, "--skip-bad"]) == 0
    assert [json.loads(x)["id"] for x in pred.read_text().splitlines()] == ["0", "2"]
    assert ("wrote 2 predictions" in (out := capsys.readouterr().out) and "skipped 2 example(s): 1 line(s) that "
            "failed to parse, 1 whose media could not be read" in out)


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "multimodaltransformer", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout and "demo" in out.stdout


@pytest.mark.slow
def test_train_generate_eval_round_trip(shapes_dir, tmp_path, capsys):
    m = str(shapes_dir / "manifest.jsonl")
    out = tmp_path / "run"
    args = ["train", "shapes-tiny", "--out", str(out), *TINY, "--set", f"data.train={m}", "--set", f"data.val={m}"]
    assert main(args) == 0
    assert main(args) == 2 and "--resume" in capsys.readouterr().err  # refuses to clobber checkpoints
    assert main([*args, "--resume", "--set", "train.max_steps=8"]) == 0

    pred = tmp_path / "pred.jsonl"
    assert main(["generate", str(out / "model"), "--data", m, "--out", str(pred), "--max-new-tokens", "4"]) == 0
    rows = [json.loads(x) for x in pred.read_text().splitlines()]
    ids = [json.loads(x)["id"] for x in open(m)]
    assert [r["id"] for r in rows] == ids and set(rows[0]) == {"id", "prompt", "prediction"}

    image = next((shapes_dir / "images").iterdir())
    capsys.readouterr()
    assert main(["generate", str(out / "model"), "--image", str(image), "--prompt", "describe the image.",
                 "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    assert main(["generate", str(out / "model"), "--prompt", "describe the image."]) == 2
    assert "needs an image" in capsys.readouterr().err

    report = tmp_path / "report.json"
    assert main(["eval", str(out / "model"), "--data", m, "--out", str(report), "--max-new-tokens", "4"]) == 0
    scores = json.loads(report.read_text())
    assert {"vqa_accuracy", "caption_exact_match", "caption_bleu4", "classify_accuracy"} <= set(scores)
