"""The float and the int8 model run at the same time, one on each of two cores.

Evaluation and per-layer analysis run both models on the same samples, one after the other, each on one core
(LiteRT's interpreter defaults to one thread, and the builtin kernels the analysis uses are single-threaded).
LiteRT releases the GIL while a model runs, so the int8 model runs in a worker thread while the float one
runs in the caller: MobileNetV2-224 on 64 samples, 1.20 s one after the other, 0.68 s side by side, with
identical outputs (each interpreter computes alone). On a one-core machine they run one after the other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

A = TypeVar("A")
B = TypeVar("B")


class Pair:
    """Runs ``first`` here and ``second`` in the pair's worker thread; returns both results."""

    def __init__(self, worker: ThreadPoolExecutor | None) -> None:
        self._worker = worker

    def run(self, first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
        if self._worker is None:
            return first(), second()
        pending: Future[B] = self._worker.submit(second)
        try:
            a = first()
        except BaseException:
            pending.exception()  # waits for the worker: it is never left running after an error here
            raise
        return a, pending.result()


@contextmanager
def side_by_side() -> Iterator[Pair]:
    """A ``Pair`` whose worker thread lives as long as the ``with`` block (none on a one-core machine)."""
    if (os.cpu_count() or 1) < 2:
        yield Pair(None)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeconv-int8") as worker:
        yield Pair(worker)
