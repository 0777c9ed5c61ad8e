"""A damaged or hand-edited .tflite source is exit 2 naming the file and what in it is wrong, never exit 3.

From a hostile-input audit: names that are not UTF-8 (exit 3, ``UnicodeDecodeError``), a RESHAPE whose shape
tensor, output shape or operands were mangled (exit 3: "quantization failed in TensorFlow:" with no reason,
"running the float model on calibration data failed", a ``RuntimeError`` from an int8 model the quantizer
wrote), and TensorFlow's raw "Failed VHLO to version …" (exit 3, unexplained). The models are
``add_one_float.tflite`` with one RESHAPE appended, edited through the flatbuffer object API
(``converter.tflite.flatbuffer_schema``): no TensorFlow is needed to make them, and most never reach TensorFlow.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result

from converter.cli.main import main
from converter.tflite import flatbuffer_schema as tflite_schema
from tests.conftest import ROOT

ADD_ONE = ROOT / "tests" / "data" / "add_one_float.tflite"  # x [1, 2] -> ADD 1.0 -> Identity [1, 2]
# What TensorFlow 2.21's .tflite importer printed (MLIR diagnostics on stderr) for the invalid RESHAPE below.
REAL_VHLO_TEXT = (
    "loc(\"reshaped\"(\"flatbuffer\":0:0)): error: 'tfl.reshape' op requires 'output' type 'tensor<2x1xi32>' to be "
    "cast compatible with expected type 'tensor<2x1xf32>'\n"
    'loc("flatbuffer":0:0): error: Failed VHLO to version 1.13.7\n'
)


def reshape_model(edit: Callable[[Any, Any], None] | None = None) -> bytes:
    """``add_one_float.tflite`` followed by RESHAPE to [2, 1] (shape tensor 3 'new_shape', output 4 'reshaped').

    ``edit(model, subgraph)`` changes the object tree (``ModelT``) before it is written.
    """
    schema = tflite_schema.schema()
    model = tflite_schema.load(ADD_ONE.read_bytes())
    subgraph = model.subgraphs[0]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RESHAPE
    code.version = 1
    model.operatorCodes.append(code)
    shape_data = schema.BufferT()
    shape_data.data = np.frombuffer(np.array([2, 1], dtype="<i4").tobytes(), dtype=np.uint8)
    model.buffers += [shape_data, schema.BufferT()]
    new_shape = schema.TensorT()
    new_shape.name, new_shape.shape, new_shape.type = b"new_shape", [2], schema.TensorType.INT32
    new_shape.buffer = len(model.buffers) - 2
    reshaped = schema.TensorT()
    reshaped.name, reshaped.shape, reshaped.type = b"reshaped", [2, 1], schema.TensorType.FLOAT32
    reshaped.buffer = len(model.buffers) - 1
    subgraph.tensors += [new_shape, reshaped]
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = len(model.operatorCodes) - 1, [2, 3], [4]
    op.builtinOptionsType = schema.BuiltinOptions.ReshapeOptions
    op.builtinOptions = schema.ReshapeOptionsT()
    op.builtinOptions.newShape = [2, 1]
    subgraph.operators.append(op)
    subgraph.outputs = [4]
    if edit is not None:
        edit(model, subgraph)
    return tflite_schema.dump(model)


def _recipe(folder: Path, model: bytes, name: str = "hostile") -> Path:
    (folder / "model.tflite").write_bytes(model)
    np.savez(folder / "cal.npz", x=np.random.default_rng(0).uniform(0, 1, (8, 2)).astype(np.float32))
    recipe = {
        "version": 1,
        "name": name,
        "model": "model.tflite",
        "data": {"calibration": {"path": "cal.npz", "samples": 8}},
        "calibration": {"cache": False},
        "benchmark": {"warmup": 0, "runs": 1, "min_seconds": 0.0},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _convert(folder: Path, model: bytes) -> Result:
    recipe = _recipe(folder, model)
    return CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(folder / "out")])


def _refused(result: Result, folder: Path, *phrases: str) -> str:
    """Exit 2, one ``error:`` paragraph naming the recipe and the model file, nothing published."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "unexpected failure" not in result.output, result.output
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {folder / 'recipe.yaml'}: model: {folder / 'model.tflite'}: "), error
    for phrase in phrases:
        assert phrase in error, error
    assert not (folder / "out").exists()
    return error


def test_the_reshape_model_itself_converts(tmp_path: Path) -> None:
    """The unedited model converts: each refusal below is the edit's doing."""
    result = _convert(tmp_path, reshape_model())
    assert result.exit_code == 0, result.output


# --- 1. names that are not UTF-8 ------------------------------------------------------------------------


def _rename_tensor(index: int) -> Callable[[Any, Any], None]:
    def edit(model: Any, subgraph: Any) -> None:
        subgraph.tensors[index].name = b"add/\xff\xfey"

    return edit


def _rename_custom_op(model: Any, subgraph: Any) -> None:
    code = model.operatorCodes[subgraph.operators[1].opcodeIndex]
    code.builtinCode = code.deprecatedBuiltinCode = tflite_schema.schema().BuiltinOperator.CUSTOM
    code.customCode = b"My\xffReshape"


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (_rename_tensor(1), "the name of tensor 1 is not valid UTF-8 text ('add/\\\\xff\\\\xfey': invalid start byte"),
        (_rename_tensor(0), "the name of tensor 0 is not valid UTF-8 text"),  # the input: LiteRT reads it first
        # Exit 2 before too, with Python's codec message for the reason.
        (_rename_custom_op, "the custom op name of operator code 1 (used by op 1) is not valid UTF-8 text"),
    ],
    ids=["weights tensor", "input tensor", "custom op"],
)
def test_a_name_that_is_not_utf8_is_exit_2_naming_it(
    tmp_path: Path, edit: Callable[[Any, Any], None], where: str
) -> None:
    """Names key the report's layers and the quantizer's denylist: refused, with the index, not decoded leniently.

    Before: exit 3, "unexpected failure (UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff ...)" for a
    weights tensor; exit 2 for the others, saying only "the TFLite interpreter cannot open it: 'utf-8' codec ...".
    """
    error = _refused(_convert(tmp_path, reshape_model(edit)), tmp_path, where, "export it again")
    assert "quantizer's list of float ops" in error


def test_a_metadata_entry_without_a_name_is_exit_2(tmp_path: Path) -> None:
    """Before: exit 3, "unexpected failure (TypeError: cannot convert 'NoneType' object to bytes)"."""

    def edit(model: Any, subgraph: Any) -> None:
        model.metadata[0].name = None

    _refused(_convert(tmp_path, reshape_model(edit)), tmp_path, "the name of metadata entry 0 is missing")


# --- 2. a corrupted RESHAPE ---------------------------------------------------------------------------


def _shape_tensor_float(model: Any, subgraph: Any) -> None:
    subgraph.tensors[3].type = tflite_schema.schema().TensorType.FLOAT32


def _shape_tensor_2d(model: Any, subgraph: Any) -> None:
    subgraph.tensors[3].shape = [1, 2]


def _shape_input_swapped(model: Any, subgraph: Any) -> None:
    subgraph.operators[1].inputs = [3, 2]


def _shape_tensor_without_data(model: Any, subgraph: Any) -> None:
    model.buffers[subgraph.tensors[3].buffer].data = None


def _output_shape_mangled(model: Any, subgraph: Any) -> None:
    subgraph.tensors[4].shape = [5, 5]


def _shape_values_mangled(model: Any, subgraph: Any) -> None:
    data = np.frombuffer(np.array([3, 1], dtype="<i4").tobytes(), dtype=np.uint8)
    model.buffers[subgraph.tensors[3].buffer].data = data


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        # Before: exit 3, "unexpected failure (RuntimeError: ... Node number 1 (RESHAPE) failed to prepare.)" from
        # the int8 model TensorFlow's quantizer made of it.
        (_shape_tensor_float, "op 1 (RESHAPE) takes its target shape from tensor 3 ('new_shape'), which is FLOAT32"),
        # Before: exit 0; the interpreter silently used the new_shape option instead.
        (
            _shape_tensor_2d,
            "op 1 (RESHAPE) takes its target shape from tensor 3 ('new_shape'), which is INT32 with shape [1, 2]",
        ),  # fmt: skip
        # Before: exit 3, "quantization failed in TensorFlow: " (nothing after the colon).
        (_shape_input_swapped, "op 1 (RESHAPE) takes its target shape from tensor 2 ('Identity'), which is FLOAT32"),
        # Before: exit 3, "running the float model on calibration data failed: Input tensor 3 lacks data".
        (
            _shape_tensor_without_data,
            "the TFLite interpreter cannot run it with its builtin kernels (Input tensor 3 lacks data)",
        ),  # fmt: skip
        # Before: exit 3, "quantization failed in TensorFlow: " (nothing after the colon).
        (
            _output_shape_mangled,
            "tensor 4 ('reshaped'), an output of op 1 (RESHAPE), is declared with shape [5, 5] "
            "but the op computes [2, 1]",
        ),  # fmt: skip
        # Exit 2 before too, but naming the XNNPACK delegate's node: now the model's op.
        (_shape_values_mangled, "Node number 1 (RESHAPE) failed to prepare"),
    ],
    ids=[
        "shape tensor float",
        "shape tensor 2-D",
        "operands swapped",
        "shape tensor empty",
        "output shape",
        "shape values",
    ],  # fmt: skip
)
def test_a_corrupted_reshape_is_exit_2_naming_the_op(
    tmp_path: Path, edit: Callable[[Any, Any], None], where: str
) -> None:
    _refused(_convert(tmp_path, reshape_model(edit)), tmp_path, "the model file is invalid", where, "export it again")


# --- 3. TensorFlow's "Failed VHLO to version" ------------------------------------------------------------


def test_vhlo_meaning_puts_the_real_message_in_words() -> None:
    from converter.sources.tflite_check import vhlo_meaning  # here: the module is new, and the others run without it

    said = vhlo_meaning(REAL_VHLO_TEXT)
    assert said is not None
    assert said.startswith("TensorFlow's .tflite importer cannot read the model ('Failed VHLO to version 1.13.7': ")
    assert "written by a newer converter and holds StableHLO ops this TensorFlow/LiteRT cannot read" in said
    assert "or an op in it is invalid" in said
    assert vhlo_meaning("RuntimeError: Node number 1 (RESHAPE) failed to prepare.") is None


def _reshape_to_int32(model: Any, subgraph: Any) -> None:
    """RESHAPE declared to turn float32 into int32: LiteRT copies the bytes, TensorFlow's importer refuses the op.

    A second RESHAPE (to float32 [1, 2]) makes the model's output float again, so every check at load passes
    and the model reaches TensorFlow's quantizer, whose importer prints the text above.
    """
    schema = tflite_schema.schema()
    subgraph.tensors[4].type = schema.TensorType.INT32
    back_data = schema.BufferT()
    back_data.data = np.frombuffer(np.array([1, 2], dtype="<i4").tobytes(), dtype=np.uint8)
    model.buffers += [back_data, schema.BufferT()]
    back_shape = schema.TensorT()
    back_shape.name, back_shape.shape, back_shape.type = b"back_shape", [2], schema.TensorType.INT32
    back_shape.buffer = len(model.buffers) - 2
    out = schema.TensorT()
    out.name, out.shape, out.type, out.buffer = b"out", [1, 2], schema.TensorType.FLOAT32, len(model.buffers) - 1
    subgraph.tensors += [back_shape, out]
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = subgraph.operators[1].opcodeIndex, [4, 5], [6]
    subgraph.operators.append(op)
    subgraph.outputs = [6]


def test_a_model_tensorflows_importer_refuses_is_exit_2_with_the_vhlo_sentence(tmp_path: Path) -> None:
    """The float model passes every check at load and fails TensorFlow's importer in the quantizer.

    Before: exit 3, "quantization failed in TensorFlow: " (nothing after the colon; "Failed VHLO to version 1.13.7"
    only in the native output). Now the importer's reasons are read, the op is named, and the VHLO line explained.
    """
    error = _refused(
        _convert(tmp_path, reshape_model(_reshape_to_int32)),
        tmp_path,
        "the model file is invalid: TensorFlow's .tflite importer rejects it: op 1 (RESHAPE, output 'reshaped'): "
        "'tfl.reshape' op requires 'output' type",
        "(then 'Failed VHLO to version', its last word on any model it cannot read)",
        "export it again",
    )
    assert re.search(r"'tensor<2x1xi32>' to be cast compatible with expected type 'tensor<2x1xf32>'", error), error


def test_an_importer_refusal_of_what_edgeconv_made_of_a_valid_file_stays_exit_3(tmp_path: Path) -> None:
    """The quantizer reads the float model as edgeconv rewrote it: the file is blamed only if TensorFlow's importer
    rejects the file itself too; otherwise the fault is edgeconv's (exit 3), or TensorFlow's for a converted source.
    """
    from converter.errors import InvalidModelError
    from converter.pipeline import _invalid_model
    from converter.recipe import load_recipe

    recipe = load_recipe(_recipe(tmp_path, ADD_ONE.read_bytes()))  # a valid file
    found = InvalidModelError("TensorFlow's .tflite importer rejects it: op 0 (ADD, output 'Identity'): ...", "fix")
    error = _invalid_model(recipe, "tflite", found)
    assert error.exit_code == 3
    assert "though it reads the file itself: this is a bug in edgeconv" in str(error)
    error = _invalid_model(recipe, "keras", found)
    assert error.exit_code == 3
    assert "This is a problem in TensorFlow's converter, not in your file" in str(error)
