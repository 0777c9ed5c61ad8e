"""A SavedModel converted by TensorFlow's native converter alone gives ``TFLiteConverter``'s bytes.

``sources/saved_model_native.py`` builds the converter's flags itself and finishes its output as ``lite.py``
does, without importing TensorFlow. These tests hold it to ``tf.lite.TFLiteConverter.from_saved_model`` on
the layouts users hand us (Keras 3 ``model.export``, ``tf.saved_model.save`` of a Keras model, a
``tf.Module`` with a variable and a dict output, the same under a signature named ``predict``, the MLPerf Tiny
KWS Keras 2 SavedModel): the same flags on
the wire and the same model bytes. A TensorFlow upgrade that changes either fails here, and ``VERIFIED``
keeps the native route off for releases not checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from converter.sources import load, saved_model_native
from converter.sources.saved_model_guard import read_proto
from tests.conftest import REALDATA, native_and_tensorflow

MODULE_BUILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self):
            self.w = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 10)

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            return {"y": tf.nn.relu(tf.matmul(x, self.w)) + tf.constant([1.0, 2.0, 3.0])}

    module = Affine()
    tf.saved_model.save(module, sys.argv[1] + "/module", signatures=module.__call__)
    tf.saved_model.save(module, sys.argv[1] + "/named", signatures={"predict": module.__call__})
    """
)


@pytest.fixture(scope="module")
def saved_models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import keras

    folder = tmp_path_factory.mktemp("saved_models")
    model = keras.saving.load_model(tiny_model_dir / "tiny.keras")
    import tensorflow as tf

    tf.saved_model.save(model, str(folder / "keras_saved"))
    subprocess.run([sys.executable, "-c", MODULE_BUILD, str(folder)], check=True, timeout=300)
    found = {"export": tiny_model_dir / "tiny_savedmodel", "keras_saved": folder / "keras_saved"}
    found.update(module=folder / "module", named=folder / "named")
    kws = REALDATA / "kws-dscnn" / "kws_ref_model"
    if (kws / "saved_model.pb").is_file():
        found["kws"] = kws
    return found


@pytest.fixture
def spied_flags() -> Iterator[list[tuple[bytes, bytes]]]:
    """The flags TensorFlow's Python converter hands the native converter, as serialized on the wire."""
    from tensorflow.compiler.mlir.lite.python import wrap_converter

    seen: list[tuple[bytes, bytes]] = []
    original = wrap_converter.wrapped_convert

    def spy(model_flags: bytes, converter_flags: bytes, *rest: Any) -> Any:
        seen.append((model_flags, converter_flags))
        return original(model_flags, converter_flags, *rest)

    wrap_converter.wrapped_convert = spy
    try:
        yield seen
    finally:
        wrap_converter.wrapped_convert = original


def _tensorflows(path: Path) -> bytes:
    import tensorflow as tf

    return bytes(tf.lite.TFLiteConverter.from_saved_model(str(path)).convert())


@pytest.mark.parametrize("layout", ["export", "keras_saved", "module", "named", "kws"])
def test_native_conversion_is_tensorflows_flags_and_bytes(
    saved_models: dict[str, Path], spied_flags: list[tuple[bytes, bytes]], layout: str
) -> None:
    if layout not in saved_models:
        pytest.skip(f"{REALDATA / 'kws-dscnn'} is absent")
    if saved_model_native.usable() is None:
        pytest.skip("the native route is off for this TensorFlow (not in VERIFIED) or its extensions do not load")
    path = saved_models[layout]
    reference = _tensorflows(path)
    assert len(spied_flags) == 1
    proto = read_proto(path)
    key = load._serving_key(proto)
    assert key == ("predict" if layout == "named" else "serving_default")
    ours = (
        saved_model_native.model_flags(path, key, proto.saved_model_schema_version),
        saved_model_native.converter_flags(),
    )
    assert spied_flags[0] == ours
    content, loader = load._saved_model_to_tflite(path)
    assert loader == load.NATIVE_SAVED_MODEL_LOADER
    assert content == reference


def test_a_saved_model_source_converts_without_importing_tensorflow(tiny_model_dir: Path) -> None:
    """In a fresh process: the float model of a Keras export, with TensorFlow never imported."""
    code = textwrap.dedent(
        """
        import hashlib, json, sys
        from pathlib import Path
        from converter.sources.load import load_model
        loaded = load_model(Path(sys.argv[1]))
        print(json.dumps({"sha": hashlib.sha256(loaded.float_tflite).hexdigest(), "loader": loaded.loader,
                          "tensorflow": "tensorflow" in sys.modules}))
        """
    )
    said = native_and_tensorflow(lambda mode: [sys.executable, "-c", code, str(tiny_model_dir / "tiny_savedmodel")])
    runs = {mode: json.loads(out.strip().splitlines()[-1]) for mode, out in said.items()}
    if saved_model_native.usable() is None:
        pytest.skip("the native route is off for this TensorFlow")
    assert runs["native"]["tensorflow"] is False and runs["off"]["tensorflow"] is True
    assert runs["native"]["loader"].startswith(load.NATIVE_SAVED_MODEL_LOADER)
    assert runs["off"]["loader"].startswith(load.SAVED_MODEL_LOADER)
    assert runs["native"]["sha"] == runs["off"]["sha"]


def test_an_unverified_tensorflow_goes_through_tensorflow(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(saved_model_native, "VERIFIED", ("0.",))
    content, loader = load._saved_model_to_tflite(tiny_model_dir / "tiny_savedmodel")
    assert loader == load.SAVED_MODEL_LOADER
    assert content == _tensorflows(tiny_model_dir / "tiny_savedmodel")


def test_the_guards_op_registry_answers_as_tensorflows() -> None:
    """``is_stateful`` decides the guard's verdict: the native registry must give TensorFlow's answer."""
    from tensorflow.python.framework import op_def_registry

    from converter.sources.saved_model_guard import _OpDefs

    ops = _OpDefs()
    names = ("Const", "VarHandleOp", "AssignVariableOp", "RestoreV2", "WriteFile", "PrintV2", "HashTableV2", "MatMul")
    for name in names:
        assert ops.get(name).is_stateful == op_def_registry.get(name).is_stateful, name
    assert ops.get("NoSuchOpAnywhere") is None


def test_the_private_protobuf_classes_read_what_tensorflows_read(saved_models: dict[str, Path]) -> None:
    """``tfnative.protos`` builds TensorFlow's classes from their descriptors: the same message, field for field."""
    from tensorflow.core.protobuf import saved_model_pb2

    from converter.tfnative import protos

    for path in saved_models.values():
        raw = (path / "saved_model.pb").read_bytes()
        ours = read_proto(path)
        assert type(ours).__module__ != saved_model_pb2.__name__  # not TensorFlow's own class
        assert ours.SerializeToString(deterministic=True) == saved_model_pb2.SavedModel.FromString(
            raw
        ).SerializeToString(deterministic=True)
    with pytest.raises(protos.ProtoUnavailable):
        protos.message("tensorflow/core/no_such.proto", "tensorflow.Nothing")
