"""Multi-task training: task streams, which stream a step draws, and each objective's loss.

A stream reads one source (a manifest or a built-in spec), keeps some of its tasks and trains
them with one objective:
  lm           causal LM on prompt -> target (examples that share an image packed behind it)
  mlm          masked LM (BERT masking), the decoder run without its causal mask (UniLM)
  contrastive  image-text InfoNCE with a learnable temperature (CLIP)
  itm          image-text matching, negatives mined from the contrastive similarities (ALBEF)
  classify     cross-entropy of a classification head per task
Each step draws one stream: proportional to its size, temperature-scaled (p ~ n^(1/T)), or
round-robin; the draw depends only on (seed, step), so a resumed run draws the same streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from ..data.collate import ExampleDataset, ManifestDataset, TrainCollator, collate_examples
from ..data.manifest import DataError, Example
from ..objectives import (IGNORE_INDEX, classification_loss, contrastive_loss, count_examples, drop_inputs,
                          example_weights, hard_negatives, itm_loss, mask_tokens, masked_lm_loss)

Objective = Literal["lm", "mlm", "contrastive", "itm", "classify"]
Sampling = Literal["proportional", "temperature", "round_robin"]


@dataclass
class TaskConfig:
    """One stream of a multi-task run."""

    name: str
    objective: Objective = "lm"
    data: str | None = None  # a manifest or a built-in spec; None: data.train
    val: str | None = None  # None: data.val
    tasks: list[str] | None = None  # the manifest tasks this stream reads; None: all of them
    weight: float = 1.0  # multiplies the stream's loss; 0: never drawn (a stream that only refits)
    # the fraction of the steps drawn from this stream (proportional / temperature sampling); the
    # streams without one share the rest by `multitask.sampling`. None: by sampling alone
    share: float | None = None
    # lm streams of audio clips: each window of this many batches is sorted by clip length, cut into
    # batches, and those shuffled: a batch of short questions does not pad to a long caption's length
    # (the padding is masked, but the audio encoder still computes it). 0: off
    length_buckets: int = 0
    batch_size: int | None = None  # None: train.batch_size
    # contrastive: towers this loss does not train (they learn from the other streams only):
    # "image" (the image encoder, as LiT does), "text" (the decoder as text tower). With both,
    # only the projections and the temperature learn: the retrieval head cannot disturb the
    # generative tasks, which on a small budget it otherwise does.
    lock: list[Literal["image", "text"]] = field(default_factory=list)
    # contrastive with both towers locked: once training ends, refit the projections on the final
    # towers' cached features for this many (cheap) steps (train/refit.py); 0: no refit
    refit_steps: int = 0
    # lm: word dropout on the target's input tokens (objectives.drop_inputs), against language priors
    input_dropout: float = 0.0
    # lm: what the loss is a mean over. token: every predicted token counts once, so a caption
    # outweighs a one-word answer ten to one; example: every example counts once
    loss_weighting: Literal["token", "example"] = "token"

    def __post_init__(self) -> None:
        if self.loss_weighting not in ("token", "example"):
            raise ValueError(f"tasks.{self.name}: loss_weighting must be token or example, got {self.loss_weighting!r}")
        if self.loss_weighting == "example" and self.objective != "lm":
            raise ValueError(f"tasks.{self.name}: loss_weighting example is for the lm objective")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"tasks.{self.name}: input_dropout must be in [0, 1), got {self.input_dropout}")
        if self.input_dropout and self.objective != "lm":
            raise ValueError(f"tasks.{self.name}: input_dropout is for the lm objective")
        if self.refit_steps < 0:
            raise ValueError(f"tasks.{self.name}: refit_steps must be non-negative")
        if self.refit_steps and not (self.objective == "contrastive" and set(self.lock) == {"image", "text"}):
            raise ValueError(f"tasks.{self.name}: refit_steps needs objective contrastive with lock [image, text] "
                             "(only then are the towers the projections read fixed by the other streams)")
        if self.weight < 0:
            raise ValueError(f"tasks.{self.name}: weight must be non-negative, got {self.weight}")
        if self.length_buckets < 0:
            raise ValueError(f"tasks.{self.name}: length_buckets must be >= 0, got {self.length_buckets}")
        if self.share is not None and not 0 < self.share < 1:
            raise ValueError(f"tasks.{self.name}: share must be in (0, 1), got {self.share}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ValueError(f"tasks.{self.name}: batch_size must be positive")
        if self.objective in ("contrastive", "itm") and self.batch_size is not None and self.batch_size < 2:
            raise ValueError(f"tasks.{self.name}: {self.objective} needs batches of at least 2 pairs")


@dataclass
class MultiTaskConfig:
    tasks: list[TaskConfig]
    sampling: Sampling = "proportional"
    temperature: float = 2.0  # for "temperature": p ~ n^(1/T); T=1 is proportional, large T uniform

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("multitask.tasks is empty")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"multitask.tasks: duplicate names in {names}")
        if self.temperature <= 0:
            raise ValueError(f"multitask.temperature must be positive, got {self.temperature}")
        shared = [t for t in self.tasks if t.share is not None]
        total = sum(t.share for t in shared)
        if shared and self.sampling == "round_robin":
            raise ValueError("multitask: tasks' share needs random sampling (proportional or temperature), "
                             "not round_robin")
        if total > 1 + 1e-9 or (shared and len(shared) == len(self.tasks) and abs(total - 1) > 1e-6):
            raise ValueError(f"multitask: the tasks' shares {[t.share for t in shared]} must add up to at most 1 "
                             "(exactly 1 when every task has one)")


def sampling_weights(sizes: list[int], sampling: Sampling, temperature: float = 2.0,
                     weights: list[float] | None = None, shares: list[float | None] | None = None) -> list[float]:
    """Probability of drawing each stream at a step, from the streams' sizes in examples, or its
    fixed `share` where it has one (the others split the rest).

    A stream of loss weight 0 is never drawn: its step would train nothing (a locked contrastive
    stream with `refit_steps` and weight 0 only refits its projections once training ends)."""
    active = [w != 0 for w in weights] if weights is not None else [True] * len(sizes)
    if not any(active):
        raise ValueError("multitask: every stream has weight 0, so no step would train anything")
    if sampling == "round_robin":
        return [a / sum(active) for a in active]
    shares = shares or [None] * len(sizes)
    power = 1.0 if sampling == "proportional" else 1.0 / temperature
    w = [n ** power * a * (s is None) for n, a, s in zip(sizes, active, shares)]
    rest = max(0.0, 1.0 - sum(s for s in shares if s is not None))
    p = [s * a if s is not None else rest * x / (sum(w) or 1.0) for x, a, s in zip(w, active, shares)]
    return [x / sum(p) for x in p]  # a never-drawn stream's share goes to the others


def draw_stream(step: int, seed: int, probs: list[float], sampling: Sampling) -> int:
    """The stream of `step`: a function of (seed, step) only, hence the same after a resume."""
    if sampling == "round_robin":
        drawn = [k for k, p in enumerate(probs) if p > 0]
        return drawn[step % len(drawn)]
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=g))


def select(examples: list[Example], tasks: list[str] | None, source: str) -> list[Example]:
    if tasks is None:
        return examples
    kept = [e for e in examples if e.task in tasks]
    if not kept:
        raise DataError(f"{source}: no examples of tasks {tasks}")
    return kept


def class_labels(examples: list[Example]) -> dict[str, list[str]]:
    """Sorted labels of each task (the targets seen in training)."""
    labels: dict[str, set[str]] = {}
    for e in examples:
        labels.setdefault(e.task, set()).add(e.target or "")
    return {t: sorted(ls) for t, ls in labels.items()}


class TaskStream:
    """One stream's dataset, collator and resumable position (a seeded permutation per epoch)."""

    def __init__(self, cfg: TaskConfig, examples: list[Example], val_examples: list[Example], batch_size: int,
                 stream_urls: str | None = None) -> None:
        self.cfg, self.examples, self.val_examples, self.batch_size = cfg, examples, val_examples, batch_size
        self.epoch = self.pos = 0
        # streamed from shards (data/streaming.py): `examples` is then only a scanned sample, and
        # `pos` counts the steps consumed
        self.stream_urls = stream_urls
        self.lengths: list[int] | None = None  # each item's clip length, with length buckets (build)
        self._order: tuple[tuple[int, int] | None, list[int]] = (None, [])  # (seed, epoch) -> its order

    def build(self, model: Any, max_text_len: int, skip_bad: bool, pack: bool) -> None:
        tok, proc = model.tokenizer, model.processors
        if self.cfg.objective == "lm":
            regions = getattr(model, "region_heads", None)
            self.collate: Any = TrainCollator(tok.pad_id, proc, *((regions.classes, regions.source_frames)
                                                                  if regions is not None else ()))
            make = lambda exs, skip, pack: ManifestDataset(exs, tok, proc, max_text_len, skip, pack=pack)  # noqa: E731
        else:
            kind = {"mlm": "text", "classify": "classify"}.get(self.cfg.objective, "pair")
            labels = getattr(model, "head_labels", None)
            self.collate = lambda items: collate_examples(items, tok.pad_id, proc)
            make = lambda exs, skip, pack: ExampleDataset(exs, tok, proc, max_text_len, kind, labels, skip)  # noqa: E731
        if self.stream_urls is not None:
            self.encode = lambda ex: make([ex], False, False)[0]  # one streamed example -> one item
            self.dataset: Any = None
        else:
            self.dataset = make(self.examples, skip_bad, pack)
        self._order = (None, [])
        if self.cfg.length_buckets:
            if not hasattr(self.dataset, "audio_lengths"):
                raise DataError(f"task {self.cfg.name}: length_buckets sorts the clips of an lm stream read "
                                "whole, not streamed shards or other objectives' items")
            self.lengths = self.dataset.audio_lengths()

    def order(self, seed: int, epoch: int) -> list[int]:
        """The epoch's item order: a permutation seeded by (seed, epoch), whatever the process count;
        with length buckets, whole batches of similar clip lengths, in a seeded order. Asked for at
        every step, it is made once per epoch."""
        if self._order[0] != (seed, epoch):
            self._order = ((seed, epoch), self._make_order(seed, epoch))
        return self._order[1]

    def _make_order(self, seed: int, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(len(self.dataset), generator=g).tolist()
        if self.lengths is None:
            return perm
        B, W = self.batch_size, self.batch_size * self.cfg.length_buckets
        whole = len(perm) - len(perm) % B  # the short tail waits for the next epoch, as without buckets
        batches = []
        for s in range(0, whole, W):
            window = sorted(perm[s:min(s + W, whole)], key=self.lengths.__getitem__)
            batches += [window[b:b + B] for b in range(0, len(window), B)]
        return [i for k in torch.randperm(len(batches), generator=g).tolist() for i in batches[k]]

    def step_indices(self, seed: int, epoch: int, pos: int) -> tuple[list[int], int, int]:
        """The global batch at (epoch, pos) and the position after it (a short tail is dropped)."""
        n, B = len(self.dataset), self.batch_size
        if n < B:
            raise DataError(f"task {self.cfg.name}: {n} items is fewer than one batch of {B}")
        if pos + B > n:
            epoch, pos = epoch + 1, 0
        return self.order(seed, epoch)[pos:pos + B], epoch, pos + B

    def advance(self, seed: int) -> None:
        """Record that one global batch was consumed (the data position a checkpoint saves)."""
        if self.stream_urls is not None:
            self.pos += 1
        else:
            _, self.epoch, self.pos = self.step_indices(seed, self.epoch, self.pos)

    def loader(self, seed: int, pieces: int, piece_ids: list[int], workers: int = 0, rank: int = 0, world: int = 1
               ) -> Iterator[dict[str, Any]]:
        """Micro-batches from the saved position on: each global batch is cut into `pieces` equal
        parts (processes x accumulation steps) and this process gets `piece_ids`, in order.
        Collation runs in `workers` DataLoader processes. A streamed task reads this rank's shards
        instead (data/streaming.py), each micro-batch holding batch_size / pieces items."""
        if self.batch_size % pieces:
            raise DataError(f"task {self.cfg.name}: batch size {self.batch_size} does not split into {pieces} "
                            "equal micro-batches (processes x grad_accum)")
        # Starting a DataLoader draws its workers' base seed from the global torch RNG unless it has
        # a generator of its own. A resumed run starts its loaders after the checkpoint restored that
        # RNG, an uninterrupted one did so at step 0: the extra draw would shift every later dropout
        # mask (GPT-2's 0.1 in a composed model) and break bit-exact resume.
        own_rng = torch.Generator().manual_seed(seed)
        if self.stream_urls is not None:  # this rank's own shards; position: steps x micro-batches drawn
            from ..data.streaming import ShardStream

            size = self.batch_size // pieces
            data = ShardStream(self.stream_urls, self.encode, tasks=self.cfg.tasks, rank=rank, world=world,
                               seed=seed, skip=self.pos * len(piece_ids), batch_size=size)
            collate = self.collate
            return iter(DataLoader(data, batch_size=size, num_workers=workers, persistent_workers=workers > 0,
                                   collate_fn=lambda items: {**collate(items), "bad": sum(it["bad"] for it in items)},
                                   generator=own_rng))
        sampler = _StepSampler(self, seed, pieces, piece_ids)
        return iter(DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.collate, num_workers=workers,
                               persistent_workers=workers > 0, prefetch_factor=2 if workers else None,
                               generator=own_rng))

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]


class _StepSampler(Sampler[list[int]]):
    """Yields this process's micro-batch index lists, step after step, from the stream's position."""

    def __init__(self, stream: TaskStream, seed: int, pieces: int, piece_ids: list[int]) -> None:
        self.stream, self.seed, self.pieces, self.piece_ids = stream, seed, pieces, piece_ids
        self.epoch, self.pos = stream.epoch, stream.pos

    def __iter__(self) -> Iterator[list[int]]:
        size = self.stream.batch_size // self.pieces
        while True:
            idx, self.epoch, self.pos = self.stream.step_indices(self.seed, self.epoch, self.pos)
            for k in self.piece_ids:
                yield idx[k * size:(k + 1) * size]

    def __len__(self) -> int:  # endless; DataLoader only asks for it in messages
        return 2**62


def text_hash(input_ids: Tensor, mask: Tensor) -> Tensor:
    """(B,) int64 fingerprint of each row's text (equal texts, equal hashes; padding ignored)."""
    ids = input_ids.masked_fill(~mask, 0).long()
    weights = torch.arange(1, ids.shape[1] + 1, device=ids.device, dtype=torch.long) * 1_000_003 + 7
    return (ids * weights).sum(1) * 31 + mask.sum(1)


def loss_units(cfg: TaskConfig, batch: dict[str, Any]) -> int | None:
    """What the objective's loss is a mean over, counted before the forward pass: predicted
    tokens (lm), rows (classify). None: a mean per micro-batch (mlm masks and itm negatives are
    drawn per micro-batch; contrastive gathers the global batch itself)."""
    if cfg.objective == "lm" and cfg.loss_weighting == "example":
        return count_examples(batch["labels"], batch.get("segment_ids"))
    if cfg.objective == "lm":
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    if cfg.objective == "classify":
        return len(batch["tasks"])
    return None


def stream_loss(model: Any, cfg: TaskConfig, batch: dict[str, Any], generator: torch.Generator | None = None,
                gather: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The loss of one batch under the stream's objective (before its weight). `gather`
    concatenates every process's rows, so the contrastive loss sees the global batch."""
    objective = cfg.objective
    if objective == "lm":
        if cfg.input_dropout and model.training:
            ids = drop_inputs(batch["input_ids"], batch["labels"], mask_id=model.tokenizer.mask_id,
                              prob=cfg.input_dropout, generator=generator)
            batch = {**batch, "input_ids": ids}
        if cfg.loss_weighting == "example":
            batch = {**batch, "label_weights": example_weights(batch["labels"], batch.get("segment_ids"))}
        return model(batch).loss
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pixels = batch.get("pixel_values")
    if objective == "mlm":
        tok = model.tokenizer
        special = ~mask | (ids == tok.bos_id) | (ids == tok.eos_id) | (ids == tok.sep_id)
        masked, labels = mask_tokens(ids, mask_id=tok.mask_id, vocab_size=model.config.decoder.vocab_size,
                                     special=special, generator=generator)
        if not (labels != IGNORE_INDEX).any():  # nothing chosen in a tiny batch: no signal, no NaN
            labels[0, int(mask[0].sum()) // 2] = ids[0, int(mask[0].sum()) // 2]
        logits = model.decoder.head(model.hidden_states(masked, mask, bidirectional=True))
        return masked_lm_loss(logits, labels, model.label_smoothing)
    if objective == "classify":
        features = model.features(ids, mask, pixels)
        tasks = [t[0] for t in batch["tasks"]]
        losses = []
        for task in sorted(set(tasks)):
            rows = torch.tensor([i for i, t in enumerate(tasks) if t == task])
            logits = model.heads[task](features[rows])
            losses.append(classification_loss(logits, batch["class_labels"][rows], model.label_smoothing) * len(rows))
        return torch.stack(losses).sum() / len(tasks)
    if pixels is None:
        raise DataError(f"the {objective} objective needs an image with every example")
    hashes = text_hash(ids, mask)
    if objective == "contrastive":
        image = model.encode_image(pixels, lock_encoder="image" in cfg.lock)
        text = model.encode_text(ids, mask, lock_decoder="text" in cfg.lock)
        if gather is not None:
            image, text, hashes = gather(image), gather(text), gather(hashes)
        same = hashes[:, None] == hashes[None, :]  # identical captions are not negatives
        return contrastive_loss(image, text, model.logit_scale, same)
    same = hashes[:, None] == hashes[None, :]
    if objective == "itm":
        B = ids.shape[0]
        with torch.no_grad():
            if model.image_proj is not None:  # hard negatives: the most similar non-matching pairs
                sim = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1) @ \
                    torch.nn.functional.normalize(model.encode_text(ids, mask), dim=-1).t()
            else:  # no contrastive space: uniform random negatives
                sim = torch.zeros(B, B)
            neg_text, neg_image = hard_negatives(sim.float(), same, generator)
        all_ids = torch.cat([ids, ids[neg_text], ids])
        all_mask = torch.cat([mask, mask[neg_text], mask])
        all_pixels = torch.cat([pixels, pixels, pixels[neg_image]])
        labels = torch.cat([torch.ones(B), torch.zeros(2 * B)]).long().to(ids.device)
        return itm_loss(model.itm_logits(all_ids, all_mask, all_pixels), labels)
    raise ValueError(f"unknown objective {objective!r}")


class ObjectiveModule(nn.Module):
    """The loss as one module call, so FSDP's root unit gathers its parameters whichever model
    entry point an objective uses (forward, features, encode_image ...)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, cfg: TaskConfig, batch: dict[str, Any], g: torch.Generator, gather: Any = None) -> torch.Tensor:
        return stream_loss(self.model, cfg, batch, g, gather)
