"""The training loop: AdamW, warmup + cosine, clipping, validation, atomic checkpoints, resume.

A run trains one or several task streams (tasks.py); each step draws one. Every stream's data
order is a seeded permutation per epoch, and the positions are saved in each checkpoint, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import save_json
from ..config import ConfigError
from ..data.manifest import DataError, Example, read_manifest
from ..data.sources import resolve_source
from ..evaluate import evaluate
from ..modalities.text import TextTokenizer
from ..models.multimodal import MultimodalTransformerModel
from ..nn.lora import count_parameters
from .checkpoint import atomic_dir_write, load_latest, save_checkpoint
from .config import RunConfig
from .tasks import MultiTaskConfig, TaskConfig, TaskStream, class_labels, draw_stream, sampling_weights, select, stream_loss

CALIBRATION_STEPS = 15  # steps timed before fitting max_steps to a time budget
REPLAN_EVERY = 50  # then the plan follows the measured step time every this many steps


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


class Trainer:
    def __init__(self, run: RunConfig, out: str | Path, progress: bool = True) -> None:
        self.run, self.out, self.progress = run, Path(out), progress
        self.ckpt_dir = self.out / "checkpoints"

    def _log(self, record: dict[str, Any]) -> None:
        with (self.out / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _multitask(self) -> MultiTaskConfig:
        """The run's task streams; without `multitask`, one causal-LM stream over `data`."""
        if self.run.multitask is not None:
            return self.run.multitask
        return MultiTaskConfig([TaskConfig("lm", "lm", tasks=self.run.data.tasks)])

    def _read(self, source: str) -> list[Example]:
        d = self.run.data
        if source not in self._manifests:
            self._manifests[source] = read_manifest(resolve_source(source, d.cache_dir, self.progress),
                                                    skip_bad=d.skip_bad)
        return self._manifests[source]

    def _setup(self, resume: bool) -> None:
        t, d = self.run.train, self.run.data
        if t.threads:
            torch.set_num_threads(t.threads)
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        self._manifests: dict[str, list[Example]] = {}
        mt = self._multitask()
        self.streams = []
        for cfg in mt.tasks:
            train_src, val_src = cfg.data or d.train, cfg.val if cfg.val is not None else d.val
            train_ex = select(self._read(train_src), cfg.tasks, train_src)
            val_ex = select(self._read(val_src), cfg.tasks, val_src) if val_src else []
            self.streams.append(TaskStream(cfg, train_ex, val_ex, cfg.batch_size or t.batch_size))
        self.train_examples = list({id(e): e for s in self.streams for e in s.examples}.values())
        self.val_examples = list({id(e): e for s in self.streams for e in s.val_examples}.values())
        self.model = self._build_model(resume)
        save_json(self.run, self.out / "run_config.json")
        max_text = self.model.max_seq_len - self.model.num_media_tokens
        for stream in self.streams:
            stream.build(self.model, max_text, d.skip_bad, d.pack)
            if len(stream.dataset) < stream.batch_size:
                raise DataError(f"task {stream.cfg.name}: {len(stream.dataset)} training items is fewer than one "
                                f"batch of {stream.batch_size}")
        self.probs = sampling_weights([len(s.examples) for s in self.streams], mt.sampling, mt.temperature)
        self.sampling = mt.sampling
        self.opt = torch.optim.AdamW(_param_groups(self.model, t.weight_decay), lr=t.lr,
                                     betas=(t.beta1, t.beta2), fused=False)
        self.step, self.total_steps = 0, t.max_steps
        self.calibrated = False  # True once a resumed budgeted run restores its planned step count
        if resume:
            state = load_latest(self.ckpt_dir, self.model, self.opt)
            if state is None:
                tqdm.write(f"no checkpoint under {self.ckpt_dir}; starting from scratch")
            else:
                self.step = state["step"]
                for stream in self.streams:
                    stream.load_state(state["streams"][stream.cfg.name])
                if t.time_budget_minutes is not None:  # keep the step count the budget fixed
                    self.total_steps, self.calibrated = state["total_steps"], True
                random.setstate(_tuple(state["python_rng"]))
                np.random.set_state(_np_state(state["numpy_rng"]))
                tqdm.write(f"resumed from {state['path']} at step {self.step}")

    def _build_model(self, resume: bool) -> MultimodalTransformerModel:
        """The model of `run.compose` (pretrained parts), else a fresh one with a tokenizer trained
        on the training text (kept across resumes)."""
        run = self.run
        objectives = {s.cfg.objective for s in self.streams}
        if run.compose is not None:
            if objectives - {"lm", "mlm"}:
                raise ConfigError(f"compose: a composed model trains lm / mlm objectives only, not {sorted(objectives)}")
            from ..models.composed import ComposedModel

            return ComposedModel.compose(run.compose)
        tok_path = self.out / "tokenizer.json"
        if resume and tok_path.is_file():
            tok = TextTokenizer.from_pretrained(tok_path)
        else:
            texts = [s for e in self.train_examples for s in (e.prompt, e.target, e.text) if s]
            tok = TextTokenizer.train(texts, vocab_size=run.data.tokenizer_vocab_size)
            tok.save_pretrained(self.out)
        heads = run.model.heads
        labels = class_labels([e for s in self.streams if s.cfg.objective == "classify" for e in s.examples])
        heads = replace(heads, classes={**heads.classes, **labels}, itm=heads.itm or "itm" in objectives,
                        contrastive_dim=heads.contrastive_dim or (64 if "contrastive" in objectives else None))
        mcfg = replace(run.model, decoder=replace(run.model.decoder, vocab_size=tok.vocab_size), heads=heads)
        self.run = replace(run, model=mcfg)
        model = MultimodalTransformerModel(mcfg)
        model.tokenizer = tok
        return model

    def _state(self) -> dict[str, Any]:
        return {"streams": {s.cfg.name: s.state() for s in self.streams}, "total_steps": self.total_steps,
                "python_rng": random.getstate(), "numpy_rng": _np_list(np.random.get_state())}

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Validation loss per stream, and each task's figures on up to `eval_examples` examples."""
        if not self.val_examples:
            return {}
        model, t = self.model, self.run.train
        model.eval()
        max_text = model.max_seq_len - model.num_media_tokens
        result: dict[str, Any] = {}
        for stream in self.streams:
            if not stream.val_examples:
                continue
            val = TaskStream(stream.cfg, stream.val_examples[:1024], [], stream.batch_size)
            with warnings.catch_warnings():  # e.g. a label never seen in training: no loss for it
                warnings.simplefilter("ignore")
                val.build(model, max_text, skip_bad=True, pack=self.run.data.pack)
            g = torch.Generator().manual_seed(t.seed)
            losses = []
            for s in range(0, len(val.dataset), val.batch_size):
                items = [val.dataset[i] for i in range(s, min(s + val.batch_size, len(val.dataset)))]
                if len(items) < 2 and stream.cfg.objective in ("contrastive", "itm"):
                    continue
                losses.append(stream_loss(model, stream.cfg, val.collate(items), g).item())
            if losses:
                result[f"val_loss/{stream.cfg.name}"] = sum(losses) / len(losses)
        losses = [v for k, v in result.items() if k.startswith("val_loss/")]
        if losses:
            result["val_loss"] = sum(losses) / len(losses)
        by_task: dict[str, list[Example]] = {}
        retrieval = sorted({task for s in self.streams if s.cfg.objective == "contrastive"
                            for task in (s.cfg.tasks or {e.task for e in s.examples})})
        for e in self.val_examples:
            n = 4 * t.eval_examples if e.task in retrieval else t.eval_examples  # retrieval needs a gallery
            if len(by_task.setdefault(e.task, [])) < n:
                by_task[e.task].append(e)
        subset = [e for es in by_task.values() for e in es]
        metrics, _ = evaluate(model, subset, retrieval_tasks=retrieval)
        model.train()
        return {**result, **{k: v for k, v in metrics.items() if not k.endswith("_report")}}

    def _replan(self, budget: TimeBudget, bar: tqdm) -> None:
        total = budget.plan(self.step)
        if total != self.total_steps:
            report = abs(total - self.total_steps) > 0.05 * total or budget.steps == CALIBRATION_STEPS
            self.total_steps = bar.total = total
            if report:
                per_step = budget.step_time / budget.steps
                tqdm.write(f"time budget {budget.seconds / 60:g} min at {per_step:.3f} s/step: {total} steps")

    def fit(self, resume: bool = False) -> MultimodalTransformerModel:
        self.out.mkdir(parents=True, exist_ok=True)
        self._setup(resume)
        t, model = self.run.train, self.model
        trainable, n_params = count_parameters(model)
        tqdm.write(f"model: {n_params / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable); "
                   f"vocab {model.tokenizer.vocab_size}")
        for stream, p in zip(self.streams, self.probs):
            tqdm.write(f"  task {stream.cfg.name} ({stream.cfg.objective}, weight {stream.cfg.weight:g}, "
                       f"p={p:.2f}): {len(stream.examples)} examples in {len(stream.dataset)} items")
        model.train()
        iters = [s.batches(t.seed + 7919 * k) for k, s in enumerate(self.streams)]
        last_loss: dict[str, float] = {}
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
            k = draw_stream(self.step, t.seed, self.probs, self.sampling)
            stream = self.streams[k]
            batch = next(iters[k])
            g = torch.Generator().manual_seed(t.seed * 1_000_033 + self.step)  # masking / negatives
            loss = stream_loss(model, stream.cfg, batch, g)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {self.step} (task {stream.cfg.name}); stopping")
            last_loss[stream.cfg.name] = loss.item()
            (loss * stream.cfg.weight).backward()
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
                if budget.steps == CALIBRATION_STEPS or (budget.steps > CALIBRATION_STEPS and
                                                         budget.steps % REPLAN_EVERY == 0):
                    self._replan(budget, bar)  # step times drift (warm-up, other load): follow them
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - window_t
                rate = window_n / max(elapsed, 1e-9)
                window_t, window_n = time.perf_counter(), 0
                lr = self.opt.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", ex_s=f"{rate:.0f}")
                record = {"step": self.step, "loss": loss.item(), "task": stream.cfg.name, "lr": lr,
                          "grad_norm": float(grad_norm), "examples_per_s": rate,
                          "elapsed_s": time.perf_counter() - started}
                if len(self.streams) > 1:
                    record["task_loss"] = dict(last_loss)
                self._log(record)
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
