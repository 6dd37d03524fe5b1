"""A process pool over chunks of raw records for the gate's per-row work: both cores, streaming, bounded memory.

The gate's process only reads the file and splits it into chunks of raw records (bytes); worker processes decode
and parse the rows and run every stage's chunk worker (the D checks, the template stage's renders, the token
pipeline) — the same ``_ChunkWork`` the gate runs in its own process on a small file — and the results come back in
submission order, so the gate's order-dependent bookkeeping sees exactly what the serial path gives it. At most
``2 * jobs`` chunks are in flight: when the reader is faster than the workers it waits for the oldest chunk, so
memory stays bounded by the chunk size whatever the file size.

Workers are forked from the gate's process and inherit the loaded template and tokenizer (no reload per worker);
where ``fork`` is unavailable the pool is not used and the gate stays serial.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor

_PIPELINE = None  # the chunk worker a forked worker process inherits (``process(chunk, first)``)


def _work(args):
    chunk, first = args
    return _PIPELINE.process(chunk, first)


def fork_available() -> bool:
    return "fork" in mp.get_all_start_methods()


class ChunkPool:
    """Submit chunks, get their results back in order; ``submit`` returns the chunks that are already done."""

    def __init__(self, pipeline, jobs: int, *, max_in_flight: int | None = None):
        global _PIPELINE
        if not fork_available():
            raise RuntimeError("the process pool needs the fork start method")
        _PIPELINE = pipeline
        # the Rust tokenizer's own thread pool must not be used inside forked workers (each worker is one core); set
        # while the workers fork, and restored at close so that the gate's process keeps its own setting
        self._env = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # the workers inherit this process's heap; without a freeze every full collection in a worker would walk (and
        # so copy, page by page) all of it. Frozen objects are never collected; unfrozen again at close.
        gc.freeze()
        self.jobs = jobs
        self.max_in_flight = max_in_flight or 2 * jobs
        self._ex = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("fork"))
        self._pending: deque[Future] = deque()

    def submit(self, chunk, first: int) -> Iterator[list]:
        """Yields the results of finished chunks, in submission order."""
        self._pending.append(self._ex.submit(_work, (chunk, first)))
        # hand back whatever is finished at the head, and block while too much is in flight
        while self._pending and (self._pending[0].done() or len(self._pending) > self.max_in_flight):
            yield self._pending.popleft().result()

    def drain(self) -> Iterator[list]:
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)
        gc.unfreeze()
        if self._env is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = self._env
