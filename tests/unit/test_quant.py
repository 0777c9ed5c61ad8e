"""The quantization arithmetic: properties that must hold for any range and value."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from converter.quantization.arithmetic import asymmetric, per_channel_absmax, qrange, round_half_away, symmetric

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
dtypes = st.sampled_from(["int8", "uint8"])


def _range(a: float, b: float) -> tuple[float, float]:
    lo, hi = min(a, b), max(a, b)
    assume(max(hi, 0) - min(lo, 0) > 1e-3)
    return lo, hi


def test_formulas_on_known_values() -> None:
    # S = (rmax - rmin) / 255; Z = qmax - round(rmax / S).
    p = asymmetric(-1.0, 3.0, "int8")
    assert float(p.scale) == pytest.approx(4.0 / 255)
    assert int(p.zero_point) == 127 - round(3.0 / (4.0 / 255)) == -64
    assert p.quantize(np.array([-1.0, 0.0, 3.0])).tolist() == [-128, -64, 127]
    u = asymmetric(0.0, 6.0, "uint8")
    assert int(u.zero_point) == 0 and float(u.scale) == pytest.approx(6 / 255)
    s = symmetric(2.54, "int8")  # weights: narrow range, S = max|w| / 127
    assert float(s.scale) == pytest.approx(0.02) and (s.qmin, s.qmax) == (-127, 127)
    assert s.quantize(np.array([-2.54, 0.01, 2.54])).tolist() == [-127, 1, 127]
    assert symmetric(1.0, "int16").qmax == 32767


def test_round_half_away_from_zero() -> None:
    assert round_half_away(np.array([0.5, 1.5, 2.5, -0.5, -2.5])).tolist() == [1, 2, 3, -1, -3]


def test_zero_width_range_has_scale_one_not_nan() -> None:
    p = asymmetric(0.0, 0.0)
    assert float(p.scale) == 1.0 and np.isfinite(p.dequantize(p.quantize(np.zeros(3)))).all()


@given(finite, finite, dtypes, arrays(np.float64, 20, elements=finite))
def test_round_trip_error_at_most_half_a_step_inside_the_range(a: float, b: float, dtype: str, r: np.ndarray) -> None:
    lo, hi = _range(a, b)
    p = asymmetric(lo, hi, dtype)
    s = float(p.scale)
    # The represented range after nudging: [(qmin - Z) S, (qmax - Z) S].
    rep_lo, rep_hi = (p.qmin - int(p.zero_point)) * s, (p.qmax - int(p.zero_point)) * s
    inside = r[(r >= rep_lo) & (r <= rep_hi)]
    err = np.abs(p.dequantize(p.quantize(inside)) - inside)
    assert np.all(err <= s / 2 * (1 + 1e-9) + 1e-12)
    # Nudging moves the range by at most half a step.
    assert rep_lo <= min(lo, 0) + s / 2 + 1e-9 and rep_hi >= max(hi, 0) - s / 2 - 1e-9


@given(finite, finite, dtypes)
def test_zero_is_exact(a: float, b: float, dtype: str) -> None:
    lo, hi = _range(a, b)
    p = asymmetric(lo, hi, dtype)
    assert float(p.dequantize(p.quantize(np.array([0.0])))[0]) == 0.0
    assert qrange(dtype)[0] <= int(p.zero_point) <= qrange(dtype)[1]


@given(finite, finite, arrays(np.float64, 30, elements=finite))
def test_quantize_is_monotonic(a: float, b: float, r: np.ndarray) -> None:
    lo, hi = _range(a, b)
    p = asymmetric(lo, hi)
    order = np.argsort(r, kind="stable")
    q = p.quantize(r[order]).astype(int)
    assert np.all(np.diff(q) >= 0)


@settings(max_examples=50)
@given(arrays(np.float32, (3, 2, 4), elements=st.floats(-50, 50, width=32)), st.integers(0, 2))
def test_per_channel_equals_per_tensor_on_each_channel(w: np.ndarray, axis: int) -> None:
    amax = per_channel_absmax(w, axis)
    per_channel = symmetric(amax, axis=axis)
    q = per_channel.quantize(w)
    for c in range(w.shape[axis]):
        channel = np.take(w, c, axis=axis)
        single = symmetric(float(np.max(np.abs(channel))))
        assert np.array_equal(np.take(q, c, axis=axis), single.quantize(channel))
    lo, hi = w.min(axis=tuple(i for i in range(3) if i != axis)), w.max(axis=tuple(i for i in range(3) if i != axis))
    pa = asymmetric(lo, hi, axis=axis)
    for c in range(w.shape[axis]):
        one = asymmetric(float(lo[c]), float(hi[c]))
        assert np.array_equal(np.take(pa.quantize(w), c, axis=axis), one.quantize(np.take(w, c, axis=axis)))


@given(st.floats(1e-3, 1e3), arrays(np.float64, 20, elements=st.floats(-1, 1)))
def test_symmetric_round_trip(amax: float, unit: np.ndarray) -> None:
    r = unit * amax
    p = symmetric(amax)
    assert np.all(np.abs(p.dequantize(p.quantize(r)) - r) <= float(p.scale) / 2 * (1 + 1e-9))
