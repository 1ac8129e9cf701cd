"""`mmt bench fusion`: every fusion method, and single- vs multi-task, under one ShapesWorld budget;
`mmt bench video`: the space-time video encoder against the frame mean, on MovingShapes.

Each method trains the `bench-fusion` config's model for the same wall time on the same data
and is scored on the same held-out images. Out come one table (printed, and as Markdown and
JSON) and one plot (PNG, matplotlib) under the output directory.
Generative fusions train captions, VQA, classification and matching as text (one causal-LM
stream) plus retrieval (contrastive projections on the locked towers, refitted on the final
towers after training, as the demo does: the refit is not counted in the wall time); late
fusion answers VQA, classification and matching with heads; the joint space (a dual encoder)
trains retrieval only, towers included. Two early-fusion rows vary the tasks: retrieval that
trains the shared towers too, and single tasks (VQA, captions, matching). Besides the overall VQA
accuracy the table splits out the binding and spatial question types (exist, position, relation),
where the graph fusion's neighbourhood edges should tell.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from .config import ConfigError
from .data.manifest import Example, read_manifest
from .data.sources import resolve_source
from .evaluate import evaluate
from .nn.lora import count_parameters
from .train.config import load_run_config
from .train.tasks import MultiTaskConfig, TaskConfig
from .train.trainer import train

GENERATIVE = ["caption", "vqa", "classify", "match"]
# as in the demo: retrieval learns projections on the towers the other tasks train, refitted on
# the final towers at the end ...
RETRIEVAL = TaskConfig("retrieval", "contrastive", tasks=["retrieval"], batch_size=64, lock=["image", "text"],
                       refit_steps=3000)
# ... or trains the towers too (the dual encoder; and the row that measures the interference)
RETRIEVAL_FULL = TaskConfig("retrieval", "contrastive", tasks=["retrieval"], batch_size=64)
# method -> (fusion type, task streams)
METHODS: dict[str, tuple[str, list[TaskConfig]]] = {
    "early": ("early", [TaskConfig("generate", "lm", tasks=GENERATIVE), RETRIEVAL]),
    "cross": ("cross", [TaskConfig("generate", "lm", tasks=GENERATIVE), RETRIEVAL]),
    "gated": ("gated", [TaskConfig("generate", "lm", tasks=GENERATIVE), RETRIEVAL]),
    "resampler": ("resampler", [TaskConfig("generate", "lm", tasks=GENERATIVE), RETRIEVAL]),
    "graph": ("graph", [TaskConfig("generate", "lm", tasks=GENERATIVE), RETRIEVAL]),
    "late": ("late", [TaskConfig("heads", "classify", tasks=["vqa", "classify", "match"]), RETRIEVAL]),
    "joint": ("joint", [RETRIEVAL_FULL]),
    "early, retrieval trains the towers": ("early", [TaskConfig("generate", "lm", tasks=GENERATIVE), RETRIEVAL_FULL]),
    "early, vqa only": ("early", [TaskConfig("generate", "lm", tasks=["vqa"])]),
    "early, caption only": ("early", [TaskConfig("generate", "lm", tasks=["caption"])]),
    "early, match only": ("early", [TaskConfig("generate", "lm", tasks=["match"])]),
}
SCALE = {"caption_bleu4": 100.0, "caption_cider": 10.0}  # onto the 0-1 scale of the others, in the plot
# VQA accuracy per question type (evaluate's "vqa_accuracy_by_type"), as row keys "vqa_<type>"
VQA_TYPES = ["exist", "position", "relation"]
COLUMNS = [("vqa_accuracy", "VQA acc"), *[(f"vqa_{t}", f"VQA {t}") for t in VQA_TYPES],
           ("caption_bleu4", "caption BLEU-4"), ("caption_cider", "caption CIDEr"),
           ("classify_accuracy", "classify acc"), ("match_accuracy", "match acc"), ("retrieval_r1", "retrieval R@1")]


def run_fusion_bench(out: str | Path = "runs/bench-fusion", minutes: float = 3.0, methods: list[str] | None = None,
                     config: str = "bench-fusion", overrides: list[str] | None = None, eval_n: int = 300,
                     eval_seed: int = 1, progress: bool = True) -> list[dict[str, Any]]:
    """Train and score each method; returns the table rows (also written under `out`)."""
    methods = methods or list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_run_config(config, [f"train.time_budget_minutes={minutes}", *(overrides or [])])
    test = read_manifest(resolve_source(f"shapes:split=test,n={eval_n},seed={eval_seed}", base.data.cache_dir, progress))
    rows = []
    for method in methods:
        fusion, streams = METHODS[method]
        run = replace(base, model=replace(base.model, fusion=replace(base.model.fusion, type=fusion)),
                      multitask=MultiTaskConfig(streams))
        run_dir = out / method.replace(", ", "-").replace(" ", "-")
        tqdm.write(f"\n== {method}: fusion {fusion}, tasks {[s.name for s in streams]}, {minutes:g} min")
        start = time.perf_counter()
        model = train(run, run_dir, progress=progress)
        summary = json.loads((run_dir / "train_summary.json").read_text())
        trained = {task for s in streams for task in s.tasks or []}
        report, _ = evaluate(model, [e for e in test if e.task in trained], progress=progress)  # "-" for the rest
        by_type = report.get("vqa_accuracy_by_type") or {}
        report = {**report, **{f"vqa_{t}": by_type.get(t) for t in VQA_TYPES}}
        row = {"method": method, "fusion": fusion, "tasks": [s.name for s in streams],
               "parameters": count_parameters(model)[1], "steps": summary["steps"],
               "steps_per_s": summary["steps"] / summary["train_seconds"],
               "wall_s": time.perf_counter() - start,
               **{k: report.get(k) for k, _ in COLUMNS}}
        rows.append(row)
        (out / "fusion.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown_table(rows)
    (out / "fusion.md").write_text(f"# Fusion benchmark ({minutes:g} min per method, {eval_n} test images)\n\n"
                                   f"{table}\n")
    tqdm.write("\n" + table)
    try:
        plot(rows, out / "fusion.png")
        tqdm.write(f"\nwrote {out / 'fusion.md'}, {out / 'fusion.json'}, {out / 'fusion.png'}")
    except ImportError:
        tqdm.write(f"\nwrote {out / 'fusion.md'}, {out / 'fusion.json'} (no plot: pip install matplotlib)")
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One row per method: the COLUMNS ("-" where not trained, or no such question), size and speed."""
    head = ["method", *[name for _, name in COLUMNS], "params (M)", "steps", "steps/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], *[("-" if r.get(k) is None else f"{r[k]:.3f}" if k != "caption_bleu4" else f"{r[k]:.1f}")
                                for k, _ in COLUMNS],
                 f"{r['parameters'] / 1e6:.2f}", str(r["steps"]), f"{r['steps_per_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: one group per metric (BLEU / 100 and CIDEr / 10, so all share 0-1), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(16, 4.5))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        values = [(r.get(k) or 0.0) / SCALE.get(k, 1.0) for k, _ in COLUMNS]
        ax.bar([j + i * width for j in range(len(COLUMNS))], values, width, label=r["method"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(COLUMNS))])
    ax.set_xticklabels([f"{name} / {SCALE[k]:g}" if k in SCALE else name for k, name in COLUMNS])
    ax.set_ylabel("score (missing = not trained)")
    ax.set_title("ShapesWorld, same wall-time budget per method")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: bars reach the top
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- mmt bench video

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
VIDEO_TYPES = ["direction", "order", "moving", "count_moving"]  # the questions that need time
VIDEO_COLUMNS = [("video_qa_accuracy", "video QA"), *[(f"qa_{t}", t) for t in VIDEO_TYPES],
                 ("video_caption_exact_match", "caption EM"), ("reversed_direction", "reversed clips: direction")]


def reversed_direction_examples(examples: list[Example], folder: Path) -> list[Example]:
    """The `direction` questions, each about its clip re-encoded with the frames in reverse order, and
    the opposite direction as its target: a model that reads time answers them as well as the originals."""
    from .data.motion import write_video
    from .modalities.video import load_video

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ex in examples:
        if ex.task != "video_qa" or ex.meta.get("question_type") != "direction" or ex.target not in OPPOSITE:
            continue
        clip = folder / Path(str(ex.video)).name
        if not clip.is_file():
            write_video(clip, [Image.fromarray(f) for f in load_video(ex.video)[::-1]])
        out.append(replace(ex, video=clip, target=OPPOSITE[ex.target]))
    return out


def run_video_bench(out: str | Path = "runs/bench-video", minutes: float = 3.0,
                    attentions: tuple[str, ...] = ("divided", "mean"), config: str = "video",
                    overrides: list[str] | None = None, eval_n: int = 150, eval_seed: int = 1,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Train the video config with each encoder (divided space-time attention, the frame mean) for the
    same wall time, score each on the same held-out clips and on their time-reversed direction clips."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_run_config(config, [f"train.time_budget_minutes={minutes}", *(overrides or [])])
    test = read_manifest(resolve_source(f"motion:split=test,n={eval_n},seed={eval_seed}", base.data.cache_dir,
                                        progress))
    backwards = reversed_direction_examples(test, out / "reversed")
    rows = []
    for attention in attentions:
        run = load_run_config(config, [f"train.time_budget_minutes={minutes}", *(overrides or []),
                                       f"model.media.video.attention={attention}"])
        tqdm.write(f"\n== video encoder: {attention} attention, {minutes:g} min")
        model = train(run, out / attention, progress=progress)
        summary = json.loads((out / attention / "train_summary.json").read_text())
        report, _ = evaluate(model, test, progress=progress)
        by_type = report.get("video_qa_accuracy_by_type") or {}
        rev = evaluate(model, backwards, progress=progress)[0] if backwards else {}
        rows.append({"attention": attention, "parameters": count_parameters(model)[1], "steps": summary["steps"],
                     "steps_per_s": summary["steps"] / summary["train_seconds"],
                     "video_qa_accuracy": report.get("video_qa_accuracy"),
                     **{f"qa_{t}": by_type.get(t) for t in VIDEO_TYPES},
                     "video_caption_exact_match": report.get("video_caption_exact_match"),
                     "reversed_direction": rev.get("video_qa_accuracy"), "by_type": by_type})
        (out / "video.json").write_text(json.dumps(rows, indent=2) + "\n")
    head = ["encoder", *[name for _, name in VIDEO_COLUMNS], "params (M)", "steps", "steps/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["attention"], *["-" if r.get(k) is None else f"{r[k]:.3f}" for k, _ in VIDEO_COLUMNS],
                 f"{r['parameters'] / 1e6:.2f}", str(r["steps"]), f"{r['steps_per_s']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "video.md").write_text(f"# Video encoders ({minutes:g} min each, {eval_n} test clips, "
                                  f"{len(backwards)} reversed direction clips)\n\n{table}\n")
    tqdm.write("\n" + table + f"\n\nwrote {out / 'video.md'}, {out / 'video.json'}")
    return rows
