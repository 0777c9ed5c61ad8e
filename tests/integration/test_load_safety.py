"""Loading never runs code from a model: SavedModels whose load-time ops write files are refused unrun.

The hostile models are built in a child process (building a TF1 graph needs graph mode) and
converted through ``python -m converter convert``, as a user would; the file their init op
would write must not exist afterwards. The real SavedModels (a Keras 3 ``model.export`` and a
Keras 2 SavedModel from ../shared/realdata) must still convert.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from converter.errors import ModelLoadError
from converter.runtime.model import TFLiteModel
from converter.sources.load import NATIVE_SAVED_MODEL_LOADER, SAVED_MODEL_LOADER, load_model
from converter.sources.saved_model_guard import check_saved_model
from tests.conftest import REALDATA, ROOT

# A child process builds the models: graph mode (TF1 Builder) must not leak into the test process.
BUILD = textwrap.dedent(
    """
    import sys
    import tensorflow as tf

    kind, folder, target = sys.argv[1], sys.argv[2], sys.argv[3]

    def tf1(init_kind, hostile):
        g = tf.Graph()
        with g.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [1, 4], name="x")
            w = tf.compat.v1.get_variable("w", initializer=tf.ones([4, 2]))
            y = tf.identity(tf.matmul(x, w), name="y")
            if hostile == "pyfunc":  # in the serving path only: never run while loading
                y = tf.identity(tf.compat.v1.py_func(lambda t: t, [y], tf.float32), name="y_py")
            ops = [tf.compat.v1.global_variables_initializer()]
            if hostile == "write":
                ops.append(tf.io.write_file(target, "written by the model's init op"))
            elif hostile == "print":
                ops.append(tf.print("hello from the init op"))
            init = tf.group(*ops)
            with tf.compat.v1.Session(graph=g) as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                b = tf.compat.v1.saved_model.Builder(folder)
                sig = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
                b.add_meta_graph_and_variables(
                    sess, ["serve"], signature_def_map={"serving_default": sig}, **{init_kind: init}
                )
                b.save()

    class Hostile(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

        def _initialize(self):  # traced into the SavedModel; TF runs it while loading
            tf.io.write_file(target, "written by the model's resource initializer")

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([4, 2]))
            self.r = Hostile()

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            return x @ self.w

    if kind == "tf2":
        m = M()
        tf.saved_model.save(m, folder, signatures=m.__call__)
    else:
        init_kind, hostile = kind.split(":")
        tf1(init_kind, hostile)
    """
)


def _build(kind: str, folder: Path, target: Path) -> Path:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", BUILD, kind, str(folder), str(target)], check=True, env=env)
    assert not target.exists()  # building does not run the init op
    return folder


def _convert(tmp_path: Path, model: Path) -> subprocess.CompletedProcess[str]:
    x = np.random.default_rng(0).random((20, 4)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    recipe = {
        "version": 1,
        "name": "hostile",
        "model": str(model),
        "data": {"calibration": {"path": str(tmp_path / "x.npz"), "samples": 10}},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "converter", "convert", "--recipe", str(tmp_path / "recipe.yaml")]
    return subprocess.run(
        [*cmd, "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300, check=False
    )


@pytest.mark.parametrize(
    ("kind", "node_where"),
    [
        ("main_op:write", "node 'WriteFile' in the graph"),
        pytest.param("legacy_init_op:write", "node 'WriteFile' in the graph", marks=pytest.mark.full),
        pytest.param("tf2", "node 'WriteFile' in function __inference__initializer_", marks=pytest.mark.full),
    ],
)
def test_savedmodel_whose_load_writes_a_file_is_refused_unrun(tmp_path: Path, kind: str, node_where: str) -> None:
    target = tmp_path / "written.pth"
    model = _build(kind, tmp_path / "model", target)
    result = _convert(tmp_path, model)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {tmp_path / 'recipe.yaml'}: model: {model}: refused: the SavedModel has a ")
    assert f"WriteFile op that would run while loading ({node_where}" in error, error
    assert "which writes a file; edgeconv never runs a model's load-time ops it cannot prove harmless" in error
    assert "re-export the model without init ops" in error and "float .tflite" in error
    assert not target.exists(), "the model's init op ran"
    assert not (tmp_path / "out").exists()


@pytest.mark.full  # a third hostile TF1 SavedModel
def test_stateful_op_off_the_allowlist_is_refused_at_load_time(tmp_path: Path) -> None:
    # tf.print to stderr is harmless anywhere else, but it is stateful and not on the load-time allowlist.
    model = _build("main_op:print", tmp_path / "model", tmp_path / "unused")
    with pytest.raises(ModelLoadError) as info:
        load_model(model)
    assert "the SavedModel has a PrintV2 op that would run while loading (node 'PrintV2' in the graph), which " in str(
        info.value
    )
    assert "is stateful and not on edgeconv's list of ops known to be harmless at load time" in str(info.value)
    assert info.value.exit_code == 2


def test_python_code_anywhere_in_the_graph_is_refused(tmp_path: Path) -> None:
    model = _build("main_op:pyfunc", tmp_path / "model", tmp_path / "unused")
    with pytest.raises(ModelLoadError, match=r"has a PyFunc op \(node 'PyFunc' in the graph\), which runs Python code"):
        check_saved_model(model)


@pytest.mark.full  # a fourth hostile TF1 SavedModel
def test_saver_restore_op_pointing_at_an_unknown_op_is_refused(tmp_path: Path) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    model = _build("main_op:none", tmp_path / "model", tmp_path / "unused")
    check_saved_model(model)  # the clean model passes: its saver's SaveV2/MergeV2Checkpoints never run on load
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((model / "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    assert {"SaveV2", "MergeV2Checkpoints"} <= {n.op for n in graph.node}
    hostile = graph.node.add(name="backdoor", op="LaunchMissiles")
    hostile.input.append("^w")
    proto.meta_graphs[0].saver_def.restore_op_name = "backdoor"
    (model / "saved_model.pb").write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError) as info:
        check_saved_model(model)
    assert (
        "has a LaunchMissiles op that would run while loading (node 'backdoor' in the graph), which is not an op "
        in (str(info.value))
    )


@pytest.mark.full  # test_keras2_savedmodel_from_realdata converts a clean one
def test_clean_tf1_savedmodel_still_converts(tmp_path: Path) -> None:
    model = _build("main_op:none", tmp_path / "model", tmp_path / "unused")
    loaded = load_model(model)
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(TFLiteModel(model_content=loaded.float_tflite).run(x)[0], [[4.0, 4.0]])


def test_keras3_export_still_converts(tiny_model_dir: Path) -> None:
    from tests.conftest import tiny_data

    loaded = load_model(tiny_model_dir / "tiny_savedmodel")
    # The export keeps the batch unknown; its reshape arithmetic is folded at batch 1 (TFLite Micro lacks it).
    assert loaded.loader in {
        f"{loader}; 3 shape-arithmetic ops of the unknown batch folded at batch 1"
        for loader in (NATIVE_SAVED_MODEL_LOADER, SAVED_MODEL_LOADER)
    }
    assert loaded.input_shape == (1, 12, 12, 3)
    x, _ = tiny_data(8, seed=1)
    reference = TFLiteModel(model_path=str(tiny_model_dir / "tiny.tflite")).predict(x.astype(np.float32))[0]
    got = TFLiteModel(model_content=loaded.float_tflite).predict(x.astype(np.float32))[0]
    np.testing.assert_allclose(got, reference, atol=1e-5)


@pytest.mark.realdata
def test_keras2_savedmodel_from_realdata_still_converts() -> None:
    folder = REALDATA / "kws-dscnn" / "kws_ref_model"
    if not (folder / "saved_model.pb").is_file():
        pytest.skip(f"{folder} is absent")
    loaded = load_model(folder)
    assert loaded.input_shape == (1, 49, 10, 1)
    data = np.load(REALDATA / "kws-dscnn" / "evaluation.npz")
    x, y = data["x"][:200].astype(np.float32), data["y"][:200]
    ours = TFLiteModel(model_content=loaded.float_tflite).predict(x)[0].argmax(-1)
    # realdata/README.md: the float model scores 90.0% top-1; these 200 samples give 90.0% as converted here.
    assert float(np.mean(ours == y)) >= 0.88
