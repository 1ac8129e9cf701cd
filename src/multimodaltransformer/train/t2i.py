"""Training text-to-image (`kind: t2i` configs): the VQ-VAE tokenizer, then the prior on its codes,
then (optionally) a contrastive re-ranker, each within its share of one wall-time budget.

Stages run in order and each saves what it made before the next starts, so a failure later keeps
the earlier parts: OUT/tokenizer (a VQ-VAE: `mmt-vqvae`), OUT/model (the text-to-image model:
tokenizer + prior, `mmt-t2i`), OUT/reranker/model (the library's own multimodal model trained on
the contrastive retrieval objective by the ordinary trainer; copied to OUT/model/reranker, where
`mmt imagine` and `mmt serve` look for it), OUT/metrics.json (tokenizer PSNR and
codebook usage on held-out images, the prior's held-out loss). `mmt train CONFIG --out OUT` runs
the config's `stages`; `mmt demo t2i` runs all three.
Legend: N images, G grid side, S image side.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from ..config import ConfigError, apply_overrides, from_dict, load_yaml, save_json
from ..data.manifest import DataError, read_manifest
from ..data.sources import resolve_source
from ..modalities.image import ImageProcessor
from ..models.t2i import TextToImage, TextToImageConfig, caption_words
from ..models.vqvae import VQVAE
from ..nn.quantize import codebook_usage
from .config import config_path, default_cache_dir
from .schedule import lr_factor, param_groups

Stage = Literal["tokenizer", "prior", "reranker"]


@dataclass
class StageConfig:
    batch_size: int = 64
    lr: float = 1e-3
    max_steps: int = 100000  # a cap; the budget share usually decides
    warmup_steps: int = 50
    weight_decay: float = 0.0
    min_lr_ratio: float = 0.05
    grad_clip: float | None = 1.0  # max gradient norm (None: no clipping)
    schedule: Literal["cosine", "wsd"] = "cosine"  # wsd: the peak held, a linear decay at the end
    decay_fraction: float = 0.2  # wsd: the share of the steps spent decaying
    # tokenizer only: steps as a plain autoencoder before quantizing (the codebook then starts from
    # encoder outputs that already mean something, instead of from a random encoder's)
    ae_warmup_steps: int = 0
    # prior only: the loss weight of the codes under an object's box (the records' `objects`, as
    # ShapesWorld writes them) against the background's 1. ShapesWorld's noisy backgrounds are ~80% of
    # the codes and ~75% of the loss, entropy that says nothing of the caption; weighting the objects
    # up spends the steps on what the caption describes. 1: every code alike
    object_weight: float = 1.0
    budget_share: float = 0.5  # of time_budget_minutes


@dataclass
class RerankerStage:
    config: str = "t2i-reranker"  # a run config (YAML path or packaged name) for the ordinary trainer
    budget_share: float = 0.1


@dataclass
class T2IDataConfig:
    train: str = "shapes:split=train,n=20000,seed=0,tasks=caption"
    val: str = "shapes:split=val,n=300,seed=0,tasks=caption"
    cache_dir: str = field(default_factory=default_cache_dir)


@dataclass
class T2IRunConfig:
    kind: Literal["t2i"] = "t2i"
    stages: list[Stage] = field(default_factory=lambda: ["tokenizer", "prior"])
    data: T2IDataConfig = field(default_factory=T2IDataConfig)
    model: TextToImageConfig = field(default_factory=TextToImageConfig)
    tokenizer: StageConfig = field(default_factory=lambda: StageConfig(64, 2e-3, budget_share=0.35))
    prior: StageConfig = field(default_factory=lambda: StageConfig(32, 1e-3, weight_decay=0.05, budget_share=0.55))
    reranker: RerankerStage = field(default_factory=RerankerStage)
    # a trained VQ-VAE directory to use instead of training one (when `stages` lacks tokenizer)
    tokenizer_source: str | None = None
    time_budget_minutes: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.stages or any(s not in ("tokenizer", "prior", "reranker") for s in self.stages):
            raise ValueError(f"stages must be a non-empty list of tokenizer / prior / reranker, got {self.stages}")
        if self.time_budget_minutes <= 0:
            raise ValueError(f"time_budget_minutes must be positive, got {self.time_budget_minutes}")
        if self.prior.object_weight <= 0:
            raise ValueError(f"prior.object_weight must be positive, got {self.prior.object_weight}")


def is_t2i_config(path: str | Path) -> bool:
    return load_yaml(config_path(path)).get("kind") == "t2i"


def load_t2i_config(path: str | Path, overrides: list[str] | None = None) -> T2IRunConfig:
    p = config_path(path)
    try:
        return from_dict(T2IRunConfig, apply_overrides(load_yaml(p), overrides or []))
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"{p}: {e}") from e


# ---- data ------------------------------------------------------------------------------------------
def load_captioned(spec: str, cache_dir: str, size: int, progress: bool = True
                   ) -> tuple[torch.Tensor, list[str], list[list[list[float]]]]:
    """(uint8 images (N, 3, S, S), captions, each image's object boxes) of a source's caption rows
    (one per image); a box is [x0, y0, x1, y1] in fractions of the image, from the row's `objects`."""
    rows = [e for e in read_manifest(resolve_source(spec, cache_dir, progress)) if e.task == "caption"]
    if not rows:
        raise DataError(f"data source {spec!r} has no caption rows (text-to-image trains on image captions)")
    processor = ImageProcessor(image_size=size)  # decodes any mode, upright, resized: (3, S, S) uint8
    images = torch.stack([processor.to_uint8(e.image) for e in tqdm(rows, desc="load images", unit="img",
                                                                    disable=not progress, leave=False)])
    boxes = [[list(map(float, o["box"])) for o in e.meta.get("objects") or () if isinstance(o, dict) and o.get("box")]
             for e in rows]
    return images, [str(e.target) for e in rows], boxes


def object_mask(boxes: list[list[list[float]]], grid: int) -> torch.Tensor:
    """(N, G, G) bool: the code cells that overlap one of each image's boxes."""
    mask = torch.zeros(len(boxes), grid, grid, dtype=torch.bool)
    for i, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes:
            c0, r0 = int(x0 * grid), int(y0 * grid)
            mask[i, r0:max(r0 + 1, math.ceil(y1 * grid)), c0:max(c0 + 1, math.ceil(x1 * grid))] = True
    return mask


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(127.5).sub(1.0)  # uint8 -> [-1, 1]


def psnr(recon: torch.Tensor, target: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1]."""
    mse = ((recon.clamp(-1, 1) - target) / 2).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


# ---- one optimisation loop for both networks, fitted to a time budget ---------------------------------
def fit(params: Any, loss_fn: Any, cfg: StageConfig, seconds: float, desc: str, progress: bool,
        log: Path | None = None) -> dict[str, float]:
    """AdamW, warmup + cosine over the steps that fit in `seconds` (re-planned from the measured step time)."""
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, total, step, loss_avg = time.perf_counter(), cfg.max_steps, 0, float("nan")
    bar = tqdm(desc=desc, unit="step", disable=not progress, total=None)
    while step < total:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, cfg.warmup_steps, total, cfg.min_lr_ratio, cfg.schedule,
                                         cfg.decay_fraction)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{desc}: loss is {value} at step {step}")
        loss_avg = value if step == 1 else 0.95 * loss_avg + 0.05 * value
        if step == 10 or step % 50 == 0:  # fit the step count to the budget from the measured pace
            elapsed = time.perf_counter() - start
            total = min(cfg.max_steps, max(step + 1, int(step * seconds / elapsed)))
            bar.total = total
        bar.update(1)
        bar.set_postfix(loss=f"{loss_avg:.4f}", refresh=False)
        if log is not None and step % 50 == 0:
            with log.open("a") as f:
                f.write(json.dumps({"stage": desc, "step": step, "loss": round(loss_avg, 5),
                                    "seconds": round(time.perf_counter() - start, 1)}) + "\n")
    bar.close()
    return {"steps": step, "seconds": round(time.perf_counter() - start, 1), "final_loss": round(loss_avg, 5)}


# ---- stages ----------------------------------------------------------------------------------------
def train_tokenizer(run: T2IRunConfig, images: torch.Tensor, seconds: float, out: Path, progress: bool) -> VQVAE:
    torch.manual_seed(run.seed)
    # channels-last: oneDNN's faster convolution layout on CPU (a training step here: 1.1x the speed)
    vq = VQVAE(run.model.vqvae).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(run.seed)
    B = run.tokenizer.batch_size

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(images), (B,), generator=gen)
        x = to_pixels(images[idx]).contiguous(memory_format=torch.channels_last)
        return vq(x, quantize=step >= run.tokenizer.ae_warmup_steps).loss

    vq.train()
    stats = fit(param_groups(vq, run.tokenizer.weight_decay), loss_fn, run.tokenizer, seconds, "tokenizer",
                progress, out / "log.jsonl")
    vq.eval().save_pretrained(out / "tokenizer")
    (out / "tokenizer" / "train_summary.json").write_text(json.dumps(stats) + "\n")
    return vq


@torch.no_grad()
def tokenizer_metrics(vq: VQVAE, images: torch.Tensor, batch: int = 256) -> dict[str, Any]:
    """Reconstruction PSNR and codebook usage on held-out images."""
    vq.eval()
    scores, codes = [], []
    for i in range(0, len(images), batch):
        x = to_pixels(images[i:i + batch])
        c = vq.encode(x)
        codes.append(c)
        scores.append(psnr(vq.decode(c), x) * len(x))
    return {"psnr": round(sum(scores) / len(images), 2),
            **codebook_usage(torch.cat(codes), vq.codebook_size), "images": len(images)}


@torch.no_grad()
def encode_all(vq: VQVAE, images: torch.Tensor, progress: bool, batch: int = 256) -> torch.Tensor:
    vq.eval()
    return torch.cat([vq.encode(to_pixels(images[i:i + batch]))
                      for i in tqdm(range(0, len(images), batch), desc="encode images", disable=not progress,
                                    leave=False)])


def check_boxes(run: T2IRunConfig, objects: torch.Tensor | None) -> None:
    """prior.object_weight needs the objects' boxes: an error before any training when there are none."""
    if run.prior.object_weight != 1.0 and (objects is None or not objects.any()):
        raise ConfigError(f"prior.object_weight {run.prior.object_weight} needs caption rows whose `objects` carry a "
                          "box ([x0, y0, x1, y1] fractions, as ShapesWorld writes them); this data has none: "
                          "set prior.object_weight=1")


def train_prior(run: T2IRunConfig, vq: VQVAE, captions: list[str], codes: torch.Tensor, seconds: float,
                out: Path, progress: bool, objects: torch.Tensor | None = None) -> TextToImage:
    """The prior on (caption, code grid) pairs; `objects` (N, G, G) marks the codes under an object's
    box, weighted `prior.object_weight` in the loss."""
    weights = None
    if run.prior.object_weight != 1.0:
        check_boxes(run, objects)
        weights = 1.0 + (run.prior.object_weight - 1.0) * objects.float()
    torch.manual_seed(run.seed)
    cfg = replace(run.model, words=caption_words(captions), vqvae=vq.config)
    model = TextToImage(cfg)
    model.vqvae.load_state_dict(vq.state_dict())
    model.vqvae.requires_grad_(False)
    text = model.tokenize(captions)  # (N, T)
    gen = torch.Generator().manual_seed(run.seed + 1)
    B = run.prior.batch_size

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(text), (B,), generator=gen)
        return model.loss(text[idx], codes[idx], generator=gen, weights=None if weights is None else weights[idx])

    model.train()
    model.vqvae.eval()
    # every parameter but the frozen tokenizer's: the backbone, and in block mode the depth head and
    # the block grid's row / column embeddings
    stats = fit(param_groups(model, run.prior.weight_decay), loss_fn, run.prior, seconds, "prior", progress,
                out / "log.jsonl")
    model.eval().save_pretrained(out / "model")
    (out / "model" / "train_summary.json").write_text(json.dumps(stats) + "\n")
    return model


@torch.no_grad()
def prior_loss(model: TextToImage, captions: list[str], codes: torch.Tensor, batch: int = 128) -> float:
    """Held-out next-code loss (nats per code), captions kept."""
    model.eval()
    dropout, model.config.caption_dropout = model.config.caption_dropout, 0.0
    try:
        losses = [float(model.loss(model.tokenize(captions[i:i + batch]), codes[i:i + batch])) * len(codes[i:i + batch])
                  for i in range(0, len(codes), batch)]
    finally:
        model.config.caption_dropout = dropout
    return round(sum(losses) / len(codes), 4)


def train_reranker(run: T2IRunConfig, seconds: float, out: Path) -> Path:
    from .config import load_run_config
    from .trainer import train

    cfg = load_run_config(run.reranker.config, [f"train.time_budget_minutes={seconds / 60:.4f}",
                                                f"data.cache_dir={run.data.cache_dir}"])
    train(cfg, out / "reranker")
    return out / "reranker" / "model"


def train_t2i(run: T2IRunConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Run the config's stages within `time_budget_minutes`; returns (and writes) OUT/metrics.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_json(run, out / "run_config.json")
    (out / "log.jsonl").unlink(missing_ok=True)
    t0 = time.perf_counter()
    budget = run.time_budget_minutes * 60
    size = run.model.vqvae.image_size
    images, captions, boxes = load_captioned(run.data.train, run.data.cache_dir, size, progress)
    val_images, val_captions, _ = load_captioned(run.data.val, run.data.cache_dir, size, progress)
    objects = object_mask(boxes, run.model.vqvae.grid) if run.prior.object_weight != 1.0 else None
    if "prior" in run.stages:
        check_boxes(run, objects)
    # the data's time comes out of the budget, shared by the stages in proportion
    shares = {s: getattr(run, s).budget_share for s in run.stages}
    left = budget - (time.perf_counter() - t0)
    seconds = {s: left * w / sum(shares.values()) for s, w in shares.items()}
    metrics: dict[str, Any] = {"train_images": len(images)}

    if "tokenizer" in run.stages:
        vq = train_tokenizer(run, images, seconds["tokenizer"], out, progress)
    elif run.tokenizer_source:
        vq = VQVAE.from_pretrained(run.tokenizer_source)
    else:
        raise ConfigError("stages lack `tokenizer`: give tokenizer_source (a trained VQ-VAE directory)")
    metrics["tokenizer"] = tokenizer_metrics(vq, val_images)
    tqdm.write(f"tokenizer: PSNR {metrics['tokenizer']['psnr']:.2f} dB, perplexity "
               f"{metrics['tokenizer']['perplexity']:.1f}, {metrics['tokenizer']['codes_used']} of "
               f"{vq.codebook_size} codes used on {len(val_images)} held-out images")
    if "prior" in run.stages:
        # the stages after this one get what this one leaves (encoding and the tokenizer's overrun)
        codes = encode_all(vq, images, progress)
        later = sum(shares[s] for s in run.stages if s == "reranker")
        left = budget - (time.perf_counter() - t0)
        prior_s = left * shares["prior"] / (shares["prior"] + later)
        model = train_prior(run, vq, captions, codes, prior_s, out, progress, objects)
        metrics["prior"] = {"val_loss": prior_loss(model, val_captions, encode_all(vq, val_images, False)),
                            **json.loads((out / "model" / "train_summary.json").read_text())}
        tqdm.write(f"prior: held-out loss {metrics['prior']['val_loss']:.3f} nats/code after "
                   f"{metrics['prior']['steps']} steps")
    if "reranker" in run.stages:
        left = budget - (time.perf_counter() - t0)
        metrics["reranker"] = str(train_reranker(run, max(30.0, left), out))
        if (out / "model").is_dir():  # the model directory carries its re-ranker (`mmt imagine MODEL` finds it)
            shutil.copytree(out / "reranker" / "model", out / "model" / "reranker", dirs_exist_ok=True)
    metrics["train_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
