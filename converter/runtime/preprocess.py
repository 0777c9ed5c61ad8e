"""The one preprocessing contract: resize, then ``x * scale + offset``.

Calibration, host evaluation and the on-device runtime all call this module,
so a model sees the same numbers wherever it runs. numpy only: this file is
shipped to devices inside the runtime bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Preprocess:
    """``resize`` to (height, width) with bilinear sampling, then ``x * scale + offset``."""

    resize: tuple[int, int] | None = None
    scale: float = 1.0
    offset: float = 0.0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Apply the contract to a batch shaped [N, H, W, C] (or any [N, ...] without resize)."""
        x = np.asarray(batch, dtype=np.float32)
        if self.resize is not None and tuple(x.shape[1:3]) != tuple(self.resize):
            x = resize_bilinear(x, self.resize)
        if self.scale != 1.0:
            x = x * np.float32(self.scale)
        if self.offset != 0.0:
            x = x + np.float32(self.offset)
        return x.astype(np.float32, copy=False)


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights for one axis, half-pixel centres as in tf.image.resize."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo).astype(np.float32)
    return lo, hi, w


def resize_bilinear(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of [N, H, W, C] to [N, size[0], size[1], C] (no antialiasing).

    Matches ``tf.image.resize(..., method='bilinear', antialias=False)`` so a model
    trained with TensorFlow's resize sees the same pixels here.
    """
    x = np.asarray(batch, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"resize expects [N, H, W, C] samples, got shape {x.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    y0, y1, wy = _axis_weights(x.shape[1], out_h)
    x0, x1, wx = _axis_weights(x.shape[2], out_w)
    wy = wy[None, :, None, None]
    wx = wx[None, None, :, None]
    # Along W first, on the input's own rows (small), then those rows picked and blended along H: the same
    # float32 operations in the same order as blending the four corners per output pixel, without the
    # full-size gathers (0.1-0.4 s less on 200 samples to 224x224).
    across = x[:, :, x0] * (1 - wx) + x[:, :, x1] * wx
    top = across[:, y0]
    bottom = across[:, y1]
    out = np.empty((x.shape[0], out_h, out_w, x.shape[3]), dtype=np.float32)
    np.multiply(top, 1 - wy, out=out)
    np.multiply(bottom, wy, out=bottom)
    np.add(out, bottom, out=out)
    return out
