"""Streaming WebDataset shards: data that never has to fit on a disk or in memory.

`ShardStream` is an endless, resumable IterableDataset. Each epoch the shard list is shuffled by
(seed, epoch); rank r of the process group reads every world-th shard of that order, and
DataLoader worker w of the rank every n-th of those (`split across ranks and workers`).
Samples pass a seeded shuffle buffer still encoded, and are decoded and turned into training
items only when they leave it. A sample that cannot be used (bad json, undecodable image) is
dropped and counted: each item carries `bad`, the count dropped since the item before it.

Resume: the first `skip` batches are drawn and discarded (each worker its share of them, as the
DataLoader hands batches out round-robin), so a resumed run sees the same items as an
uninterrupted one with the same number of workers.
`scan_shards` reads the first samples' json only, for the tokenizer, class labels and counts.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from ..modalities.image import MediaError
from .manifest import DataError, Example
from .shards import _samples, _sample_to_example, shard_urls

_warned: set[str] = set()  # shards already reported unreadable (once per process)


def scan_shards(urls: str, limit: int, rank: int = 0, world: int = 1) -> list[Example]:
    """Up to `limit` examples of this rank's shards, media left undecoded (their metadata only)."""
    shards = shard_urls(urls)
    if len(shards) < world:
        raise DataError(f"{len(shards)} shard(s) for {world} ranks: write smaller shards")
    found: list[Example] = []
    for url in shards[rank::world]:
        errors: list[BaseException] = []
        for sample in _samples(url, errors):
            try:
                found.append(_sample_to_example(sample, url, {}, check=False))
            except DataError:
                continue  # counted when streamed
            if len(found) >= limit:
                return found
    if not found:
        raise DataError(f"no usable examples in {urls!r}")
    return found


class ShardStream(IterableDataset):
    """Endless stream of training items from shards; see the module docstring."""

    def __init__(self, urls: str, encode: Callable[[Example], dict[str, Any]], *, tasks: list[str] | None,
                 rank: int, world: int, seed: int, skip: int = 0, batch_size: int = 1, buffer: int = 512) -> None:
        self.shards = shard_urls(urls)
        if len(self.shards) < world:
            raise DataError(f"{len(self.shards)} shard(s) for {world} ranks: write smaller shards")
        self.encode, self.tasks, self.rank, self.world, self.seed = encode, tasks, rank, world, seed
        self.skip, self.batch_size, self.buffer = skip, batch_size, buffer

    def _samples(self, worker: int, workers: int) -> Iterator[tuple[dict[str, Any], str, int]]:
        """(raw sample, shard url, epoch) in this worker's shuffled order, epoch after epoch."""
        epoch = 0
        while True:
            order = list(self.shards)
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            mine = order[self.rank::self.world][worker::workers]
            rng = random.Random(((self.seed * 1_009 + epoch) * 1_013 + self.rank) * 1_019 + worker)
            pool: list[tuple[dict[str, Any], str, int]] = []
            for url in mine:
                errors: list[BaseException] = []
                for sample in _samples(url, errors):
                    pool.append((sample, url, epoch))
                    if len(pool) >= self.buffer:
                        yield pool.pop(rng.randrange(len(pool)))
                if errors and url not in _warned:
                    _warned.add(url)
                    warnings.warn(f"{url}: unreadable tar data ({errors[0]}); the rest of the shard is skipped",
                                  stacklevel=2)
            rng.shuffle(pool)
            yield from pool
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = len(range(self.rank, len(self.shards), self.world))
        if workers > mine:  # an idle worker would break the round-robin that resuming relies on
            raise DataError(f"rank {self.rank} reads {mine} shard(s) but has {workers} DataLoader workers: "
                            "write smaller shards or lower data.workers")
        # The DataLoader hands batches out round-robin from worker 0, so after `skip` batches the
        # next one is that of reader (skip % workers): DataLoader worker i plays reader (i + skip) %
        # workers, which made every workers-th of the first `skip` batches.
        worker = (worker + self.skip) % workers
        skip = len(range(worker, self.skip, workers)) * self.batch_size
        bad, productive = 0, 0  # the last epoch that gave an item
        for sample, url, epoch in self._samples(worker, workers):
            if epoch > productive + 1:
                raise DataError(f"a whole pass over {mine} shard(s) gave no usable example"
                                + (f" of tasks {self.tasks}" if self.tasks else ""))
            try:
                ex = _sample_to_example(sample, url, {}, check=False)
                if self.tasks is not None and ex.task not in self.tasks:
                    continue
                with warnings.catch_warnings():  # truncation notices, once per item: too many
                    warnings.simplefilter("ignore")
                    item = self.encode(ex)
            except (DataError, MediaError):
                bad += 1
                continue
            productive = epoch
            if skip:  # drawn before the checkpoint: its bad samples were counted then
                skip, bad = skip - 1, 0
                continue
            yield {**item, "bad": bad}
            bad = 0

