"""Bias correction removes the mean output shift that rounding the weights causes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converter.calibration.bias_correction import correct_biases
from converter.calibration.calibrate import choose_ranges, ranges_of
from converter.calibration.stats import collect
from converter.quantization.tflite_quantizer import quantize_with_ranges
from converter.recipe import CalibrationSpec
from converter.runtime.model import TFLiteModel
from converter.sources.load import load_model
from converter.tflite.flatbuf import linear_ops


def _dense_model(folder: Path) -> Path:
    """Dense 64 -> 8 with per-tensor weights: one large weight makes the step coarse for the rest."""
    import keras

    rng = np.random.default_rng(3)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(8)])
    w = rng.normal(scale=0.05, size=(64, 8)).astype(np.float32)
    w[0, 0] = 4.0
    model.layers[0].set_weights([w, np.zeros(8, np.float32)])
    model.save(folder / "dense.keras")
    return folder / "dense.keras"


def test_the_mean_shift_of_rounded_weights_is_cancelled(tmp_path: Path) -> None:
    model = load_model(_dense_model(tmp_path))
    rng = np.random.default_rng(0)
    cal = rng.uniform(5, 10, size=(256, 64)).astype(np.float32)  # inputs with a large mean
    test = rng.uniform(5, 10, size=(512, 64)).astype(np.float32)
    ranges = ranges_of(choose_ranges(collect(model.float_tflite, cal), CalibrationSpec(method="minmax")))

    def quantize(source: bytes) -> bytes:
        return quantize_with_ranges(source, ranges, input_type="float32", output_type="float32", per_channel=False)

    plain = quantize(model.float_tflite)
    corrected_float, fixes = correct_biases(model.float_tflite, plain, cal)
    corrected = quantize(corrected_float)
    reference = TFLiteModel(model_content=model.float_tflite).predict(test)[0]

    def mean_shift(quant: bytes) -> np.ndarray:
        return np.asarray(np.abs((TFLiteModel(model_content=quant).predict(test)[0] - reference).mean(axis=0)))

    before, after = mean_shift(plain), mean_shift(corrected)
    assert len(fixes) == 1 and fixes[0].op == "FULLY_CONNECTED" and fixes[0].max_shift_steps > 1
    assert before.mean() > 5 * after.mean(), (before, after)
    # The int8 weights are untouched (their scales depend on the weights only); a bias was added,
    # since the converter had dropped the all-zero one.
    assert _int8_weights(corrected) == _int8_weights(plain)


def _int8_weights(model: bytes) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    ((_, op),) = linear_ops(m).values()
    tensor = m.subgraphs[0].tensors[op.inputs[1]]
    return bytes(bytearray(m.buffers[tensor.buffer].data))
