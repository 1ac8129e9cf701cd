"""The model worker: one thread owns the model and schedules requests onto one running batch.

Jobs wait in a bounded queue (full: the HTTP layer answers 429). Between two decode steps the
worker admits waiting jobs into the running batch, up to `max_batch` rows; the batch's decode
state (prefill, joining rows to the cache, steps, dropping rows) is generation/batching.py's
`ContinuousBatch`. A prompt is prefilled `prefill_chunk` tokens per loop turn, each followed by
a decode step of the running rows, so a long prompt does not stall them; its media are embedded
once. Greedy rows without processors take their tokens in one argmax over the batch; the others
pick theirs with the engine's processors and `choose` (generation/search.py). Each row has its own
sampling settings, seed, stop strings and budget; a finished, cancelled or timed-out row leaves the
batch at once. Beam search runs a job on its own between steps, through `generate`; so do
callables (embeddings, and the transcriptions of speech models, which have no batch). The worker
never touches asyncio: results go through each job's `emit` callback. Legend: N batch rows, V vocabulary.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..generation import GenerationConfig, generate
from ..generation.batching import ContinuousBatch
from ..generation.search import choose
from ..generation.streaming import StopStrings, decode_fn
from .jobs import Job, Row

__all__ = ["Job", "ModelWorker"]

def release_free_memory() -> None:
    """glibc keeps freed heap pages (its mmap threshold rises after large frees, so KV-cache-sized
    buffers end up on the heap); `malloc_trim` hands them back, so an idle server's memory returns
    to its baseline after a load. A no-op off glibc."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc: Any = None


class ModelWorker:
    """Owns `model` in a background thread; `submit` jobs, `run_exclusive` other model work."""

    def __init__(self, model: Any, max_batch: int = 16, queue_size: int = 64, prefill_chunk: int = 256,
                 threads: int | None = None) -> None:
        self.model, self.max_batch, self.prefill_chunk = model.eval(), max_batch, prefill_chunk
        self.threads = threads  # torch's intra-op threads for the worker thread (None: as they are)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.waiting: deque[Job] = deque()
        self.tok = model.tokenizer
        self.device = next(model.parameters()).device
        self.rows: list[Row] = []
        # prompts being prefilled, `prefill_chunk` positions per loop turn between two decode steps
        # (a long prompt does not stall the running rows): their jobs and the batch's prefill generator
        self.prefilling: list[tuple[list[Job], Iterator[Tensor | None]]] = []
        # chat needs the generation interface and EOS ids: our TextTokenizer's, or a decoder LM's own
        # (`eos_ids`: Llama 3 has two) with its raw tokenizer; a speech model (Whisper) only runs
        # exclusive work: transcriptions (serve/speech.py)
        eos_ids = [self.tok.eos_id] if hasattr(self.tok, "eos_id") else list(getattr(model, "eos_ids", []))
        self.generative = hasattr(model, "decode_step") and bool(eos_ids)
        if self.generative:
            self.decode = decode_fn(self.tok)
            self.eos_ids = frozenset(eos_ids)
            self.eos = torch.tensor(eos_ids)
            self.pad_id = getattr(self.tok, "pad_id", eos_ids[0])  # pad slots are masked: any id does
            self.batch = ContinuousBatch(model)  # the running rows' decode state (their cache)
            self.last = torch.zeros(0, dtype=torch.long)  # (N,) each row's newest token
        self.steps = 0  # decode steps run (for stats)
        self.on_step: Callable[[int], None] | None = None  # told each step's batch size (serve/ops.py metrics)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="mmt-model-worker", daemon=True)
        self.thread.start()

    # ---- public, any thread -------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job; raises queue.Full when the queue is full."""
        self.queue.put_nowait(job)

    def run_exclusive(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run fn() on the worker thread between decode steps; returns its result or raises its error."""
        done, box = threading.Event(), {}

        def task() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # handed to the caller
                box["error"] = e
            finally:
                done.set()

        self.queue.put_nowait(task)
        if not done.wait(timeout):
            raise TimeoutError("the model worker did not answer in time")
        if "error" in box:
            raise box["error"]
        return box["value"]

    @property
    def load(self) -> int:
        return len(self.rows) + self._prefilling_rows + len(self.waiting) + self.queue.qsize()

    @property
    def _prefilling_rows(self) -> int:
        return sum(j.n for jobs, _ in self.prefilling for j in jobs)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    # ---- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        busy = False
        while not self._stop.is_set():
            idle = not self.rows and not self.waiting and not self.prefilling
            if idle and busy:  # the batch just emptied: its freed cache goes back to the OS
                release_free_memory()
            busy = not idle
            self._take(block=idle)
            self._admit()
            self._prefill_chunks()
            if self.rows:
                try:
                    with torch.inference_mode():
                        self._step()
                except Exception as e:  # a bug must not leave requests hanging: fail the batch, go on
                    traceback.print_exc()
                    for row in self.rows:
                        row.job.emit(row.index, None, None, f"generation failed: {e}")
                    self._drop([])

    def _take(self, block: bool) -> None:
        """Move queued items into `waiting`; exclusive tasks and beam jobs run right away."""
        try:
            item = self.queue.get(timeout=0.05) if block else self.queue.get_nowait()
        except queue.Empty:
            return
        while True:
            if callable(item):  # its own caches, if any: the batch's stay as they are
                item()
            else:
                self.waiting.append(item)
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return

    def _admit(self) -> None:
        """Prefill waiting jobs that fit (same media kind for cross-attention models) into the batch."""
        group: list[Job] = []
        rows = len(self.rows) + self._prefilling_rows
        first = self.rows[0].job if self.rows else self.prefilling[0][0][0] if self.prefilling else None
        kind = None if first is None else self._kind(first)
        kept: deque[Job] = deque()
        while self.waiting:
            job = self.waiting.popleft()
            if job.cancelled.is_set():
                job.emit(0, None, None, "cancelled")
                continue
            if job.num_beams > 1:
                self._beam(job)
                continue
            kind = kind if kind is not None else self._kind(job)
            fits = rows + job.n <= self.max_batch or rows == 0  # a job wider than max_batch runs alone
            if self._kind(job) == kind and fits and not kept:
                group.append(job)
                rows += job.n
            else:
                kept.append(job)
        self.waiting = kept
        for signature in dict.fromkeys(j.signature for j in group):  # one prefill per set of media inputs
            part = [j for j in group if j.signature == signature]
            media = {key: torch.cat([j.inputs[key] for j in part]) for key in part[0].inputs}
            self.prefilling.append((part, self.batch.prefill([j.input_ids for j in part], media, [j.n for j in part],
                                                              self.pad_id, self.prefill_chunk)))

    def _prefill_chunks(self) -> None:
        """The next chunk (`prefill_chunk` tokens) of the first prompts being prefilled, then a decode
        step runs: prompts done join the batch and get their first token."""
        if not self.prefilling:
            return
        jobs, chunks = self.prefilling[0]
        try:
            with torch.inference_mode():
                logits = next(chunks)
            if logits is None:
                return
            self.prefilling.pop(0)
            with torch.inference_mode():
                self._joined(jobs, logits)
        except Exception as e:  # a bad job must not take the worker down
            traceback.print_exc()
            if self.prefilling and self.prefilling[0][0] is jobs:
                self.prefilling.pop(0)
            for job in jobs:
                job.emit(0, None, None, f"generation failed: {e}")

    def _kind(self, job: Job) -> tuple:
        """Rows can share a batch unless the model cross-attends: then only rows whose media have the same
        shapes (one context length for every row's cross-attention cache)."""
        cross = getattr(getattr(self.model, "fusion_config", None), "type", "") in ("cross", "gated")
        return job.signature if cross else ()

    # ---- decoding: the cache is generation/batching.py's; rows, tokens and text are the worker's ----
    def _joined(self, jobs: list[Job], logits: Tensor) -> None:
        """The prefilled rows of `jobs` joined the batch: their rows, and a first token from `logits`."""
        for j in jobs:
            cfg = GenerationConfig(max_new_tokens=j.max_new_tokens, do_sample=j.temperature > 0,
                                   temperature=j.temperature or 1.0, top_p=j.top_p, top_k=j.top_k,
                                   repetition_penalty=j.repetition_penalty)
            j.completion_tokens = [0] * j.n
            for i in range(j.n):
                self.rows.append(Row(j, i, cfg, self.eos, self.decode))
        self._choose(logits)

    def _step(self) -> None:
        self.steps += 1
        if self.on_step is not None:
            self.on_step(len(self.rows))
        self._choose(self.batch.step(self.last))

    def _drop(self, keep: list[int]) -> None:
        """Keep only these batch rows (finished ones leave)."""
        self.batch.keep(keep)
        self.rows = [self.rows[i] for i in keep]
        self.last = self.last[keep] if keep else self.last[:0]

    def _choose(self, logits: Tensor) -> None:
        """Pick each row's next token from its logits (N_new or N, V), emit text, retire finished rows.

        Called after a prefill with the new rows' logits (they are the batch's last rows) and
        after a step with every row's. Each row has its own processors and generator."""
        n_new = logits.shape[0]
        rows = self.rows[len(self.rows) - n_new:]
        tokens = logits.argmax(-1)  # every greedy row without processors at once: what `choose` gives it
        for r, row in enumerate(rows):
            if row.processors or row.generator is not None:
                tokens[r] = choose(row.processors, torch.tensor([row.history]), logits[r:r + 1].clone(),
                                   row.generator is not None, row.generator)[0]
        now = time.monotonic()
        for row, t in zip(rows, tokens.tolist()):
            row.history.append(t)
            row.produced += 1
            row.finish = self._advance(row, t, now)
        self.last = tokens if n_new == len(self.rows) else torch.cat([self.last, tokens])
        keep = [i for i, row in enumerate(self.rows) if row.finish is None]
        if len(keep) < len(self.rows):
            self._drop(keep)

    def _advance(self, row: Row, token: int, now: float) -> str | None:
        """Emit the token's text for `row`; the finish reason once the row is done, else None."""
        job = row.job
        if job.cancelled.is_set():
            job.emit(row.index, None, None, "cancelled")
            return "cancelled"
        if now > job.deadline:
            job.emit(row.index, None, None, "the request ran past its time limit")
            return "timeout"
        if token in self.eos_ids:
            row.eos_hit = True
            return self._finish(row, "stop")
        text = row.trim(row.stops.feed(row.detok.push(token)))
        if text:
            job.emit(row.index, text, None, None)
        if row.stops.stopped:
            return self._finish(row, "stop", flush=False)
        # the token just chosen goes in at position n_media + prompt_len + produced - 1: is there a next one?
        n_media = self.model.num_media_tokens if job.has_media else 0
        if row.produced >= job.max_new_tokens or n_media + row.prompt_len + row.produced >= self.model.max_seq_len:
            return self._finish(row, "length")
        return None

    def _finish(self, row: Row, reason: str, flush: bool = True) -> str:
        text = ""
        if flush:
            text = row.stops.feed(row.detok.flush())
            if not row.stops.stopped:
                text += row.stops.flush()
        text = row.trim(text, final=True)
        row.job.completion_tokens[row.index] = row.produced - row.eos_hit  # the EOS token is not text
        row.job.emit(row.index, text or None, reason, None)
        return reason

    def _beam(self, job: Job) -> None:
        """Beam search for one job, alone (it needs its own cache rows per beam)."""
        try:
            with torch.inference_mode():
                media = {k: v.to(self.device) for k, v in job.inputs.items()}
                out = generate(self.model, job.input_ids.to(self.device), num_beams=job.num_beams,
                               num_return_sequences=job.n, length_penalty=job.length_penalty,
                               repetition_penalty=job.repetition_penalty, max_new_tokens=job.max_new_tokens,
                               **media)
            T = job.input_ids.shape[1]
            job.completion_tokens = []
            for i, row in enumerate(out[:, T:].tolist()):
                produced = next((k for k, t in enumerate(row) if t in self.eos_ids), len(row))
                text = self.decode(row[:produced])
                stops = StopStrings(job.stops)
                text = stops.feed(text) + ("" if stops.stopped else stops.flush())
                text = text.strip() if job.strip else text
                job.completion_tokens.append(produced)
                job.emit(i, text, "stop" if produced < len(row) or stops.stopped else "length", None)
        except Exception as e:
            traceback.print_exc()
            job.emit(0, None, None, f"generation failed: {e}")
