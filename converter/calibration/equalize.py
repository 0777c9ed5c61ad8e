"""Cross-layer equalization: move per-channel scale between consecutive layers (Nagel et al., DFQ §4.1).

For a layer pair ``A → B`` where A's output feeds only B and A's activation is ReLU or none
(both commute with a positive scale), dividing A's output channel ``i`` (weights and bias)
by ``s_i`` and multiplying B's matching input channel by ``s_i`` leaves the float function
unchanged. With ``s_i = sqrt(r1_i / r2_i)`` (``r1``, ``r2``: the largest |weight| of the
channel in A and in B) both get range ``sqrt(r1_i · r2_i)``. What matters for int8 is the
tensor between them: one channel 1000x larger than the rest sets the per-tensor activation
range and leaves the others a level or two; after equalization it no longer does. Full
integer, data-free; ReLU6 pairs are left alone (clipping at 6 does not commute with scaling).

A's bias is divided by ``s_i`` too. For a dead channel of A (weights near zero, as weight
decay leaves some depthwise channels of trained MobileNets) ``r1_i ≈ 0`` gives ``s_i ≈ 0``
and the channel's bias, its whole output, grew by ``1/s_i`` (1.0 became 5e9 on a
MobileNetV1): the float function was unchanged, but that one channel then set the int8
range of the tensor, and the next layer's requantization scale went past what XNNPACK
accepts (256), so LiteRT refused the model ("failed to create XNNPACK runtime"). So no
channel's bias may grow past the largest bias the layer had: ``s_i >= |b_i| / max|b|``.

With ``check_x`` the result is run against the original (``transform_check``): it must
prepare, run and give the same outputs within ``TOLERANCE``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.calibration.transform_check import check_transform
from converter.tflite import flatbuf

PASSES = 8
EQUIVARIANT = (0, 1)  # ActivationFunctionType NONE, RELU
# Relative output change allowed. Equalization changes the float function only by float32
# rounding: each weight gets one relative error of ~6e-8 when written back, and a conv sums
# them over its inputs, layer after layer; MobileNetV1-style models measure ~2e-7, so 1e-5
# leaves a 50x margin while any real change of the function (a wrong axis, a clipped
# channel) is orders of magnitude larger.
TOLERANCE = 1e-5


@dataclass
class _Pair:
    first: Any  # producer op
    second: Any  # consumer op
    first_code: str
    second_code: str


def _out_axis(code: str) -> int:
    return 3 if code == "DEPTHWISE_CONV_2D" else 0


def _in_axis(code: str, weights: np.ndarray, channels: int) -> int | None:
    """Axis of B's weights that indexes its input channels, when that mapping is one-to-one."""
    if code == "CONV_2D" and weights.ndim == 4 and weights.shape[3] == channels:
        return 3
    if code == "FULLY_CONNECTED" and weights.ndim == 2 and weights.shape[1] == channels:
        return 1
    if code == "DEPTHWISE_CONV_2D" and weights.ndim == 4 and weights.shape[3] == channels:
        return 3  # multiplier 1
    return None


def _pairs(model: Any) -> list[_Pair]:
    sub = model.subgraphs[0]
    names = flatbuf.enum_names("BuiltinOperator")
    uses = Counter(int(i) for op in sub.operators for i in op.inputs if i >= 0)
    readers: dict[int, list[Any]] = {}
    for op in sub.operators:
        for i in op.inputs:
            readers.setdefault(int(i), []).append(op)
    outputs = {int(i) for i in sub.outputs}
    pairs = []
    for op in sub.operators:
        code = flatbuf.op_code(model, op, names)
        if code not in flatbuf.LINEAR or len(op.outputs) != 1:
            continue
        act = getattr(op.builtinOptions, "fusedActivationFunction", None)
        tensor = int(op.outputs[0])
        next_ops = readers.get(tensor, [])
        if act not in EQUIVARIANT or tensor in outputs or len(next_ops) != 1:
            continue
        nxt = next_ops[0]
        next_code = flatbuf.op_code(model, nxt, names)
        if next_code not in flatbuf.LINEAR or int(nxt.inputs[0]) != tensor:
            continue
        private = [int(op.inputs[1]), int(nxt.inputs[1])] + ([int(op.inputs[2])] if len(op.inputs) > 2 else [])
        if all(i < 0 or uses[i] == 1 for i in private):
            pairs.append(_Pair(op, nxt, code, next_code))
    return pairs


def equalize(float_tflite: bytes, check_x: np.ndarray | None = None) -> tuple[bytes, int]:
    """The equalized float model and how many layer pairs were equalized.

    With ``check_x`` (preprocessed samples) the result is checked against the original first
    (``TransformRejected`` when it fails).
    """
    model = flatbuf.load(float_tflite)
    tensors = model.subgraphs[0].tensors
    weights: dict[int, np.ndarray] = {}

    def get(index: int) -> np.ndarray:
        if index not in weights:
            weights[index] = flatbuf.data(model, tensors[index], "float32").astype(np.float64)
        return weights[index]

    pairs = [
        p
        for p in _pairs(model)
        if all(flatbuf.type_name(tensors[int(op.inputs[1])].type) == "FLOAT32" for op in (p.first, p.second))
    ]
    done = set()
    for _ in range(PASSES):
        biggest = 0.0
        for k, p in enumerate(pairs):
            w1, w2 = get(int(p.first.inputs[1])), get(int(p.second.inputs[1]))
            out_axis = _out_axis(p.first_code)
            channels = w1.shape[out_axis]
            in_axis = _in_axis(p.second_code, w2, channels)
            if in_axis is None:
                continue
            r1 = np.abs(np.moveaxis(w1, out_axis, 0)).reshape(channels, -1).max(axis=1)
            r2 = np.abs(np.moveaxis(w2, in_axis, 0)).reshape(channels, -1).max(axis=1)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1)), 1.0)
            has_bias = len(p.first.inputs) > 2 and p.first.inputs[2] >= 0
            if has_bias:  # a channel's bias (all of a dead channel's output) never outgrows the layer's largest
                bias = np.abs(get(int(p.first.inputs[2])))
                if bias.max(initial=0.0) > 0:
                    s = np.maximum(s, bias / bias.max())
            shape1, shape2 = [1] * w1.ndim, [1] * w2.ndim
            shape1[out_axis], shape2[in_axis] = channels, channels
            weights[int(p.first.inputs[1])] = w1 / s.reshape(shape1)
            weights[int(p.second.inputs[1])] = w2 * s.reshape(shape2)
            if has_bias:
                weights[int(p.first.inputs[2])] = get(int(p.first.inputs[2])) / s
            biggest = max(biggest, float(np.abs(np.log(s)).max()))
            done.add(k)
        if biggest < 1e-3:
            break
    if not done:
        return float_tflite, 0
    for index, values in weights.items():
        flatbuf.set_data(model, tensors[index], values)
    equalized = flatbuf.dump(model)
    if check_x is not None:
        check_transform(float_tflite, equalized, check_x, "cross-layer equalization", TOLERANCE)
    return equalized, len(done)
