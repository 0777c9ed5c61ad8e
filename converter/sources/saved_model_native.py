"""A SavedModel converted to a float .tflite by TensorFlow's native converter, without importing TensorFlow.

``TFLiteConverter.from_saved_model(path).convert()`` spends most of a small model's conversion importing
``tensorflow`` (3-6 s) and loading the model into Python, then hands the folder to the C++ MLIR converter,
which reads it again. Here the converter's extension is called directly (``tfnative.extensions``) with the
``ModelFlags``/``ConverterFlags`` TensorFlow's Python builds for a float conversion of one serving signature
(``tfnative.protos`` classes), and the result is finished as ``lite.py`` finishes it: read-only buffers
deduplicated (``flatbuf.deduplicate_readonly_buffers``) and the conversion metadata added
(``tflite.conversion_metadata``). The bytes are TensorFlow's, checked against ``TFLiteConverter`` on the
TensorFlow versions in ``VERIFIED`` by ``tests/integration/test_saved_model_native.py``; on any other
version, or where a piece cannot load, ``convert`` returns None and the caller goes through TensorFlow.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from converter.tfnative import extensions, protos

log = logging.getLogger(__name__)

FUNCTION_LIBRARY = "tensorflow.compiler.mlir.quantization.tensorflow.python.pywrap_function_lib"
# TensorFlow releases whose Python converter sets exactly the flags below for a float SavedModel conversion.
VERIFIED = ("2.21.",)

# What lite.py's _get_base_converter_args and convert.build_conversion_flags set (each field explicitly, so
# each is on the wire) for TFLiteSavedModelConverterV2 without optimizations, builtin ops only.
CONVERTER_FLAGS: dict[str, Any] = {
    "input_format": "TENSORFLOW_GRAPHDEF",
    "output_format": "TFLITE",
    "inference_type": "FLOAT",
    "inference_input_type": "FLOAT",
    "reorder_across_fake_quant": False,
    "allow_custom_ops": False,
    "drop_control_dependency": True,
    "dump_graphviz_include_video": False,
    "post_training_quantize": False,
    "quantize_to_float16": False,
    "enable_tflite_resource_variables": True,
    "unfold_batchmatmul": False,
    "lower_tensor_list_ops": True,
    "allow_bfloat16": False,
    "allow_all_select_tf_ops": False,
    "unfold_large_splat_constant": False,
    "default_to_single_batch_in_tensor_list_ops": False,
    "disable_per_channel_quantization": False,
    "enable_mlir_dynamic_range_quantizer": False,
    "disable_infer_tensor_range": False,
    "use_fake_quant_num_bits": False,
    "enable_dynamic_update_slice": False,
    "preserve_assert_op": False,
    "guarantee_all_funcs_one_use": False,
    "enable_mlir_variable_quantization": False,
    "disable_fuse_mul_and_fc": False,
    "use_buffer_offset": False,
    "legalize_custom_tensor_list_ops": False,
    "reduce_type_precision": False,
    "disable_per_channel_quantization_for_dense_layers": False,
    "enable_composite_direct_lowering": True,
    "model_origin_framework": "UNSET",
    "canonicalizing_inf_as_min_max_float": True,
    "serialize_debug_metadata": False,
    "strict_qdq_mode": False,
    "unsafe_fuse_dynamic_shaped_broadcast": False,
}


def _set(message: Any, values: dict[str, Any]) -> Any:
    fields = message.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        field = fields[name]
        if field.enum_type is not None and isinstance(value, str):
            value = field.enum_type.values_by_name[value].number
        if isinstance(value, list):  # a repeated field
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


def model_flags(path: Path, signature: str, schema_version: int) -> bytes:
    """``convert.build_model_flags`` for the SavedModel import of one serving signature."""
    flags = protos.message("tensorflow/compiler/mlir/lite/model_flags.proto", "tflite.ModelFlags")()
    values = {
        "allow_nonexistent_arrays": False,
        "change_concat_input_ranges": False,
        "saved_model_dir": str(path),
        "saved_model_version": schema_version,
        "saved_model_tags": ["serve"],
        "saved_model_exported_names": [signature],
    }
    return bytes(_set(flags, values).SerializeToString())


def converter_flags() -> bytes:
    flags = protos.message("tensorflow/compiler/mlir/lite/converter_flags.proto", "tflite.ConverterFlags")()
    return bytes(_set(flags, CONVERTER_FLAGS).SerializeToString())


def _pieces() -> tuple[str, Any, Any] | None:
    """TensorFlow's version, the converter and the function library, where this route can run; else None."""
    version = extensions.tensorflow_version()
    if not extensions.enabled() or version is None or not version.startswith(VERIFIED):
        return None
    native = extensions.load(extensions.CONVERTER_API, "Convert")
    library = extensions.load(FUNCTION_LIBRARY, "PyFunctionLibrary")
    return None if native is None or library is None else (version, native, library)


def usable() -> str | None:
    """The TensorFlow version when this route can run (a verified version, its extensions load), else None."""
    pieces = _pieces()
    return None if pieces is None else pieces[0]


def convert(path: Path, signature: str, schema_version: int) -> bytes | None:
    """The float .tflite of the SavedModel's ``signature``, as ``TFLiteConverter`` writes it; None where unusable.

    Raises what the converter raises for a model it cannot convert (the caller words it).
    """
    from converter.tflite import conversion_metadata, flatbuf

    pieces = _pieces()
    if pieces is None:
        return None
    version, native, library = pieces
    try:
        flags = model_flags(path, signature, schema_version), converter_flags()
    except (protos.ProtoUnavailable, KeyError, TypeError, ValueError) as e:
        log.debug("the converter's flags cannot be built without TensorFlow (%s)", e)
        return None
    raw = bytes(native.Convert(flags[0], flags[1], None, False, None, library.PyFunctionLibrary()))
    try:
        finished = flatbuf.deduplicate_readonly_buffers(raw)
    except Exception:  # noqa: BLE001 - as lite.py: a model that cannot be deduplicated is kept as converted
        log.warning("buffer deduplication skipped: the converted model could not be read back")
        finished = raw
    return conversion_metadata.add(finished, tensorflow_version=version, model_type=conversion_metadata.TF_SAVED_MODEL)
