"""Range selection: from a tensor's statistics to the [lo, hi] its int8 quantization covers.

- ``minmax``: the observed range (what the stock TFLite converter does).
- ``percentile``: drop the (100 - p)% tails on each side of the signed distribution.
- ``entropy``: TensorRT's threshold T minimising KL(P || Q) between the |x| histogram
  and its quantized version (Migacz, "8-bit Inference with TensorRT", 2017).
- ``mse``: the T minimising the expected squared error, rounding noise inside the range
  (step^2 / 12 per value) plus clipping error outside.
- ``auto``: per tensor, whichever of the four gives the least of that expected error.

The saturating methods give a threshold T and the range [max(min, -T), min(max, T)], so
one-sided (post-ReLU) tensors keep all 256 levels on their side. The number of levels the
search assumes follows from that: 256 over [0, T] for one-sided data, 128 for two-sided.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converter.calibration.stats import BINS, TensorStats

N_CANDIDATES = 160  # thresholds tried per tensor by entropy and mse


@dataclass(frozen=True)
class RangeChoice:
    """The chosen range of one tensor and how it was chosen."""

    lo: float
    hi: float
    method: str
    threshold: float | None = None


def _one_sided(s: TensorStats) -> bool:
    return s.min >= 0 or s.max <= 0


def _abs_hist(s: TensorStats) -> np.ndarray:
    """Histogram of |x| over [0, R] with BINS/2 bins, folded from the signed one."""
    half = BINS // 2
    folded: np.ndarray = s.hist[half:] + s.hist[:half][::-1]
    return folded


def _saturate(s: TensorStats, t: float, method: str) -> RangeChoice:
    return RangeChoice(max(s.min, -t), min(s.max, t), method, t)


def _candidates(s: TensorStats, first_bin: int) -> np.ndarray:
    """Candidate thresholds as bin counts of the |x| histogram, up to the observed max magnitude."""
    half = BINS // 2
    top = int(np.ceil(max(abs(s.min), abs(s.max)) / s.half_range * half)) if s.half_range > 0 else half
    top = min(max(top, first_bin), half)
    return np.unique(np.linspace(first_bin, top, N_CANDIDATES).round().astype(int))


def percentile(s: TensorStats, p: float) -> RangeChoice:
    """Range between the (100 - p)th and pth percentiles (bin edges, outward)."""
    total = s.hist.sum()
    if total == 0 or s.half_range == 0:
        return RangeChoice(s.min, s.max, "percentile")
    cdf = np.cumsum(s.hist) / total
    tail = (100.0 - p) / 100.0
    edges = s.bin_edges()
    lo_bin = int(np.searchsorted(cdf, tail, side="right"))  # first bin where the cdf passes the tail
    hi_bin = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    lo = max(s.min, float(edges[min(lo_bin, BINS - 1)]))
    hi = min(s.max, float(edges[min(hi_bin + 1, BINS)]))
    return RangeChoice(min(lo, hi), max(lo, hi), "percentile")


def entropy(s: TensorStats) -> RangeChoice:
    """TensorRT's KL-divergence threshold search over the |x| histogram."""
    hist = _abs_hist(s).astype(np.float64)
    if hist.sum() == 0 or s.half_range == 0:
        return RangeChoice(s.min, s.max, "entropy")
    # Post-ReLU tensors hold a spike of exact zeros that dominates P and drags T far down
    # (10% clipped on MobileNetV2); flatten it as NVIDIA's pytorch-quantization does.
    hist[0] = hist[1]
    levels = 256 if _one_sided(s) else 128
    bin_width = s.half_range / (BINS // 2)
    best_i, best_kl = None, np.inf
    for i in _candidates(s, levels):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()  # outliers fold into the last bin
        nonzero = p > 0
        # Quantize the first i bins into `levels` groups; spread each group's mass over its nonzero bins.
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=hist[:i], minlength=levels)
        used = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, mass[group] / np.maximum(used[group], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        pn, qn = p[nonzero] / ps, q[nonzero] / qs
        kl = float(np.sum(pn * np.log(pn / np.maximum(qn, 1e-12))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    if best_i is None:
        return RangeChoice(s.min, s.max, "entropy")
    return _saturate(s, (best_i + 0.5) * bin_width, "entropy")


def expected_error(s: TensorStats, lo: np.ndarray, hi: np.ndarray, levels: int = 256) -> np.ndarray:
    """Expected squared error per value of quantizing the histogram into [lo, hi] (arrays of candidates).

    Inside the range a value is off by rounding (step^2 / 12 on average); outside it is clipped.
    """
    edges = s.bin_edges()
    centres = (edges[:-1] + edges[1:]) / 2
    counts = s.hist.astype(np.float64)
    lo = np.minimum(np.asarray(lo, np.float64), 0.0).reshape(-1, 1)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0).reshape(-1, 1)
    step = (hi - lo) / (levels - 1)
    clipped = np.clip(centres[None, :], lo, hi)
    err = np.where(centres[None, :] == clipped, step**2 / 12, (centres[None, :] - clipped) ** 2)
    result: np.ndarray = (err * counts[None, :]).sum(axis=1) / max(counts.sum(), 1.0)
    return result


def mse(s: TensorStats) -> RangeChoice:
    """The threshold with the least expected quantization MSE (rounding + clipping)."""
    if s.hist.sum() == 0 or s.half_range == 0:
        return RangeChoice(s.min, s.max, "mse")
    t = (_candidates(s, 8) + 0.5) * (s.half_range / (BINS // 2))  # [K]
    cost = expected_error(s, np.maximum(s.min, -t), np.minimum(s.max, t))
    # Never wider than observed: the top candidate may exceed max|x| by part of a bin.
    return _saturate(s, float(t[int(np.argmin(cost))]), "mse")


def auto(s: TensorStats, percentile_value: float = 99.99) -> RangeChoice:
    """Per tensor, the method whose range gives the least expected error on the calibration data.

    The candidates differ in shape, not only in width: percentile cuts each tail on its own,
    mse and entropy clip symmetrically, minmax keeps all. Ties keep the simpler method.
    """
    candidates = [minmax(s), percentile(s, percentile_value), entropy(s), mse(s)]
    if s.hist.sum() == 0 or s.half_range == 0:
        return RangeChoice(s.min, s.max, "auto:minmax")
    cost = expected_error(s, np.array([c.lo for c in candidates]), np.array([c.hi for c in candidates]))
    best = candidates[int(np.argmin(cost))]
    return RangeChoice(best.lo, best.hi, f"auto:{best.method}", best.threshold)


def minmax(s: TensorStats) -> RangeChoice:
    return RangeChoice(s.min, s.max, "minmax")


def choose(s: TensorStats, method: str, percentile_value: float = 99.99) -> RangeChoice:
    """Apply ``method`` to one tensor's statistics."""
    if method == "minmax":
        return minmax(s)
    if method == "percentile":
        return percentile(s, percentile_value)
    if method == "entropy":
        return entropy(s)
    if method == "mse":
        return mse(s)
    if method == "auto":
        return auto(s, percentile_value)
    raise ValueError(f"unknown calibration method {method!r}")
