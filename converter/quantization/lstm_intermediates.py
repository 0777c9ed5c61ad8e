"""Fused LSTM ops (``UNIDIRECTIONAL_SEQUENCE_LSTM``): the extra tensors their int8 kernel needs, and their ranges.

TFLite's integer LSTM kernel reads five ``operator.intermediates`` (the gate pre-activations before layer
norm, and the hidden value ``o * tanh(c)`` before projection) and the quantization of the op's two state
tensors (variables). None of them is an op output, so our statistics pass cannot see them. We take both
from TensorFlow's own calibrator, as the stock converter does:

- ``AddIntermediateTensors`` (``quantization_wrapper_utils.cc``) appends the tensors ``intermediate_<op>_<i>``
  at the end of subgraph 0, so every existing tensor keeps its index and our ranges still apply;
- the ``CalibrationWrapper`` runs the model with its logging LSTM kernel (``builtin_logging_ops/lstm.cc``),
  which records the intermediates' min/max (0-3 only with layer norm, 4 always) and the state tensors
  before and after each step. ``mlir_quantize`` reads those min/max from the flatbuffer.

One difference from the stock calibrator: the state is reset before every sample (``Prepare`` calls
``ResetVariableTensors``). A fused LSTM's state tensors are variables that persist across invocations;
each calibration sample is a sequence of its own, so it starts from the zero state, as in Keras.

Checked against TensorFlow 2.21; ``tests/integration/test_fused_lstm.py`` breaks when this changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converter.errors import CalibrationError
from converter.tflite import flatbuf
from converter.tflite import flatbuffer_schema as tflite_schema

# The ops TFLite's AddIntermediateTensors serves (operator_property.cc: intermediates for the 8x8->16 LSTM kernels).
LSTM_OPS = frozenset({"LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM"})


def has_fused_lstm(model: bytes) -> bool:
    """Whether the model's operator-code table names a fused LSTM (read in place, nothing unpacked)."""
    schema = tflite_schema.schema()

    root = schema.Model.GetRootAsModel(model, 0)
    names = flatbuf.enum_names("BuiltinOperator")
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        if names.get(max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode())), "") in LSTM_OPS:
            return True
    return False


def add_intermediates(float_tflite: bytes) -> bytes:
    """The model with the intermediate tensors its fused LSTM ops need (TF's own pass; existing indices kept)."""
    if not has_fused_lstm(float_tflite):
        return float_tflite
    from tensorflow.lite.python.optimize import calibrator

    return bytes(calibrator.add_intermediate_tensors(float_tflite))


def _lstm_tensors(model: Any) -> set[int]:
    """Indices of the intermediates and state (variable) tensors of every op that has intermediates."""
    graph = model.subgraphs[0]
    wanted: set[int] = set()
    for op in graph.operators:
        if op.intermediates is None or not len(op.intermediates):
            continue
        wanted.update(int(i) for i in op.intermediates)
        wanted.update(int(i) for i in op.inputs if i >= 0 and graph.tensors[i].isVariable)
    return wanted


def lstm_ranges(float_tflite: bytes, x: np.ndarray) -> dict[int, tuple[float, float]]:
    """Min/max of each fused LSTM's intermediates and state tensors over the samples ``x`` ({} without one).

    Keys are tensor indices in ``add_intermediates(float_tflite)``; the other tensors are left to our own
    statistics and range methods.
    """
    if not has_fused_lstm(float_tflite):
        return {}
    augmented = add_intermediates(float_tflite)
    wanted = _lstm_tensors(flatbuf.load(augmented))
    if not wanted:
        return {}
    from tensorflow.lite.python.optimize import _pywrap_tensorflow_lite_calibration_wrapper as wrapper_module

    try:
        wrapper = wrapper_module.CalibrationWrapper(augmented, [], [])
        for i, row in enumerate(x):
            sample = [np.asarray(row[None], dtype=np.float32)]
            # Prepare resets the variable tensors: every sample starts from the zero state.
            if i == 0:
                wrapper.Prepare([list(sample[0].shape)])
            else:
                wrapper.Prepare()
            wrapper.FeedTensor(sample)
        calibrated = flatbuf.load(bytes(wrapper.Calibrate()))
    except (RuntimeError, ValueError) as e:
        raise CalibrationError(f"TensorFlow's calibrator failed on the fused LSTM's intermediate tensors: {e}") from e
    out: dict[int, tuple[float, float]] = {}
    for index in sorted(wanted):
        q = calibrated.subgraphs[0].tensors[index].quantization
        if q is not None and q.min is not None and len(q.min) == 1:  # intermediates 0-3 only exist with layer norm
            out[index] = (float(q.min[0]), float(q.max[0]))
    return out
