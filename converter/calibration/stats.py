"""Activation statistics: run the float reference and observe every float activation tensor.

Streaming, so memory does not grow with the number of samples: per tensor the exact
min/max and element count, and a signed histogram of ``BINS`` bins over [-R, R]. R starts
at the first batch's largest magnitude and doubles when data exceeds it; doubling merges
bin pairs into the middle half, which is exact, so no value is ever lost or re-binned.
Histograms are filled from a fixed, seeded subsample of each tensor's elements
(``SUBSAMPLE`` per sample) -- min/max are always exact over all elements.

Which kernels compute the activations (``DELEGATE``): XNNPACK, LiteRT's default CPU delegate and
what the float model runs on elsewhere in edgeconv, on the model rewritten so that every observed
tensor is a graph output (``observable``). It is about 3x faster on MobileNetV2-224 than TFLite's
builtin kernels, which statistics version 4 used, but sums in another order: min/max differ from
theirs in the last float32 bits (up to about 1e-5 relative on the benchmark models), so R and a few
histogram bins can differ too (a value a hair above R doubles it). Run to run and for any thread
count the statistics are identical. A model XNNPACK cannot run at all falls back to the builtin
kernels; ``collect(..., delegate="none")`` asks for them (bit-identical to version 4).
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.errors import CalibrationError, DataError
from converter.progress import Progress, named
from converter.runtime.interpreter import make_interpreter
from converter.runtime.model import TensorInfo, TFLiteModel, input_arrays, quantize

log = logging.getLogger(__name__)

BINS = 4096  # signed: 2048 per side, TensorRT's resolution for |x|
SUBSAMPLE = 4096  # histogram elements per tensor per sample
STATS_VERSION = 5  # bump when anything above changes what is stored (5: XNNPACK computes the activations)
DELEGATE = "xnnpack"  # or "none": TFLite's builtin kernels (see above)


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

    def observe(self, lo: float, hi: float, size: int) -> None:
        """Fold in a batch's finite extremes and size; grows R (doubling) until it covers them."""
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += size
        need = max(abs(lo), abs(hi))
        if need > 0 and self.half_range == 0.0:
            self.half_range = need
        while need > self.half_range:  # in place: while collecting, hist is a row of one matrix
            merged = self.hist.reshape(-1, 2).sum(axis=1)
            self.hist[:] = 0
            self.hist[BINS // 4 : 3 * BINS // 4] = merged
            self.half_range *= 2

    def update(self, values: np.ndarray, sample: np.ndarray) -> None:
        """Fold in a batch: ``values`` is the whole tensor (for min/max), ``sample`` a subsample."""
        finite = np.isfinite(values)
        if not finite.all():  # min/max ignore NaN silently: count and drop them, calibration then refuses
            self.nonfinite += int(values.size - finite.sum())
            values, sample = values[finite], sample[np.isfinite(sample)]
            if values.size == 0:
                return
        self.observe(float(values.min()), float(values.max()), values.size)
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


def _field(data: bytes, table: int, slot: int) -> int:
    """Where a flatbuffer table's field is stored (0: absent); ``slot`` is 4 + 2 * field id."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    if slot >= struct.unpack_from("<H", data, vtable)[0]:
        return 0
    offset: int = struct.unpack_from("<H", data, vtable + slot)[0]
    return table + offset if offset else 0


def _deref(data: bytes, at: int) -> int:
    """The position a uoffset stored at ``at`` points to (offsets are relative to where they are stored)."""
    target: int = at + struct.unpack_from("<I", data, at)[0]
    return target


def _int_vector(data: bytes, at: int) -> list[int]:
    vector = _deref(data, at)
    n = struct.unpack_from("<I", data, vector)[0]
    return list(struct.unpack_from(f"<{n}i", data, vector + 4))


# Slots in the TFLite schema (fields are never renumbered): Model.subgraphs is field 2,
# SubGraph.inputs field 1, SubGraph.outputs field 2.
MODEL_SUBGRAPHS, SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS = 8, 6, 8


def observable(model: bytes, indices: list[int]) -> bytes:
    """``model`` with the tensors ``indices`` appended to its first subgraph's outputs (inputs excepted).

    A delegate keeps the values of graph outputs but not of the tensors inside the part it runs
    (``preserve_all_tensors`` works only without one), so making every observed tensor an output
    lets XNNPACK run the whole model and still show each of them. Tensor indices do not change.

    The new outputs vector is appended to the flatbuffer and the subgraph's field pointed at it
    (offsets point forward, so the append is valid); every other byte stays. Unpacking the model
    into objects (``tflite_schema``) costs several times its size in memory (11 MB for the demo's
    1.6 MB), which made the peak of a small model's statistics pass exceed version 4's.
    """
    subgraphs = _field(model, _deref(model, 0), MODEL_SUBGRAPHS)
    graph = _deref(model, _deref(model, subgraphs) + 4) if subgraphs else 0  # the vector's first table
    outputs_at = _field(model, graph, SUBGRAPH_OUTPUTS) if graph else 0
    if not outputs_at:
        raise ValueError("the model has no subgraph with outputs")
    inputs_at = _field(model, graph, SUBGRAPH_INPUTS)
    outputs = _int_vector(model, outputs_at)
    skip = set(outputs) | set(_int_vector(model, inputs_at) if inputs_at else [])
    wanted = outputs + [i for i in indices if i not in skip]
    data = bytearray(model)
    data += bytes(-len(data) % 4)  # the vector's length word is 4-aligned
    vector = len(data)
    data += struct.pack(f"<I{len(wanted)}i", len(wanted), *wanted)
    struct.pack_into("<I", data, outputs_at, vector - outputs_at)
    return bytes(data)


@dataclass
class _Plan:
    """What to observe and how to run it, read once from the unmodified model."""

    model: bytes
    threads: int
    seed: int
    tensors: list[dict[str, Any]]  # activation_tensors(): the observed tensors, in order
    outputs: list[int]  # the model's own outputs (compared between batch sizes)
    _observable: bytes | None = None

    @classmethod
    def of(cls, model: bytes, threads: int, seed: int) -> _Plan:
        probe = make_interpreter(model_content=model, num_threads=1, delegate="none")
        return cls(
            model, threads, seed, activation_tensors(probe), [int(d["index"]) for d in probe.get_output_details()]
        )

    def model_for(self, delegate: str) -> bytes:
        """The model as ``delegate`` runs it: rewritten by ``observable`` (once) for a delegate."""
        if delegate == "none":
            return self.model
        if self._observable is None:
            self._observable = observable(self.model, [int(d["index"]) for d in self.tensors])
        return self._observable


class _Observer:
    """One interpreter at a fixed batch size, with the subsample indices of each tensor.

    ``delegate="none"`` runs the builtin kernels with every tensor preserved; ``"xnnpack"`` runs
    the model rewritten by ``observable`` with LiteRT's default CPU delegate.
    """

    def __init__(self, plan: _Plan, batch: int, delegate: str) -> None:
        self.batch = batch
        self.delegate = delegate
        self.interpreter = make_interpreter(
            model_content=plan.model_for(delegate),
            num_threads=plan.threads,
            delegate=delegate,
            preserve_all_tensors=delegate == "none",
        )
        self.input = self.interpreter.get_input_details()[0]
        self.inputs = [TensorInfo.from_details(d) for d in self.interpreter.get_input_details()]
        if batch != 1:
            for info in self.inputs:
                self.interpreter.resize_tensor_input(info.index, [batch, *info.shape[1:]], strict=False)
            self.interpreter.allocate_tensors()
        if delegate == "none":
            self.tensors = activation_tensors(self.interpreter)
            if [d["index"] for d in self.tensors] != [d["index"] for d in plan.tensors]:
                raise ValueError("the interpreter lists other activation tensors than the model")
        else:  # a delegated interpreter lists its delegate's node among the ops: take the plan's tensors
            self.tensors = plan.tensors
        self.seed = plan.seed
        self._pieces: dict[int, list[np.ndarray] | None] = {}

    def run(self, x: np.ndarray) -> None:
        """One batch: an array for a single-input model, packed samples for several inputs.

        Each input gets its own dtype (``quantize``: float32 samples pass as they are, integer ids are
        cast to an integer input's dtype after a range check), never float32 for all.
        """
        for info, values in zip(self.inputs, input_arrays(x, self.inputs), strict=True):
            self.interpreter.set_tensor(info.index, quantize(values, info))
        self.interpreter.reset_all_variables()  # a fused LSTM's state: each sample is a sequence of its own
        self.interpreter.invoke()

    def pieces(self, index: int, size: int, rows: int) -> list[np.ndarray] | None:
        """A tensor's seeded subsample, as indices inside each ``SCAN_CHUNK`` of it (None: use all of it).

        The subsample is a sorted random choice of ``SUBSAMPLE * rows`` elements, fixed per tensor.
        """
        if index not in self._pieces:
            found = None
            k = SUBSAMPLE * rows
            if size > k:
                rng = np.random.default_rng([self.seed, index])
                idx = np.sort(rng.choice(size, size=k, replace=False))
                cuts = np.searchsorted(idx, np.arange(0, size + SCAN_CHUNK, SCAN_CHUNK))
                found = [idx[cuts[j] : cuts[j + 1]] - start for j, start in enumerate(range(0, size, SCAN_CHUNK))]
            self._pieces[index] = found
        return self._pieces[index]

    def views(self) -> list[np.ndarray]:
        """Every observed tensor of the last batch, flat (views into the interpreter: no copies)."""
        return [self.interpreter.tensor(d["index"])().reshape(-1) for d in self.tensors]


SCAN_CHUNK = 1 << 17  # a large tensor is read in pieces that stay in L2 for min, max and the gather


def _scan(view: np.ndarray, pieces: list[np.ndarray] | None) -> tuple[float, float, np.ndarray]:
    """(min, max, subsample) of a tensor; a large one is read from memory once instead of three times.

    NaN propagates through every ``reduce`` (min and max of the pieces, then of their results).
    """
    if pieces is None:
        return float(np.minimum.reduce(view)), float(np.maximum.reduce(view)), view
    lows, highs, parts = [], [], []
    for start, inside in zip(range(0, view.size, SCAN_CHUNK), pieces, strict=True):
        piece = view[start : start + SCAN_CHUNK]
        lows.append(np.minimum.reduce(piece))
        highs.append(np.maximum.reduce(piece))
        parts.append(piece[inside])
    lo, hi = float(np.minimum.reduce(np.array(lows))), float(np.maximum.reduce(np.array(highs)))
    return lo, hi, np.concatenate(parts)


FOLD_CHUNK = 1 << 16  # histogram values binned at once: bounds the fold's scratch memory (1 MB)


class _Folder:
    """Folds a batch of every observed tensor into its ``TensorStats``, as ``TensorStats.update`` would.

    Per tensor only min and max touch every element (NaN and Inf show there, so the finite check
    costs nothing when there are none); the subsamples of many tensors are binned by one ``bincount``
    with the same float64 arithmetic ``update`` uses, so every count is the same. The histograms live
    in one matrix whose rows are the tensors' ``hist`` while collecting (doubling is in place).
    """

    def __init__(self, stats: list[TensorStats]) -> None:
        self.stats = stats
        self.hist = np.zeros((len(stats), BINS), dtype=np.int64)
        for s, row in zip(stats, self.hist, strict=True):
            s.hist = row
        self._values = np.empty(0, dtype=np.float64)
        self._pos = np.empty(0, dtype=np.int64)

    def fold(self, observer: _Observer, rows: int) -> None:
        pending: list[tuple[int, np.ndarray, float]] = []  # (row, subsample, R) waiting to be binned
        size = 0
        for row, (s, d, view) in enumerate(zip(self.stats, observer.tensors, observer.views(), strict=True)):
            lo, hi, sample = _scan(view, observer.pieces(d["index"], view.size, rows))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                s.update(view, sample)  # the rare path: count and drop NaN/Inf exactly as update does
                continue
            s.observe(lo, hi, view.size)
            if s.half_range == 0.0:
                s.hist[BINS // 2] += sample.size
                continue
            if pending and size + sample.size > FOLD_CHUNK:
                self._bin(pending, size)
                pending, size = [], 0
            pending.append((row, sample, s.half_range))
            size += sample.size
        if pending:
            self._bin(pending, size)

    def _bin(self, pending: list[tuple[int, np.ndarray, float]], size: int) -> None:
        """``update``'s bin of every value, ``(v + R) * (BINS / (2 * R))`` in float64, for many tensors at once."""
        if self._values.size < size:
            self._values = np.empty(size, dtype=np.float64)
            self._pos = np.empty(size, dtype=np.int64)
        values, pos = self._values[:size], self._pos[:size]
        start = 0
        for _, sample, half_range in pending:
            end = start + sample.size
            part = values[start:end]
            part[:] = sample
            part += half_range
            part *= BINS / (2 * half_range)
            start = end
        np.copyto(pos, values, casting="unsafe")  # truncation, as astype(np.int64)
        np.clip(pos, 0, BINS - 1, out=pos)
        first, last = pending[0][0], pending[-1][0]  # rows ascend: the group covers hist[first : last + 1]
        start = 0
        for row, sample, _ in pending:  # each tensor's bins into its own row
            end = start + sample.size
            pos[start:end] += (row - first) * BINS
            start = end
        rows = self.hist[first : last + 1]
        rows += np.bincount(pos, minlength=rows.size).reshape(rows.shape)

    def done(self) -> None:
        """Give every tensor a histogram of its own again."""
        for s in self.stats:
            s.hist = s.hist.copy()


def _single(plan: _Plan, delegate: str, first: np.ndarray) -> _Observer:
    """The batch-1 observer: delegated when the delegate takes the rewritten model, else builtin kernels."""
    if delegate != "none":
        try:
            single = _Observer(plan, 1, delegate)
            single.run(first)
            return single
        except (RuntimeError, ValueError) as e:
            log.debug("calibration with %s not possible (%s); using the builtin kernels", delegate, e)
    return _Observer(plan, 1, "none")


def _batched(plan: _Plan, delegate: str, x: np.ndarray, expected: list[list[np.ndarray]]) -> _Observer | None:
    """A batched observer whose outputs match batch 1's (``expected``: per sample, per output), or None."""
    want = len(expected)
    try:
        batched = _Observer(plan, want, delegate)
        batched.run(x[:want])
        got = [batched.interpreter.get_tensor(i) for i in plan.outputs]
        if any(g.shape[:1] != (want,) for g in got):  # a baked-in batch of 1 merged the rows
            return None
        for row, outputs in enumerate(expected):
            for g, e in zip(got, outputs, strict=True):
                if not np.allclose(g[row : row + 1], e, rtol=1e-4, atol=1e-5):
                    return None
        return batched
    except (RuntimeError, ValueError) as e:  # e.g. a RESHAPE with a hard-coded batch of 1
        log.debug("batched calibration not possible (%s); running one sample at a time", e)
        return None


# What LiteRT's lookup kernels (GATHER, EMBEDDING_LOOKUP, GATHER_ND, ONE_HOT's ...) say about an index that
# is not in their table: "gather index out of bounds", "Embedding Lookup: index out of bounds. Got 60, ...".
_INDEX_REFUSED = re.compile(r"out of bounds", re.IGNORECASE)


class IndexRefused(DataError):
    """A kernel of the float model refused an index that integer input data holds (an id beyond an embedding).

    The data's fault, not the model's or edgeconv's (exit 2): ``sample`` is the sample's place among the
    samples run, so a caller that knows their rows in the file names the row (``pipeline``); ``reason``
    is the interpreter's own sentence.
    """

    def __init__(self, sample: int, reason: str) -> None:
        super().__init__(f"sample {sample} holds an index the model cannot look up ({reason}); {INDEX_ADVICE}")
        self.sample = sample
        self.reason = reason


INDEX_ADVICE = (
    "every id or index must be below the size of the table it indexes (an embedding's vocabulary): check that "
    "the data was made with this model's tokenizer or vocabulary"
)


def refused_index(model: bytes, x: np.ndarray, error: Exception, begin: int = 0) -> IndexRefused | None:
    """``IndexRefused`` for the first sample from ``begin`` on that ``model`` refuses, or None.

    Only when ``error`` is a lookup kernel's "out of bounds" and the model has integer inputs: then the
    samples are run one at a time (builtin kernels) to find the one, which costs nothing on a run that
    succeeds. Any other failure stays what it was (None: the caller raises its own error).
    """
    if not _INDEX_REFUSED.search(str(error)):
        return None
    runner = TFLiteModel(model_content=model, delegate="none")
    if not any(np.dtype(i.dtype).kind in "biu" and i.scale is None for i in runner.inputs):
        return None
    for row in range(begin, len(x)):
        try:
            runner.run(*input_arrays(x[row : row + 1], runner.inputs))
        except (RuntimeError, ValueError) as e:
            # LiteRT glues the kernel's sentence to its own ("...[0, 49]Node number 1 (...) failed to invoke.")
            said = re.sub(r"(?<=\S)(Node number)", r"; \1", " ".join(str(e).split()))
            return IndexRefused(row, said.rstrip("."))
    return None


def _run_failed(model: bytes, x: np.ndarray, error: Exception, begin: int) -> CalibrationError | IndexRefused:
    """The error for a statistics pass that failed at sample ``begin`` or later (see ``refused_index``)."""
    return refused_index(model, x, error, begin) or CalibrationError(
        f"running the float model on calibration data failed: {error}"
    )


@named("statistics pass (LiteRT interpreter)")
def collect(
    model: bytes,
    x: np.ndarray,
    *,
    batch: int = 8,
    threads: int | None = None,
    seed: int = 0,
    delegate: str | None = None,
) -> CalibrationStats:
    """Observe every float activation of ``model`` over the preprocessed samples ``x``.

    ``delegate``: ``xnnpack`` (``DELEGATE``, the default; a model it cannot run falls back) or
    ``none`` (TFLite's builtin kernels). See the module docstring for what the choice changes.
    At most one interpreter exists at a time, so memory is one batch of every observed tensor.
    """
    threads = threads or os.cpu_count() or 1
    try:
        plan = _Plan.of(model, threads, seed)
        first = _single(plan, delegate or DELEGATE, x[:1])
    except (RuntimeError, ValueError) as e:
        raise CalibrationError(f"the float model cannot run in the interpreter: {e}") from e
    single: _Observer | None = first
    used, input_index = first.delegate, int(first.input["index"])
    batched = None
    if batch > 1 and len(x) >= batch:
        expected = []
        try:
            for row in range(batch):
                first.run(x[row : row + 1])
                expected.append([first.interpreter.get_tensor(i) for i in plan.outputs])
        except (RuntimeError, ValueError) as e:
            raise _run_failed(model, x, e, 0) from e
        single = None
        del first  # free it before the batched interpreter exists
        batched = _batched(plan, used, x, expected)
    stats = [TensorStats(d["index"], d["name"], tuple(int(s) for s in d["shape"][1:]), d["op"]) for d in plan.tensors]
    folder = _Folder(stats)
    n_batched = (len(x) // batch) * batch if batched else 0
    done = 0  # samples folded: a failure is in the batch (or sample) after them
    try:
        with Progress("calibrate", len(x)) as progress:
            for start in range(0, n_batched, batch):
                batched.run(x[start : start + batch])  # type: ignore[union-attr]
                folder.fold(batched, batch)  # type: ignore[arg-type]
                progress.advance(batch)
                done += batch
            batched = None
            for i in range(n_batched, len(x)):
                single = single or _Observer(plan, 1, used)
                single.run(x[i : i + 1])
                folder.fold(single, 1)
                progress.advance()
                done += 1
    except (RuntimeError, ValueError) as e:
        raise _run_failed(model, x, e, done) from e
    folder.done()
    log.debug("calibration statistics from %s kernels, batch %d", used, batch if n_batched else 1)
    return CalibrationStats(tuple(stats), len(x), batch if n_batched else 1, input_index)
