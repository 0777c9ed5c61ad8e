"""Streaming statistics: exact min/max, lossless histogram growth, fixed memory."""

from __future__ import annotations

import numpy as np
import pytest

from converter.calibration.stats import BINS, TensorStats


def test_streaming_histogram_equals_one_shot_histogram() -> None:
    rng = np.random.default_rng(0)
    # Chunks with growing magnitude force several doublings of the histogram range.
    chunks = [rng.normal(0, scale, size=500).astype(np.float32) for scale in (0.1, 0.5, 3.0, 40.0, 1.0)]
    s = TensorStats(0, "t", (500,))
    for c in chunks:
        s.update(c, c)
    data = np.concatenate(chunks)
    assert (s.min, s.max, s.count) == (float(data.min()), float(data.max()), data.size)
    assert s.hist.shape == (BINS,) and s.hist.sum() == data.size
    assert s.half_range >= max(abs(s.min), abs(s.max))
    # Doubling is exact: every value sits in the bin a one-shot histogram over [-R, R] gives it.
    expected, _ = np.histogram(data.astype(np.float64), bins=BINS, range=(-s.half_range, s.half_range))
    mismatched = np.abs(s.hist - expected).sum()
    assert mismatched <= 2  # a value exactly on a bin edge may land on either side through float rounding


def test_all_zero_then_values() -> None:
    s = TensorStats(0, "t", (4,))
    s.update(np.zeros(4, np.float32), np.zeros(4, np.float32))
    assert s.half_range == 0 and s.hist[BINS // 2] == 4
    v = np.array([-1.0, 2.0], np.float32)
    s.update(v, v)
    assert s.hist.sum() == 6 and (s.min, s.max) == (-1.0, 2.0)


def test_memory_does_not_grow_with_samples() -> None:
    s = TensorStats(0, "t", (1000,))
    rng = np.random.default_rng(1)
    for _ in range(50):
        v = rng.normal(size=1000).astype(np.float32)
        s.update(v, v[:100])
    assert s.hist.nbytes == BINS * 8 and s.count == 50_000 and s.hist.sum() == 5_000


def test_nan_and_inf_are_counted_not_hidden() -> None:
    s = TensorStats(0, "t", (4,))
    a = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    b = np.array([np.nan, 50.0, -60.0, np.inf], np.float32)
    s.update(a, a)
    s.update(b, b)
    assert s.nonfinite == 2 and (s.min, s.max) == (-60.0, 50.0) and np.isfinite(s.half_range)
    from converter.calibration.calibrate import choose_ranges
    from converter.calibration.stats import CalibrationStats
    from converter.errors import CalibrationError
    from converter.recipe import CalibrationSpec

    with pytest.raises(CalibrationError, match="took 2 NaN/Inf values"):
        choose_ranges(CalibrationStats((s,), 2, 1, 99), CalibrationSpec())
