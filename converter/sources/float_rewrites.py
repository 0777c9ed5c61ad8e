"""Exact rewrites of a float .tflite that let it quantize to full integer.

Each rewrite computes the same float numbers with ops that have int8 kernels in LiteRT and TFLite Micro,
bit for bit unless its docstring says otherwise; a model without the pattern keeps its bytes. Applied by
``load.load_model`` to the float reference of every source format.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np

from converter.runtime.interpreter import make_interpreter
from converter.tflite import flatbuf
from converter.tflite import flatbuffer_schema as tflite_schema

log = logging.getLogger(__name__)


def rewrite_neg(content: bytes) -> tuple[bytes, int]:
    """Replace every float NEG op by a MUL with a constant -1, and say how many there were.

    Keras 3 LayerNormalization computes ``x * inv + (-mean * inv + beta)``, so every converter
    (ours and TFLiteConverter.from_keras_model alike) emits a NEG, and TFLite has no int8 NEG
    kernel: the stock converter leaves it float between DEQUANTIZE and QUANTIZE, so no full-integer
    model comes out. ``x * -1`` equals ``-x`` bit for bit in IEEE float, so the float reference
    computes the same numbers, and MUL has int8 kernels in LiteRT and TFLite Micro. A model without
    NEG is returned unchanged (same bytes), so other models are not touched.
    """
    return _rewrite_as_mul(content, "NEG")


def rewrite_square(content: bytes) -> tuple[bytes, int]:
    """Replace every float SQUARE op by ``MUL(x, x)``, and say how many there were.

    ConvNeXt-V2's global response norm (``sqrt(sum(x^2))``) reaches TFLite through onnx2tf as SQUARE, which
    has no int8 kernel in LiteRT or TFLite Micro, so it stayed float. TFLite's float SQUARE computes ``x * x``:
    the MUL gives the same numbers bit for bit and has int8 kernels. A model without SQUARE keeps its bytes.
    """
    return _rewrite_as_mul(content, "SQUARE")


def _rewrite_as_mul(content: bytes, name: str) -> tuple[bytes, int]:
    """Every float ``name`` op (NEG or SQUARE) as the MUL that computes the same numbers."""
    if not _has_op(content, name):
        return content, 0
    schema = tflite_schema.schema()

    model = flatbuf.load(content)
    names = flatbuf.enum_names("BuiltinOperator")
    rewritten = 0
    for subgraph in model.subgraphs:
        found = [
            op
            for op in subgraph.operators
            if flatbuf.op_code(model, op, names) == name
            and flatbuf.type_name(subgraph.tensors[op.inputs[0]].type) == "FLOAT32"
        ]
        if not found:
            continue
        minus_one = -1
        if name == "NEG":
            tensor = schema.TensorT()
            tensor.shape = [1]
            tensor.type = schema.TensorType.FLOAT32
            tensor.name = b"edgeconv/minus_one"
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(np.array([-1.0], dtype="<f4").tobytes(), dtype=np.uint8)
            model.buffers.append(buffer)
            tensor.buffer = len(model.buffers) - 1
            subgraph.tensors.append(tensor)
            minus_one = len(subgraph.tensors) - 1
        for op in found:
            op.opcodeIndex = _opcode(model, schema, int(schema.BuiltinOperator.MUL))
            op.inputs = [op.inputs[0], minus_one if name == "NEG" else op.inputs[0]]
            op.builtinOptionsType = schema.BuiltinOptions.MulOptions
            op.builtinOptions = schema.MulOptionsT()
            rewritten += 1
    if not rewritten:
        return content, 0
    _drop_unused_opcodes(model)
    said = "MUL by -1: TFLite has no int8 NEG kernel" if name == "NEG" else "MUL of x by x: no int8 SQUARE kernel"
    log.info("rewrote %d float %s op(s) as %s", rewritten, name, said)
    return flatbuf.dump(model), rewritten


def _drop_unused_opcodes(model: Any) -> None:
    """Remove operator codes no op uses (the NEG's), so op listings and op resolvers do not name them."""
    used = sorted({int(op.opcodeIndex) for subgraph in model.subgraphs for op in subgraph.operators})
    if len(used) == len(model.operatorCodes):
        return
    index = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            op.opcodeIndex = index[int(op.opcodeIndex)]


def rewrite_dangling_splits(content: bytes) -> tuple[bytes, int]:
    """Replace each float SPLIT with an unused output by one SLICE per used output; how many were replaced.

    An unrolled LSTM's first step multiplies the forget gate by the zero initial state, which TensorFlow
    folds away, so the SPLIT of the gate pre-activations keeps an output nobody reads. TFLite's MLIR
    quantizer then leaves such a SPLIT float in some runs and not in others (seen: 1 or 2 of the 2 first
    steps of a Bidirectional(LSTM) float, from identical inputs). SLICE copies the same numbers (exact) and
    has int8 kernels in LiteRT and TFLite Micro. A model without such a SPLIT keeps its bytes.
    """
    if not _has_dangling_split(content):
        return content, 0
    schema = tflite_schema.schema()

    model = flatbuf.load(content)
    names = flatbuf.enum_names("BuiltinOperator")
    rewritten = 0
    for subgraph in model.subgraphs:
        used = {int(i) for op in subgraph.operators for i in op.inputs} | {int(i) for i in subgraph.outputs}
        new_ops = []
        for op in subgraph.operators:
            outputs = [int(i) for i in op.outputs]
            if (
                flatbuf.op_code(model, op, names) != "SPLIT"
                or flatbuf.type_name(subgraph.tensors[op.inputs[1]].type) != "FLOAT32"
                or all(i in used for i in outputs)
            ):
                new_ops.append(op)
                continue
            source = subgraph.tensors[op.inputs[1]]
            shape = [int(d) for d in source.shape]
            axis = int(flatbuf.data(model, subgraph.tensors[op.inputs[0]], "<i4").reshape(-1)[0]) % len(shape)
            part = shape[axis] // len(outputs)
            for k, out in enumerate(outputs):
                if out not in used:
                    continue
                begin, size = [0] * len(shape), list(shape)
                begin[axis], size[axis] = k * part, part
                piece = schema.OperatorT()
                piece.opcodeIndex = _opcode(model, schema, int(schema.BuiltinOperator.SLICE))
                piece.inputs = [
                    int(op.inputs[1]),
                    _int32_constant(model, subgraph, schema, begin, f"edgeconv/slice_begin_{out}"),
                    _int32_constant(model, subgraph, schema, size, f"edgeconv/slice_size_{out}"),
                ]
                piece.outputs = [out]
                piece.builtinOptionsType = schema.BuiltinOptions.SliceOptions
                piece.builtinOptions = schema.SliceOptionsT()
                new_ops.append(piece)
            rewritten += 1
        subgraph.operators = new_ops
    if not rewritten:
        return content, 0
    _drop_unused_opcodes(model)
    log.info("rewrote %d SPLIT op(s) with unused outputs as SLICE ops (exact)", rewritten)
    return flatbuf.dump(model), rewritten


def _has_dangling_split(content: bytes) -> bool:
    """Whether the main subgraph has a SPLIT with an output that no op reads and the model does not return."""
    interpreter = make_interpreter(model_content=content, delegate="none")
    ops = interpreter._get_ops_details()  # noqa: SLF001 - the only op listing LiteRT offers (see list_ops)
    used = {int(i) for op in ops for i in op["inputs"]} | {int(d["index"]) for d in interpreter.get_output_details()}
    return any(op["op_name"] == "SPLIT" and not {int(i) for i in op["outputs"]} <= used for op in ops)


def _opcode(model: Any, schema: Any, builtin: int) -> int:
    """The index of the model's operator code for ``builtin``, added (version 1) when the model has none."""
    for i, code in enumerate(model.operatorCodes):
        if max(int(code.builtinCode), int(code.deprecatedBuiltinCode)) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _int32_constant(model: Any, subgraph: Any, schema: Any, values: list[int], name: str) -> int:
    """Append a constant int32 vector tensor (with its own buffer) and return its index."""
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.asarray(values, dtype="<i4").tobytes(), dtype=np.uint8)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = [len(values)]
    tensor.type = schema.TensorType.INT32
    tensor.name = name.encode()
    tensor.buffer = len(model.buffers) - 1
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


# Integer ops a model's shape arithmetic uses; anything else (random ops, stateful ops) is never folded.
_SHAPE_INTEGER_TYPES = ("INT32", "INT64")


def fold_shape_arithmetic(content: bytes) -> tuple[bytes, int]:
    """Replace the integer shape arithmetic of a dynamic-batch model by its values at batch 1; how many ops went.

    A SavedModel (and the float .tflite the stock converter writes from a Keras model) keeps the batch
    dimension unknown, so a reshape inside it (MultiHeadAttention's heads, a Flatten) computes its target
    shape at run time: SHAPE, STRIDED_SLICE, REDUCE_PROD, PACK... on int32 tensors. Those ops are int32 in the
    int8 model too, but TFLite Micro has no REDUCE_PROD kernel, so such a model fails MCU targets while the
    same Keras model traced at batch 1 does not. edgeconv converts at batch 1 anyway (static shapes), so the
    values are constants: every op whose inputs are SHAPE outputs or constants, and whose outputs are int32 or
    int64, is computed once by the interpreter and its readers get the values as constant tensors. Only the
    batch may be unknown (another unknown dimension would be baked in at 1): other models keep their bytes.
    """
    schema = tflite_schema.schema()

    if not _has_op(content, "SHAPE"):
        return content, 0
    model = flatbuf.load(content)
    if len(model.subgraphs) != 1:
        return content, 0
    subgraph = model.subgraphs[0]
    for i in subgraph.inputs:
        signature = subgraph.tensors[i].shapeSignature
        if signature is not None and any(int(d) < 0 for d in list(signature)[1:]):
            return content, 0
    names = flatbuf.enum_names("BuiltinOperator")

    def is_constant(i: int) -> bool:
        tensor = subgraph.tensors[i]
        raw = model.buffers[tensor.buffer].data if tensor.buffer else None
        return raw is not None and len(raw) > 0

    static: set[int] = set()
    folded: list[int] = []
    for k, op in enumerate(subgraph.operators):
        ins = [int(i) for i in op.inputs if int(i) >= 0]
        outs = [int(i) for i in op.outputs]
        integer = all(flatbuf.type_name(subgraph.tensors[i].type) in _SHAPE_INTEGER_TYPES for i in outs)
        if not integer:
            continue
        if flatbuf.op_code(model, op, names) == "SHAPE" or (
            ins and any(i in static for i in ins) and all(i in static or is_constant(i) for i in ins)
        ):
            static.update(outs)
            folded.append(k)
    if not folded:
        return content, 0
    kept = [op for k, op in enumerate(subgraph.operators) if k not in set(folded)]
    frontier = {int(i) for op in kept for i in op.inputs if int(i) in static} | {
        int(i) for i in subgraph.outputs if int(i) in static
    }
    interpreter = make_interpreter(model_content=content, delegate="none", preserve_all_tensors=True)
    for d in interpreter.get_input_details():
        interpreter.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
    interpreter.invoke()
    for i in sorted(frontier):
        value = np.asarray(interpreter.get_tensor(i))
        dtype = "<i8" if flatbuf.type_name(subgraph.tensors[i].type) == "INT64" else "<i4"
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.astype(dtype).tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
        tensor = subgraph.tensors[i]
        tensor.buffer = len(model.buffers) - 1
        tensor.shape = [int(d) for d in value.shape]
        tensor.shapeSignature = None
    subgraph.operators = kept
    _drop_unused_opcodes(model)
    log.info("folded %d shape-arithmetic op(s) of a dynamic batch into constants at batch 1", len(folded))
    return flatbuf.dump(model), len(folded)


# Ops that compute the same numbers on int32 as on int64 whenever the values fit int32: index arithmetic
# (PyTorch's wrap of negative ids: LESS, CAST, MUL, ADD), lookups and the shape-keeping ops around them. An op
# whose options name a type (SHAPE, ARG_MAX...) is not here, so a model holding one on int64 keeps its bytes.
_INDEX_OPS = frozenset(
    {
        "ADD", "SUB", "MUL", "MAXIMUM", "MINIMUM", "FLOOR_DIV", "FLOOR_MOD", "ABS",
        "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL", "EQUAL", "NOT_EQUAL", "SELECT", "SELECT_V2",
        "CAST", "GATHER", "GATHER_ND", "EMBEDDING_LOOKUP", "ONE_HOT",
        "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SLICE", "STRIDED_SLICE", "CONCATENATION", "PACK", "TILE",
    }
)  # fmt: skip
_INT32 = np.iinfo(np.int32)


def narrow_int64(content: bytes) -> tuple[bytes, int]:
    """Make every int64 tensor int32 where only index arithmetic touches them; how many tensors changed.

    ONNX exports of PyTorch take token ids and indices as int64, and onnx2tf keeps them so: an int64 input,
    PyTorch's wrap of negative ids (``ids + (ids < 0) * vocab``) in int64, and a GATHER with int64
    positions, which TensorFlow Lite Micro's kernel refuses (int32 positions only). The ids are range-checked
    against the input's type and the vocabulary before any run, and every constant is checked to fit, so
    int32 computes the same numbers; the .pt2 route's models take int32 ids for the same reason. A model
    whose int64 tensors meet any op outside ``_INDEX_OPS``, or hold a constant beyond int32, or leave the
    model as an output, keeps its bytes.
    """
    model = flatbuf.load(content)
    if len(model.subgraphs) != 1:
        return content, 0
    subgraph = model.subgraphs[0]
    wide = {i for i, t in enumerate(subgraph.tensors) if flatbuf.type_name(t.type) == "INT64"}
    if not wide or wide & {int(i) for i in subgraph.outputs}:
        return content, 0
    names = flatbuf.enum_names("BuiltinOperator")
    for op in subgraph.operators:
        touched = {int(i) for i in op.inputs if int(i) >= 0} | {int(i) for i in op.outputs}
        if touched & wide and flatbuf.op_code(model, op, names) not in _INDEX_OPS:
            return content, 0
    constants: dict[int, np.ndarray] = {}
    for i in wide:
        tensor = subgraph.tensors[i]
        raw = model.buffers[tensor.buffer].data if tensor.buffer else None
        if raw is not None and len(raw):
            values = flatbuf.data(model, tensor, "<i8")
            if values.size and (values.min() < _INT32.min or values.max() > _INT32.max):
                return content, 0
            constants[i] = values
    schema = tflite_schema.schema()
    readers = Counter(int(t.buffer) for t in subgraph.tensors)
    for i in wide:
        tensor = subgraph.tensors[i]
        tensor.type = schema.TensorType.INT32
        if i in constants:
            data = np.frombuffer(constants[i].astype("<i4").tobytes(), dtype=np.uint8)
            if readers[int(tensor.buffer)] == 1:
                model.buffers[tensor.buffer].data = data
            else:  # another tensor reads the int64 bytes: this one gets a buffer of its own
                buffer = schema.BufferT()
                buffer.data = data
                model.buffers.append(buffer)
                tensor.buffer = len(model.buffers) - 1
    for op in subgraph.operators:
        if flatbuf.op_code(model, op, names) == "CAST" and op.builtinOptions is not None:
            op.builtinOptions.inDataType = subgraph.tensors[op.inputs[0]].type
            op.builtinOptions.outDataType = subgraph.tensors[op.outputs[0]].type
    log.info("narrowed %d int64 index tensor(s) to int32", len(wide))
    return flatbuf.dump(model), len(wide)


# The stand-in for a masking constant (-3.4e38, -inf): far enough below any attention score that a masked
# position's softmax weight, e^(score + MASK_VALUE - max score), stays under int8 softmax's 1/256 step unless a
# masked score exceeds every unmasked one by about 58, and near enough that the sum it is added to keeps a usable
# int8 step (0.3 for scores within ±10) under min/max ranges.
MASK_VALUE = -64.0
_MASKING = -1e30  # constants at or below this are masking sentinels (torch.finfo(float32).min, -inf)


def soften_mask_constants(content: bytes) -> tuple[bytes, int]:
    """Replace float constants that hold only 0 and masking sentinels (-3.4e38, -inf) by 0 and ``MASK_VALUE``.

    Hugging Face attention adds ``torch.finfo(float32).min`` at masked positions before the softmax (BERT,
    RoBERTa, DistilBERT...). As a float model that is harmless, but an int8 tensor holding it gets a scale of
    ~1e36, which buries every real score in one step, and TensorFlow's quantizer aborts on such a range (seen
    on TF 2.21: SIGABRT in mlir_quantize). ``MASK_VALUE`` masks as well in float (the weights it leaves are below
    float32's resolution for any score spread under about 40) and quantizes. Not bit-exact, so it is said in
    the loader's text; a model without such a constant keeps its bytes. The same sentinel pads a max-pool
    (PADV2 with -inf before MAX_POOL_2D: PyTorch's ``MaxPool2d(padding=1)``), where -64 is exact whenever the
    pooled values are above it (after a ReLU, always); ``quantization.quantize.pool_padding_ranges`` then keeps
    the pad value out of that tensor's int8 range.
    """
    model = flatbuf.load(content)
    changed = 0
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            if flatbuf.type_name(tensor.type) != "FLOAT32" or not tensor.buffer:
                continue
            raw = model.buffers[tensor.buffer].data
            if raw is None or not len(raw):
                continue
            values = np.frombuffer(bytes(bytearray(raw)), dtype="<f4")
            sentinel = values <= _MASKING
            if not sentinel.any() or not np.all(sentinel | (values == 0)):
                continue
            softened = np.where(sentinel, np.float32(MASK_VALUE), values).astype("<f4")
            model.buffers[tensor.buffer].data = np.frombuffer(softened.tobytes(), dtype=np.uint8)
            changed += 1
    if not changed:
        return content, 0
    log.info("replaced %d masking constant(s) (-3.4e38/-inf) by %g", changed, MASK_VALUE)
    return flatbuf.dump(model), changed


# Linear ops whose float weights (input 1) can absorb a constant factor on their input 0.
_SCALABLE_READERS = ("FULLY_CONNECTED", "CONV_2D")


def rewrite_padded_global_pools(content: bytes) -> tuple[bytes, int]:
    """Replace each zero PAD feeding a global AVERAGE_POOL_2D by a pool over the unpadded map; how many went.

    Hugging Face's EfficientNet pools with ``nn.AvgPool2d(hidden_dim, ceil_mode=True)``, a window far wider than
    the map (B0: 1280 over 7x7). litert-torch lowers it as a zero PAD of the map to the window, an AVERAGE_POOL_2D
    over all of it, and the factor folded into the classifier's weights: for the zoo's model a 1x1x320 map padded
    to 320x320x320 values and divided by 102,400. TFLite's int8 AVERAGE_POOL_2D keeps its input's scale, so an
    output 1/102,400 of its input rounds to the zero point: the int8 logits no longer depend on the image.
    Here the pool covers the map itself and the factor (map area over window area) moves into the weights of
    the FULLY_CONNECTED or CONV_2D ops reading the pool, or, where another op reads it, into a MUL after it. The
    float numbers are the same up to float rounding; a model without the pattern keeps its bytes.
    """
    if not _has_op(content, "AVERAGE_POOL_2D"):
        return content, 0
    model = flatbuf.load(content)
    names = flatbuf.enum_names("BuiltinOperator")
    schema = tflite_schema.schema()
    graph = model.subgraphs[0]
    readers: dict[int, list[Any]] = {}
    for op in graph.operators:
        for i in op.inputs if op.inputs is not None else []:
            readers.setdefault(int(i), []).append(op)
    producer = {int(o): op for op in graph.operators for o in (op.outputs if op.outputs is not None else [])}
    outputs = {int(o) for o in graph.outputs}
    dropped: list[Any] = []
    for pool in list(graph.operators):
        if flatbuf.op_code(model, pool, names) != "AVERAGE_POOL_2D":
            continue
        padded = int(pool.inputs[0])
        pad = producer.get(padded)
        window = _global_window(model, graph, pad, pool, names, readers, outputs)
        if pad is None or window is None:
            continue
        height, width = window
        factor = height * width / (pool.builtinOptions.filterHeight * pool.builtinOptions.filterWidth)
        pool.inputs = [int(pad.inputs[0])]
        pool.builtinOptions.filterHeight, pool.builtinOptions.filterWidth = height, width
        pool.builtinOptions.strideH = pool.builtinOptions.strideW = 1
        pooled = int(pool.outputs[0])
        if not _scale_readers(model, graph, readers.get(pooled, []), pooled, factor, names, readers, outputs):
            _multiply_after(model, graph, schema, pool, factor)
        dropped.append(pad)
    if not dropped:
        return content, 0
    graph.operators = [op for op in graph.operators if not any(op is d for d in dropped)]
    _drop_unused_opcodes(model)
    log.info("pooled %d zero-padded global average pool(s) over their maps (no padded copy)", len(dropped))
    return flatbuf.dump(model), len(dropped)


def _has_op(content: bytes, name: str) -> bool:
    """Whether the model holds a ``name`` op: a listing by the interpreter, cheaper than parsing the flatbuffer."""
    ops = make_interpreter(model_content=content, delegate="none")._get_ops_details()  # noqa: SLF001 - see list_ops
    return any(op["op_name"] == name for op in ops)


def _global_window(
    model: Any, graph: Any, pad: Any, pool: Any, names: dict[int, str], readers: dict[int, list[Any]], outputs: set[int]
) -> tuple[int, int] | None:
    """The unpadded map's (height, width) when ``pad`` zero-pads only it for ``pool``, whose window covers it all."""
    if pad is None or flatbuf.op_code(model, pad, names) not in ("PAD", "PADV2"):
        return None
    padded = int(pad.outputs[0])
    if padded in outputs or len(readers.get(padded, [])) != 1:
        return None
    source, paddings = graph.tensors[int(pad.inputs[0])], graph.tensors[int(pad.inputs[1])]
    if flatbuf.type_name(source.type) != "FLOAT32" or not paddings.buffer or len(source.shape) != 4:
        return None
    if len(pad.inputs) > 2 and int(pad.inputs[2]) >= 0:
        value = graph.tensors[int(pad.inputs[2])]
        if not value.buffer or np.any(flatbuf.data(model, value, "<f4") != 0):
            return None
    dtype = "<i8" if flatbuf.type_name(paddings.type) == "INT64" else "<i4"
    amounts = flatbuf.data(model, paddings, dtype).reshape(-1, 2)
    options = pool.builtinOptions
    if amounts.shape != (4, 2) or amounts[0].any() or amounts[3].any() or options.padding != 1:  # 1: VALID
        return None
    height, width = int(source.shape[1]), int(source.shape[2])
    if (height + int(amounts[1].sum()), width + int(amounts[2].sum())) != (options.filterHeight, options.filterWidth):
        return None
    if list(graph.tensors[int(pool.outputs[0])].shape)[1:3] != [1, 1] or options.fusedActivationFunction != 0:
        return None
    return height, width


def _scale_readers(
    model: Any,
    graph: Any,
    ops: list[Any],
    pooled: int,
    factor: float,
    names: dict[int, str],
    readers: dict[int, list[Any]],
    outputs: set[int],
) -> bool:
    """Multiply the weights of every op reading ``pooled`` by ``factor``; False (nothing changed) if one cannot."""
    if not ops or pooled in outputs:
        return False
    for op in ops:
        weights = graph.tensors[int(op.inputs[1])] if len(op.inputs) > 1 else None
        if (
            flatbuf.op_code(model, op, names) not in _SCALABLE_READERS
            or int(op.inputs[0]) != pooled
            or weights is None
            or not weights.buffer
            or flatbuf.type_name(weights.type) != "FLOAT32"
            or len(readers.get(int(op.inputs[1]), [])) != 1
        ):
            return False
    for op in ops:
        weights = graph.tensors[int(op.inputs[1])]
        flatbuf.set_data(model, weights, flatbuf.data(model, weights, "<f4") * np.float32(factor))
    return True


def _multiply_after(model: Any, graph: Any, schema: Any, pool: Any, factor: float) -> None:
    """Make ``pool`` write a new tensor and a MUL by ``factor`` write the tensor it wrote."""
    result = int(pool.outputs[0])
    mean = schema.TensorT()
    mean.shape = list(graph.tensors[result].shape)
    mean.type = schema.TensorType.FLOAT32
    mean.name = graph.tensors[result].name + b"/mean"
    graph.tensors.append(mean)
    pool.outputs = [len(graph.tensors) - 1]
    constant = schema.TensorT()
    constant.shape = [1]
    constant.type = schema.TensorType.FLOAT32
    constant.name = graph.tensors[result].name + b"/window_share"
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.array([factor], dtype="<f4").tobytes(), dtype=np.uint8)
    model.buffers.append(buffer)
    constant.buffer = len(model.buffers) - 1
    graph.tensors.append(constant)
    mul = schema.OperatorT()
    mul.opcodeIndex = _opcode(model, schema, int(schema.BuiltinOperator.MUL))
    mul.inputs = [len(graph.tensors) - 2, len(graph.tensors) - 1]
    mul.outputs = [result]
    mul.builtinOptionsType = schema.BuiltinOptions.MulOptions
    mul.builtinOptions = schema.MulOptionsT()
    at = next(i for i, op in enumerate(graph.operators) if op is pool)
    graph.operators.insert(at + 1, mul)
