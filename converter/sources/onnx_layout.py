"""onnx2tf's layout guess on tensors whose channels, height and width are equal, and its correction.

Run only inside the ONNX virtualenv's worker (``onnx_worker.py`` loads this file by path); it imports
nothing from edgeconv.

onnx2tf converts NCHW to NHWC and records, per tensor, whether its TensorFlow tensor is channel-last by
comparing the TensorFlow shape with the ONNX shape (1.29.24: ``utils/common_functions.py``,
``inverted_operation_enable_disable``). Where every dimension after the batch is the same ([1, 16, 16, 16])
the shapes cannot tell, and onnx2tf takes the tensor as channel-last. A Reshape's output is in ONNX order in
onnx2tf's graph, so there the guess is wrong, and every reader of that tensor goes wrong with it: a
Transpose or Slice converts its axes that are already right, a pool or convolution skips the NCHW -> NHWC
transpose it needs. Vision transformers that fold tokens back into maps (Swin, SegFormer, PoolFormer) have
such Reshapes whenever the map's side equals its channel count.

The correction makes the guess true instead of fighting it: onnx2tf's own ``param_replacement_file``
transposes each such Reshape's output to channel-last (``post_process_transpose_perm``), rewrites a
Transpose that reads one so that it writes channel-last too, and gives a multi-axis Slice on one its axes
already converted and in ascending order (onnx2tf pairs starts and ends with axes by position after
converting the axes, which reorders them). Node names in that file must match the graph onnx2tf converts:
onnx2tf simplifies its input with ``onnxsim`` three times first, so ``simplified`` does the same and names
every unnamed node, and the worker hands onnx2tf that model.

This is a correction for a guess, checked rather than trusted: the worker applies it only when its float
check against onnxruntime has failed on a model with such tensors, and keeps the result only if the check
then passes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

# Ops whose output onnx2tf always writes channel-last (rank >= 3), and ops whose output it keeps in ONNX order.
CHANNEL_LAST_OPS = frozenset(
    {"Conv", "ConvTranspose", "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}
    | {"GlobalLpPool", "Resize", "Upsample", "InstanceNormalization", "DepthToSpace", "SpaceToDepth", "LRN"}
)
ONNX_ORDER_OPS = frozenset({"Reshape", "Transpose", "Flatten", "MatMul", "Gemm", "Squeeze", "Unsqueeze", "Einsum"})
SIMPLIFY_PASSES = 3  # onnx2tf 1.29.24 runs onnxsim three times over its input


def simplified(model: Any, folder: Path) -> Any:
    """``model`` as onnx2tf will convert it: ``onnxsim`` three times (the virtualenv's own), every node named."""
    import onnx

    path = folder / "layout-simplified.onnx"
    onnx.save(model, str(path))
    onnxsim = Path(sys.executable).parent / "onnxsim"
    for _ in range(SIMPLIFY_PASSES):
        subprocess.run([str(onnxsim), str(path), str(path)], check=True, capture_output=True)  # noqa: S603
    result = onnx.load(str(path))
    path.unlink()
    for k, node in enumerate(result.graph.node):
        if not node.name:
            node.name = f"edgeconv_{node.op_type}_{k}"
    return result


def _channel_last(rank: int) -> list[int]:
    return [0, *range(2, rank), 1]


def _square(shape: list[int | None] | None) -> bool:
    """4-D, static, and channels == height == width > 1: where onnx2tf cannot tell the layout."""
    if shape is None or len(shape) != 4 or None in shape[1:]:
        return False
    return shape[1] == shape[2] == shape[3] and (shape[1] or 0) > 1


def _constants(graph: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(a.t)
    return values


def _sorted_slice(node: Any, values: dict[str, Any], rank: int) -> list[dict[str, Any]]:
    """A multi-axis Slice of a corrected tensor: its axes converted to channel-last and ascending, with its
    starts, ends and steps in the same order (onnx2tf would convert the axes and pair them by position)."""
    ins = [*node.input, "", "", "", "", ""][:5]
    if not ins[3] or any(i not in values for i in ins[1:5] if i):
        return []
    axes = [int(a) % rank for a in values[ins[3]].ravel()]
    order_of = _channel_last(rank)
    converted = [order_of.index(a) for a in axes]
    order = sorted(range(len(axes)), key=lambda k: converted[k])
    if len(axes) < 2 or order == list(range(len(axes))):
        return []
    ops = []
    for i in (1, 2, 3, 4):
        if ins[i]:
            original = values[ins[i]].ravel()
            new = [converted[k] if i == 3 else int(original[k]) for k in order]
            ops.append({"op_name": node.name, "param_target": "inputs", "param_name": ins[i], "values": new})
    return ops


def replacements(model: Any, kept: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """onnx2tf ``param_replacement_file`` operations that make each square tensor onnx2tf mis-reads channel-last.

    ``model`` must be ``simplified``'s result (the names must be onnx2tf's). Layouts are followed through the
    graph as onnx2tf sets them: 4-D inputs channel-last unless ``kept``, spatial ops channel-last, Reshape and
    its kin in ONNX order, element-wise ops as their inputs.
    """
    from onnx import shape_inference

    graph = shape_inference.infer_shapes(model).graph
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in [*graph.value_info, *graph.input, *graph.output]
        if v.type.tensor_type.HasField("shape")
    }
    values = _constants(graph)
    constants = set(values)
    last = {v.name for v in graph.input if v.name not in constants and len(shapes.get(v.name) or []) == 4}
    last -= set(kept)
    corrected: set[str] = set()
    ops: list[dict[str, Any]] = []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        if node.op_type == "Slice" and node.input[0] in corrected:
            ops.extend(_sorted_slice(node, values, 4))
        inputs = [i for i in node.input if i and i not in constants]
        for out in node.output:
            shape = shapes.get(out)
            if shape is None:
                continue
            if node.op_type in CHANNEL_LAST_OPS and len(shape) >= 3:
                channel_last = True
            elif node.op_type in ONNX_ORDER_OPS:
                channel_last = False
            else:
                channel_last = any(i in last and len(shapes.get(i) or []) == len(shape) for i in inputs)
            # Only where onnx2tf's guess is known wrong: a Reshape's output, or a Transpose of a corrected
            # tensor. A Transpose of a convolution's output (ConvNeXt) converts right and is left alone.
            wrong = node.op_type == "Reshape" or (node.op_type == "Transpose" and node.input[0] in corrected)
            if not channel_last and wrong and _square(shape):
                ops.append(_correction(node, out, node.input[0] in last))
                channel_last = True
                corrected.add(out)
            if channel_last:
                last.add(out)
    return ops


def _correction(node: Any, out: str, input_channel_last: bool) -> dict[str, Any]:
    """The replacement that makes ``node`` write ``out`` channel-last: a Transpose's own perm, else a transpose
    after the node (``post_process_transpose_perm``)."""
    if node.op_type != "Transpose":
        return {
            "op_name": node.name,
            "param_target": "outputs",
            "param_name": out,
            "post_process_transpose_perm": _channel_last(4),
        }
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [3, 2, 1, 0])
    wanted = [perm[a] for a in _channel_last(4)]  # the input's ONNX axes, in channel-last output order
    if input_channel_last:  # then onnx2tf's input tensor is channel-last: its axes renumbered so
        wanted = [_channel_last(4).index(a) for a in wanted]
    return {"op_name": node.name, "param_target": "attributes", "param_name": "perm", "values": wanted}
