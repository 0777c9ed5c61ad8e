"""TensorFlow's MLIR quantizer, loaded as the one native module that holds it, without importing TensorFlow.

``mlir_quantize`` (what the stock converter calls last, and what ``tflite_quantizer`` calls with our ranges)
is a thin Python wrapper around ``ExperimentalMlirQuantizeModel`` in ``_pywrap_converter_api``, a pybind
extension inside the ``tensorflow`` wheel. Importing ``tensorflow`` to reach it costs 4-30 s and ~600 MB
(its whole Python API and every kernel); the extension alone loads in 1-2 s. It is loaded from the installed
wheel under its own dotted name and registered in ``sys.modules``, so an ``import tensorflow`` later in the
same process finds it there instead of initialising the library twice (which aborts at exit). The arguments
are those ``mlir_quantize`` passes: the ``IODataType`` numbers of ``compiler/mlir/lite/types.proto`` (checked
against TensorFlow's own ``types_pb2`` in ``tests/integration/test_quantizer_api.py``), and the results are
byte-identical to ``mlir_quantize``'s. Where the extension cannot be loaded (another TensorFlow layout, a
platform without it), ``tflite_quantizer`` imports TensorFlow and calls its ``mlir_quantize``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODULE = "tensorflow.compiler.mlir.lite.python._pywrap_converter_api"
OFF_ENV = "EDGECONV_NATIVE_QUANTIZER"  # off: import TensorFlow for the quantizer too (a comparison, a debug)
# compiler/mlir/lite/types.proto: IODataType numbers for the model I/O types edgeconv writes, and the
# inference type of an int8 model (QUANTIZED_INT8), as convert.mlir_quantize maps TensorFlow dtypes.
IO_TYPES = {"float32": 1, "int8": 18, "uint8": 17, "int16": 19, "int32": 3, "int64": 4}
QUANTIZED_INT8 = 9

_LOCK = threading.Lock()
_LOADED: list[Any] = []  # the module once loaded; [None] when it cannot be


def _path() -> Path | None:
    """The extension's file in the installed ``tensorflow`` wheel, found without importing the package."""
    try:
        spec = importlib.util.find_spec("tensorflow")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "compiler" / "mlir" / "lite" / "python"
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = folder / f"_pywrap_converter_api{suffix}"
        if candidate.is_file():
            return candidate
    return None


def module() -> Any | None:
    """The loaded extension (TensorFlow's own when TensorFlow is imported already), or None where it cannot load."""
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    if os.environ.get(OFF_ENV, "").lower() in ("off", "0", "no", "false"):
        return None
    with _LOCK:
        if _LOADED:
            return _LOADED[0]
        path = _path()
        loaded: Any | None = None
        if path is not None:
            try:
                spec = importlib.util.spec_from_file_location(MODULE, path)
                assert spec is not None and spec.loader is not None  # noqa: S101 - a file location always gives both
                loaded = importlib.util.module_from_spec(spec)
                sys.modules[MODULE] = loaded  # before it runs: TensorFlow's own import must find this one
                spec.loader.exec_module(loaded)
                if not hasattr(loaded, "ExperimentalMlirQuantizeModel"):
                    raise ImportError(f"{path.name} has no ExperimentalMlirQuantizeModel")
            except (ImportError, OSError, AssertionError) as e:
                sys.modules.pop(MODULE, None)
                log.debug("TensorFlow's quantizer extension did not load on its own (%s): importing TensorFlow", e)
                loaded = None
        _LOADED.append(loaded)
        return loaded


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
