"""TensorRT explicit quantization: QuantizeLinear/DequantizeLinear pairs placed in an ONNX graph, and the cache.

Pure graph and number work on an ``onnx.ModelProto`` (the ``onnx`` package, checked with 1.23.2); it runs in
``tensorrt_worker``'s child process, never in edgeconv's. What it writes follows TensorRT's explicit-quantization
rules (TensorRT developer guide, "Explicit Quantization" / "Q/DQ layer-placement recommendations"):

- int8, symmetric: zero point 0 (an int8 zero-point initializer), scale = amax / 127.
- weights of Conv, ConvTranspose, Gemm and MatMul: per output channel, stored as int8 initializers followed
  by a DequantizeLinear (what TensorRT folds into the layer's int8 weights; the file is about a quarter of the
  float one). Biases stay float: TensorRT quantizes them itself.
- activations: per tensor, a Q/DQ pair on the activation inputs of those weighted ops and of pooling
  (``ACTIVATION_INPUT_OPS``); never on a weighted op's output, so TensorRT fuses conv + bias + activation and
  quantizes after the activation. A residual Add gets Q/DQ on its skip input only: the input that comes
  straight from a Conv is left float, which lets TensorRT fuse the Add into that Conv.
- one pair per tensor, shared by every consumer that needs it.

``calibration_cache`` writes TensorRT's calibration-table text (what ``IInt8Calibrator.writeCalibrationCache``
produces and implicit quantization reads): a ``TRT-<version>-EntropyCalibration2`` line, then
``name: <hex of the big-endian float32 scale>`` per tensor. ``tests/integration/test_tensorrt.py`` checks both.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
ACTIVATION_INPUT_OPS = frozenset({"AveragePool", "GlobalAveragePool", "MaxPool"})
QMAX = 127.0  # symmetric int8: TensorRT uses [-127, 127] for its scales
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
ALGORITHM = "EntropyCalibration2"  # the calibrator name TensorRT's cache header carries for our tables


@dataclass(frozen=True)
class Placement:
    """Where Q/DQ go: activation inputs (tensor -> consumer slots) and weights (node, slot, channel axis)."""

    activations: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    weights: list[tuple[int, int, int]] = field(default_factory=list)
    skipped_ops: dict[str, int] = field(default_factory=dict)  # op types left float (no rule places Q/DQ)


def activation_names(model: Any) -> list[str]:
    """Tensors that carry float activations: graph inputs and node outputs (not initializers), in graph order.

    A tensor whose element type shape inference knows and is not float32 is left out; one it does not know is
    kept (the observer drops what turns out not to be float).
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
        if v.type.HasField("tensor_type")
    }
    constants = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in constants]
    constant_ops = {"Constant", "Shape", "Size", "ConstantOfShape"}
    for node in model.graph.node:
        if node.op_type in constant_ops:
            continue
        names += [o for o in node.output if o]
    float32 = onnx.TensorProto.FLOAT
    seen: set[str] = set()
    out = []
    for name in names:
        if name not in seen and types.get(name, float32) in (float32, onnx.TensorProto.UNDEFINED):
            seen.add(name)
            out.append(name)
    return out


def observable(model: Any, names: list[str]) -> Any:
    """A copy of ``model`` whose graph outputs include every tensor of ``names`` (for onnxruntime to return)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return copy


def _weight_axis(node: Any, slot: int) -> int | None:
    """The output-channel axis of the weight at input ``slot`` of ``node`` (None: not a weight slot)."""
    if node.op_type in ("Conv", "ConvTranspose"):
        if slot != 1:
            return None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        # ConvTranspose weights are [C_in, C_out / group, ...]: per output channel is axis 1 only without groups.
        return 0 if node.op_type == "Conv" else (1 if group == 1 else None)
    if node.op_type == "Gemm":
        if slot != 1:
            return None
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return -1 if slot == 1 else None  # [..., K, N]: N is the output channel
    return None


def node_key(node: Any) -> str:
    """A node's name, or its first output where it has none (how exclusions name layers)."""
    return str(node.name or (node.output[0] if node.output else ""))


def placement(model: Any, exclude: frozenset[str] = frozenset()) -> Placement:
    """Where TensorRT's rules put Q/DQ in ``model`` (see the module docstring); nodes in ``exclude`` stay float."""
    initializers = {i.name for i in model.graph.initializer}
    producers = {o: (k, n) for k, n in enumerate(model.graph.node) for o in n.output}
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers[name] = consumers.get(name, 0) + 1
    out = Placement()

    def activation(name: str, node_index: int, slot: int) -> None:
        if name and name not in initializers and (name not in producers or producers[name][1].op_type != "Constant"):
            out.activations.setdefault(name, []).append((node_index, slot))

    for k, node in enumerate(model.graph.node):
        op = node.op_type
        if exclude and node_key(node) in exclude:
            continue
        if op in WEIGHTED_OPS:
            for slot, name in enumerate(node.input[:2]):
                axis = _weight_axis(node, slot)
                if name in initializers and axis is not None:
                    out.weights.append((k, slot, axis))
                elif slot == 0 or name not in initializers:
                    activation(name, k, slot)
        elif op in ACTIVATION_INPUT_OPS:
            activation(node.input[0], k, 0)
        elif op == "Add" and len(node.input) == 2 and not any(i in initializers for i in node.input):
            # Residual add: leave one input that a Conv writes (and nothing else reads) float, for the fusion.
            fused = next(
                (
                    s
                    for s, name in enumerate(node.input)
                    if name in producers and producers[name][1].op_type == "Conv" and consumers.get(name) == 1
                ),
                None,
            )
            for slot, name in enumerate(node.input):
                if slot != fused:
                    activation(name, k, slot)
        elif op not in ("Constant", "Identity"):
            out.skipped_ops[op] = out.skipped_ops.get(op, 0) + 1
    return out


def fold_batch_norm(model: Any) -> tuple[Any, int]:
    """``model`` with each BatchNormalization that follows a Conv (its only reader) folded into the Conv's weights.

    What TensorRT does itself for a float model; for a Q/DQ model it must be done first, so the int8 weights
    (and their per-channel scales) are those of the folded convolution. The TorchScript exporter leaves BN
    unfolded when it exports a ``torch.export`` module (it cannot put that module in eval mode).
    """
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    dropped, folded = set(), 0
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or not all(i in inits for i in bn.input[1:5]):
            continue
        conv = producers.get(bn.input[0])
        if (
            conv is None
            or conv.op_type != "Conv"
            or conv.input[1] not in inits
            or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)
            or readers.get(bn.input[0]) != 1
            or bn.input[0] in outputs
            or readers.get(conv.input[1]) != 1
        ):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        factor = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        bias = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(w.shape[0])
        )
        w_name, b_name = f"{conv.name or conv.output[0]}_folded_weight", f"{conv.name or conv.output[0]}_folded_bias"
        graph.initializer.extend(
            [
                numpy_helper.from_array((w * factor.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32), w_name),
                numpy_helper.from_array(((bias - mean) * factor + beta).astype(np.float32), b_name),
            ]
        )
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        dropped.add(id(bn))
        folded += 1
    if folded:
        kept = [n for n in graph.node if id(n) not in dropped]
        del graph.node[:]
        graph.node.extend(kept)
        used = {i for n in graph.node for i in n.input}
        live = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(live)
    return out, folded


def scale_of(amax: float) -> float:
    """TensorRT's symmetric scale for a range of magnitude ``amax``; a tensor that never left 0 gets amax 1."""
    return float(np.float32((amax if amax > 0 and np.isfinite(amax) else 1.0) / QMAX))


def _quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 of ``w`` along ``axis``: (int8 values, float32 scales)."""
    axis = axis % w.ndim
    moved = np.moveaxis(w.astype(np.float32), axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(moved).max(axis=1) if moved.size else np.zeros(w.shape[axis], np.float32)
    scales = np.array([scale_of(float(a)) for a in amax], dtype=np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scales.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scales


def _ensure_opset(model: Any) -> Any:
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= MIN_OPSET:
        return model
    return onnx.version_converter.convert_version(model, MIN_OPSET)


def insert_qdq(
    model: Any, amax: Mapping[str, float], exclude: frozenset[str] = frozenset()
) -> tuple[Any, dict[str, Any]]:
    """``model`` with TensorRT's Q/DQ pairs, activation scales from ``amax`` (tensor name -> max |x|).

    Returns the new model and a summary: pairs placed, weights quantized, op types left float, and the
    activations that had to be left float because calibration gave them no range.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = _ensure_opset(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    where = placement(out, exclude)
    inits = {i.name: i for i in graph.initializer}
    new_inits: list[Any] = []
    zero_name = "edgeconv_qdq_zero_point"
    new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zero_name))
    before: dict[int, list[Any]] = {}  # node index -> nodes to insert before it
    unranged = []
    for name, uses in where.activations.items():
        if name not in amax:
            unranged.append(name)
            continue
        scale_name, q_name, dq_name = f"{name}_qdq_scale", f"{name}_quantized", f"{name}_dequantized"
        new_inits.append(numpy_helper.from_array(np.array(scale_of(amax[name]), dtype=np.float32), scale_name))
        first = min(k for k, _ in uses)
        before.setdefault(first, []).extend(
            [
                helper.make_node("QuantizeLinear", [name, scale_name, zero_name], [q_name], name=f"{name}_Q"),
                helper.make_node("DequantizeLinear", [q_name, scale_name, zero_name], [dq_name], name=f"{name}_DQ"),
            ]
        )
        for k, slot in uses:
            graph.node[k].input[slot] = dq_name
    replaced: dict[str, str] = {}
    for k, slot, axis in where.weights:
        node = graph.node[k]
        name = node.input[slot]
        if name not in replaced:
            w = numpy_helper.to_array(inits[name])
            q, scales = _quantize_weight(w, axis)
            qname, sname, zname, dqname = (f"{name}_int8", f"{name}_scale", f"{name}_zero_point", f"{name}_dq")
            new_inits += [
                numpy_helper.from_array(q, qname),
                numpy_helper.from_array(scales, sname),
                numpy_helper.from_array(np.zeros(len(scales), np.int8), zname),
            ]
            before.setdefault(k, []).append(
                helper.make_node(
                    "DequantizeLinear", [qname, sname, zname], [dqname], name=f"{name}_DQ", axis=axis % w.ndim
                )
            )
            replaced[name] = dqname
        node.input[slot] = replaced[name]
    nodes = []
    for k, node in enumerate(graph.node):
        nodes += before.get(k, [])
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    still_used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in still_used]  # float weights now replaced by int8 ones
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    summary = {
        "activation_qdq_pairs": len(where.activations) - len(unranged),
        "quantized_weights": len(replaced),
        "float_op_types": dict(sorted(where.skipped_ops.items())),
        "activations_without_range": sorted(unranged),
    }
    return out, summary


def cache_header(version: str) -> str:
    """``TRT-<n>-EntropyCalibration2`` with TensorRT's NV_TENSORRT_VERSION number for ``version`` (``10.3.0``).

    TensorRT 10 counts major * 10000 + minor * 100 + patch (10.3.0: 100300); 8 and 9 count major * 1000 +
    minor * 100 + patch (8.2.1: 8201).
    """
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3]]
    major, minor, patch = parts
    number = major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch
    return f"TRT-{number}-{ALGORITHM}"


def calibration_cache(header: str, amax: Mapping[str, float]) -> str:
    """TensorRT's calibration-table text: the header line, then ``name: <float32 scale as 8 hex digits>``."""
    lines = [header]
    for name, value in amax.items():
        bits = struct.unpack(">I", struct.pack(">f", scale_of(value)))[0]
        lines.append(f"{name}: {bits:08x}")
    return "\n".join(lines) + "\n"


def parse_calibration_cache(text: str) -> tuple[str, dict[str, float]]:
    """The header and the scale of every tensor in a calibration table (as TensorRT reads it)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise ValueError("a TensorRT calibration table starts with a 'TRT-<version>-<calibrator>' line")
    scales = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        name, _, value = line.rpartition(": ")
        scales[name] = struct.unpack(">f", bytes.fromhex(value.strip()))[0]
    return lines[0], scales
