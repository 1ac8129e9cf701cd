"""The training loop: AdamW, warmup + cosine, clipping, validation, atomic checkpoints, resume.

A run trains one or several task streams (tasks.py); each step draws one. Every stream's data
order is a seeded permutation per epoch, and the positions are saved in each checkpoint, so a
resumed run sees exactly the batches an uninterrupted one would.

`train.batch_size` is the global batch. Under torchrun it is cut into processes x grad_accum
micro-batches; each loss is scaled by what it averages over (tokens, rows) against the global
count, so the summed, averaged gradient equals one process's on the whole batch: 1 x 8 and
2 x 4 follow the same trajectory up to float noise. Rank 0 alone writes logs and checkpoints
(FSDP: every rank its shard).
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import save_json, to_dict
from ..data.manifest import DataError, Example
from ..evaluate import evaluate
from ..modalities.base import input_keys
from ..models.multimodal import MultimodalTransformerModel
from ..nn.lora import count_parameters, merge_lora
from ..nn.transformer import TransformerStack
from ..nn.blocks import TransformerBlock
from . import distributed as dd
from .checkpoint import atomic_dir_write, clean_partial, load_latest, restore_rng, rng_state, save_checkpoint
from .refit import refit_streams
from .config import RunConfig
from .build import build_model
from .data import RunData
from .tasks import (MultiTaskConfig, ObjectiveModule, TaskConfig, TaskStream, draw_stream, loss_units,
                    sampling_weights, stream_loss)
from .schedule import CALIBRATION_STEPS, REPLAN_EVERY, TimeBudget, lr_factor, param_groups
from .throughput import DTYPES, resolve_precision, step_probe, throughput_report
from .tracking import Tracker


class Trainer:
    def __init__(self, run: RunConfig, out: str | Path, progress: bool = True) -> None:
        self.run, self.out, self.progress = run, Path(out), progress
        self.ckpt_dir = self.out / "checkpoints"

    def _multitask(self) -> MultiTaskConfig:
        """The run's task streams; without `multitask`, one causal-LM stream over `data`."""
        if self.run.multitask is not None:
            return self.run.multitask
        return MultiTaskConfig([TaskConfig("lm", "lm", tasks=self.run.data.tasks)])

    def _setup(self, resume: bool) -> None:
        t, d = self.run.train, self.run.data
        if t.threads:
            torch.set_num_threads(t.threads)
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        self.data = RunData(d, self.dist.rank, self.dist.world, self.progress and self.dist.main)
        self.skipped = self.data.skipped
        self._stream_used: dict[str, int] = {}
        mt = self._multitask()
        self.streams = self.data.streams(mt, t.batch_size)
        self.train_examples = list({id(e): e for s in self.streams for e in s.examples}.values())
        self.val_examples = list({id(e): e for s in self.streams for e in s.val_examples}.values())
        self.model, self.run = build_model(self.run, self.streams, self.out, resume, self.dist)
        if self.dist.main:
            save_json(self.run, self.out / "run_config.json")
        max_text = self.model.max_seq_len - self.model.num_media_tokens
        for stream in self.streams:
            stream.build(self.model, max_text, d.skip_bad, d.pack)
            if stream.stream_urls is not None:
                continue  # streamed: unusable samples are counted as they come
            self.data.check_bad(f"task {stream.cfg.name}", stream.dataset.skipped, len(stream.dataset.examples))
            if len(stream.dataset) < stream.batch_size:
                raise DataError(f"task {stream.cfg.name}: {len(stream.dataset)} training items is fewer than one "
                                f"batch of {stream.batch_size}")
        # sharded sources give each rank its own examples: weights from the global counts, so every
        # rank draws the same stream at each step
        counts = [sum(c) for c in zip(*dd.all_objects([len(s.examples) for s in self.streams], self.dist))]
        self.probs = sampling_weights(counts, mt.sampling, mt.temperature, [s.cfg.weight for s in self.streams],
                                      [s.cfg.share for s in self.streams])
        self.sampling = mt.sampling
        self.model.to(self.dist.device)
        if t.activation_checkpointing:
            for m in self.model.modules():
                if isinstance(m, TransformerStack):
                    m.checkpointing = True
        self.objective: nn.Module | None = None
        if self.dist.enabled and t.parallel == "fsdp":
            self.objective = ObjectiveModule(self.model)
            dd.fully_shard_model(self.objective, [m for m in self.model.modules() if isinstance(m, TransformerBlock)])
        if t.compile and self.objective is not None:
            warnings.warn("train.compile is not applied under FSDP in this version; training runs eager", stacklevel=2)
        self.runner = torch.compile(self.model) if t.compile and self.objective is None else self.model
        self.opt = torch.optim.AdamW(param_groups(self.model, t.weight_decay), lr=t.lr,
                                     betas=(t.beta1, t.beta2), fused=False)
        # rank 0's pick for every rank: measured speeds near the threshold could differ per process
        probe = step_probe(self.model, self.streams[0], self.dist.device, self.opt, t.seed) if t.precision == "auto" \
            else None
        self.precision = str(dd.all_objects(resolve_precision(t.precision, self.dist.device, probe), self.dist)[0])
        if t.precision == "auto":
            self._say(f"precision auto: {self.precision} on {self.dist.device.type}")
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=self.precision == "fp16")
        self.step, self.total_steps, self.skipped_steps = 0, t.max_steps, 0
        self.calibrated = False  # True once a resumed budgeted run restores its planned step count
        if resume:
            clean_partial(self.ckpt_dir)
            state = load_latest(self.ckpt_dir, self.model, self.opt, self.dist)
            if state is None:
                self._say(f"no checkpoint under {self.ckpt_dir}; starting from scratch")
            else:
                self.step = state["step"]
                for stream in self.streams:
                    stream.load_state(state["streams"][stream.cfg.name])
                if t.time_budget_minutes is not None:  # keep the step count the budget fixed
                    self.total_steps, self.calibrated = state["total_steps"], True
                self.skipped_steps = state.get("skipped_steps", 0)
                if state.get("scaler"):
                    self.scaler.load_state_dict(state["scaler"])
                restore_rng(state)
                self._say(f"resumed from {state['path']} at step {self.step}")

    def _say(self, message: str) -> None:
        if self.dist.main:
            tqdm.write(message)

    def _state(self) -> dict[str, Any]:
        return {"streams": {s.cfg.name: s.state() for s in self.streams}, "total_steps": self.total_steps,
                "skipped_steps": self.skipped_steps, "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                **rng_state()}

    def _plain_model(self) -> MultimodalTransformerModel:
        """The model with full tensors, on rank 0 (FSDP gathers a copy; every rank must call this)."""
        if self.objective is None:
            return self.model
        full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in self.model.state_dict().items()}
        copy = MultimodalTransformerModel(self.model.config)
        copy.load_state_dict(full)
        copy.tokenizer = self.model.tokenizer
        return copy

    @torch.no_grad()
    def validate(self, model: MultimodalTransformerModel | None = None) -> dict[str, Any]:
        """Validation loss per stream, and each task's figures on up to `eval_examples` examples."""
        if not self.val_examples:
            return {}
        model, t = model or self.model, self.run.train
        model.eval()
        device = next(model.parameters()).device
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
                losses.append(stream_loss(model, stream.cfg, _to(val.collate(items), device), g).item())
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

    def _validate_all_ranks(self) -> dict[str, Any]:
        """Rank 0 validates (on a gathered copy under FSDP); the others wait."""
        model = self._plain_model()
        metrics = self.validate(model) if self.dist.main else {}
        dd.barrier(self.dist)
        return metrics

    def _lr_factor(self) -> float:
        t = self.run.train
        return lr_factor(self.step, t.warmup_steps, self.total_steps, t.min_lr_ratio, t.schedule, t.decay_fraction)

    def _replan(self, budget: TimeBudget, bar: tqdm) -> None:
        total = budget.plan(self.step)
        total = int(dd.broadcast_object(total, self.dist))  # every rank stops at rank 0's count
        if total != self.total_steps:
            report = abs(total - self.total_steps) > 0.05 * total or budget.steps == CALIBRATION_STEPS
            self.total_steps = bar.total = total
            if report:
                per_step = budget.step_time / budget.steps
                self._say(f"time budget {budget.seconds / 60:g} min at {per_step:.3f} s/step: {total} steps")

    def _train_step(self, stream: TaskStream, micro: list[dict[str, Any]]) -> dict[str, float]:
        """Forward + backward over this process's micro-batches, gradients averaged, one optimizer
        step (skipped on a non-finite loss under nan_policy skip). Returns global figures."""
        t, dist_, dev = self.run.train, self.dist, self.dist.device
        units = [loss_units(stream.cfg, b) for b in micro]  # counted on the host: no device syncs
        tokens = [float(b["attention_mask"].sum()) + self.model.num_media_tokens * b["input_ids"].shape[0]
                  * any(k in b for k in input_keys()) for b in micro]  # sequence positions, prefix tokens included
        micro = [_to(b, dev) for b in micro]
        n_units = None
        if units[0] is not None:
            n_units = float(dd.all_reduce_sum(torch.tensor(float(sum(units)), device=dev), dist_))
        gather = (lambda x: dd.gather_rows(x, dist_)) if dist_.enabled else None
        gathered = gather is not None and stream.cfg.objective == "contrastive"
        g = torch.Generator().manual_seed(t.seed * 1_000_033 + self.step)  # masking / negatives
        dtype = DTYPES[self.precision]
        # loss numerator, its denominator, tokens, samples, rows, unusable streamed samples dropped
        stats = torch.zeros(6, dtype=torch.float64, device=dev)
        sync_fsdp = self.objective is not None and t.grad_accum > 1
        for i, (batch, u, n_tokens) in enumerate(zip(micro, units, tokens)):
            if sync_fsdp:  # reduce-scatter gradients once, after the last micro-batch
                self.objective.set_requires_gradient_sync(i == len(micro) - 1)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
                if self.objective is not None:
                    loss = self.objective(stream.cfg, batch, g, gather)
                else:
                    loss = stream_loss(self.runner, stream.cfg, batch, g, gather)
            loss = loss.float()
            if u is not None:  # a mean over u units: weigh it by its share of the global count
                scale = u * dist_.world / max(n_units, 1.0)
                stats[0] += loss.detach() * u
                stats[1] += u
            else:  # a mean per micro-batch (or, gathered, the global batch's): average the means
                scale = 1.0 / len(micro)
                share = 1.0 / dist_.world if gathered else 1.0  # every rank holds the same gathered loss
                stats[0] += loss.detach() * share
                stats[1] += share
            stats[2] += n_tokens
            stats[3] += sum(len(x) for x in batch["tasks"])
            stats[4] += batch["input_ids"].shape[0]
            stats[5] += batch.get("bad", 0)
            self.scaler.scale(loss * scale * stream.cfg.weight).backward()
        stats = dd.all_reduce_sum(stats, dist_)
        mean_loss = float(stats[0] / stats[1])
        if self.objective is None:
            dd.average_gradients(self.model.parameters(), dist_)
        finite = math.isfinite(mean_loss)
        if not finite and t.nan_policy == "stop":
            raise FloatingPointError(f"loss is {mean_loss} at step {self.step} (task {stream.cfg.name}, batch "
                                     f"{stream.state()} of its data order); stopping. Set train.nan_policy=skip to skip "
                                     "such steps, or lower the learning rate")
        grad_norm = float("nan")
        if finite:
            self.scaler.unscale_(self.opt)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip))
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.skipped_steps += 1
            warnings.warn(f"non-finite loss at step {self.step} (task {stream.cfg.name}): step skipped", stacklevel=2)
        self.opt.zero_grad(set_to_none=True)
        if stats[5]:
            self._count_streamed_bad(stream.cfg.name, int(stats[5]), int(stats[3]))
        return {"loss": mean_loss, "grad_norm": grad_norm, "tokens": float(stats[2]), "samples": float(stats[3]),
                "rows": float(stats[4])}

    def _count_streamed_bad(self, name: str, bad: int, used: int) -> None:
        """Streamed samples that could not be used; data.max_bad_fraction (or, without skip_bad, any)
        fails the run once enough samples were seen to judge (or at once without skip_bad)."""
        key = f"task {name} (streamed)"
        self.skipped[key] = self.skipped.get(key, 0) + bad
        self._stream_used[key] = self._stream_used.get(key, 0) + used
        d, total = self.run.data, self.skipped[key] + self._stream_used[key]
        limit = d.max_bad_fraction if d.skip_bad else 0.0
        if self.skipped[key] / total > limit and (total >= 1000 or not d.skip_bad):
            raise DataError(f"{key}: {self.skipped[key]} of {total} samples streamed so far were unusable "
                            f"(> {limit:.1%}; data.skip_bad and data.max_bad_fraction set the tolerance)")

    def fit(self, resume: bool = False) -> MultimodalTransformerModel:
        self.dist = dd.init_distributed(self.run.train.device)
        try:
            return self._fit(resume)
        finally:
            dd.shutdown(self.dist)

    def _fit(self, resume: bool) -> MultimodalTransformerModel:
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        dd.barrier(self.dist)
        self._setup(resume)
        tracker = Tracker(self.out, self.run.tracking, enabled=self.dist.main, run_config=to_dict(self.run))
        try:
            n_params = self._announce()
            started = time.perf_counter()
            totals = self._loop(tracker, started)
            self._finish(tracker, totals, time.perf_counter() - started, n_params)
        finally:
            tracker.close()
        return self.model

    def _announce(self) -> int:
        """Print the model's size and the streams; returns the parameter count."""
        t, dist_ = self.run.train, self.dist
        trainable, n_params = count_parameters(self.model)
        self._say(f"model: {n_params / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable); "
                  f"vocab {self.model.tokenizer.vocab_size}" + (f"; {dist_.world} processes ({t.parallel}, "
                                                                 f"{dist_.device.type})" if dist_.enabled else ""))
        for stream, p in zip(self.streams, self.probs):
            self._say(f"  task {stream.cfg.name} ({stream.cfg.objective}, weight {stream.cfg.weight:g}, "
                      f"p={p:.2f}): " + (f"streamed from {stream.stream_urls} ({len(stream.examples)} scanned)"
                                         if stream.stream_urls else
                                         f"{len(stream.examples)} examples in {len(stream.dataset)} items"))
        return n_params

    def _loop(self, tracker: Tracker, started: float) -> dict[str, float]:
        """The steps until total_steps (re-planned under a time budget), with logging, validation and
        checkpoints; returns the token / sample / second totals of the timed steps."""
        t, dist_ = self.run.train, self.dist
        self.model.train()
        pieces = dist_.world * t.grad_accum  # micro-batch k of a step: accumulation a = k // world, rank k % world
        mine = [a * dist_.world + dist_.rank for a in range(t.grad_accum)]
        seeds = [t.seed + 7919 * k for k in range(len(self.streams))]
        iters = [s.loader(seeds[k], pieces, mine, self.run.data.workers, dist_.rank, dist_.world)
                 for k, s in enumerate(self.streams)]
        self._set_lr()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", disable=not (self.progress and dist_.main),
                   unit="step", dynamic_ncols=True, mininterval=1 if sys.stderr.isatty() else 15)
        budget = None
        if t.time_budget_minutes is not None and not self.calibrated:
            budget = TimeBudget(t.time_budget_minutes * 60, t.max_steps, t.eval_every)
        first_step = self.step
        window = {"t": time.perf_counter(), "n": 0.0}  # examples since the last log line
        totals = {"tokens": 0.0, "samples": 0.0, "rows": 0.0, "seconds": 0.0}
        last_loss: dict[str, float] = {}
        while self.step < self.total_steps:
            step_start = time.perf_counter()
            k = draw_stream(self.step, t.seed, self.probs, self.sampling)
            stream = self.streams[k]
            out = self._train_step(stream, [next(iters[k]) for _ in range(t.grad_accum)])
            stream.advance(seeds[k])
            last_loss[stream.cfg.name] = out["loss"]
            self.step += 1
            step_seconds = time.perf_counter() - step_start
            if self.step - first_step > 3:  # the first steps run slow (allocation, compilation)
                for key in ("tokens", "samples", "rows"):
                    totals[key] += out[key]
                totals["seconds"] += step_seconds
                if budget is not None:
                    budget.step_time += step_seconds
                    budget.steps += 1
                    if budget.steps == CALIBRATION_STEPS or (budget.steps > CALIBRATION_STEPS and
                                                             budget.steps % REPLAN_EVERY == 0):
                        self._replan(budget, bar)  # step times drift (warm-up, other load): follow them
            window["n"] += out["samples"]
            self._set_lr()
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == self.total_steps:
                self._log_step(tracker, bar, window, out, stream, last_loss, step_seconds, started)
            if self.step % t.eval_every == 0 or self.step == self.total_steps:
                self._validate_and_log(tracker, bar, budget)
            if self.step % t.save_every == 0 or self.step == self.total_steps:
                save_checkpoint(self.ckpt_dir, self.step, self.model, self.opt, self._state(), t.keep_last, dist_)
        bar.close()
        return totals

    def _set_lr(self) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.run.train.lr * self._lr_factor()

    def _log_step(self, tracker: Tracker, bar: tqdm, window: dict[str, float], out: dict[str, float],
                  stream: TaskStream, last_loss: dict[str, float], step_seconds: float, started: float) -> None:
        rate = window["n"] / max(time.perf_counter() - window["t"], 1e-9)
        window["t"], window["n"] = time.perf_counter(), 0.0
        lr = self.opt.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{lr:.2e}", ex_s=f"{rate:.0f}")
        record = {"step": self.step, "loss": out["loss"], "task": stream.cfg.name, "lr": lr,
                  "grad_norm": out["grad_norm"], "examples_per_s": rate,
                  "tokens_per_s": out["tokens"] / max(step_seconds, 1e-9), "elapsed_s": time.perf_counter() - started}
        if len(self.streams) > 1:
            record["task_loss"] = dict(last_loss)
        tracker.log(record, self.step)

    def _validate_and_log(self, tracker: Tracker, bar: tqdm, budget: TimeBudget | None) -> None:
        eval_start = time.perf_counter()
        metrics = self._validate_all_ranks()
        if budget is not None and self.step < self.total_steps:  # its cost is known now: plan with it
            budget.eval_time += time.perf_counter() - eval_start
            budget.evals += 1
            self._replan(budget, bar)
        if metrics:
            tracker.log({"step": self.step, **metrics}, self.step)
            tqdm.write(f"step {self.step}: { {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)} }")

    def _finish(self, tracker: Tracker, totals: dict[str, float], train_seconds: float, n_params: int) -> None:
        """Refit (rank 0), save the model, write train_summary.json and print the throughput."""
        dist_ = self.dist
        final = self._plain_model()
        if self.run.finetune is not None and self.run.finetune.lora is not None:  # saved as the plain model
            final = merge_lora(copy.deepcopy(final))
        if dist_.main:
            for record in refit_streams(final, self.streams, self.run.train, self.progress):
                tracker.log({"step": self.step, **record}, self.step)  # reported on its own, not in train_seconds
            atomic_dir_write(self.out / "model", final.save_pretrained)
        report = throughput_report(self.model, totals, self.dist.device, self.precision, self.dist.world)
        summary = {"steps": self.step, "train_seconds": train_seconds, "parameters": n_params,
                   "processes": dist_.world, "skipped_steps": self.skipped_steps,
                   "skipped_examples": dict(self.skipped), **(report.as_dict() if report else {})}
        if dist_.main:
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            if report:
                tracker.log({"step": self.step, "throughput": report.as_dict()}, self.step)
                tqdm.write(report.summary())
            if any(self.skipped.values()):
                tqdm.write(f"skipped unreadable examples: {self.skipped}")
            if self.skipped_steps:
                tqdm.write(f"skipped {self.skipped_steps} step(s) with a non-finite loss")
            tqdm.write(f"saved {self.out / 'model'} ({summary['train_seconds']:.0f}s)")
        dd.barrier(dist_)

def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        return batch
    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=True)
        return {k: move(x) for k, x in v.items()} if isinstance(v, dict) else v

    return move(batch)


def train(run: RunConfig, out: str | Path, resume: bool = False, progress: bool = True) -> MultimodalTransformerModel:
    """Train `run` into `out` (checkpoints/, model/, log.jsonl); see `Trainer`."""
    return Trainer(run, out, progress).fit(resume)
