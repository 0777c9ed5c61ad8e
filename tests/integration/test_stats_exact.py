"""The fast statistics pass records exactly what a plain per-tensor fold of the same activations records.

The reference below runs the model batch by batch like ``collect`` (8 at a time, the rest one by one),
copies every observed tensor out of the interpreter and folds it with the statistics version 4
``TensorStats.update`` arithmetic, written out here. Min, max, count, NaN/Inf count, R and every
histogram bin must be equal, for the builtin kernels and for XNNPACK.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from converter.calibration.stats import BINS, SUBSAMPLE, _Plan, collect, observable
from converter.runtime.interpreter import make_interpreter
from converter.tflite import flatbuffer_schema as tflite_schema


@pytest.fixture(scope="module")
def model() -> bytes:
    """Conv (4,608 values a sample: subsampled), ReLU, a branch that stays zero on the first samples,
    and LOG of it (-inf where it is zero: counted, not binned); batchable."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    w = tf.constant(rng.normal(size=(3, 3, 3, 8)).astype(np.float32))
    b = tf.constant(rng.normal(size=8).astype(np.float32))

    def net(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME") + b)
        late = tf.nn.relu(tf.reduce_mean(y, axis=[1, 2]) - 20.0)  # zero until the samples grow
        return y * 0.5, tf.math.log(late + 0.0)

    fn = tf.function(net, input_signature=[tf.TensorSpec([None, 24, 24, 3], tf.float32)])
    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()]).convert())


def samples(n: int = 21) -> np.ndarray:
    """Growing magnitude (R doubles several times); 21 = two batches of 8 and 5 single samples."""
    rng = np.random.default_rng(7)
    scale = np.geomspace(0.05, 40.0, n).astype(np.float32)
    return (rng.uniform(0, 1, size=(n, 24, 24, 3)).astype(np.float32) * scale[:, None, None, None]).astype(np.float32)


class Ref:
    """One tensor's statistics, folded exactly as statistics version 4 folds them."""

    def __init__(self) -> None:
        self.min, self.max, self.count, self.nonfinite = float("inf"), float("-inf"), 0, 0
        self.half_range, self.doublings, self.zero_batches = 0.0, 0, 0
        self.hist = np.zeros(BINS, dtype=np.int64)

    def update(self, values: np.ndarray, sample: np.ndarray) -> None:
        finite = np.isfinite(values)
        if not finite.all():
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
            self.doublings += 1
        if self.half_range == 0.0:
            self.hist[BINS // 2] += sample.size
            self.zero_batches += 1
            return
        pos = ((sample.astype(np.float64) + self.half_range) * (BINS / (2 * self.half_range))).astype(np.int64)
        self.hist += np.bincount(np.clip(pos, 0, BINS - 1), minlength=BINS)


def reference(model: bytes, delegate: str, x: np.ndarray, batch: int = 8, seed: int = 0) -> dict[int, Ref]:
    tensors = [int(d["index"]) for d in _Plan.of(model, 1, seed).tensors]
    content = model if delegate == "none" else observable(model, tensors)

    def interpreter(rows: int) -> Any:
        it = make_interpreter(
            model_content=content, num_threads=2, delegate=delegate, preserve_all_tensors=delegate == "none"
        )
        it.resize_tensor_input(it.get_input_details()[0]["index"], [rows, 24, 24, 3])
        it.allocate_tensors()
        return it

    refs = {i: Ref() for i in tensors}
    n_batched = len(x) // batch * batch
    chunks = [(x[s : s + batch], batch) for s in range(0, n_batched, batch)]
    chunks += [(x[s : s + 1], 1) for s in range(n_batched, len(x))]
    runners = {batch: interpreter(batch), 1: interpreter(1)}
    for chunk, rows in chunks:
        it = runners[rows]
        it.set_tensor(it.get_input_details()[0]["index"], chunk)
        it.invoke()
        for i in tensors:
            values = it.get_tensor(i).reshape(-1)  # a copy
            k = SUBSAMPLE * rows
            if values.size > k:  # a seeded subsample per tensor, the same for every batch of this size
                idx = np.sort(np.random.default_rng([seed, i]).choice(values.size, size=k, replace=False))
                refs[i].update(values, values[idx])
            else:
                refs[i].update(values, values)
    return refs


@pytest.mark.parametrize("delegate", ["none", "xnnpack"])
def test_statistics_equal_a_plain_fold_bit_for_bit(
    model: bytes, delegate: str, caplog: pytest.LogCaptureFixture
) -> None:
    x = samples()
    with caplog.at_level(logging.DEBUG, logger="converter.calibration.stats"):
        got = collect(model, x, delegate=delegate)
    assert f"calibration statistics from {delegate} kernels, batch 8" in caplog.text
    want = reference(model, delegate, x)
    assert [t.index for t in got.tensors] == list(want) and got.batch == 8 and got.samples == 21
    for t in got.tensors:
        r = want[t.index]
        assert (t.min, t.max, t.count, t.nonfinite, t.half_range) == (
            r.min,
            r.max,
            r.count,
            r.nonfinite,
            r.half_range,
        ), t.name
        assert np.array_equal(t.hist, r.hist), f"{t.name}: {int(np.abs(t.hist - r.hist).sum())} counts differ"
    # The model exercises every path of the fold: subsampling, doubling, all-zero batches, -inf.
    refs = list(want.values())
    assert any(r.count > r.hist.sum() for r in refs)  # subsampled: fewer binned values than seen
    assert any(r.doublings >= 3 for r in refs)
    assert any(r.zero_batches > 0 and r.max > 0 for r in refs)
    assert any(r.nonfinite > 0 for r in refs)
    assert sum(r.hist.sum() for r in refs) > 100_000


def test_observable_adds_outputs_and_changes_nothing_else(model: bytes) -> None:
    tensors = [int(d["index"]) for d in _Plan.of(model, 1, 0).tensors]
    before, after = tflite_schema.load(model), tflite_schema.load(observable(model, tensors))
    outputs = [int(i) for i in before.subgraphs[0].outputs]
    inputs = [int(i) for i in before.subgraphs[0].inputs]
    assert [int(i) for i in after.subgraphs[0].outputs] == outputs + [
        i for i in tensors if i not in outputs and i not in inputs
    ]
    after.subgraphs[0].outputs = before.subgraphs[0].outputs
    assert tflite_schema.dump(after) == tflite_schema.dump(before)
