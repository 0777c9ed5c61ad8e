"""Range selection methods on distributions whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from converter.calibration.ranges import choose, entropy, minmax, mse, percentile
from converter.calibration.stats import TensorStats


def _stats(values: np.ndarray) -> TensorStats:
    s = TensorStats(0, "t", values.shape)
    v = values.astype(np.float32)
    s.update(v, v)
    return s


@pytest.fixture(scope="module")
def relu_with_outliers() -> TensorStats:
    rng = np.random.default_rng(0)
    body = np.abs(rng.normal(0, 1.0, 200_000))
    return _stats(np.concatenate([body, [40.0, 55.0, 60.0]]))


@pytest.fixture(scope="module")
def gaussian() -> TensorStats:
    return _stats(np.random.default_rng(1).normal(0, 1.0, 200_000))


def test_minmax_is_the_observed_range(relu_with_outliers: TensorStats) -> None:
    r = minmax(relu_with_outliers)
    assert (r.lo, r.hi) == (relu_with_outliers.min, 60.0)


def test_percentile_cuts_the_tails(gaussian: TensorStats, relu_with_outliers: TensorStats) -> None:
    r = percentile(gaussian, 99.0)
    # Two-sided 99th percentiles of N(0, 1): about ±2.33 (bin resolution ~ 0.002 here).
    assert r.hi == pytest.approx(2.33, abs=0.05) and r.lo == pytest.approx(-2.33, abs=0.05)
    one_sided = percentile(relu_with_outliers, 99.99)
    assert one_sided.lo == pytest.approx(relu_with_outliers.min) and 3.0 < one_sided.hi < 5.0
    assert percentile(gaussian, 100.0).hi == pytest.approx(gaussian.max, rel=1e-3)


def test_entropy_ignores_rare_outliers(relu_with_outliers: TensorStats) -> None:
    r = entropy(relu_with_outliers)
    assert r.lo == pytest.approx(relu_with_outliers.min)  # one-sided data keeps its lower end
    assert r.threshold is not None and 2.5 < r.hi < 12.0, r


def test_mse_balances_rounding_and_clipping(relu_with_outliers: TensorStats, gaussian: TensorStats) -> None:
    # Three huge outliers cost more squared error clipped (~6,750) than the rounding noise
    # their range adds to 200,000 values (~900): MSE keeps them, unlike entropy/percentile.
    assert mse(relu_with_outliers).hi > 45.0
    # Laplace(b=1): the 8-bit optimum is near 9.9 b (Banner et al., 2019), below the max (~12).
    laplace = _stats(np.random.default_rng(3).laplace(0, 1.0, 200_000))
    r = mse(laplace)
    assert 7.0 < r.hi < 11.5 < laplace.max, r
    g = mse(gaussian)
    # Known optimum for a Gaussian with 8 bits is around 3-4 sigma.
    assert 2.5 < g.hi < 5.0 and g.lo == pytest.approx(-g.hi, rel=0.05), g


def test_saturating_methods_never_widen(gaussian: TensorStats) -> None:
    for method in ("percentile", "entropy", "mse"):
        r = choose(gaussian, method)
        assert gaussian.min <= r.lo <= 0 <= r.hi <= gaussian.max, (method, r)


def test_without_outliers_entropy_keeps_most_of_the_range() -> None:
    uniform = _stats(np.random.default_rng(2).uniform(0, 1, 100_000))
    assert entropy(uniform).hi > 0.9 and mse(uniform).hi > 0.9


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown calibration method 'kl'"):
        choose(_stats(np.ones(3)), "kl")


def test_auto_picks_the_least_expected_error(relu_with_outliers: TensorStats, gaussian: TensorStats) -> None:
    from converter.calibration.ranges import auto, expected_error

    for s in (relu_with_outliers, gaussian, _stats(np.random.default_rng(3).laplace(0, 1.0, 100_000))):
        chosen = auto(s)
        assert chosen.method.startswith("auto:")
        others = [choose(s, m) for m in ("minmax", "percentile", "entropy", "mse")]
        costs = expected_error(s, np.array([o.lo for o in others]), np.array([o.hi for o in others]))
        mine = expected_error(s, np.array([chosen.lo]), np.array([chosen.hi]))[0]
        assert mine <= costs.min() + 1e-12
