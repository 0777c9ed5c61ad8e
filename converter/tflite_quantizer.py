"""The one place that touches TensorFlow's private quantization API.

TensorFlow has no public call that quantizes an existing float .tflite. The stock
``TFLiteConverter`` does it internally in three steps (``lite.py``, ``_quantize``):
add intermediate tensors, calibrate with ``Calibrator`` (min/max of every tensor over
the representative data), then ``mlir_quantize``. We call the same steps on our float
reference model, so every source format (Keras, .h5, SavedModel and float .tflite,
which the stock converter cannot quantize at all) takes one route and matches stock
min/max results. Checked against TensorFlow 2.21 (see ``SUPPORTED_TF``); the tests
in ``tests/integration/test_quantizer_api.py`` fail loudly when an upgrade breaks it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .errors import ConversionError
from .inspect_model import float_ops

SUPPORTED_TF = (">=2.16", "<2.22")

_DTYPES = {"int8": "int8", "uint8": "uint8", "int16": "int16", "float32": "float32"}


def _tf() -> Any:
    import tensorflow as tf

    return tf


def quantize_full_integer(
    float_tflite: bytes,
    samples: np.ndarray,
    *,
    input_type: str,
    output_type: str,
    per_channel: bool,
    activations: str,
) -> bytes:
    """Calibrate ``float_tflite`` on ``samples`` ([N, ...], one row per invocation) and quantize it."""
    tf = _tf()
    from tensorflow.lite.python import convert as tf_convert
    from tensorflow.lite.python import util as tf_util
    from tensorflow.lite.python.optimize import calibrator

    def dataset() -> Iterator[list[np.ndarray]]:
        for row in samples:
            yield [np.asarray(row[None], dtype=np.float32)]

    gen: Callable[[], Iterator[list[np.ndarray]]] = dataset
    in_dtype = tf.as_dtype(_DTYPES[input_type])
    out_dtype = tf.as_dtype(_DTYPES[output_type])
    try:
        model = calibrator.add_intermediate_tensors(float_tflite)
        cal = calibrator.Calibrator(model)
        if activations == "int16":
            # The MLIR quantizer has no 16x8 mode; the stock converter uses this path too.
            result = cal.calibrate_and_quantize(
                gen,
                tf.float32,
                tf.float32,
                False,
                activations_type=tf.int16,
                bias_type=tf.int64,
                disable_per_channel=not per_channel,
            )
            result = tf_util.modify_model_io_type(result, in_dtype, out_dtype)
        else:
            calibrated = cal.calibrate(gen)
            result = tf_convert.mlir_quantize(
                calibrated,
                disable_per_channel=not per_channel,
                fully_quantize=False,
                input_data_type=in_dtype,
                output_data_type=out_dtype,
            )
    except Exception as e:  # noqa: BLE001 - TF raises RuntimeError/ConverterError/ValueError
        raise ConversionError(f"quantization failed in TensorFlow: {e}") from e
    model_out = _deduplicate(bytes(result))
    left = float_ops(model_out)
    if left:
        names = ", ".join(sorted({f"{op.name} (op {op.index})" for op in left}))
        raise ConversionError(
            f"the model is not fully integer: {len(left)} ops stay float ({names}); these ops have no int8 "
            "kernel in TFLite, so replace them in the model or choose a target that allows float ops"
        )
    return model_out


def _deduplicate(model: bytes) -> bytes:
    """Merge identical read-only buffers, as the stock converter does last."""
    from tensorflow.lite.python.convert import deduplicate_readonly_buffers

    try:
        return bytes(deduplicate_readonly_buffers(model))
    except Exception:  # noqa: BLE001 - a model that cannot be deduplicated is still valid
        return model
