"""Reading and editing a .tflite flatbuffer with the schema's object API (subgraph 0), without TensorFlow."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from converter.tflite import flatbuffer_schema as tflite_schema

LINEAR = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def load(model: bytes) -> Any:
    return tflite_schema.load(model)


def dump(model: Any) -> bytes:
    return tflite_schema.dump(model)


def enum_names(kind: str) -> dict[int, str]:
    """Value -> name of a flatbuffer schema enum (``BuiltinOperator``, ``TensorType``)."""
    schema = tflite_schema.schema()

    return {int(v): str(k) for k, v in vars(getattr(schema, kind)).items() if not k.startswith("_")}


def op_code(model: Any, op: Any, names: dict[int, str]) -> str:
    oc = model.operatorCodes[op.opcodeIndex]
    return str(names.get(max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode)), ""))


def data(model: Any, tensor: Any, dtype: str) -> np.ndarray:
    raw = model.buffers[tensor.buffer].data
    return np.frombuffer(bytes(bytearray(raw)) if raw is not None else b"", dtype=dtype).reshape(tensor.shape)


def dequantized_weights(model: Any, tensor: Any) -> np.ndarray | None:
    q = tensor.quantization
    if q is None or q.scale is None or type_name(tensor.type) != "INT8":
        return None
    values = data(model, tensor, "int8").astype(np.float64)
    scale = np.asarray(q.scale, dtype=np.float64)
    if scale.size > 1:
        shape = [1] * values.ndim
        shape[int(q.quantizedDimension)] = scale.size
        scale = scale.reshape(shape)
    return values * scale


def type_name(code: int) -> str:
    return enum_names("TensorType").get(int(code), "")


def linear_ops(model: Any) -> dict[str, tuple[str, Any]]:
    """Output tensor name -> (op name, op) for conv/depthwise/dense ops of subgraph 0."""
    names = enum_names("BuiltinOperator")
    tensors = model.subgraphs[0].tensors
    out = {}
    for op in model.subgraphs[0].operators:
        code = op_code(model, op, names)
        if code in LINEAR and len(op.outputs):
            out[tensors[op.outputs[0]].name.decode()] = (code, op)
    return out


def bias_tensor(model: Any, op: Any, size: int, name: str) -> Any:
    """The op's bias tensor; a zero one is added where the converter dropped an all-zero bias."""
    schema = tflite_schema.schema()

    tensors = model.subgraphs[0].tensors
    if len(op.inputs) >= 3 and op.inputs[2] >= 0:
        return tensors[op.inputs[2]]
    tensor = schema.TensorT()
    tensor.shape = [size]
    tensor.type = schema.TensorType.FLOAT32
    set_data(model, tensor, np.zeros(size))
    tensor.name = f"{name}/bias_correction".encode()
    tensors.append(tensor)
    op.inputs = [*list(op.inputs[:2]), len(tensors) - 1]
    return tensor


def set_data(model: Any, tensor: Any, values: np.ndarray, dtype: str = "<f4") -> None:
    """Give ``tensor`` new contents (float32 unless ``dtype`` says otherwise); in a buffer of its own when it
    shares one (after deduplication)."""
    schema = tflite_schema.schema()

    raw = np.asarray(values, dtype=dtype).reshape(-1).tobytes()
    sharing = sum(t.buffer == tensor.buffer for t in model.subgraphs[0].tensors) if tensor.buffer else 0
    if sharing == 1:
        model.buffers[tensor.buffer].data = np.frombuffer(raw, dtype=np.uint8)
        return
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(raw, dtype=np.uint8)
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1


def deduplicate_readonly_buffers(content: bytes) -> bytes:
    """Merge identical read-only buffers (constant tensors' data), as the stock converter does last.

    A port of TensorFlow's ``convert.deduplicate_readonly_buffers`` onto the schema module ``load``/``dump``
    use, so the quantizer's output is finished without importing TensorFlow: the same buffers merged, in
    the same order (sorted by size and md5, largest first), the same bytes written.
    """
    model = load(content)
    read_only: set[int] = set()
    for subgraph in model.subgraphs:
        inputs: set[int] = set()
        for op in subgraph.operators:
            if op.inputs is None:
                continue
            mutating = op.mutatingVariableInputs
            for i, index in enumerate(op.inputs):
                if mutating is not None and i < len(mutating) and mutating[i]:
                    continue
                if subgraph.tensors[index].isVariable:
                    continue
                inputs.add(int(index))
        for op in subgraph.operators:
            inputs.difference_update(int(i) for i in (op.outputs if op.outputs is not None else []))
            inputs.difference_update(int(i) for i in (op.intermediates if op.intermediates is not None else []))
        inputs.difference_update(int(i) for i in (subgraph.inputs if subgraph.inputs is not None else []))
        inputs.difference_update(int(i) for i in (subgraph.outputs if subgraph.outputs is not None else []))
        read_only.update(int(subgraph.tensors[i].buffer) for i in inputs)

    def usable(index: int) -> bool:
        data = model.buffers[index].data if index >= 0 else None
        return data is not None and not isinstance(data, list) and data.size > 0

    buffers = sorted(
        (
            (int(model.buffers[i].data.size), hashlib.md5(model.buffers[i].data.data.tobytes()).hexdigest(), i)  # noqa: S324 - TF's grouping key
            for i in read_only
            if usable(i)
        ),
        key=lambda b: (b[0], b[1]),
        reverse=True,
    )
    duplicate: dict[int, int] = {}
    for k, (size, md5, index) in enumerate(buffers):
        if index in duplicate:
            continue
        for other_size, other_md5, other in buffers[k + 1 :]:
            if other in duplicate:
                continue
            if other_size != size:
                break
            if other_md5 == md5:
                duplicate[other] = index
    for subgraph in model.subgraphs:  # written back even without duplicates, as TensorFlow's pass does
        for op in subgraph.operators:
            for index in op.inputs if op.inputs is not None else []:
                tensor = subgraph.tensors[index]
                if tensor.buffer in duplicate:
                    tensor.buffer = duplicate[tensor.buffer]
    for index in duplicate:
        model.buffers[index].data = None
    return dump(model)
