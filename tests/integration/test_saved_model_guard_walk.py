"""The SavedModel guard's walk: functions bound inside attrs, and RestoreV2 outside the saver.

Each hostile model is a real TF1 SavedModel built in a child process (graph mode must not leak
into the test process) and, where TensorFlow's own builders cannot express the trick, rewritten as
protobuf the way a hostile author would. Without the guard TensorFlow runs these while loading:
the SaveV2 models write a checkpoint at ``target`` and the RestoreV2 model converts with the
weights of another checkpoint on this machine. Each must be refused through
``python -m converter convert`` with exit 2, nothing written and no output folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from converter.sources.saved_model_guard import _func_names
from tests.integration.test_load_safety import _convert

BUILD = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    from tensorflow.core.framework import function_pb2, types_pb2

    kind, folder, target = sys.argv[1], sys.argv[2], sys.argv[3]

    def forwarder(name, attr):
        # a function with a func-typed attr that calls whatever its caller binds there
        f = function_pb2.FunctionDef()
        f.signature.name = name
        f.signature.is_stateful = True
        f.signature.output_arg.add(name="out", type=types_pb2.DT_FLOAT)
        f.signature.attr.add(name=attr, type="func")
        call = f.node_def.add(name="call", op="StatefulPartitionedCall")
        call.attr["f"].placeholder = attr
        call.attr["Tin"].list.SetInParent()
        call.attr["Tout"].list.type.append(types_pb2.DT_FLOAT)
        for key in ("config", "config_proto", "executor_type"):
            call.attr[key].s = b""
        f.ret["out"] = "call:output:0"
        return f

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 4], name="x")
        w = tf.compat.v1.get_variable("w", initializer=tf.ones([4, 2]))
        y = tf.identity(tf.matmul(x, w), name="y")
        if kind == "restore":  # main_op: read another checkpoint on this machine into the weights
            stolen = tf.raw_ops.RestoreV2(
                prefix=tf.constant(target), tensor_names=["w"], shape_and_slices=[""], dtypes=[tf.float32]
            )[0]
            main_op = tf.group(tf.compat.v1.assign(w, stolen))
        else:  # main_op: call a function that saves a checkpoint at target (rebound below)

            @tf.function
            def h():
                tf.raw_ops.SaveV2(
                    prefix=target, tensor_names=["v"], shape_and_slices=[""], tensors=[tf.constant(1.0)]
                )
                return tf.constant(1.0)

            main_op = tf.group(h())
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            b = tf.compat.v1.saved_model.Builder(folder)
            sig = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            b.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig}, main_op=main_op)
            b.save()

    if kind != "restore":
        from tensorflow.core.protobuf import saved_model_pb2

        path = folder + "/saved_model.pb"
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString(open(path, "rb").read())
        meta = proto.meta_graphs[0]
        call = next(n for n in meta.graph_def.node if n.op == "StatefulPartitionedCall")
        h_name = call.attr["f"].func.name
        meta.graph_def.library.function.append(forwarder("forward_b", "b"))
        bound = call.attr["f"].func
        bound.name = "forward_b"
        if kind == "nested1":  # f={name: forward_b, attr: {b: func h}}
            bound.attr["b"].func.name = h_name
        else:  # f={name: forward_b, attr: {b: {name: forward_c, attr: {c: func h}}}}
            meta.graph_def.library.function.append(forwarder("forward_c", "c"))
            bound.attr["b"].func.name = "forward_c"
            bound.attr["b"].func.attr["c"].func.name = h_name
        open(path, "wb").write(proto.SerializeToString())
    """
)

OTHER_CHECKPOINT = textwrap.dedent(
    """
    import sys
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.get_variable("w", initializer=tf.fill([4, 2], 7.0))
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(sess, sys.argv[1], write_meta_graph=False)
    """
)

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _build(kind: str, folder: Path, target: Path) -> Path:
    subprocess.run([sys.executable, "-c", BUILD, kind, str(folder), str(target)], check=True, env=ENV)
    return folder


def _refusal(tmp_path: Path, model: Path) -> str:
    result = _convert(tmp_path, model)
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "out").exists()
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: {tmp_path / 'recipe.yaml'}: model: {model}: refused: the SavedModel has a ")
    assert "; edgeconv never runs a model's load-time ops it cannot prove harmless; re-export the model" in error
    return error


@pytest.mark.full  # the guard's walk; test_load_safety refuses hostile SavedModels in the default tier
@pytest.mark.parametrize("kind", ["nested1", "nested2"])
def test_savev2_in_a_function_bound_through_a_call_attr_is_refused_unrun(tmp_path: Path, kind: str) -> None:
    # main_op -> StatefulPartitionedCall(f={forward_b, attr: {b: func h}}) (nested2: b binds forward_c, whose
    # attr c binds h); h saves a checkpoint at target. Only the attrs inside the bound func name h.
    target = tmp_path / "written"
    model = _build(kind, tmp_path / "model", target)
    assert not list(tmp_path.glob("written*"))  # building does not run main_op
    error = _refusal(tmp_path, model)
    assert "has a SaveV2 op that would run while loading (node 'SaveV2' in function __inference_h_" in error, error
    assert "which is stateful and not on edgeconv's list of ops known to be harmless at load time" in error
    assert not list(tmp_path.glob("written*")), "the model's main_op ran"


@pytest.mark.full
def test_restorev2_of_another_checkpoint_in_main_op_is_refused_unread(tmp_path: Path) -> None:
    other = tmp_path / "other" / "ckpt"
    subprocess.run([sys.executable, "-c", OTHER_CHECKPOINT, str(other)], check=True, env=ENV)
    assert (other.parent / "ckpt.index").is_file()
    model = _build("restore", tmp_path / "model", other)
    error = _refusal(tmp_path, model)  # refused before TensorFlow loads anything: nothing is read into w
    assert "has a RestoreV2 op that would run while loading (node 'RestoreV2' in the graph), which reads a " in error
    assert "checkpoint from a path the model chooses (a RestoreV2 may run while loading only in the saver's " in error


def test_func_names_walks_attrs_bound_inside_funcs_and_func_lists() -> None:
    from tensorflow.core.framework import node_def_pb2

    node = node_def_pb2.NodeDef(name="case", op="Case")
    branch = node.attr["branches"].list.func.add(name="b0")
    branch.attr["inner"].list.func.add(name="deep").attr["x"].func.name = "deeper"
    node.attr["f"].func.name = "g"
    node.attr["f"].func.attr["b"].func.name = "h"
    assert sorted(_func_names(node.attr)) == ["b0", "deep", "deeper", "g", "h"]
