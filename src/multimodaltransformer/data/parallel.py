"""Work split into chunks, run over the machine's cores (data generation: drawing, speaking)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def run_chunks(fn: Callable[[list[Any]], int], jobs: Sequence[Any], desc: str, unit: str, progress: bool,
               chunk: int = 100) -> None:
    """`fn` over chunks of `jobs` (it returns how many it did): inline for a few, else in up to 8
    spawned worker processes (no fork of a process that may hold torch threads), with a progress bar.
    The jobs carry every random draw, so the output does not depend on the worker count."""
    from tqdm import tqdm

    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    chunks = [list(jobs[k:k + chunk]) for k in range(0, len(jobs), chunk)]
    with tqdm(total=len(jobs), desc=desc, disable=not progress, unit=unit) as bar:
        if workers < 2 or len(chunks) < 2:
            for c in chunks:
                bar.update(fn(c))
            return
        with _main_not_rerun(), ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(fn, chunks):
                bar.update(done)


@contextlib.contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Spawned workers re-import the parent's `__main__` script to find functions defined there; ours
    live in the library, and a script without an `if __name__ == "__main__":` guard (a notebook
    export, a tutorial page) would run again in every worker and break the pool. Hide the script's
    path while the workers start, so they import the library only."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not hasattr(main, "__file__"):
        yield  # `python -m pkg`, an interpreter, a notebook: nothing to re-run
        return
    path = main.__file__
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path
