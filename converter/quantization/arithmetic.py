"""The quantization arithmetic, exactly as TFLite applies it (numpy, vectorised).

Asymmetric (affine), used for int8/uint8 activations::

    S = (rmax - rmin) / (qmax - qmin)
    Z = qmax - round(rmax / S)          (equivalently qmin - round(rmin / S))
    q = clamp(round(r / S + Z), qmin, qmax)
    r = (q - Z) * S

Symmetric, used for weights (int8, narrow range [-127, 127]) and 16x8 activations (int16)::

    S = max|r| / qmax,  Z = 0,  q = clamp(round(r / S)),  r = q * S

Zero must be exactly representable (padding, ReLU outputs), so ranges are first widened to
include 0 (``rmin = min(rmin, 0)``, ``rmax = max(rmax, 0)``) and the zero point is the
rounded, clamped ``qmin - rmin / S`` -- TFLite's nudging (``GetAsymmetricQuantizationParams``
and MLIR's ``getNudgedScaleAndZeroPoint``). The scale is not changed by the nudge, so the
represented range moves by at most S/2. A zero-width range gets scale 1 (TFLite does the
same), which represents the one value, 0, exactly and never yields NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero, as C's ``std::round`` in TFLite (numpy rounds half to even)."""
    x = np.asarray(x, dtype=np.float64)
    out: np.ndarray = np.sign(x) * np.floor(np.abs(x) + 0.5)
    return out


_LIMITS = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


def qrange(dtype: str, narrow: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of an integer dtype; ``narrow`` drops the lowest value (symmetric weights)."""
    qmin, qmax = _LIMITS[dtype]
    return (qmin + 1, qmax) if narrow else (qmin, qmax)


@dataclass(frozen=True)
class QParams:
    """Scale and zero point per tensor (0-d arrays) or per channel along ``axis`` (1-d arrays)."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    axis: int | None = None
    narrow: bool = False

    @property
    def qmin(self) -> int:
        return qrange(self.dtype, self.narrow)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.dtype, self.narrow)[1]

    def _shaped(self, arr: np.ndarray, ndim: int) -> np.ndarray:
        if self.axis is None:
            return arr
        shape = [1] * ndim
        shape[self.axis] = -1
        return arr.reshape(shape)

    def quantize(self, r: np.ndarray) -> np.ndarray:
        """q = clamp(round(r / S + Z), qmin, qmax), in the integer dtype."""
        r = np.asarray(r, dtype=np.float64)
        s = self._shaped(self.scale, r.ndim)
        z = self._shaped(self.zero_point, r.ndim)
        q = round_half_away(r / s + z)
        out: np.ndarray = np.clip(q, self.qmin, self.qmax).astype(self.dtype)
        return out

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """r = (q - Z) * S."""
        q = np.asarray(q, dtype=np.float64)
        out: np.ndarray = (q - self._shaped(self.zero_point, q.ndim)) * self._shaped(self.scale, q.ndim)
        return out


def include_zero(rmin: np.ndarray | float, rmax: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Widen ranges so 0 lies inside (TFLite requires it for an exact zero)."""
    return np.minimum(np.asarray(rmin, np.float64), 0.0), np.maximum(np.asarray(rmax, np.float64), 0.0)


def asymmetric(
    rmin: np.ndarray | float, rmax: np.ndarray | float, dtype: str = "int8", axis: int | None = None
) -> QParams:
    """Affine parameters for [rmin, rmax] (per tensor, or per channel with arrays and ``axis``)."""
    lo, hi = include_zero(rmin, rmax)
    qmin, qmax = qrange(dtype)
    width = hi - lo
    scale = np.where(width > 0, width / (qmax - qmin), 1.0)
    zero_point = np.clip(round_half_away(qmin - lo / scale), qmin, qmax).astype(np.int64)
    return QParams(scale, zero_point, dtype, axis)


def symmetric(
    absmax: np.ndarray | float, dtype: str = "int8", axis: int | None = None, narrow: bool | None = None
) -> QParams:
    """Symmetric parameters: S = max|r| / qmax, Z = 0 (int8 weights use the narrow range)."""
    narrow = dtype == "int8" if narrow is None else narrow
    a = np.abs(np.asarray(absmax, dtype=np.float64))
    qmax = qrange(dtype, narrow)[1]
    scale = np.where(a > 0, a / qmax, 1.0)
    return QParams(scale, np.zeros_like(scale, dtype=np.int64), dtype, axis, narrow)


def per_channel_absmax(w: np.ndarray, axis: int) -> np.ndarray:
    """max|w| over every axis but ``axis`` (the output channel)."""
    w = np.asarray(w)
    others = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    return np.asarray(np.max(np.abs(w), axis=others), dtype=np.float64)


def levels_used(values: np.ndarray, params: QParams) -> int:
    """How many distinct integer levels ``values`` occupy once quantized."""
    return int(np.unique(params.quantize(values)).size)
