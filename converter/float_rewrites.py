"""Exact rewrites of a float .tflite that let it quantize to full integer.

Each rewrite computes the same float numbers, bit for bit, with ops that have int8 kernels in LiteRT
and TFLite Micro; a model without the pattern keeps its bytes. Applied by ``load.load_model`` to the
float reference of every source format.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from . import flatbuf
from .runtime.interpreter import make_interpreter

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
    ops = make_interpreter(model_content=content, delegate="none")._get_ops_details()  # noqa: SLF001 - see list_ops
    if not any(op["op_name"] == "NEG" for op in ops):
        return content, 0
    from tensorflow.lite.python import schema_py_generated as schema

    model = flatbuf.load(content)
    names = flatbuf.enum_names("BuiltinOperator")
    rewritten = 0
    for subgraph in model.subgraphs:
        negs = [
            op
            for op in subgraph.operators
            if flatbuf.op_code(model, op, names) == "NEG"
            and flatbuf.type_name(subgraph.tensors[op.inputs[0]].type) == "FLOAT32"
        ]
        if not negs:
            continue
        minus_one = schema.TensorT()
        minus_one.shape = [1]
        minus_one.type = schema.TensorType.FLOAT32
        minus_one.name = b"edgeconv/minus_one"
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(np.array([-1.0], dtype="<f4").tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
        minus_one.buffer = len(model.buffers) - 1
        subgraph.tensors.append(minus_one)
        for op in negs:
            op.opcodeIndex = _mul_opcode(model, schema)
            op.inputs = [op.inputs[0], len(subgraph.tensors) - 1]
            op.builtinOptionsType = schema.BuiltinOptions.MulOptions
            op.builtinOptions = schema.MulOptionsT()
            rewritten += 1
    if not rewritten:
        return content, 0
    _drop_unused_opcodes(model)
    log.info("rewrote %d float NEG op(s) as MUL by -1: TFLite has no int8 NEG kernel", rewritten)
    return flatbuf.dump(model), rewritten


def _mul_opcode(model: Any, schema: Any) -> int:
    """The index of the model's MUL operator code, added (version 1) when the model has none."""
    mul = int(schema.BuiltinOperator.MUL)
    for i, code in enumerate(model.operatorCodes):
        if max(int(code.builtinCode), int(code.deprecatedBuiltinCode)) == mul:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = mul
    code.deprecatedBuiltinCode = mul
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


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
