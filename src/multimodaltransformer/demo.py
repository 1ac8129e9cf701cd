"""`mmt demo [image|speech|video]`: ShapesWorld (SpokenShapes, MovingShapes) end to end on a CPU, no downloads.

Generate data (cached) -> train within a time budget -> evaluate on held-out `test` and on
`novel` (unseen colour-shape pairs) -> print a table and example predictions -> metrics.json.
The image recipe trains configs/demo.yaml on ShapesWorld; the speech recipe configs/speech.yaml
on SpokenShapes (ASR and spoken VQA, scored on held-out voices' clips) and ShapesWorld; the video
recipe configs/video.yaml on MovingShapes (video captions and video QA about motion and time).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tqdm import tqdm

from .data.manifest import read_manifest
from .data.sources import resolve_source
from .evaluate import evaluate
from .report import HEADLINE, SplitResult, write_run_report
from .train.config import load_run_config
from .train.trainer import train

# recipe -> (its packaged config, the built-in source of its held-out splits, its report's title)
RECIPES = {"image": ("demo", "shapes", "ShapesWorld"), "speech": ("speech", "spoken", "SpokenShapes"),
           "video": ("video", "motion", "MovingShapes")}


def run_demo(out: str | Path = "runs/demo", budget_minutes: float = 9.0, config: str | None = None,
             overrides: list[str] | None = None, serve: bool = False, eval_n: int = 500,
             eval_seed: int = 1, port: int = 8000, recipe: str = "image") -> dict:
    if recipe not in RECIPES:
        raise ValueError(f"unknown demo {recipe!r}; choose from {', '.join(RECIPES)}")
    default_config, source, dataset = RECIPES[recipe]
    out = Path(out)
    run = load_run_config(config or default_config, [f"train.time_budget_minutes={budget_minutes}",
                                                      *(overrides or [])])
    for stale in ("checkpoints", "log.jsonl", "tensorboard"):  # a demo always starts fresh
        p = out / stale
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    if recipe == "speech":
        eval_n = max(1, eval_n // 3)  # three clips an image
    elif recipe == "video":
        eval_n = max(1, eval_n // 2)  # four examples a clip
    splits = {s: resolve_source(f"{source}:split={s},n={eval_n},seed={eval_seed}", run.data.cache_dir)
              for s in ("test", "novel")}
    model = train(run, out)
    from .serve.examples import save_examples  # held-out images + questions for the chat page to start from

    save_examples(out / "model", read_manifest(splits["test"]))
    # the tasks it learned (None: every task of its training data, as the held-out splits have them)
    trained = ({t for s in run.multitask.tasks for t in s.tasks or []} if run.multitask
               else set(run.data.tasks) if run.data.tasks else None)
    summary = json.loads((out / "train_summary.json").read_text())

    metrics: dict = {}
    results: dict[str, SplitResult] = {}
    first = read_manifest(splits["test"])[0]
    for split, manifest in splits.items():
        examples = [e for e in read_manifest(manifest) if trained is None or e.task in trained]
        metrics[split], preds = evaluate(model, examples, batch_size=256, progress=True)
        results[split] = SplitResult(examples, preds, metrics[split])  # for report.html
        with (out / f"predictions-{split}.jsonl").open("w") as f:
            for ex, p in zip(examples, preds):
                if p is not None:
                    f.write(json.dumps({"id": ex.id, "task": ex.task, "prompt": ex.prompt, "text": ex.text,
                                        "prediction": p, "target": ex.target}) + "\n")
        if split == "test":
            _show_examples(*zip(*[(e, p) for e, p in zip(examples, preds) if p is not None]))
    metrics["train_seconds"] = round(summary["train_seconds"], 1)
    metrics["train_steps"] = summary["steps"]
    metrics["parameters"] = summary["parameters"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    report = write_run_report(out, results, title=f"mmt demo: {dataset} held-out predictions")

    tqdm.write("\n" + _table(metrics))
    tqdm.write(f"\ntrained {summary['steps']} steps in {summary['train_seconds']:.0f}s, "
               f"{summary['parameters'] / 1e6:.2f}M parameters")
    tqdm.write(f"model: {out / 'model'}   metrics: {out / 'metrics.json'}   report: {report}")
    if recipe == "speech":
        clip = next(e.audio for e in read_manifest(splits["test"]) if e.audio is not None)
        tqdm.write(f"try:   mmt generate {out / 'model'} --audio {clip}")
    elif recipe == "video":
        tqdm.write(f"try:   mmt generate {out / 'model'} --video {first.video} --prompt \"{first.prompt}\"")
    else:
        tqdm.write(f"try:   mmt generate {out / 'model'} --image {first.image} --prompt \"describe the image.\"")
    if serve:
        _serve(out / "model", model, port, "chat with it: open {url}/ (image + question), or any OpenAI client with "
               "base_url {url}/v1 and model \"model\"")
    return metrics


def _serve(model_dir: Path, model: object, port: int, how: str) -> None:
    """Serve the demo's model on a free port (from `port`), after saying how to use it."""
    from .serve import free_port, serve as serve_model

    port = free_port(port)
    tqdm.write("\n" + how.format(url=f"http://127.0.0.1:{port}") + "; Ctrl-C stops (--no-serve skips this)")
    serve_model(model_dir, port=port, model=model)


def _table(metrics: dict) -> str:
    keys = [k for k in HEADLINE if any(k in metrics[s] for s in ("test", "novel"))]
    names = [k.replace("caption_", "cap_").replace("_accuracy", "_acc").replace("exact_match", "em") for k in keys]
    rows = [f"{'split':<8}" + "".join(f"{n:>14}" for n in names)]
    for split in ("test", "novel"):
        m = metrics[split]
        rows.append(f"{split:<8}" + "".join(f"{m.get(k, float('nan')):>14.4f}" for k in keys))
    return "\n".join(rows)


def _show_examples(examples: list, preds: list[str], images: int = 3) -> None:
    shown: list = []
    for ex, p in zip(examples, preds):
        media = ex.image if ex.image is not None else ex.video
        if media is not None and media not in shown:
            if len(shown) == images:
                break
            shown.append(media)
            tqdm.write(f"\n{media}")
        mark = "ok " if p.strip().lower() == (ex.target or "").lower() else "XX "
        prompt = f"{ex.prompt} [{ex.text}]" if ex.text else ex.prompt
        if ex.audio is not None:  # a spoken prompt: its clip's name
            prompt = f"{prompt} [{Path(str(ex.audio)).name}]".strip()
        tqdm.write(f"  {mark}{ex.task:<8} {prompt:<45} -> {p}" + ("" if mark == "ok " else f"  (want {ex.target})"))


def run_t2i_demo(out: str | Path = "runs/demo-t2i", budget_minutes: float = 10.0, config: str | None = None,
                 overrides: list[str] | None = None, serve: bool = False, port: int = 8000,
                 samples: int = 8, seed: int = 0) -> dict:
    """`mmt demo t2i`: train the VQ-VAE, the prior and the re-ranker within the budget (train/t2i.py),
    then draw images for held-out test-grammar prompts into OUT/samples.png (one row per prompt)."""
    import random

    from PIL import Image

    from .data import shapes
    from .imagine import ImagineOptions, Reranker, imagine
    from .train.t2i import load_t2i_config, train_t2i

    out = Path(out)
    run = load_t2i_config(config or "t2i", [f"time_budget_minutes={budget_minutes}", *(overrides or [])])
    for stale in ("model", "tokenizer", "reranker", "samples.png", "metrics.json"):
        p = out / stale
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    metrics = train_t2i(run, out)
    from .hub import load_pretrained

    model = load_pretrained(out / "model")
    reranker = None
    if (out / "model" / "reranker").is_dir():  # the model directory carries its re-ranker (train_t2i put it there)
        reranker = Reranker.load(out / "model" / "reranker")
    rng = random.Random(f"t2i-demo/{seed}")
    prompts = [shapes.caption(shapes.sample_scene(rng, "test")) for _ in range(samples)]
    # the model's own sampling defaults (t2i.yaml's model.sampling)
    rows = imagine(model, prompts, ImagineOptions(n=4, seed=seed), reranker, progress=True)
    S = model.config.vqvae.image_size
    sheet = Image.new("RGB", (4 * (S + 2), samples * (S + 2)), (255, 255, 255))
    for r, images in enumerate(rows):
        for k, im in enumerate(images):
            sheet.paste(im, (k * (S + 2), r * (S + 2)))
    sheet.save(out / "samples.png")
    (out / "samples.txt").write_text("\n".join(prompts) + "\n")
    tok = metrics["tokenizer"]
    tqdm.write(f"\ntokenizer: PSNR {tok['psnr']:.2f} dB, codebook perplexity {tok['perplexity']:.1f}, "
               f"{tok['codes_used']}/{tok['codebook_size']} codes used (held-out images)")
    if "prior" in metrics:
        tqdm.write(f"prior: {metrics['prior']['steps']} steps, held-out loss {metrics['prior']['val_loss']:.3f} "
                   f"nats/code")
    best = model.config.sampling.rerank if reranker else 1
    tqdm.write(f"trained in {metrics['train_seconds']:.0f}s; samples: {out / 'samples.png'} (prompts in "
               f"{out / 'samples.txt'}" + (f", best of {best} by the re-ranker)" if best > 1 else ")"))
    tqdm.write(f"try:   mmt imagine {out / 'model'} --prompt \"{prompts[0]}\" --n 4 --out {out / 'imagined'}")
    if serve:
        _serve(out / "model", model, port, "imagine with it: open {url}/ (imagine tab), or any OpenAI client's "
               "images.generate with base_url {url}/v1")
    return metrics
