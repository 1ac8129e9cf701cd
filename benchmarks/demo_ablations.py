"""Ablations of the demo recipe: what makes binding, position and relation questions learnable.

Each variant is the `demo` config (or another packaged/YAML config) plus `--set` overrides,
trained for the same wall time by `mmt demo --no-serve` (same data, same held-out images), and
scored on the held-out `test` and `novel` splits: VQA overall and per question type, caption
exact match, match accuracy, retrieval R@1. Out come one Markdown table (printed, and under
--out as ablations.md, with the rows as ablations.json). Rows of one run are comparable: the
same machine, load and budget; rerun a variant to see the noise.

  python benchmarks/demo_ablations.py --minutes 3 --variants baseline,refit-only,refit-only+sincos
  python benchmarks/demo_ablations.py --config demo --steps 735 --variants baseline,example  # the shipped demo
  python benchmarks/demo_ablations.py --list   # the changes a variant joins with "+"
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from multimodaltransformer.demo import run_demo
from multimodaltransformer.train.config import config_path

DEFAULT_CONFIG = str(Path(__file__).with_name("demo-before.yaml"))

# name -> (config, overrides, what it tests)
# Each change is a list of `--set` overrides; keys under "gen." / "ret." change the demo's two task
# streams (the causal-LM stream and the locked, refitted retrieval stream). Variants join changes
# with "+", applied left to right on the demo config: `refit-only+sincos`.
CHANGES: dict[str, tuple[list[str], str]] = {
    "baseline": ([], "the --config as it is (default: the demo of issue 13's report, retrieval drawn on 11% of steps)"),
    "refit-only": (["ret.weight=0"], "the locked retrieval stream never drawn (weight 0), only refitted at the end"),
    "sincos": (["model.image.patch_positions=sincos"], "fixed 2-D sin/cos patch positions instead of learned ones"),
    "patch16": (["model.image.patch_size=16"], "16x16 patches: 16 image tokens instead of 64"),
    "cross": (["model.fusion.type=cross"], "cross-attention fusion instead of prefix tokens"),
    "graph": (["model.fusion.type=graph"], "graph (message-passing) fusion over the patch grid"),
    "q3": (["data.train=shapes:split=train,n=20000,seed=0,questions=3"],
           "3 questions per training image (as the first demo) instead of all 7 types"),
    "lr3": (["train.lr=3e-3"], "learning rate 3e-3 instead of 1.5e-3"),
    "lr25": (["train.lr=2.5e-3"], "learning rate 2.5e-3 instead of 1.5e-3"),
    "bs16": (["train.batch_size=16"], "16 images per step instead of 32 (twice the steps)"),
    "drop": (["gen.input_dropout=0.3"], "word dropout 0.3 on the target's input tokens"),
    "match": (["gen.tasks=[caption, vqa, classify, match]"], "the match task in the LM stream"),
    "match-stream": (["match.tasks=[match]"], "a second LM stream of match examples only (64 per step)"),
    "balanced-count": ([], "count questions balanced (ShapesWorld v3: always on since)"),
    "no-smoothing": (["model.label_smoothing=0.0"], "no label smoothing"),
    "ls03": (["model.label_smoothing=0.03"], "label smoothing 0.03"),
    "ls10": (["model.label_smoothing=0.1"], "label smoothing 0.1"),
    "seed1": (["train.seed=1"], "another training seed (initialisation and batch order): the noise between runs"),
    "deep": (["model.decoder.depth=4"], "a 4-layer decoder instead of 3"),
    "example": (["gen.loss_weighting=example"], "every example counts once in the loss, not every token"),
    "cosine": (["train.schedule=cosine"], "a cosine schedule instead of warmup-stable-decay"),
    "null4": (["model.fusion.null_tokens=4"], "4 learned null tokens in the cross-attention memory (attention "
              "can find nothing)"),
    "seed2": (["train.seed=2"], "a third training seed"),
    "regions": (["model.heads.region_weight=0.5", "model.heads.region_attributes=[color, shape, size]"],
                "region attribute heads on the patch tokens (colour, shape, size or none per patch, from the "
                "records' object boxes), loss weight 0.5"),
    "regions1": (["model.heads.region_weight=1.0", "model.heads.region_attributes=[color, shape, size]"],
                 "region attribute heads, loss weight 1.0"),
    "noregions": (["model.heads.region_weight=0.0"], "no region attribute heads"),
    "noextras": (["data.train=shapes:split=train,n=20000,seed=0,questions=7"],
                 "no training extras (each question type and the match task once per image)"),
    "counts+matches": (["data.train=shapes:split=train,n=20000,seed=0,questions=7,counts=2,matches=2"],
                       "2 more 'how many <shape>s' per image (one present shape, one absent) and both match "
                       "examples (the true caption and a near miss), no opposite yes/no questions"),
}
MATCH = {"name": "match", "objective": "lm", "tasks": ["match"], "batch_size": 64}


def base_streams(config: str) -> dict[str, dict | None]:
    """The config's streams by role: gen (the causal-LM stream named generate), ret (retrieval)."""
    tasks = yaml.safe_load(config_path(config).read_text())["multitask"]["tasks"]
    named = {t["name"]: t for t in tasks}
    return {"gen": dict(named["generate"]), "ret": dict(named["retrieval"]), "match": named.get("match")}


def variant(name: str, config: str = DEFAULT_CONFIG) -> tuple[list[str], str]:
    """The demo overrides and description of a '+'-joined variant name."""
    sets, notes, streams = [], [], base_streams(config)
    for change in name.split("+"):
        if change not in CHANGES:
            raise SystemExit(f"unknown change {change!r}; --list shows them")
        for item in CHANGES[change][0]:
            key, value = item.split("=", 1)
            if key.split(".")[0] in streams:
                stream = streams[key.split(".")[0]] = streams[key.split(".")[0]] or dict(MATCH)
                stream[key.split(".", 1)[1]] = yaml.safe_load(value)
            else:
                sets.append(item)
        notes.append(CHANGES[change][1])
    tasks = json.dumps([s for s in (streams["gen"], streams["match"], streams["ret"]) if s])  # JSON is YAML
    return [f"multitask.tasks={tasks}", *sets], "; ".join(notes)


TYPES = ("color", "shape", "size", "count", "exist", "position", "relation")


def row(name: str, metrics: dict, note: str) -> dict:
    test, novel = metrics["test"], metrics["novel"]
    by_type = test.get("vqa_accuracy_by_type", {})
    return {"variant": name, "note": note, "steps": metrics["train_steps"], "train_s": metrics["train_seconds"],
            "params_m": metrics["parameters"] / 1e6, "vqa": test.get("vqa_accuracy"),
            **{t: by_type.get(t) for t in TYPES}, "caption_em": test.get("caption_exact_match"),
            "match": test.get("match_accuracy"), "r1": test.get("retrieval_r1"),
            "novel_vqa": novel.get("vqa_accuracy"), "novel_caption_em": novel.get("caption_exact_match"),
            "novel_r1": novel.get("retrieval_r1")}


def markdown(rows: list[dict]) -> str:
    cols = ["variant", "steps", "vqa", *TYPES, "caption_em", "match", "r1", "novel_vqa", "novel_caption_em",
            "novel_r1"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", *[f"- `{r['variant']}`: {r['note']}" for r in rows]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="training wall time per variant")
    p.add_argument("--variants", default="baseline", help="comma-separated names (see --list)")
    p.add_argument("--eval-n", type=int, default=300, help="held-out test / novel images per variant")
    p.add_argument("--eval-seed", type=int, default=4242)
    p.add_argument("--out", default="runs/ablations")
    p.add_argument("--steps", type=int, default=None,
                   help="train every variant for this many steps instead of --minutes of wall time "
                        "(compares recipes at equal steps, immune to the machine's load)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="the base config, a YAML path or a packaged name such as demo (the shipped demo); "
                        "default: the demo before issue 13")
    p.add_argument("--list", action="store_true", help="print the changes and exit")
    a = p.parse_args()
    if a.list:
        for name, (sets, note) in CHANGES.items():
            print(f"{name:<14} {' '.join(sets) or '-':<60} {note}")
        return
    names = [n.strip() for n in a.variants.split(",") if n.strip()]
    for name in names:
        variant(name, a.config)  # unknown changes fail before anything trains
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "ablations.json"
    rows = [r for r in (json.loads(results.read_text()) if results.is_file() else []) if r["variant"] not in names]
    for name in names:
        sets, note = variant(name, a.config)
        if a.steps:
            sets += ["train.time_budget_minutes=null", f"train.max_steps={a.steps}"]
        start = time.perf_counter()
        metrics = run_demo(out / name, budget_minutes=a.minutes, config=a.config, overrides=sets,
                           eval_n=a.eval_n, eval_seed=a.eval_seed)
        rows.append({**row(name, metrics, note), "wall_s": time.perf_counter() - start,
                     "minutes": None if a.steps else a.minutes, "config": a.config})
        results.write_text(json.dumps(rows, indent=2) + "\n")
        (out / "ablations.md").write_text(markdown(rows) + "\n")
    print("\n" + markdown(rows))


if __name__ == "__main__":
    main()
