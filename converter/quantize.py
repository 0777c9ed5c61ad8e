"""Calibrate and quantize: the recipe's ranges written into the float reference, then TFLite's quantizer."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .calibrate import Calibration, calibrate
from .recipe import Recipe
from .runtime.preprocess import Preprocess
from .tflite_quantizer import quantize_with_ranges, stock_quantize

log = logging.getLogger(__name__)


def contract_range(prep: Preprocess) -> tuple[float, float]:
    """The model input range that 8-bit data (0..255) maps to under the preprocessing contract.

    Bilinear resizing mixes values convexly, so it cannot leave [0, 255]: only scale and offset matter.
    """
    ends = Preprocess(scale=prep.scale, offset=prep.offset)(np.array([0.0, 255.0], dtype=np.float32))
    return float(ends.min()), float(ends.max())


def prep_json(prep: Preprocess) -> dict[str, Any]:
    return {"resize": list(prep.resize) if prep.resize else None, "scale": prep.scale, "offset": prep.offset}


def quantize(
    float_tflite: bytes, cal_x: np.ndarray, recipe: Recipe, prep: Preprocess, *, eight_bit_data: bool
) -> tuple[bytes, Calibration | None]:
    """The full-integer model and the calibration behind it (None for 16x8, which calibrates itself)."""
    q = recipe.quantization
    if q.activations == "int16":
        model = stock_quantize(
            float_tflite,
            cal_x,
            input_type=q.input_type,
            output_type=q.output_type,
            per_channel=q.per_channel,
            activations=q.activations,
        )
        return model, None
    contract = contract_range(prep) if eight_bit_data else None
    calibration = calibrate(float_tflite, cal_x, recipe.calibration, prep_json(prep), contract)
    if calibration.cache_hit:
        log.info("calibration statistics from the cache (%s…)", calibration.cache_key[:12])
    model = quantize_with_ranges(
        float_tflite,
        calibration.ranges(),
        input_type=q.input_type,
        output_type=q.output_type,
        per_channel=q.per_channel,
    )
    return model, calibration
