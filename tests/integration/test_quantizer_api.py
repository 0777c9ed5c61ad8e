"""The private TensorFlow API behind converter/quantization/tflite_quantizer.py: fail loudly on an upgrade.

Each test pins one assumption the module makes; when TensorFlow changes it, the failure
names the assumption instead of surfacing as a wrong model later.
"""

from __future__ import annotations

import inspect
import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import yaml

from converter.quantization import tflite_quantizer
from converter.runtime.model import TFLiteModel
from tests.conftest import ROOT, native_and_tensorflow, tiny_recipe


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2])


def test_tensorflow_version_is_in_the_supported_range() -> None:
    version = _version_tuple(metadata.version("tensorflow"))
    low, high = (_version_tuple(s.lstrip("<>=")) for s in tflite_quantizer.SUPPORTED_TF)
    assert low <= version < high, f"TensorFlow {version} outside {tflite_quantizer.SUPPORTED_TF}: re-verify the module"


def test_private_symbols_have_the_expected_signatures() -> None:
    from tensorflow.lite.python import convert, schema_py_generated
    from tensorflow.lite.python.optimize import calibrator
    from tensorflow.lite.tools import flatbuffer_utils

    params = inspect.signature(convert.mlir_quantize).parameters
    for name in ("disable_per_channel", "fully_quantize", "input_data_type", "output_data_type"):
        assert name in params, f"mlir_quantize lost '{name}'"
    assert hasattr(convert, "deduplicate_readonly_buffers")
    assert {"calibrate", "calibrate_and_quantize"} <= set(dir(calibrator.Calibrator))
    assert {"min", "max"} <= set(vars(schema_py_generated.QuantizationParametersT()))
    assert callable(flatbuffer_utils.convert_bytearray_to_object)
    assert callable(flatbuffer_utils.convert_object_to_bytearray)


def test_written_ranges_become_the_scales() -> None:
    """A range written into min/max must come out as S = (hi - lo) / 255 on the tensor."""
    model = (ROOT / "tests" / "data" / "add_one_float.tflite").read_bytes()
    # Tensor 0 is the input x, 1 the constant 1.0, 2 the output x + 1 (tools/make_test_models.py).
    ranges = {0: (-1.0, 2.0), 2: (0.0, 3.0)}
    quant = tflite_quantizer.quantize_with_ranges(
        model, ranges, input_type="int8", output_type="int8", per_channel=True
    )
    m = TFLiteModel(model_content=quant)
    assert m.inputs[0].scale == pytest.approx(3.0 / 255) and m.inputs[0].zero_point == -43
    assert m.outputs[0].scale == pytest.approx(3.0 / 255) and m.outputs[0].zero_point == -128
    out = m.run(np.array([[0.5, 1.5]], dtype=np.float32))[0]
    np.testing.assert_allclose(out, [[1.5, 2.5]], atol=3.0 / 255)


def test_fully_quantize_true_would_ignore_the_io_type() -> None:
    """Why the module passes fully_quantize=False: True forces int8 I/O (seen on TF 2.21)."""
    import tensorflow as tf
    from tensorflow.lite.python import convert
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(
        bytearray((ROOT / "tests" / "data" / "add_one_float.tflite").read_bytes())
    )
    from tensorflow.lite.python import schema_py_generated as schema

    for i in (0, 2):
        q = schema.QuantizationParametersT()
        q.min, q.max = [-1.0], [3.0]
        model.subgraphs[0].tensors[i].quantization = q
    calibrated = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    forced = convert.mlir_quantize(
        calibrated, fully_quantize=True, input_data_type=tf.float32, output_data_type=tf.float32
    )
    kept = convert.mlir_quantize(
        calibrated, fully_quantize=False, input_data_type=tf.float32, output_data_type=tf.float32
    )
    assert TFLiteModel(model_content=forced).inputs[0].dtype == "int8"
    assert TFLiteModel(model_content=kept).inputs[0].dtype == "float32"


def test_the_extensions_type_numbers_are_tensorflows() -> None:
    """native_quantizer passes types.proto numbers itself: they must be those mlir_quantize would pass."""
    import tensorflow as tf
    from tensorflow.compiler.mlir.lite import types_pb2
    from tensorflow.lite.python import convert

    from converter.quantization import native_quantizer

    assert native_quantizer.QUANTIZED_INT8 == types_pb2.QUANTIZED_INT8
    for name, number in native_quantizer.IO_TYPES.items():
        assert convert.convert_tensor_tf_type_to_tflite_type(tf.as_dtype(name)) == number, name
    params = inspect.signature(convert.mlir_quantize).parameters
    assert list(params)[:4] == ["input_data_str", "disable_per_channel", "fully_quantize", "inference_type"]


def test_the_buffer_deduplication_port_writes_tensorflows_bytes(tiny_model_dir: Path) -> None:
    from tensorflow.lite.python.convert import deduplicate_readonly_buffers

    from converter.tflite import flatbuf

    for name in ("tiny.tflite",):
        model = (tiny_model_dir / name).read_bytes()
        quant = tflite_quantizer.quantize_with_ranges(
            model, _all_ranges(model), input_type="int8", output_type="int8", per_channel=True
        )
        assert flatbuf.deduplicate_readonly_buffers(quant) == bytes(deduplicate_readonly_buffers(quant))
    demo = (ROOT / "tests" / "data" / "add_one_float.tflite").read_bytes()
    assert flatbuf.deduplicate_readonly_buffers(demo) == bytes(deduplicate_readonly_buffers(demo))


def _all_ranges(model: bytes) -> dict[int, tuple[float, float]]:
    from converter.tflite import flatbuf

    tensors = flatbuf.load(model).subgraphs[0].tensors
    return {i: (-2.0, 3.0) for i, t in enumerate(tensors) if flatbuf.type_name(t.type) == "FLOAT32"}


@pytest.mark.parametrize("io", ["int8", "uint8"])
def test_a_tflite_source_quantizes_without_tensorflow_to_the_same_bytes(
    tiny_model_dir: Path, tmp_path: Path, io: str
) -> None:
    """The extension alone (no ``import tensorflow``) and TensorFlow's mlir_quantize give the same int8 model."""
    recipe = tmp_path / "r.yaml"
    spec = tiny_recipe(tiny_model_dir, "tiny.tflite", benchmark={"enabled": False})
    spec["quantization"] = {"input_type": io, "output_type": io}
    recipe.write_text(yaml.safe_dump(spec))
    native_and_tensorflow(
        lambda mode: [
            sys.executable,
            "-m",
            "converter",
            "convert",
            "--recipe",
            str(recipe),
            "--out",
            str(tmp_path / mode),
        ],
        lambda mode: {"EDGECONV_CACHE_DIR": str(tmp_path / f"cache-{mode}")},
    )
    runs = {}
    for mode in ("native", "off"):
        report = json.loads((tmp_path / mode / "report.json").read_text())
        runs[mode] = ((tmp_path / mode / "model_int8.tflite").read_bytes(), report["cache"]["tensorflow_loaded"])
    assert runs["native"][1] is False and runs["off"][1] is True  # TensorFlow imported only when asked for
    assert runs["native"][0] == runs["off"][0]
