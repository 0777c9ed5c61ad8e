"""TensorFlow's MLIR quantizer, loaded as the one native module that holds it, without importing TensorFlow.

``mlir_quantize`` (what the stock converter calls last, and what ``tflite_quantizer`` calls with our ranges)
is a thin Python wrapper around ``ExperimentalMlirQuantizeModel`` in ``_pywrap_converter_api``, a pybind
extension inside the ``tensorflow`` wheel. Importing ``tensorflow`` to reach it costs 4-30 s and ~600 MB
(its whole Python API and every kernel); the extension alone loads in 0.3-2 s (``tfnative.extensions``). The
arguments are those ``mlir_quantize`` passes: the ``IODataType`` numbers of ``compiler/mlir/lite/types.proto`` (checked
against TensorFlow's own ``types_pb2`` in ``tests/integration/test_quantizer_api.py``), and the results are
byte-identical to ``mlir_quantize``'s. Where the extension cannot be loaded (another TensorFlow layout, a
platform without it), ``tflite_quantizer`` imports TensorFlow and calls its ``mlir_quantize``.
"""

from __future__ import annotations

from typing import Any

from converter.tfnative import extensions

MODULE = extensions.CONVERTER_API
# compiler/mlir/lite/types.proto: IODataType numbers for the model I/O types edgeconv writes, and the
# inference type of an int8 model (QUANTIZED_INT8), as convert.mlir_quantize maps TensorFlow dtypes.
IO_TYPES = {"float32": 1, "int8": 18, "uint8": 17, "int16": 19, "int32": 3, "int64": 4}
QUANTIZED_INT8 = 9


def module() -> Any | None:
    """The loaded extension (TensorFlow's own when TensorFlow is imported already), or None where it cannot load."""
    return extensions.load(MODULE, "ExperimentalMlirQuantizeModel")


def available() -> bool:
    """Whether the quantizer can run without importing TensorFlow (loads the extension)."""
    return module() is not None


def mlir_quantize(
    calibrated: bytes,
    *,
    per_channel: bool,
    input_type: str,
    output_type: str,
    float_nodes: tuple[str, ...] = (),
) -> bytes:
    """``convert.mlir_quantize`` of a calibrated model (min/max in its tensors), int8 activations.

    Raises what the extension raises (``RuntimeError``/``ValueError`` from C++); ``KeyError`` for an I/O type
    the table lacks.
    """
    native = module()
    if native is None:
        raise ImportError("TensorFlow's quantizer extension is not loadable")
    result = native.ExperimentalMlirQuantizeModel(
        calibrated,
        not per_channel,  # disable_per_channel
        False,  # fully_quantize: False, as the stock converter (True forces int8 I/O)
        QUANTIZED_INT8,
        IO_TYPES[input_type],
        IO_TYPES[output_type],
        False,  # enable_numeric_verify
        False,  # enable_whole_model_verify
        None,  # denylisted ops
        list(float_nodes) or None,  # denylisted nodes
        False,  # enable_variable_quantization
        False,  # disable_per_channel_for_dense_layers
        "",  # debug options
    )
    return bytes(result)
