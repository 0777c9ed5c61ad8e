"""The one place that touches TensorFlow's private quantization API.

TensorFlow has no public call that quantizes an existing float .tflite. The stock
``TFLiteConverter`` does it internally (``lite.py``, ``_quantize``): calibrate with
``Calibrator``, which writes each tensor's observed min/max into the flatbuffer's
``QuantizationParameters.min/max``, then ``mlir_quantize`` turns those ranges into scales
and zero points. We write *our* chosen ranges into the same fields
(``schema_py_generated`` object API) and call the same ``mlir_quantize``, so every source
format -- including float .tflite, which the stock converter cannot quantize -- takes one
route, and with min/max ranges the result is the stock converter's, byte for byte (``quantize`` then edits one
pattern the stock converter leaves coarse: ``concat_scales``).

``fully_quantize`` stays False, as in the stock converter: True forces int8 model I/O
whatever ``input_data_type`` says (seen on TF 2.21). Full-integer output is verified
afterwards instead (``float_ops``). 16x8 has no MLIR route (its int32 biases fail to
prepare), so it uses the stock calibrate-and-quantize path with min/max ranges.

Checked against TensorFlow 2.16-2.21 (``SUPPORTED_TF``); ``tests/integration/
test_quantizer_api.py`` fails loudly when an upgrade breaks any of this.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from converter.errors import ConversionError, ConverterError, InvalidModelError, NoIntegerKernelError
from converter.extras import framework_import, require
from converter.progress import named
from converter.quantization import native_quantizer, quant_cache
from converter.quantization.lstm_intermediates import add_intermediates
from converter.runtime.model import TFLiteModel, input_arrays, quantize
from converter.sources.tflite_check import REEXPORT, VHLO_REMEDY, invalid_op_lines, vhlo_meaning
from converter.tflite import flatbuf, flatbuffer_schema
from converter.tflite.inspect_model import float_ops, source_layer

SUPPORTED_TF = (">=2.16", "<2.22")


_IMPORT_SECONDS = [0.0]  # time this process spent importing TensorFlow's converter here
_PREFETCH: list[threading.Thread] = []  # the import started by prefetch_tensorflow, until joined


def _tf() -> Any:
    import_tensorflow()
    import tensorflow as tf

    return tf


def import_tensorflow() -> None:
    """Import TensorFlow's converter (seconds on first use; counted by ``import_seconds``).

    Only a quantization that is not in the cache needs it. Without the ``convert`` extra this is where a
    .tflite source first needs TensorFlow: say which extra.
    """
    if "tensorflow.lite.python.convert" in sys.modules and not _PREFETCH:
        return
    start = time.perf_counter()
    while _PREFETCH:  # an import started while a child process converted: wait for its end (counted here)
        _PREFETCH.pop().join()
    require("tensorflow")
    with framework_import():  # TFLite's utilities import JAX when it is installed
        from tensorflow.lite.python import convert  # noqa: F401  # a move of this private module is our bug: exit 3

    _IMPORT_SECONDS[0] += time.perf_counter() - start


def import_quantizer() -> None:
    """Load what ``quantize_with_ranges`` needs: TensorFlow's quantizer extension alone (1-2 s), else TensorFlow.

    Counted by ``import_seconds`` like ``import_tensorflow``; the calibrate-and-quantize routes (16x8, QAT,
    the tests' stock reference) still import TensorFlow itself.
    """
    if native_quantizer.MODULE in sys.modules and not _PREFETCH:
        return
    start = time.perf_counter()
    while _PREFETCH:
        _PREFETCH.pop().join()
    if native_quantizer.available():
        _IMPORT_SECONDS[0] += time.perf_counter() - start
        return
    import_tensorflow()


def _import_quietly() -> None:
    with contextlib.suppress(Exception):  # any failure is met again, and said, by import_quantizer
        if not native_quantizer.available():
            with framework_import():
                from tensorflow.lite.python import convert  # noqa: F401


def prefetch_tensorflow() -> None:
    """Start loading TensorFlow's quantizer in a thread, while a child process converts a PyTorch/ONNX model.

    A cold conversion of those sources needs the quantizer next (``import_quantizer``: its extension
    alone, else TensorFlow, 4-7 s here); loading it then overlaps the child's work instead of following it.
    The thread is not a daemon: a run that fails meanwhile waits for the load to end before exiting rather
    than tearing TensorFlow down half-loaded.
    """
    if native_quantizer.MODULE in sys.modules or _PREFETCH or importlib.util.find_spec("tensorflow") is None:
        return
    thread = threading.Thread(target=_import_quietly, name="import-tensorflow")
    thread.start()
    _PREFETCH.append(thread)


def finish_prefetch() -> None:
    """Wait for the import ``prefetch_tensorflow`` started (counted as import time).

    Called when the child process is done, whatever its outcome: TensorFlow prints to the native streams
    while it loads, and that must happen while the command still captures them, not after its error.
    """
    if not _PREFETCH:
        return
    start = time.perf_counter()
    while _PREFETCH:
        _PREFETCH.pop().join()
    _IMPORT_SECONDS[0] += time.perf_counter() - start


def import_seconds() -> float:
    """Seconds spent importing TensorFlow through ``import_tensorflow`` so far (a step subtracts its share)."""
    return _IMPORT_SECONDS[0]


def _cached(kind: str, float_tflite: bytes, settings: dict[str, Any], samples: np.ndarray | None = None) -> Any:
    """The cache entry key and its model (None on a miss), or (None, None) when caching is off."""
    if not settings.pop("cache"):
        return None, None
    entry = quant_cache.key(kind, float_tflite, settings, samples)
    return entry, quant_cache.load(entry)


@named("TensorFlow's quantizer (mlir_quantize)")
def quantize_with_ranges(
    float_tflite: bytes,
    ranges: dict[int, tuple[float, float]],
    *,
    input_type: str,
    output_type: str,
    per_channel: bool,
    float_nodes: tuple[str, ...] = (),
    cache: bool = False,
) -> bytes:
    """Write ``ranges`` (tensor index of subgraph 0 -> (min, max)) into the model and quantize it.

    With ``cache`` the result comes from (and goes to) ``quant_cache``: a hit needs no TensorFlow.

    ``float_nodes`` (output tensor names) stay float, with quantize/dequantize ops around them
    (the quantizer's ``denylisted_nodes``); only then may the result hold float ops. A fused LSTM first
    gains the intermediate tensors its int8 kernel needs, appended after the others (``lstm_intermediates``):
    their indices are those ``lstm_ranges`` gives.
    """
    settings = {
        "ranges": quant_cache.ranges_setting(ranges),
        "types": [input_type, output_type],
        "per_channel": per_channel,
        "float_nodes": list(float_nodes),
        "cache": cache,
    }
    entry, hit = _cached("ranges", float_tflite, settings)
    if hit is not None:
        return _check_integer(hit, allow_float=bool(float_nodes))
    import_quantizer()
    schema = flatbuffer_schema.schema()
    model = flatbuf.load(add_intermediates(float_tflite))
    tensors = model.subgraphs[0].tensors
    for index, (lo, hi) in sorted(ranges.items()):
        params = tensors[index].quantization or schema.QuantizationParametersT()
        params.min = [float(np.float32(lo))]
        params.max = [float(np.float32(hi))]
        tensors[index].quantization = params
    calibrated = flatbuf.dump(model)
    try:
        if native_quantizer.available():
            result = native_quantizer.mlir_quantize(
                calibrated,
                per_channel=per_channel,
                input_type=input_type,
                output_type=output_type,
                float_nodes=float_nodes,
            )
        else:
            tf = _tf()
            from tensorflow.lite.python import convert as tf_convert

            result = tf_convert.mlir_quantize(
                calibrated,
                disable_per_channel=not per_channel,
                fully_quantize=False,
                input_data_type=tf.as_dtype(input_type),
                output_data_type=tf.as_dtype(output_type),
                denylisted_nodes=list(float_nodes) or None,
            )
    except Exception as e:  # noqa: BLE001 - TF raises RuntimeError/ConverterError/ValueError
        raise quantizer_failed(e, float_tflite) from e
    return _finish(bytes(result), entry, allow_float=bool(float_nodes))


@named("TensorFlow's calibrator and quantizer")
def stock_quantize(
    float_tflite: bytes,
    samples: np.ndarray,
    *,
    input_type: str,
    output_type: str,
    per_channel: bool,
    activations: str,
    cache: bool = False,
) -> bytes:
    """The stock converter's own calibrate-and-quantize (min/max): the 16x8 route and the tests' reference."""
    settings = {"types": [input_type, output_type], "per_channel": per_channel, "activations": activations}
    entry, hit = _cached("stock", float_tflite, {**settings, "cache": cache}, samples)
    if hit is not None:
        return _check_integer(hit)
    tf = _tf()
    from tensorflow.lite.python import convert as tf_convert
    from tensorflow.lite.python import util as tf_util
    from tensorflow.lite.python.optimize import calibrator

    inputs = TFLiteModel(model_content=float_tflite, delegate="none").inputs

    def dataset() -> Iterator[list[np.ndarray]]:  # one list per sample, an array per input (packed samples)
        # Each input in its own dtype: float32 for float inputs (as ever), the ids' integers for an integer
        # input (``quantize`` casts a float model's input without a scale, after a range check).
        for row in range(len(samples)):
            yield [
                quantize(a, info) for a, info in zip(input_arrays(samples[row : row + 1], inputs), inputs, strict=True)
            ]

    gen: Callable[[], Iterator[list[np.ndarray]]] = dataset
    in_dtype = tf.as_dtype(input_type)
    out_dtype = tf.as_dtype(output_type)
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
        raise quantizer_failed(e, float_tflite) from e
    return _finish(bytes(result), entry)


def _finish(result: bytes, entry: str | None, *, allow_float: bool = False) -> bytes:
    """Deduplicate buffers (cached as they are), then insist on a full-integer model unless float nodes were asked."""
    model_out = _deduplicate(result)
    if entry is not None:
        quant_cache.save(entry, model_out)
    return _check_integer(model_out, allow_float=allow_float)


def quantizer_failed(error: Exception, float_tflite: bytes) -> ConverterError:
    """The error for a failed quantization: ``InvalidModelError`` when the float model itself is what fails.

    TensorFlow's quantizer often says nothing in its exception (an empty ``RuntimeError``) and prints its
    reasons on stderr. Asking its importer about the float model alone tells an invalid model (exit 2,
    naming the op) from a failure of quantizing a valid one (exit 3); the raw "Failed VHLO to version …"
    is put in words either way (``vhlo_meaning``).
    """
    problem = import_problem(float_tflite)
    if problem is not None:
        return InvalidModelError(*problem)
    meaning = vhlo_meaning(str(error))
    if meaning is not None:
        return ConversionError(f"quantization failed in TensorFlow: {meaning}; {VHLO_REMEDY}")
    return ConversionError(f"quantization failed in TensorFlow: {error}")


def import_problem(float_tflite: bytes) -> tuple[str, str] | None:
    """What TensorFlow's .tflite importer says against the float model, and what to do; None when it reads it.

    The importer is the quantizer's first step and checks every op (``tfl.reshape`` element counts,
    operand ranks and types, StableHLO versions); its reasons are MLIR diagnostics written to file
    descriptor 2, so they are captured there for the call (and passed on, as native output). An op it
    names is the cause; "Failed VHLO to version" alone means StableHLO ops it cannot read.
    """
    try:
        from tensorflow.compiler.mlir.lite.python import wrap_converter
    except ImportError:  # pragma: no cover - a TensorFlow without the MLIR converter cannot quantize either
        return None
    said: list[bytes] = []
    failure: Exception | None = None
    with _stderr_into(said):
        try:
            text = wrap_converter.wrapped_flat_buffer_file_to_mlir(float_tflite, False)
        except Exception as e:  # noqa: BLE001 - pybind passes C++ exceptions on as RuntimeError/ValueError
            text, failure = "", e
    if text and failure is None:
        return None
    diagnostics = b"".join(said).decode(errors="replace")
    reasons = invalid_op_lines(diagnostics, float_tflite)
    meaning = vhlo_meaning(diagnostics)
    if meaning is not None and not reasons and failure is None:
        return meaning, VHLO_REMEDY
    if failure is not None:
        reasons.append(f"{type(failure).__name__}: {failure}")
    vhlo = " (then 'Failed VHLO to version', its last word on any model it cannot read)" if meaning else ""
    return f"TensorFlow's .tflite importer rejects it: {'; '.join(reasons) or 'it gives no reason'}{vhlo}", REEXPORT


@contextlib.contextmanager
def _stderr_into(said: list[bytes]) -> Iterator[None]:
    """File descriptor 2 into ``said`` while the block runs; what was written is then passed on to fd 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(prefix="edgeconv-importer-") as file:
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            file.seek(0)
            said.append(file.read())
            with contextlib.suppress(OSError), os.fdopen(os.dup(2), "wb") as stderr:
                stderr.write(said[-1])


def _check_integer(model_out: bytes, *, allow_float: bool = False) -> bytes:
    """``NoIntegerKernelError`` naming each float op and its layer, unless float nodes were asked for."""
    try:
        left = float_ops(model_out)
    except (RuntimeError, ValueError) as e:  # what LiteRT raises for a model it cannot prepare
        raise ConversionError(
            f"TensorFlow's quantizer wrote an int8 model that the TFLite interpreter cannot open ({e}); "
            "this is a failure of TensorFlow's quantizer on this model: please report it with the model"
        ) from e
    if left and not allow_float:
        names = "; ".join(
            f"{op.name} (op {op.index}, from '{source_layer(op.output_names[0])}')" if op.output_names else op.name
            for op in left
        )
        kinds = ", ".join(sorted({op.name for op in left}))
        many = len(left) > 1
        raise NoIntegerKernelError(
            f"the model is not fully integer: {len(left)} op{'s' if many else ''} without an int8 kernel in TFLite "
            f"{'stay' if many else 'stays'} float: {names}. Replace the layer{'s' if many else ''} behind {kinds} "
            "in the model with ones built from ops that have integer kernels (conv, dense, add, mul, the usual "
            "activations); MCU and Edge TPU targets run integer ops only, and on CPU-only targets (LiteRT) "
            "edgeconv keeps these ops float instead",
            tuple(op.output_names[0] for op in left if op.output_names),
        )
    return model_out


def _deduplicate(model: bytes) -> bytes:
    """Merge identical read-only buffers, as the stock converter does last (``flatbuf``'s port of its pass)."""
    try:
        return flatbuf.deduplicate_readonly_buffers(model)
    except Exception:  # noqa: BLE001 - a model that cannot be deduplicated is still valid
        return model


def stock_ranges(float_tflite: bytes, samples: np.ndarray) -> dict[int, tuple[float, float]]:
    """The min/max the stock ``Calibrator`` records per tensor index (the reference for our statistics)."""
    from tensorflow.lite.python.optimize import calibrator
    from tensorflow.lite.tools import flatbuffer_utils

    cal = calibrator.Calibrator(float_tflite)
    calibrated = cal.calibrate(lambda: ([np.asarray(row[None], dtype=np.float32)] for row in samples))
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    out = {}
    for i, t in enumerate(model.subgraphs[0].tensors):
        q = t.quantization
        if q is not None and q.min is not None and len(q.min) == 1:
            out[i] = (float(q.min[0]), float(q.max[0]))
    return out
