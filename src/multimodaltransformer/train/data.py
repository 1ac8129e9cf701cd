"""What a run trains on: its sources read once each (manifests, built-ins, shards, scanned when
streamed), the examples they could not read counted against `data.max_bad_fraction`, and one
`TaskStream` per configured stream."""

from __future__ import annotations

from ..data.manifest import DataError, Example
from ..data.sources import is_shard_source, read_source
from ..data.streaming import scan_shards
from .config import DataConfig
from .tasks import MultiTaskConfig, TaskStream, select


class RunData:
    def __init__(self, cfg: DataConfig, rank: int = 0, world: int = 1, progress: bool = True) -> None:
        self.cfg, self.rank, self.world, self.progress = cfg, rank, world, progress
        self.manifests: dict[str, list[Example]] = {}
        self.skipped: dict[str, int] = {}  # where -> examples skipped (bad lines, unreadable media)
        # a source's lines (shard / dataset samples) that failed to parse: counted with the media its
        # training streams could not read, against one total (see check_bad)
        self.unparsed: dict[str, list[str]] = {}
        self.stream_source: dict[str, str] = {}  # "task NAME" -> its training source

    def streamed(self, source: str) -> str | None:
        """The shard URLs of a source that data.streaming streams, else None."""
        if not self.cfg.streaming:
            return None
        return source.removeprefix("wds:") if source.startswith("wds:") or is_shard_source(source) else None

    def read(self, source: str) -> list[Example]:
        """A source's examples (this rank's share of sharded ones), read once."""
        if source not in self.manifests and self.streamed(source):
            self.manifests[source] = scan_shards(self.streamed(source), self.cfg.stream_scan, self.rank, self.world)
        if source not in self.manifests:
            examples, skipped = read_source(source, self.cfg.cache_dir, self.progress, self.cfg.skip_bad,
                                            self.rank, self.world)
            if skipped:
                self.unparsed[source] = skipped
                self.skipped[source] = len(skipped)
            self.manifests[source] = examples
        return self.manifests[source]

    def check_bad(self, where: str, skipped: list[str], kept: int) -> None:
        """Count the examples skipped at `where` (a task stream: those whose media could not be read)
        with the lines of its source that failed to parse; more than data.max_bad_fraction of the
        total fails the run loudly."""
        if skipped:
            self.skipped[where] = self.skipped.get(where, 0) + len(skipped)
        self._check(where, self.unparsed.get(self.stream_source.get(where, ""), []), skipped, kept)

    def _check(self, where: str, unparsed: list[str], unreadable: list[str], kept: int) -> None:
        if not unparsed and not unreadable:
            return
        n = len(unparsed) + len(unreadable)
        bad, limit = n / (n + kept), self.cfg.max_bad_fraction
        if bad > limit:
            raise DataError(f"{where}: {n} of {n + kept} examples were skipped, {len(unparsed)} line(s) that "
                            f"failed to parse and {len(unreadable)} whose media are unreadable ({bad:.1%} > "
                            f"data.max_bad_fraction {limit:.1%}); first: {(unparsed + unreadable)[0]}")

    def streams(self, mt: MultiTaskConfig, batch_size: int) -> list[TaskStream]:
        """One stream per configured task stream: its tasks' examples of its source (data.train by
        default) and of its validation source (data.val by default)."""
        out = []
        for cfg in mt.tasks:
            train_src, val_src = cfg.data or self.cfg.train, cfg.val if cfg.val is not None else self.cfg.val
            train_ex = select(self.read(train_src), cfg.tasks, train_src)
            val_ex = select(self.read(val_src), cfg.tasks, val_src) if val_src else []
            out.append(TaskStream(cfg, train_ex, val_ex, cfg.batch_size or batch_size,
                                  stream_urls=self.streamed(train_src)))
            self.stream_source[f"task {cfg.name}"] = train_src
        # sources no training stream reads (validation only) are judged on their own lines
        for source, unparsed in self.unparsed.items():
            if source not in self.stream_source.values():
                self._check(source, unparsed, [], len(self.manifests[source]))
        return out
