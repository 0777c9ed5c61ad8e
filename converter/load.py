"""Load a model in any supported format and return its float .tflite, the pipeline's reference.

Keras, legacy .h5 and SavedModel are converted once (batch fixed to 1, as MCU and
Edge TPU runtimes need static shapes); a float .tflite is taken as it is. Loading never
runs code from the model file: Keras safe mode is on, Lambda layers in legacy .h5 files
are refused, and custom objects come only from modules the recipe names.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import model_cache
from .errors import ModelLoadError
from .runtime.model import TFLiteModel

log = logging.getLogger(__name__)

ModelFormat = Literal["keras", "h5", "saved_model", "tflite"]


@dataclass(frozen=True)
class LoadedModel:
    """The float reference model and how it was obtained."""

    source: Path
    format: ModelFormat
    float_tflite: bytes
    loader: str
    input_shape: tuple[int, ...]
    input_dtype: str


def detect_format(path: Path) -> ModelFormat:
    """The model format from the path, or a ``ModelLoadError`` that says what is accepted."""
    if not path.exists():
        raise ModelLoadError(f"model: not found: {path}; check the path (relative paths start at the recipe's folder)")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise ModelLoadError(
            f"model: {path} is a folder without saved_model.pb; point to a SavedModel folder or a file"
        )
    suffix = path.suffix.lower()
    formats: dict[str, ModelFormat] = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".tflite": "tflite"}
    if suffix not in formats:
        raise ModelLoadError(
            f"model: {path}: unsupported file type '{suffix}'; use .keras, .h5, a SavedModel folder or a float .tflite"
        )
    return formats[suffix]


def load_model(path: Path, custom_objects: Iterable[str] = (), cache: bool = False) -> LoadedModel:
    """Load ``path`` and produce its float .tflite; every failure is a ``ModelLoadError``.

    With ``cache``, a Keras or SavedModel source converted before (same bytes, same
    versions) is taken from the float model cache instead of being converted again.
    """
    fmt = detect_format(path)
    custom_objects = tuple(custom_objects)
    key = model_cache.source_key(path, custom_objects) if cache and fmt != "tflite" else None
    cached = model_cache.load(key) if key else None
    if fmt == "tflite":
        content, loader = _read_float_tflite(path), "file"
    elif cached is not None:
        content, loader = cached[0], f"{cached[1]['loader']}, from the float model cache"
    else:
        objects = _import_custom_objects(custom_objects)
        if fmt == "saved_model":
            content, loader = _saved_model_to_tflite(path), "tf.lite.TFLiteConverter.from_saved_model"
        else:
            model, loader = _load_keras(path, fmt, objects)
            content = _keras_to_tflite(model, path)
        if key:
            model_cache.save(key, content, fmt, loader)
    try:
        ref = TFLiteModel(model_content=content)
    except Exception as e:  # noqa: BLE001 - the interpreter raises bare RuntimeError/ValueError
        raise ModelLoadError(f"model: {path}: the TFLite interpreter cannot open it: {e}") from e
    if len(ref.inputs) != 1:
        raise ModelLoadError(
            f"model: {path}: has {len(ref.inputs)} inputs; this version converts single-input models only"
        )
    info = ref.inputs[0]
    return LoadedModel(path, fmt, content, loader, info.shape, info.dtype)


def _import_custom_objects(specs: Iterable[str]) -> dict[str, Any]:
    objects: dict[str, Any] = {}
    for spec in specs:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ModelLoadError(f"custom_objects: '{spec}': expected 'module:Name', e.g. 'mypkg.layers:Swish'")
        try:
            objects[attr.rsplit(".", 1)[-1]] = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ModelLoadError(f"custom_objects: '{spec}': cannot import: {e}") from e
    return objects


def _read_float_tflite(path: Path) -> bytes:
    content = path.read_bytes()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ModelLoadError(f"model: {path}: not a TFLite flatbuffer (no 'TFL3' identifier); is the file corrupt?")
    try:
        ref = TFLiteModel(model_content=content)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"model: {path}: the TFLite interpreter cannot open it: {e}") from e
    if any(t.dtype != "float32" for t in ref.inputs + ref.outputs):
        raise ModelLoadError(
            f"model: {path}: is already quantized (I/O dtypes {[t.dtype for t in ref.inputs + ref.outputs]}); "
            "give the float model it was made from"
        )
    return content


def _h5_has_lambda(path: Path) -> bool:
    """Whether a legacy .h5 model config contains Lambda layers (their code would run on load)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
    except OSError as e:
        raise ModelLoadError(f"model: {path}: not a readable HDF5 file ({e}); is the file complete?") from e
    if config is None:
        return False

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("class_name") == "Lambda" or any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(json.loads(config.decode() if isinstance(config, bytes) else str(config)))


def _load_keras(path: Path, fmt: ModelFormat, objects: dict[str, Any]) -> tuple[Any, str]:
    import keras

    # Keras before 3.11.3 ignored safe_mode for .h5 files (CVE-2025-9905): look before loading.
    if fmt == "h5" and _h5_has_lambda(path):
        raise ModelLoadError(
            f"model: {path}: contains Lambda layers, whose code would run on load; rewrite them as "
            "custom layers and list them under custom_objects"
        )

    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True, custom_objects=objects or None)
        return model, f"keras {keras.__version__} (safe mode)"
    except Exception as e:  # noqa: BLE001 - Keras raises many types for bad files
        first_error = e
    if fmt != "h5":
        raise ModelLoadError(
            f"model: {path}: Keras cannot load it ({first_error}); is the file complete and a Keras model?"
        ) from first_error
    # Many real Keras 2 .h5 files (e.g. old DepthwiseConv2D configs) fail in Keras 3:
    # fall back to tf_keras, the Keras 2 line, which reads them as they were written.
    try:
        import tf_keras

        model = tf_keras.models.load_model(path, compile=False, custom_objects=objects or None)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"model: {path}: cannot load this .h5 with Keras 3 ({first_error}) nor with tf_keras ({e}); "
            "is the file complete and a Keras model?"
        ) from e
    log.info("Keras 3 could not read %s (%s); loaded with tf_keras %s", path.name, first_error, tf_keras.__version__)
    return model, f"tf_keras {tf_keras.__version__} (Keras 3 failed: {type(first_error).__name__})"


def _keras_to_tflite(model: Any, path: Path) -> bytes:
    import tensorflow as tf

    inputs = model.inputs
    if len(inputs) != 1:
        raise ModelLoadError(f"model: {path}: has {len(inputs)} inputs; this version converts single-input models only")
    shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ModelLoadError(
            f"model: {path}: input shape {list(inputs[0].shape)} has unknown dimensions; "
            "save the model with a fixed input size (microcontrollers and Edge TPU need static shapes)"
        )
    # Trace with a batch-1 input (MCU and Edge TPU runtimes need static shapes; a fixed batch
    # also keeps a dynamic batch's SHAPE/PACK ops out of the graph) and freeze the variables
    # ourselves: 3x faster than from_keras_model, which round-trips a SavedModel on disk.
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec([1, *shape], tf.as_dtype(getattr(inputs[0].dtype, "name", inputs[0].dtype)), name="input")
    try:
        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
        frozen = convert_variables_to_constants_v2(concrete)
        return bytes(tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"model: {path}: TensorFlow cannot convert it to TFLite: {e}") from e


def _saved_model_to_tflite(path: Path) -> bytes:
    # TFLiteConverter.from_saved_model works on Keras 2 SavedModels where
    # tf.saved_model.load fails (optimizer slots), so it is the one route here.
    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(path))
        return bytes(converter.convert())
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"model: {path}: TensorFlow cannot convert this SavedModel: {e}") from e
