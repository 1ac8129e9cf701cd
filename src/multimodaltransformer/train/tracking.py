"""Experiment tracking: a JSONL log, TensorBoard scalars and an optional Weights & Biases run.

`Tracker.log(record, step)` writes the record as one line of `out/log.jsonl` (the source of
truth: every field, flushed per line so a killed run loses nothing) and its numeric scalars to
`out/tensorboard/` and, when asked, to W&B. Both are optional dependencies, imported lazily: a
missing package is one warning, never a failed run.

TensorBoard / W&B tags: nested dicts flatten to "a/b"; then
  - a validation record (one with a key starting "val_") goes under "val/": "val_loss" -> "val/loss",
    "val_loss/caption" -> "val/loss/caption", "caption_accuracy" -> "val/caption_accuracy";
  - throughput figures ("*_per_s", "mfu", anything under "throughput") under "throughput/";
  - the rest under "train/": "train/loss", "train/lr", "train/task_loss/vqa".
"""

from __future__ import annotations

import json
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


@dataclass
class TrackingConfig:
    tensorboard: bool = True
    wandb: bool = False  # needs `pip install wandb`; without it the run warns and goes on
    wandb_project: str = "multimodaltransformer"
    wandb_run_name: str | None = None


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric scalars of `record` (bools and strings dropped), nested dicts as "a/b"."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}/"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _is_throughput(key: str) -> bool:
    return key.startswith("throughput/") or key.endswith("_per_s") or key == "mfu"


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """The record's numeric scalars under their TensorBoard tags (rules in the module docstring)."""
    scalars = _flatten({k: v for k, v in record.items() if k != "step"})
    validation = any(k.startswith("val_") for k in record)
    tags = {}
    for key, value in scalars.items():
        if key.startswith("val_"):
            tag = "val/" + key[len("val_"):]
        elif validation:
            tag = "val/" + key
        elif _is_throughput(key):
            tag = "throughput/" + key.removeprefix("throughput/")
        else:
            tag = "train/" + key
        tags[tag] = value
    return tags


class Tracker:
    """Writes records to out/log.jsonl, TensorBoard and (optionally) W&B.

    `enabled=False` (non-zero distributed ranks) makes every method a no-op that creates no files.
    `run_config` (a plain dict) becomes the W&B run's config.
    """

    def __init__(self, out: str | Path, cfg: TrackingConfig | None = None, enabled: bool = True,
                 run_config: dict[str, Any] | None = None) -> None:
        self.out, self.cfg, self.enabled = Path(out), cfg or TrackingConfig(), enabled
        self._jsonl = self._writer = self._wandb = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._jsonl = (self.out / LOG_FILE).open("a")
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # torch raises this when the tensorboard package is missing
                warnings.warn("tensorboard is not installed; logging to JSONL only", stacklevel=2)
            else:
                self._writer = SummaryWriter(str(self.out / TENSORBOARD_DIR))
        if self.cfg.wandb:
            try:
                import wandb
            except ImportError:
                warnings.warn("wandb is not installed; logging to JSONL/TensorBoard only", stacklevel=2)
            else:
                wandb.init(project=self.cfg.wandb_project, name=self.cfg.wandb_run_name, config=run_config,
                           dir=str(self.out))
                self._wandb = wandb

    def log(self, record: dict[str, Any], step: int) -> None:
        """Append `record` to the JSONL log (with "step" added if absent) and its scalars to TensorBoard / W&B."""
        if not self.enabled:
            return
        line = record if "step" in record else {"step": step, **record}
        self._jsonl.write(json.dumps(line) + "\n")
        self._jsonl.flush()
        tags = scalar_tags(record)
        if self._writer is not None:
            for tag, value in tags.items():
                self._writer.add_scalar(tag, value, step)
            self._writer.flush()  # a killed run keeps its curves too (add_scalar only queues)
        if self._wandb is not None and tags:
            self._wandb.log(tags, step=step)

    def close(self) -> None:
        """Flush and close the JSONL file, the event file and the W&B run; safe to call twice."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_scalars(event_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars under `event_dir` (every event file in it): tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
