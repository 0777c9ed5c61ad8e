"""Which clipped tensors the coverage warning names, and the int8 bounds it measures them against."""

from __future__ import annotations

import numpy as np

from converter.analysis.analyze import int_bounds
from converter.analysis.evaluate import coverage_warning


def _layer(name: str, op: str, clipped: float | None, by: float | None) -> dict[str, object]:
    return {"name": name, "op": op, "clipped": clipped, "clipped_by": by}


def test_only_calibrated_ranges_clipped_far_enough_are_named() -> None:
    quiet = [
        _layer("probabilities", "SOFTMAX", 0.08, 0.5),  # a fixed [0, 1) range, not a calibrated one
        _layer("rounding", "ADD", 0.05, 0.001),  # beyond by less than a step or so: rounding, not coverage
        _layer("rare", "CONV_2D", 0.0005, 0.4),  # too few values to matter
        _layer("float", "DEQUANTIZE", None, None),
    ]
    assert coverage_warning(quiet, "the data", str) is None
    loud = [*quiet, _layer("logits", "FULLY_CONNECTED", 0.0094, 0.36), _layer("features", "MEAN", 0.002, 0.05)]
    warning = coverage_warning(loud, "32 samples of the evaluation data", str.upper)
    assert warning is not None
    assert warning.startswith("on 32 samples of the evaluation data, 2 tensor(s) of the int8 model hold values")
    assert "most 'LOGITS' (FULLY_CONNECTED): 0.94% of its values, the farthest 36% of the range's width" in warning


def test_int8_bounds_reach_half_a_step_beyond_the_end_codes() -> None:
    details = {"quantization": (0.5, -28), "dtype": np.int8}
    assert int_bounds(details) == ((-128 + 28 - 0.5) * 0.5, (127 + 28 + 0.5) * 0.5)
    assert int_bounds({"quantization": (0.0, 0), "dtype": np.float32}) is None
