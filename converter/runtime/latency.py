"""Latency of one model: warm-up, then timed invocations until enough runs and time have passed.

Past ``runs``, timing goes on for ``min_seconds`` unless ``max_runs`` invocations come first: a model that
runs in 0.05 ms would otherwise be timed 10,000 times where 1,000 give the same percentiles.

numpy + interpreter only. Only ``invoke()`` is timed; the input is set once, as a camera
loop would overwrite it in place.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .model import TFLiteModel, input_arrays, quantize


@dataclass(frozen=True)
class Latency:
    """Milliseconds per invocation and how they were measured."""

    runs: int
    warmup: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    threads: int | None
    delegate: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    model: TFLiteModel,
    sample: np.ndarray | None = None,
    *,
    warmup: int = 10,
    runs: int = 50,
    min_seconds: float = 1.0,
    max_runs: int = 100_000,
    threads: int | None = None,
) -> Latency:
    """Time ``model`` on ``sample`` (float, the input's shape, or packed for several inputs; zeros when None).

    Zeros are float32 for float and quantized inputs, and of the input's own dtype for an integer input
    without a scale (id 0, which every lookup table has).
    """
    interpreter = model.interpreter
    values: list[np.ndarray | None] = [None] * len(model.inputs)
    if sample is not None:
        values = list(input_arrays(sample, model.inputs))
    for info, given in zip(model.inputs, values, strict=True):
        zeros = np.float32 if info.scale is not None else info.dtype
        x = np.zeros(info.shape, dtype=zeros) if given is None else given.reshape(info.shape)
        interpreter.set_tensor(info.index, quantize(x, info))
    for _ in range(warmup):
        interpreter.invoke()
    times: list[int] = []
    start = time.perf_counter_ns()
    deadline = start + int(min_seconds * 1e9)
    while len(times) < runs or (len(times) < max_runs and time.perf_counter_ns() < deadline):
        t0 = time.perf_counter_ns()
        interpreter.invoke()
        times.append(time.perf_counter_ns() - t0)
    return summarize(times, warmup=warmup, threads=threads, delegate=model.delegate)


def summarize(times_ns: list[int], *, warmup: int, threads: int | None, delegate: str) -> Latency:
    """Percentiles of timed invocations (nanoseconds), for any runtime that was timed."""
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return Latency(
        runs=len(ms),
        warmup=warmup,
        min_ms=float(ms.min()),
        mean_ms=float(ms.mean()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        std_ms=float(ms.std()),
        threads=threads,
        delegate=delegate,
    )
