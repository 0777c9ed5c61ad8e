"""A concatenation's input that other ops also read keeps its own int8 scale, requantized on the way in.

TFLite's int8 CONCATENATION needs every input at the output's scale and zero point, and TensorFlow's MLIR
quantizer meets that by giving each input the concatenation's range: it drops the input's own statistics and
propagates the output's back to the op that wrote it. When that tensor is also read elsewhere, those readers pay
for the wider range too. A U-Net's skip connection is the usual case: the encoder's post-ReLU tensor goes down
to the next block (max-pool, conv) and across to the decoder's concatenation, whose range spans the upsampled
tensor's negative values as well; the encoder tensor loses a quarter of its steps (0.043 instead of 0.033 per
step in the zoo's U-Net) and every layer below inherits the coarser input.

litert-torch's PT2E route keeps that tensor at its own scale and requantizes it into the concatenation (an
int8-to-int8 QUANTIZE), which is what this pass does to the quantized model. The writer's output gets the range
from its own calibrated minimum to the concatenation's maximum: the side of the concatenation's range it never
reaches is dropped, and nothing the concatenation kept is clipped (the tensor's own range, clipped by ``mse``,
measured 1.3 dB worse on the U-Net than no pass at all). Ops that only move values (max-pool, reshape, ...) pass
the new parameters on, the int32 biases of the convolutions reading them follow the input scale, and a
QUANTIZE op converts to the concatenation's scale. It runs only where every other reader accepts any input
scale, and only where the new scale is at least ``MIN_GAIN`` times finer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.quantization.arithmetic import asymmetric
from converter.tflite import flatbuf
from converter.tflite import flatbuffer_schema as tflite_schema

log = logging.getLogger(__name__)

MIN_GAIN = 1.2  # the input's own scale must be this much finer than the concatenation's to be worth an op

# Ops whose int8 kernels rescale their input into their output's own parameters: a new input scale is free.
RESCALING = frozenset(
    {
        "ADD", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
        "HARD_SWISH", "L2_NORMALIZATION", "LEAKY_RELU", "LOGISTIC", "MEAN", "MUL", "PRELU", "QUANTIZE", "RELU",
        "RELU6", "SOFTMAX", "SUB", "SUM", "TANH", "TRANSPOSE_CONV", "DEQUANTIZE",
    }
)  # fmt: skip
# Ops that move or select values without rescaling: their output must keep their input's parameters.
PASSING = frozenset(
    {
        "AVERAGE_POOL_2D", "DEPTH_TO_SPACE", "EXPAND_DIMS", "MAX_POOL_2D", "RESHAPE", "RESIZE_NEAREST_NEIGHBOR",
        "SPACE_TO_DEPTH", "SQUEEZE", "TRANSPOSE",
    }
)  # fmt: skip
# Weighted ops: (the slot of their input, the slot of their int32 bias, whose scale is input scale x weight scale).
BIASED = {"CONV_2D": (0, 2), "DEPTHWISE_CONV_2D": (0, 2), "FULLY_CONNECTED": (0, 2), "TRANSPOSE_CONV": (2, 3)}
# Ops whose own output parameters are free, so the tensor they write can take its own scale.
WRITERS = RESCALING - {"QUANTIZE", "DEQUANTIZE", "L2_NORMALIZATION", "LOGISTIC", "SOFTMAX", "TANH"}


@dataclass(frozen=True)
class _Graph:
    codes: list[str]
    writer: dict[int, int]  # tensor -> the op writing it
    readers: dict[int, list[int]]  # tensor -> ops reading it (an op once per input slot)
    outputs: set[int]


def _graph(model: Any) -> _Graph:
    names = flatbuf.enum_names("BuiltinOperator")
    graph = model.subgraphs[0]
    codes = [flatbuf.op_code(model, op, names) for op in graph.operators]
    writer: dict[int, int] = {}
    readers: dict[int, list[int]] = {}
    for k, op in enumerate(graph.operators):
        for t in op.outputs if op.outputs is not None else []:
            writer[int(t)] = k
        for t in op.inputs if op.inputs is not None else []:
            if int(t) >= 0:
                readers.setdefault(int(t), []).append(k)
    return _Graph(codes, writer, readers, {int(t) for t in graph.outputs})


def _int8_params(tensor: Any) -> tuple[float, int] | None:
    q = tensor.quantization
    if flatbuf.type_name(tensor.type) != "INT8" or q is None or q.scale is None or len(q.scale) != 1:
        return None
    return float(q.scale[0]), int(q.zeroPoint[0])


def _followers(g: _Graph, model: Any, tensor: int, concat: int) -> tuple[list[int], list[int]] | None:
    """Tensors that must take ``tensor``'s new parameters (itself first), and the weighted ops reading them,
    whose biases follow the input scale; None when a reader forbids the change."""
    tensors = model.subgraphs[0].tensors
    old = _int8_params(tensors[tensor])
    out, todo, weighted = [tensor], [tensor], []
    while todo:
        t = todo.pop()
        if t in g.outputs:
            return None
        for k in g.readers.get(t, []):
            if k == concat and t == tensor:
                continue
            op = model.subgraphs[0].operators[k]
            if g.codes[k] in BIASED:
                data, bias = BIASED[g.codes[k]]
                inputs = [int(i) for i in op.inputs]
                if inputs.count(t) != 1 or inputs[data] != t:
                    return None
                if len(inputs) > bias and inputs[bias] >= 0:
                    weighted.append(k)
                continue
            if g.codes[k] in RESCALING:
                continue
            if g.codes[k] not in PASSING or len(op.outputs) != 1 or int(op.inputs[0]) != t:
                return None
            nxt = int(op.outputs[0])
            if _int8_params(tensors[nxt]) != old:  # already rescaled by its quantizer: leave the branch alone
                return None
            out.append(nxt)
            todo.append(nxt)
    return out, weighted


def _scaled_bias(model: Any, op: Any, slot: int, ratio: float) -> np.ndarray | None:
    """An int32 bias multiplied by ``ratio`` (old input scale / new); None where it is not one or overflows."""
    tensor = model.subgraphs[0].tensors[int(op.inputs[slot])]
    q = tensor.quantization
    if flatbuf.type_name(tensor.type) != "INT32" or q is None or q.scale is None or not tensor.buffer:
        return None
    values = np.round(flatbuf.data(model, tensor, "<i4").astype(np.float64) * ratio)
    return None if np.any(np.abs(values) > 2**31 - 1) else values.astype("<i4")


def _set_bias(model: Any, op: Any, slot: int, values: np.ndarray, ratio: float) -> None:
    """Give the bias ``values`` (``flatbuf.set_data``), and its scale divided by ``ratio``."""
    tensor = model.subgraphs[0].tensors[int(op.inputs[slot])]
    flatbuf.set_data(model, tensor, values, "<i4")
    tensor.quantization.scale = [float(np.float32(s / ratio)) for s in tensor.quantization.scale]


def _quantize_op(model: Any, schema: Any, source: int, target: int) -> Any:
    from converter.sources.float_rewrites import _opcode

    op = schema.OperatorT()
    op.opcodeIndex = _opcode(model, schema, int(schema.BuiltinOperator.QUANTIZE))
    op.inputs, op.outputs = [source], [target]
    op.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
    op.builtinOptions = schema.QuantizeOptionsT()
    return op


def own_scales(int8_model: bytes, ranges: Callable[[], dict[str, tuple[float, float]]]) -> tuple[bytes, list[str]]:
    """``int8_model`` with each shared concatenation input at its own scale; the names of those inputs.

    ``ranges()``: tensor name -> the (min, max) calibration chose for it, as given to the quantizer; called only
    when the model has a concatenation (reading names from the float model costs a parse).
    """
    schema = tflite_schema.schema()
    model = flatbuf.load(int8_model)
    graph = model.subgraphs[0]
    g = _graph(model)
    if "CONCATENATION" not in g.codes:
        return int8_model, []
    named = ranges()
    inserts: list[tuple[int, Any]] = []  # (before op, QUANTIZE op)
    done: list[str] = []
    for k, code in enumerate(g.codes):
        if code != "CONCATENATION":
            continue
        concat = graph.operators[k]
        for slot, t in enumerate(int(i) for i in concat.inputs):
            tensor = graph.tensors[t]
            name = tensor.name.decode()
            old = _int8_params(tensor)
            if old is None or name not in named or g.writer.get(t) is None or g.codes[g.writer[t]] not in WRITERS:
                continue
            if len(g.readers.get(t, [])) < 2 or [int(i) for i in concat.inputs].count(t) != 1:
                continue
            # Its own minimum, the concatenation's maximum: what it never reaches is dropped, nothing is clipped.
            lowest, highest = (-128 - old[1]) * old[0], (127 - old[1]) * old[0]
            own = asymmetric(max(named[name][0], lowest), highest)
            scale, zero = float(np.float32(own.scale)), int(own.zero_point)
            if scale * MIN_GAIN > old[0]:
                continue
            found = _followers(g, model, t, k)
            if found is None:
                continue
            followers, weighted = found
            ratio = old[0] / scale
            biases = [(graph.operators[w], BIASED[g.codes[w]][1]) for w in weighted]
            if len({int(op.inputs[slot]) for op, slot in biases}) != len(biases):
                continue  # one bias tensor read by two of them: leave it
            scaled = [_scaled_bias(model, op, slot, ratio) for op, slot in biases]
            if any(v is None for v in scaled):
                continue
            for (reader, bias_slot), values in zip(biases, scaled, strict=True):
                _set_bias(model, reader, bias_slot, values, ratio)  # type: ignore[arg-type]
            copy = schema.TensorT()
            copy.shape, copy.shapeSignature, copy.type = tensor.shape, tensor.shapeSignature, tensor.type
            copy.name = f"{name}/requantized".encode()
            copy.buffer = 0
            copy.quantization = schema.QuantizationParametersT()
            copy.quantization.scale, copy.quantization.zeroPoint = [old[0]], [old[1]]
            graph.tensors.append(copy)
            for f in followers:
                q = schema.QuantizationParametersT()
                q.scale, q.zeroPoint = [scale], [zero]
                graph.tensors[f].quantization = q
            inputs = [int(i) for i in concat.inputs]
            inputs[slot] = len(graph.tensors) - 1
            concat.inputs = inputs
            inserts.append((k, _quantize_op(model, schema, t, len(graph.tensors) - 1)))
            done.append(name)
    if not inserts:
        return int8_model, []
    for k, op in sorted(inserts, key=lambda pair: -pair[0]):  # from the back, so earlier positions hold
        graph.operators.insert(k, op)
    log.info(
        "kept %d concatenation input(s) read by other ops at their own int8 scale, requantized into the "
        "concatenation: %s",
        len(done),
        ", ".join(done),
    )
    return flatbuf.dump(model), done


def named_ranges(model: bytes, ranges: dict[int, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """``ranges`` (tensor index of ``model``'s subgraph 0 -> (min, max)) by tensor name, where names are unique."""
    tensors = flatbuf.load(model).subgraphs[0].tensors
    names = [t.name.decode() for t in tensors]
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    return {names[i]: r for i, r in ranges.items() if i < len(names) and seen[names[i]] == 1}
