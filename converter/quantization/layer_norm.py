"""LayerNorm as L2 normalization, for the int8 model: each token normalized by its own norm, inside one kernel.

A transformer's LayerNorm reaches TFLite decomposed: MEAN, SQUARED_DIFFERENCE, MEAN, ADD eps, RSQRT, then the
normalized ``(x - mean) * rsqrt(var + eps)`` (litert-torch writes it ``x * r + (0 - r * mean)``). In int8 every
one of those tensors has one scale for all tokens, and tokens differ by orders of magnitude: ViT's class token
is a learned constant with a variance near 1e-4 where the patch tokens have about 1, so RSQRT's output spans
[0.5, 100] and a patch token's ``r`` keeps a handful of steps (measured: the first LayerNorm alone takes the model
from 50 to 8 dB). TFLite's L2_NORMALIZATION computes ``d / |d|`` per row with a 32-bit sum inside its int8
kernel (LiteRT and TFLite Micro), so ``(x - mean) / sqrt(var) = sqrt(D) * l2_normalize(x - mean)`` keeps each
token's own scale; its int8 output is fixed to [-1, 1) in steps of 1/128, fine for the widths edge transformers
use (an element of a unit row of D = 64 is 0.125 on average: 16 steps).

The rewrite changes the float graph only where ``var`` is near ``eps`` (it drops eps; L2_NORMALIZATION clamps the
norm at 1e-6 instead) and is applied to the model that is calibrated and quantized, never to the float
reference the int8 model is measured against. The normalized tensor is found by value, not by op pattern:
among the ops reading the RSQRT's output (a few steps on), the tensor of ``x``'s shape equal to
``(x - mean) * r`` on one calibration sample, so every decomposition a converter writes is recognized.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.runtime.model import TFLiteModel, input_arrays, quantize
from converter.tflite import flatbuf
from converter.tflite import flatbuffer_schema as tflite_schema

log = logging.getLogger(__name__)

SEARCH_DEPTH = 4  # ops between the RSQRT and the normalized tensor (litert-torch: RESHAPE, MUL, ADD)
EPS_IGNORED = 1e-9  # below this, LayerNorm's eps (1e-12 in BERT and ViT) changes no float32 result that matters


@dataclass(frozen=True)
class Norm:
    """One LayerNorm found: its input ``x``, the broadcast mean ``mean``, the normalized tensor ``y``, and
    ``fixed``: the values of ``y``'s leading rows that no input changes (a class token's), else None."""

    x: int
    mean: int
    y: int
    width: int
    eps: float = 0.0
    fixed: np.ndarray | None = None
    gamma: np.ndarray | None = None  # per-channel scale after the normalization (None: 1)
    beta: np.ndarray | None = None  # per-channel shift (None: 0)


def find_layer_norms(content: bytes, samples: np.ndarray, model: Any = None) -> list[Norm]:
    """Every LayerNorm of subgraph 0 whose normalized tensor can be found (see the module docstring).

    ``model``: ``content`` already parsed (``flatbuf.load``), when the caller has it.
    """
    model = model if model is not None else flatbuf.load(content)
    if len(model.subgraphs) != 1:
        return []
    graph = model.subgraphs[0]
    names = flatbuf.enum_names("BuiltinOperator")
    codes = [flatbuf.op_code(model, op, names) for op in graph.operators]
    if "RSQRT" not in codes:
        return []
    producer = {int(o): k for k, op in enumerate(graph.operators) for o in op.outputs}
    readers: dict[int, list[int]] = {}
    for k, op in enumerate(graph.operators):
        for i in op.inputs:
            readers.setdefault(int(i), []).append(k)
    candidates = []
    for k, code in enumerate(codes):
        if code != "RSQRT":
            continue
        found = _statistics(model, graph, codes, producer, int(graph.operators[k].inputs[0]))
        if found is not None:
            candidates.append((k, *found))
    if not candidates:
        return []
    values = _run(content, samples[:1])
    norms = []
    for k, x, mean, eps in candidates:
        r = int(graph.operators[k].outputs[0])
        xv, mv, rv = values[x], values[mean], values[r]
        want = (xv - mv) * rv.reshape(mv.shape)
        normalized = _find_normalized(graph, readers, r, xv.shape, want, values)
        if normalized is None:
            continue
        y, gamma, beta = normalized
        lead = _constant_lead(model, graph, codes, producer, x) if xv.ndim == 3 else 0
        fixed = values[y][:, :lead].copy() if 0 < lead < xv.shape[1] else None
        norms.append(Norm(x, mean, y, int(xv.shape[-1]), eps, fixed, _exact(gamma, 1.0), _exact(beta, 0.0)))
    return norms


def _exact(vector: np.ndarray, value: float) -> np.ndarray | None:
    """None when ``vector`` is ``value`` everywhere (to float32 rounding), else the vector."""
    return None if np.allclose(vector, value, rtol=1e-5, atol=1e-6) else vector


def _constant_lead(model: Any, graph: Any, codes: list[str], producer: dict[int, int], x: int) -> int:
    """How many leading rows of the [1, T, D] tensor ``x`` are constants of the graph: a CONCATENATION along the
    rows whose first inputs are constant tensors (a class token, distillation or register tokens), seen through
    ADD, SUB or MUL with constant operands (the position embedding). 0 when there is none."""

    def constant(t: int) -> bool:
        buffer = graph.tensors[t].buffer
        return t not in producer and bool(buffer) and model.buffers[buffer].data is not None

    t = x
    for _ in range(4):
        op = producer.get(t)
        if op is None:
            return 0
        ins = [int(i) for i in graph.operators[op].inputs]
        if codes[op] in ("ADD", "SUB", "MUL") and len(ins) == 2 and sum(constant(i) for i in ins) == 1:
            t = ins[0] if constant(ins[1]) else ins[1]
            continue
        if codes[op] != "CONCATENATION" or int(graph.operators[op].builtinOptions.axis) not in (1, -2):
            return 0
        lead = 0
        for i in ins:
            if not constant(i):
                break
            lead += int(graph.tensors[i].shape[1])
        return lead
    return 0


def _statistics(
    model: Any, graph: Any, codes: list[str], producer: dict[int, int], v: int
) -> tuple[int, int, float] | None:
    """``(x, mean, eps)`` when ``v`` is ``MEAN(SQUARED_DIFFERENCE(x, mean)) [+ eps]`` over the last axis."""
    op = producer.get(v)
    eps = 0.0
    if op is not None and codes[op] == "ADD":
        ins = [int(i) for i in graph.operators[op].inputs]
        inner = [i for i in ins if i in producer]
        if len(inner) != 1:
            return None
        outer = graph.tensors[next(i for i in ins if i not in producer)]
        if flatbuf.type_name(outer.type) != "FLOAT32" or not outer.buffer:
            return None
        found = flatbuf.data(model, outer, "<f4").reshape(-1)
        if found.size != 1:
            return None
        eps = float(found[0])
        op = producer[inner[0]]
    if op is None or codes[op] != "MEAN":
        return None
    sq = producer.get(int(graph.operators[op].inputs[0]))
    if sq is None or codes[sq] != "SQUARED_DIFFERENCE":
        return None
    x, mean = (int(i) for i in graph.operators[sq].inputs)
    xs, ms = list(graph.tensors[x].shape), list(graph.tensors[mean].shape)
    if len(xs) != len(ms) or ms[-1] != 1 or xs[:-1] != ms[:-1]:
        x, mean = mean, x
        xs, ms = ms, xs
    if len(xs) != len(ms) or ms[-1] != 1 or xs[:-1] != ms[:-1] or xs[-1] < 2:
        return None
    return x, mean, eps


def _run(content: bytes, sample: np.ndarray) -> dict[int, np.ndarray]:
    """Every tensor's value for one preprocessed sample (packed, for several inputs, as calibration packs them)."""
    model = TFLiteModel(model_content=content, delegate="none", preserve_all_tensors=True)
    interpreter = model.interpreter
    for info, part in zip(model.inputs, input_arrays(sample, model.inputs), strict=True):
        interpreter.set_tensor(info.index, quantize(part, info))
    interpreter.invoke()
    values = {}
    for detail in interpreter.get_tensor_details():
        try:
            values[int(detail["index"])] = np.asarray(interpreter.get_tensor(detail["index"]))
        except ValueError:  # a tensor with no data (an optional input)
            continue
    return values


def _find_normalized(
    graph: Any,
    readers: dict[int, list[int]],
    r: int,
    shape: tuple[int, ...],
    want: np.ndarray,
    values: dict[int, np.ndarray],
) -> tuple[int, np.ndarray, np.ndarray] | None:
    """The tensor of ``shape`` holding ``want * gamma + beta`` for per-channel ``gamma`` and ``beta`` (to 1e-4 of
    its largest value), within a few ops of ``r``, with the two vectors: onnx2tf and Keras fold LayerNorm's
    scale and shift into the chain (``x * (r * gamma) + (beta - mean * r * gamma)``), litert-torch leaves them
    to the next layer (gamma 1, beta 0)."""
    frontier, seen = [r], {r}
    basis = want.reshape(-1, shape[-1])
    for _ in range(SEARCH_DEPTH):
        nxt = []
        for t in frontier:
            for k in readers.get(t, []):
                for o in graph.operators[k].outputs:
                    o = int(o)
                    if o in seen:
                        continue
                    seen.add(o)
                    got = values.get(o)
                    if got is not None and got.shape == shape and got.dtype == np.float32:
                        fit = _affine(basis, got.reshape(-1, shape[-1]))
                        if fit is not None:
                            return (o, *fit)
                    nxt.append(o)
        frontier = nxt
    return None


def _affine(n: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per column c, ``(gamma_c, beta_c)`` with ``y[:, c] = gamma_c * n[:, c] + beta_c``, or None when no such fit
    holds (to 1e-4 of ``y``'s largest value) or the rows are too few to tell."""
    if n.shape[0] < 3:
        return None
    mean_n, mean_y = n.mean(axis=0), y.mean(axis=0)
    dn = n - mean_n
    spread = np.sum(dn * dn, axis=0)
    if np.any(spread <= 0):
        return None
    gamma = np.sum(dn * (y - mean_y), axis=0) / spread
    beta = mean_y - gamma * mean_n
    scale = max(float(np.max(np.abs(y))), 1e-12)
    if float(np.max(np.abs(n * gamma + beta - y))) > 1e-4 * scale:
        return None
    return gamma.astype(np.float32), beta.astype(np.float32)


def as_l2_normalization(content: bytes, samples: np.ndarray) -> tuple[bytes, int]:
    """``content`` with each LayerNorm found computed by L2_NORMALIZATION; how many were rewritten.

    ``samples``: preprocessed calibration samples (the first is run). Leading rows that are constants of the
    graph (a class token plus its position embedding, before the first block) are constants of the normalized
    tensor too: they are written as such and only the other rows are normalized, since a row whose spread is a
    fiftieth of the widest row's keeps about one int8 step of its own.
    """
    model = flatbuf.load(content)  # read once: searched, then rewritten in place
    norms = find_layer_norms(content, samples, model)
    if not norms:
        return content, 0
    schema = tflite_schema.schema()
    graph = model.subgraphs[0]
    replaced: dict[int, list[Any]] = {}
    for n in norms:
        replaced[n.y] = _l2_ops(model, graph, schema, n)
    ops = []
    for op in graph.operators:
        outs = [int(o) for o in op.outputs]
        if len(outs) == 1 and outs[0] in replaced:
            ops.extend(replaced[outs[0]])
        else:
            ops.append(op)
    graph.operators = _live(graph, ops)
    log.info("computed %d LayerNorm(s) with L2_NORMALIZATION for int8 (a per-token norm)", len(norms))
    return flatbuf.dump(model), len(norms)


def _l2_ops(model: Any, graph: Any, schema: Any, n: Norm) -> list[Any]:
    """SUB, L2_NORMALIZATION, MUL (and, with fixed rows, SLICEs before and a CONCATENATION after) writing ``n.y``."""
    shape = [int(d) for d in graph.tensors[n.x].shape]
    tag = f"edgeconv/layer_norm_{n.y}"
    ops = []
    x, mean, out = n.x, n.mean, n.y
    lead = 0 if n.fixed is None else int(n.fixed.shape[1])
    rows = [shape[0], shape[1] - lead, *shape[2:]]  # ``lead`` > 0 only for [1, T, D]
    if lead:
        begin = _constant(model, graph, schema, np.array([0, lead, 0], "<i4"), f"{tag}_begin")
        x = _tensor(graph, schema, rows, f"{tag}_rows")
        mean = _tensor(graph, schema, [rows[0], rows[1], 1], f"{tag}_row_means")
        for source, target, size in ((n.x, x, rows), (n.mean, mean, [rows[0], rows[1], 1])):
            sizes = _constant(model, graph, schema, np.array(size, "<i4"), f"{tag}_size_{target}")
            ops.append(_op(model, schema, "SLICE", [source, begin, sizes], [target], "SliceOptions"))
        out = _tensor(graph, schema, rows, f"{tag}_normalized")
    centred = _tensor(graph, schema, rows, f"{tag}_centred")
    unit = _tensor(graph, schema, rows, f"{tag}_unit")
    gain = np.sqrt(np.float32(n.width)) * (n.gamma if n.gamma is not None else np.ones(1, np.float32))
    root = _constant(model, graph, schema, gain.astype("<f4"), f"{tag}_sqrt_width")
    ops.append(_op(model, schema, "SUB", [x, mean], [centred], "SubOptions"))
    if n.eps > EPS_IGNORED:
        # |[d, sqrt(D eps)]|^2 = D (var + eps): one more element makes the norm LayerNorm's exactly
        wide = [*rows[:-1], rows[-1] + 1]
        column = np.full([*rows[:-1], 1], math.sqrt(n.width * n.eps), "<f4")
        padded, normalized = (
            _tensor(graph, schema, wide, f"{tag}_with_eps"),
            _tensor(graph, schema, wide, f"{tag}_unit_eps"),
        )
        concat = _op(
            model,
            schema,
            "CONCATENATION",
            [centred, _constant(model, graph, schema, column, f"{tag}_eps")],
            [padded],
            "ConcatenationOptions",
        )
        concat.builtinOptions.axis = len(rows) - 1
        begin = _constant(model, graph, schema, np.zeros(len(rows), "<i4"), f"{tag}_eps_begin")
        kept = _constant(model, graph, schema, np.array(rows, "<i4"), f"{tag}_eps_size")
        ops += [
            concat,
            _op(model, schema, "L2_NORMALIZATION", [padded], [normalized], "L2NormOptions"),
            _op(model, schema, "SLICE", [normalized, begin, kept], [unit], "SliceOptions"),
        ]
    else:
        ops.append(_op(model, schema, "L2_NORMALIZATION", [centred], [unit], "L2NormOptions"))
    if n.beta is None:
        ops.append(_op(model, schema, "MUL", [unit, root], [out], "MulOptions"))
    else:
        scaled = _tensor(graph, schema, rows, f"{tag}_scaled")
        shift = _constant(model, graph, schema, n.beta.astype("<f4"), f"{tag}_beta")
        ops.append(_op(model, schema, "MUL", [unit, root], [scaled], "MulOptions"))
        ops.append(_op(model, schema, "ADD", [scaled, shift], [out], "AddOptions"))
    if lead:
        assert n.fixed is not None
        fixed = _constant(model, graph, schema, n.fixed.astype("<f4"), f"{tag}_fixed_rows")
        concat = _op(model, schema, "CONCATENATION", [fixed, out], [n.y], "ConcatenationOptions")
        concat.builtinOptions.axis = 1
        ops.append(concat)
    return ops


def _live(graph: Any, ops: list[Any]) -> list[Any]:
    """``ops`` without those whose outputs nothing reads (the old RSQRT chains)."""
    needed = {int(i) for i in graph.outputs}
    keep = []
    for op in reversed(ops):
        if any(int(o) in needed for o in op.outputs):
            keep.append(op)
            needed.update(int(i) for i in op.inputs if int(i) >= 0)
    return keep[::-1]


def _tensor(graph: Any, schema: Any, shape: list[int], name: str) -> int:
    tensor = schema.TensorT()
    tensor.shape = list(shape)
    tensor.type = schema.TensorType.FLOAT32
    tensor.name = name.encode()
    tensor.buffer = 0
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _constant(model: Any, graph: Any, schema: Any, value: np.ndarray, name: str) -> int:
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(value.tobytes(), dtype=np.uint8)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = [int(d) for d in value.shape]
    tensor.type = schema.TensorType.FLOAT32 if value.dtype.kind == "f" else schema.TensorType.INT32
    tensor.name = name.encode()
    tensor.buffer = len(model.buffers) - 1
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _op(model: Any, schema: Any, code: str, ins: list[int], outs: list[int], options: str) -> Any:
    from converter.sources.float_rewrites import _opcode

    op = schema.OperatorT()
    op.opcodeIndex = _opcode(model, schema, int(getattr(schema.BuiltinOperator, code)))
    op.inputs, op.outputs = ins, outs
    op.builtinOptionsType = getattr(schema.BuiltinOptions, options)
    op.builtinOptions = getattr(schema, f"{options}T")()
    return op
