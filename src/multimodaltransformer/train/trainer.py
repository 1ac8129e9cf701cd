"""The training loop: AdamW, warmup + cosine, clipping, validation, atomic checkpoints, resume.

Data order is a seeded permutation per epoch, and the position in it is saved in each
checkpoint, so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import save_json
from ..data.collate import ManifestDataset, TrainCollator
from ..data.manifest import DataError, Example, read_manifest
from ..data.sources import resolve_source
from ..evaluate import predict, score
from ..modalities.text import TextTokenizer
from ..models.multimodal import MultimodalTransformerModel
from ..nn.lora import count_parameters
from .checkpoint import atomic_dir_write, load_latest, save_checkpoint
from .config import RunConfig

CALIBRATION_STEPS = 15  # steps timed before fitting max_steps to a time budget


class TimeBudget:
    """Fits the step count to a wall-time budget: planned after a few timed steps, then
    re-planned after each validation, whose cost is then known."""

    def __init__(self, seconds: float, max_steps: int, eval_every: int) -> None:
        self.seconds, self.max_steps, self.eval_every = seconds, max_steps, eval_every
        self.start = time.perf_counter()
        self.step_time, self.steps, self.eval_time, self.evals = 0.0, 0, 0.0, 0

    def plan(self, step: int) -> int:
        per_step = self.step_time / max(1, self.steps)
        eval_cost = self.eval_time / self.evals if self.evals else 0.0
        remaining = self.seconds - (time.perf_counter() - self.start) - eval_cost  # the final validation
        n = int(remaining / (per_step + eval_cost / self.eval_every))
        return max(step + 1, min(self.max_steps, step + n))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and position/type vectors (1-D or 3-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() == 2 or p.dim() == 4 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _select(examples: list[Example], tasks: list[str] | None, source: str) -> list[Example]:
    if tasks is None:
        return examples
    kept = [e for e in examples if e.task in tasks]
    if not kept:
        raise DataError(f"{source}: no examples of tasks {tasks}")
    return kept


class Trainer:
    def __init__(self, run: RunConfig, out: str | Path, progress: bool = True) -> None:
        self.run, self.out, self.progress = run, Path(out), progress
        self.ckpt_dir = self.out / "checkpoints"

    def _log(self, record: dict[str, Any]) -> None:
        with (self.out / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _setup(self, resume: bool) -> None:
        run, t = self.run, self.run.train
        if t.threads:
            torch.set_num_threads(t.threads)
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        d = run.data
        self.train_examples = _select(
            read_manifest(resolve_source(d.train, d.cache_dir, self.progress), skip_bad=d.skip_bad), d.tasks, d.train)
        self.val_examples = (_select(read_manifest(resolve_source(d.val, d.cache_dir, self.progress),
                                                   skip_bad=d.skip_bad), d.tasks, d.val) if d.val else [])
        self.model = self._build_model(resume)
        tok = self.model.tokenizer
        save_json(self.run, self.out / "run_config.json")
        max_text = self.model.max_seq_len - self.model.num_media_tokens
        self.train_set = ManifestDataset(self.train_examples, tok, self.model.image_processor, max_text, d.skip_bad,
                                         pack=d.pack)
        self.collate = TrainCollator(tok.pad_id, self.model.image_processor)
        self.opt = torch.optim.AdamW(_param_groups(self.model, t.weight_decay), lr=t.lr,
                                     betas=(t.beta1, t.beta2), fused=False)
        self.step, self.epoch, self.pos, self.total_steps = 0, 0, 0, t.max_steps
        self.calibrated = False  # True once a resumed budgeted run restores its planned step count
        if resume:
            state = load_latest(self.ckpt_dir, self.model, self.opt)
            if state is None:
                tqdm.write(f"no checkpoint under {self.ckpt_dir}; starting from scratch")
            else:
                self.step, self.epoch, self.pos = state["step"], state["epoch"], state["pos"]
                if t.time_budget_minutes is not None:  # keep the step count the budget fixed
                    self.total_steps, self.calibrated = state["total_steps"], True
                random.setstate(_tuple(state["python_rng"]))
                np.random.set_state(_np_state(state["numpy_rng"]))
                tqdm.write(f"resumed from {state['path']} at step {self.step}")

    def _build_model(self, resume: bool) -> MultimodalTransformerModel:
        """The model of `run.compose` (pretrained parts), else a fresh one with a tokenizer trained
        on the training text (kept across resumes)."""
        run = self.run
        if run.compose is not None:
            from ..models.composed import ComposedModel

            return ComposedModel.compose(run.compose)
        tok_path = self.out / "tokenizer.json"
        if resume and tok_path.is_file():
            tok = TextTokenizer.from_pretrained(tok_path)
        else:
            texts = [s for e in self.train_examples for s in (e.prompt, e.target, e.text) if s]
            tok = TextTokenizer.train(texts, vocab_size=run.data.tokenizer_vocab_size)
            tok.save_pretrained(self.out)
        mcfg = replace(run.model, decoder=replace(run.model.decoder, vocab_size=tok.vocab_size))
        self.run = replace(run, model=mcfg)
        model = MultimodalTransformerModel(mcfg)
        model.tokenizer = tok
        return model

    def _batches(self):
        """Endless, resumable batches: epoch e visits a permutation seeded by (seed, e)."""
        n, B = len(self.train_set), self.run.train.batch_size
        if n < B:
            raise DataError(f"{n} training examples is fewer than one batch of {B}")
        while True:
            g = torch.Generator().manual_seed(self.run.train.seed * 100_003 + self.epoch)
            perm = torch.randperm(n, generator=g).tolist()
            while self.pos + B <= n:
                idx = perm[self.pos:self.pos + B]
                self.pos += B
                yield self.collate([self.train_set[i] for i in idx])
            self.epoch, self.pos = self.epoch + 1, 0

    def _state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "total_steps": self.total_steps,
                "python_rng": random.getstate(), "numpy_rng": _np_list(np.random.get_state())}

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        if not self.val_examples:
            return {}
        model, t = self.model, self.run.train
        model.eval()
        max_text = model.max_seq_len - model.num_media_tokens
        val_set = ManifestDataset(self.val_examples[:1024], model.tokenizer, model.image_processor, max_text,
                                  pack=self.run.data.pack)
        losses = []
        for s in range(0, len(val_set), t.batch_size):
            batch = self.collate([val_set[i] for i in range(s, min(s + t.batch_size, len(val_set)))])
            losses.append(model(batch).loss.item())
        by_task: dict[str, list[Example]] = {}
        for e in self.val_examples:
            if len(by_task.setdefault(e.task, [])) < t.eval_examples:
                by_task[e.task].append(e)
        subset = [e for es in by_task.values() for e in es]
        max_new = max(len(model.tokenizer.encode(e.target or "")) for e in subset) + 2
        metrics = score(subset, predict(model, subset, batch_size=64, max_new_tokens=max_new))
        model.train()
        return {"val_loss": sum(losses) / len(losses), **metrics}

    def _replan(self, budget: TimeBudget, bar: tqdm) -> None:
        total = budget.plan(self.step)
        if total != self.total_steps:
            self.total_steps = bar.total = total
            per_step = budget.step_time / budget.steps
            tqdm.write(f"time budget {budget.seconds / 60:g} min at {per_step:.3f} s/step: {total} steps")

    def fit(self, resume: bool = False) -> MultimodalTransformerModel:
        self.out.mkdir(parents=True, exist_ok=True)
        self._setup(resume)
        t, model = self.run.train, self.model
        trainable, n_params = count_parameters(model)
        tqdm.write(f"model: {n_params / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable); {len(self.train_set.examples)} training examples "
                   f"in {len(self.train_set)} sequences; "
                   f"vocab {model.tokenizer.vocab_size}")
        model.train()
        batches = self._batches()
        for g in self.opt.param_groups:
            g["lr"] = t.lr * lr_factor(self.step, t.warmup_steps, self.total_steps, t.min_lr_ratio)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not self.progress,
                   unit="step", dynamic_ncols=True, mininterval=1 if sys.stderr.isatty() else 15)
        started = time.perf_counter()
        budget = None
        if t.time_budget_minutes is not None and not self.calibrated:
            budget = TimeBudget(t.time_budget_minutes * 60, t.max_steps, t.eval_every)
        calib_from = self.step
        window_t, window_n = time.perf_counter(), 0
        while self.step < self.total_steps:
            step_start = time.perf_counter()
            batch = next(batches)
            loss = model(batch).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step}; stopping")
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.step += 1
            window_n += sum(len(tasks) for tasks in batch["tasks"])
            for g in self.opt.param_groups:
                g["lr"] = t.lr * lr_factor(self.step, t.warmup_steps, self.total_steps, t.min_lr_ratio)
            if budget is not None and self.step - calib_from > 3:  # the first steps run slow: skip them
                budget.step_time += time.perf_counter() - step_start
                budget.steps += 1
                if budget.steps == CALIBRATION_STEPS:
                    self._replan(budget, bar)
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - window_t
                rate = window_n / max(elapsed, 1e-9)
                window_t, window_n = time.perf_counter(), 0
                lr = self.opt.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", ex_s=f"{rate:.0f}")
                self._log({"step": self.step, "loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm),
                           "examples_per_s": rate, "elapsed_s": time.perf_counter() - started})
            if self.step % t.eval_every == 0 or self.step == self.total_steps:
                eval_start = time.perf_counter()
                metrics = self.validate()
                if budget is not None and self.step < self.total_steps:
                    budget.eval_time += time.perf_counter() - eval_start
                    budget.evals += 1
                    self._replan(budget, bar)
                if metrics:
                    self._log({"step": self.step, **metrics})
                    brief = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
                    tqdm.write(f"step {self.step}: {brief}")
            if self.step % t.save_every == 0 or self.step == self.total_steps:
                save_checkpoint(self.ckpt_dir, self.step, model, self.opt, self._state(), t.keep_last)
        bar.close()
        atomic_dir_write(self.out / "model", model.save_pretrained)
        summary = {"steps": self.step, "train_seconds": time.perf_counter() - started, "parameters": n_params}
        (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        tqdm.write(f"saved {self.out / 'model'} ({summary['train_seconds']:.0f}s)")
        return model


def _np_list(state: tuple) -> list:
    return [state[0], state[1].tolist(), *state[2:]]


def _np_state(state: list) -> tuple:
    return (state[0], np.array(state[1], dtype=np.uint32), *state[2:])


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


def train(run: RunConfig, out: str | Path, resume: bool = False, progress: bool = True) -> MultimodalTransformerModel:
    """Train `run` into `out` (checkpoints/, model/, log.jsonl); see `Trainer`."""
    return Trainer(run, out, progress).fit(resume)
