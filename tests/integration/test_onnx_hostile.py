"""Hostile .onnx files: what a model names or declares cannot leak a host file, exhaust memory or crash a step.

Each case is refused with exit 2 and a sentence that names the tensor or node, before onnx2tf reads anything.
The leak case goes through ``edgeconv convert`` and checks that no output file holds the secret's bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from converter.cli.main import main
from converter.errors import ModelLoadError
from converter.runtime.model import TFLiteModel
from converter.sources.load import load_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

SECRET = b"root:x:0:0:root:/root:/bin/bash\n"  # 32 bytes: eight float32 values' worth


def _add_model(folder: Path, weight: Any, nodes: list[Any] | None = None, name: str = "m.onnx") -> Path:
    """x [1, 4] + w -> y, with ``w`` as given (external data, odd dimensions...)."""
    graph = helper.make_graph(
        nodes or [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    path = folder / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _declared(dims: tuple[int, ...]) -> Any:
    """A float tensor 'w' of ``dims`` holding no data (helper.make_tensor would insist on the values)."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT)
    weight.dims.extend(dims)
    return weight


def _external(entries: list[tuple[str, str]], dims: tuple[int, ...] = (4,)) -> Any:
    weight = _declared(dims)
    weight.data_location = TensorProto.EXTERNAL
    for key, value in entries:
        weight.external_data.add(key=key, value=value)
    return weight


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A model folder with a real 16-byte weight file, a secret outside it and links to the secret."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "passwd").write_bytes(SECRET)
    (model_dir / "p.bin").symlink_to(tmp_path / "secret" / "passwd")
    (model_dir / "sub").symlink_to(tmp_path / "secret")
    (model_dir / "dir.bin").mkdir()
    return model_dir


def test_a_repeated_location_cannot_copy_a_host_file_into_the_output(
    onnx_env: Path,
    folder: Path,
    tmp_path: Path,
) -> None:
    """onnx uses the last ``location``; a checked first one must not hide a link to a host file."""
    weight = _external([("location", "w.bin"), ("location", "p.bin")], dims=(8,))
    slice_node = helper.make_node("Slice", ["w", "s", "e"], ["w4"])
    consts = [
        helper.make_node("Constant", [], ["s"], value=helper.make_tensor("sv", TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], ["e"], value=helper.make_tensor("ev", TensorProto.INT64, [1], [4])),
    ]
    model = _add_model(folder, weight, [*consts, slice_node, helper.make_node("Add", ["x", "w4"], ["y"])])
    np.save(tmp_path / "cal.npy", np.ones((4, 1, 4), np.float32))
    recipe = {"version": 1, "name": "leak", "model": str(model), "data": {"calibration": {"path": "cal.npy"}}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "gives its external data key 'location' twice ('w.bin' and 'p.bin')" in result.output
    assert "Traceback" not in result.output
    secret = (tmp_path / "secret").resolve()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.resolve().is_relative_to(secret)]
    assert written, "the test looked at no file"
    assert not any(SECRET[:12] in p.read_bytes() for p in written)


@pytest.mark.parametrize(
    ("entries", "dims", "message"),
    [
        ([("location", "w.bin"), ("location", "/etc/passwd")], (4,), "gives its external data key 'location' twice"),
        ([("location", "w.bin"), ("basepath", "/etc")], (4,), "has the external data key 'basepath'"),
        ([("location", "w.bin"), ("offset", str(2**62))], (4,), "at offset 4,611,686,018,427,387,904, past the end"),
        ([("location", "w.bin"), ("offset", "8"), ("length", "16")], (4,), "16 bytes at offset 8 of a 16-byte file"),
        ([("location", "w.bin"), ("offset", "-1")], (4,), "with offset '-1', which is not a byte count"),
        ([("location", "w.bin")], (1 << 20, 1 << 20), "dimensions need 4,398,046,511,104 bytes"),
        ([("location", "p.bin")], (8,), "is a symbolic link"),
        ([("location", "sub/passwd")], (8,), "is a symbolic link"),
        ([("location", "dir.bin")], (4,), "which is not a regular file"),
        ([("location", "missing.bin")], (4,), "which does not exist"),
        ([("location", "/etc/passwd")], (4,), "which is not a plain relative path inside the model's folder"),
    ],
    ids=[
        "absolute_duplicate",
        "basepath",
        "huge_offset",
        "length_past_end",
        "negative_offset",
        "huge_dims",
        "symlink",
        "symlinked_folder",
        "directory",
        "missing",
        "absolute",
    ],
)
def test_external_data_entries_are_checked(
    entries: list[tuple[str, str]],
    dims: tuple[int, ...],
    message: str,
    onnx_env: Path,
    folder: Path,
) -> None:
    path = _add_model(folder, _external(entries, dims))
    with pytest.raises(ModelLoadError) as caught:
        load_model(path)
    assert str(caught.value).startswith(f"model: {path}: tensor 'w' "), caught.value
    assert message in str(caught.value)


def test_a_huge_declared_initializer_without_data_is_refused(onnx_env: Path, tmp_path: Path) -> None:
    path = _add_model(tmp_path, _declared((1 << 20, 1 << 20)))
    with pytest.raises(ModelLoadError, match=r"tensor 'w' declares dimensions \[1048576, 1048576\] .* holds 0 values"):
        load_model(path)


def test_a_constant_of_shape_bomb_is_refused_before_onnx2tf(onnx_env: Path, tmp_path: Path) -> None:
    """A few bytes asking for a 64 GiB constant: onnxsim would fold it; the size is read from shape inference."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1 << 16, 1 << 16, 4])
    nodes = [
        helper.make_node(
            "ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1])
        ),
        helper.make_node("ReduceMax", ["big"], ["m"], keepdims=0),
        helper.make_node("Add", ["x", "m"], ["y"]),
    ]
    path = _add_model(tmp_path, shape, nodes)
    with pytest.raises(ModelLoadError, match=r"the graph computes 'big' of shape \[65536, 65536, 4\]"):
        load_model(path)


def _function_model(folder: Path, op: str, domain: str) -> Path:
    """y = f(x) where f, a model-local function in domain 'local', is Relu then ``op`` of ``domain``."""
    body = [helper.make_node("Relu", ["a"], ["r"]), helper.make_node(op, ["r", "r"], ["b"], domain=domain)]
    function = helper.make_function("local", "f", ["a"], ["b"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("f", ["x"], ["y"], domain="local")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    path = folder / f"function_{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets, functions=[function]), str(path))
    return path


def test_a_model_local_function_of_standard_ops_converts(onnx_env: Path, tmp_path: Path) -> None:
    loaded = load_model(_function_model(tmp_path, "Add", ""))
    model = TFLiteModel(model_content=loaded.float_tflite)
    x = np.array([[-1.0, 0.5, 2.0, -3.0]], np.float32)
    model.interpreter.set_tensor(model.inputs[0].index, x)
    model.interpreter.invoke()
    assert model.interpreter.get_tensor(model.outputs[0].index).tolist() == [[0.0, 1.0, 4.0, 0.0]]


def test_a_custom_operator_inside_a_function_is_named(onnx_env: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"custom operators com\.example::Mix are not standard ONNX"):
        load_model(_function_model(tmp_path, "Mix", "com.example"))


def test_a_model_the_onnx_checker_rejects_is_exit_2(onnx_env: Path, tmp_path: Path) -> None:
    """An Add with one input is malformed ONNX: onnx's checker says so, not a failure deep in onnx2tf."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    path = _add_model(tmp_path, weight, [helper.make_node("Add", ["x"], ["y"])])
    with pytest.raises(ModelLoadError, match="onnx's checker rejects the model"):
        load_model(path)
    assert path.exists()


def test_an_op_onnx2tf_keeps_as_a_tensorflow_op_is_named(onnx_env: Path, tmp_path: Path) -> None:
    """ONNX Det becomes FlexMatrixDeterminant: exit 2 naming it, not advice to link the Flex delegate."""
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["d"]), helper.make_node("Add", ["d", "d"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    with pytest.raises(ModelLoadError) as caught:
        load_model(path)
    assert "onnx2tf kept FlexMatrixDeterminant as TensorFlow ops" in str(caught.value)
    assert "Flex delegate" not in str(caught.value)
