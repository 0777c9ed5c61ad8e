"""Activation statistics: run the float reference and observe every float activation tensor.

Streaming, so memory does not grow with the number of samples: per tensor the exact
min/max and element count, and a signed histogram of ``BINS`` bins over [-R, R]. R starts
at the first batch's largest magnitude and doubles when data exceeds it; doubling merges
bin pairs into the middle half, which is exact, so no value is ever lost or re-binned.
Histograms are filled from a fixed, seeded subsample of each tensor's elements
(``SUBSAMPLE`` per sample) -- min/max are always exact over all elements.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CalibrationError
from .progress import Progress
from .runtime.interpreter import make_interpreter
from .runtime.model import TensorInfo, input_arrays

log = logging.getLogger(__name__)

BINS = 4096  # signed: 2048 per side, TensorRT's resolution for |x|
SUBSAMPLE = 4096  # histogram elements per tensor per sample
STATS_VERSION = 4  # bump when anything above changes what is stored


@dataclass
class TensorStats:
    """What calibration saw of one tensor (mutable while collecting; treat as read-only after)."""

    index: int
    name: str
    shape: tuple[int, ...]
    op: str = ""  # the builtin op that writes the tensor ("" for model inputs)
    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0
    nonfinite: int = 0  # NaN/Inf values seen; calibration refuses such a tensor
    half_range: float = 0.0  # R: the histogram covers [-R, R]
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))

    @property
    def written(self) -> bool:
        return self.count > 0

    def bin_edges(self) -> np.ndarray:
        return np.linspace(-self.half_range, self.half_range, BINS + 1)

    def update(self, values: np.ndarray, sample: np.ndarray) -> None:
        """Fold in a batch: ``values`` is the whole tensor (for min/max), ``sample`` a subsample."""
        finite = np.isfinite(values)
        if not finite.all():  # min/max ignore NaN silently: count and drop them, calibration then refuses
            self.nonfinite += int(values.size - finite.sum())
            values, sample = values[finite], sample[np.isfinite(sample)]
            if values.size == 0:
                return
        lo, hi = float(values.min()), float(values.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += values.size
        need = max(abs(lo), abs(hi))
        if need > 0 and self.half_range == 0.0:
            self.half_range = need
        while need > self.half_range:
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist = np.zeros(BINS, dtype=np.int64)
            self.hist[BINS // 4 : 3 * BINS // 4] = merged
            self.half_range *= 2
        if self.half_range == 0.0:  # all zeros so far: R is unknown, keep them in the centre bin
            self.hist[BINS // 2] += sample.size
            return
        pos = ((sample.astype(np.float64) + self.half_range) * (BINS / (2 * self.half_range))).astype(np.int64)
        self.hist += np.bincount(np.clip(pos, 0, BINS - 1), minlength=BINS)


@dataclass(frozen=True)
class CalibrationStats:
    """Statistics for every observed tensor of one model on one calibration set."""

    tensors: tuple[TensorStats, ...]
    samples: int
    batch: int
    input_index: int

    def by_index(self) -> dict[int, TensorStats]:
        return {t.index: t for t in self.tensors}


# Ops whose outputs are loop or branch state (a WHILE's counters, tensor lists and carried values).
CONTROL_FLOW_OPS = frozenset({"WHILE", "IF", "CALL_ONCE"})


def activation_tensors(interpreter: Any) -> list[dict[str, Any]]:
    """Float tensors that carry activations: model inputs and every op's outputs (not constants).

    Only float32 tensors: boolean, integer (loop counters, indices) and other tensors get no range,
    and neither do the outputs of control-flow ops (``CONTROL_FLOW_OPS``).

    Each detail dict gains ``op``: the name of the op that writes it ("" for inputs).
    """
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    wanted = [(d["index"], "") for d in interpreter.get_input_details()]
    for op in interpreter._get_ops_details():  # noqa: SLF001 - op listing; see inspect_model
        if str(op["op_name"]) in CONTROL_FLOW_OPS:
            continue  # loop-carried state and tensor lists, not activations: no int8 kernel will read them
        wanted += [(int(i), str(op["op_name"])) for i in op["outputs"] if int(i) >= 0]
    seen: set[int] = set()
    out = []
    for i, op_name in wanted:
        d = details.get(i)
        if d is not None and i not in seen and np.dtype(d["dtype"]) == np.float32:
            seen.add(i)
            out.append({**d, "op": op_name})
    return out


class _Observer:
    """One interpreter at a fixed batch size, with the subsample indices of each tensor."""

    def __init__(self, model: bytes, batch: int, threads: int, seed: int) -> None:
        self.batch = batch
        self.interpreter = make_interpreter(
            model_content=model, num_threads=threads, delegate="none", preserve_all_tensors=True
        )
        self.input = self.interpreter.get_input_details()[0]
        self.inputs = [TensorInfo.from_details(d) for d in self.interpreter.get_input_details()]
        if batch != 1:
            for info in self.inputs:
                self.interpreter.resize_tensor_input(info.index, [batch, *info.shape[1:]], strict=False)
            self.interpreter.allocate_tensors()
        self.tensors = activation_tensors(self.interpreter)
        self.seed = seed
        self._subsample: dict[int, np.ndarray | None] = {}

    def run(self, x: np.ndarray) -> None:
        """One batch: an array for a single-input model, packed samples for several inputs."""
        for info, values in zip(self.inputs, input_arrays(x, self.inputs), strict=True):
            self.interpreter.set_tensor(info.index, values)
        self.interpreter.reset_all_variables()  # a fused LSTM's state: each sample is a sequence of its own
        self.interpreter.invoke()

    def indices(self, index: int, size: int, rows: int) -> np.ndarray | None:
        """Sorted random element indices for a tensor (None: use all of it)."""
        if index not in self._subsample:
            k = SUBSAMPLE * rows
            chosen = None
            if size > k:
                rng = np.random.default_rng([self.seed, index])
                chosen = np.sort(rng.choice(size, size=k, replace=False))
            self._subsample[index] = chosen
        return self._subsample[index]

    def fold_into(self, stats: dict[int, TensorStats], rows: int) -> None:
        for d in self.tensors:
            view = self.interpreter.tensor(d["index"])().reshape(-1)  # a view: no copy
            idx = self.indices(d["index"], view.size, rows)
            stats[d["index"]].update(view, view if idx is None else view[idx])


def _pick_batch(model: bytes, single: _Observer, x: np.ndarray, threads: int, seed: int, want: int) -> _Observer | None:
    """A batched observer whose outputs match batch 1 on the first samples, or None."""
    if want <= 1 or len(x) < want:
        return None
    try:
        batched = _Observer(model, want, threads, seed)
        batched.run(x[:want])
        outputs = [d["index"] for d in batched.interpreter.get_output_details()]
        got = [batched.interpreter.get_tensor(i) for i in outputs]
        if any(g.shape[:1] != (want,) for g in got):  # a baked-in batch of 1 merged the rows
            return None
        for row in range(want):
            single.run(x[row : row + 1])
            for i, g in zip(outputs, got, strict=True):
                if not np.allclose(g[row : row + 1], single.interpreter.get_tensor(i), rtol=1e-4, atol=1e-5):
                    return None
        if [d["index"] for d in batched.tensors] != [d["index"] for d in single.tensors]:
            return None
        return batched
    except (RuntimeError, ValueError) as e:  # e.g. a RESHAPE with a hard-coded batch of 1
        log.debug("batched calibration not possible (%s); running one sample at a time", e)
        return None


def collect(
    model: bytes, x: np.ndarray, *, batch: int = 8, threads: int | None = None, seed: int = 0
) -> CalibrationStats:
    """Observe every float activation of ``model`` over the preprocessed samples ``x``."""
    threads = threads or os.cpu_count() or 1
    try:
        single = _Observer(model, 1, threads, seed)
    except (RuntimeError, ValueError) as e:
        raise CalibrationError(f"the float model cannot run in the interpreter: {e}") from e
    batched = _pick_batch(model, single, x, threads, seed, batch)
    stats = {
        d["index"]: TensorStats(d["index"], d["name"], tuple(int(s) for s in d["shape"][1:]), d["op"])
        for d in single.tensors
    }
    n_batched = (len(x) // batch) * batch if batched else 0
    try:
        with Progress("calibrate", len(x)) as progress:
            for start in range(0, n_batched, batch):
                batched.run(x[start : start + batch])  # type: ignore[union-attr]
                batched.fold_into(stats, batch)  # type: ignore[union-attr]
                progress.advance(batch)
            for i in range(n_batched, len(x)):
                single.run(x[i : i + 1])
                single.fold_into(stats, 1)
                progress.advance()
    except (RuntimeError, ValueError) as e:
        raise CalibrationError(f"running the float model on calibration data failed: {e}") from e
    return CalibrationStats(tuple(stats.values()), len(x), batch if batched else 1, int(single.input["index"]))
