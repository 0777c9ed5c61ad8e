"""Look inside a .tflite: its ops and which of them still compute in float."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converter.runtime.interpreter import make_interpreter


@dataclass(frozen=True)
class OpInfo:
    """One operator: builtin name and the dtypes of its tensors."""

    index: int
    name: str
    input_dtypes: tuple[str, ...]
    output_dtypes: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...] = ()
    output_shapes: tuple[tuple[int, ...], ...] = ()
    output_names: tuple[str, ...] = ()


def list_ops(model: bytes) -> list[OpInfo]:
    """Every operator of the model's main subgraph, in execution order."""
    interpreter = make_interpreter(model_content=model, delegate="none")
    details = {d["index"]: d for d in interpreter.get_tensor_details()}

    def dtype(i: int) -> str:
        return np.dtype(details[i]["dtype"]).name if i in details else "none"

    def shape(i: int) -> tuple[int, ...]:
        return tuple(int(v) for v in details[i]["shape"]) if i in details else ()

    ops = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only op listing both LiteRT and TF offer
        ins = [int(i) for i in op["inputs"] if int(i) >= 0]
        outs = [int(i) for i in op["outputs"] if int(i) >= 0]
        ops.append(
            OpInfo(
                int(op["index"]),
                str(op["op_name"]),
                tuple(map(dtype, ins)),
                tuple(map(dtype, outs)),
                tuple(map(shape, ins)),
                tuple(map(shape, outs)),
                tuple(str(details[i]["name"]) if i in details else "" for i in outs),
            )
        )
    return ops


def source_layer(tensor_name: str) -> str:
    """The layer a TFLite tensor came from, as its name records it ('model/layer/op;…' → 'model/layer')."""
    first = tensor_name.split(";")[0]
    return first.rsplit("/", 1)[0] if "/" in first else first


@dataclass(frozen=True)
class Node:
    """An op as the quantizer's ``denylisted_nodes`` names it (its first output tensor's name)."""

    name: str
    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """Tensor names and ops of the main subgraph, read once for graph walks."""

    tensor_names: dict[int, str]
    nodes: tuple[Node, ...]


def op_graph(model: bytes) -> Graph:
    """The model's ops with their tensor indices, in execution order."""
    interpreter = make_interpreter(model_content=model, delegate="none")
    names = {int(d["index"]): str(d["name"]) for d in interpreter.get_tensor_details()}
    nodes = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - see list_ops
        outs = tuple(int(i) for i in op["outputs"] if int(i) >= 0)
        if outs:
            ins = tuple(int(i) for i in op["inputs"] if int(i) >= 0)
            nodes.append(Node(names[outs[0]], str(op["op_name"]), ins, outs))
    return Graph(names, tuple(nodes))


def macs(op: OpInfo) -> int:
    """Multiply-accumulates of one operator (0 for ops without a weight product)."""
    if not op.output_shapes or len(op.input_shapes) < 2:
        return 0
    out, weights = op.output_shapes[0], op.input_shapes[1]
    if op.name == "CONV_2D" and len(out) == 4 and len(weights) == 4:  # weights [O, KH, KW, I]
        return int(np.prod(out)) * weights[1] * weights[2] * weights[3]
    if op.name == "DEPTHWISE_CONV_2D" and len(out) == 4 and len(weights) == 4:  # weights [1, KH, KW, O]
        return int(np.prod(out)) * weights[1] * weights[2]
    if op.name == "FULLY_CONNECTED" and len(weights) == 2:  # weights [O, I]
        return int(np.prod(out)) * weights[1]
    if op.name == "TRANSPOSE_CONV" and len(op.input_shapes) >= 3 and len(op.input_shapes[1]) == 4:
        w = op.input_shapes[1]
        return int(np.prod(op.input_shapes[2])) * w[0] * w[1] * w[2]
    return 0


def float_ops(model: bytes) -> list[OpInfo]:
    """Ops that compute in float, apart from the QUANTIZE/DEQUANTIZE at float model I/O."""
    return [
        op
        for op in list_ops(model)
        if "float32" in op.input_dtypes + op.output_dtypes and op.name not in ("QUANTIZE", "DEQUANTIZE")
    ]
