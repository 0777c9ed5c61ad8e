"""Unroll Keras recurrent layers (LSTM, GRU, SimpleRNN, also inside Bidirectional) before tracing.

Traced as they are, Keras recurrent layers become a TFLite WHILE loop, which has no int8 kernel (and
whose loop-control tensors are no activations to calibrate). With a static sequence length the same
layer built with ``unroll=True`` traces into one copy of the cell per time step: plain FULLY_CONNECTED,
ADD, MUL, LOGISTIC and TANH ops, which all have int8 kernels. The weights are copied unchanged, and the
unrolled model's float outputs are checked against the original's (``UNROLL_ATOL``) before it is used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .errors import ConversionError, ModelLoadError

log = logging.getLogger(__name__)

# Largest absolute difference allowed between the original and the unrolled Keras model's float outputs
# on seeded standard-normal inputs: both run the same cell in the same order. Measured on the test models
# (2026-11-28): 0 (bit-equal) for LSTM, GRU, SimpleRNN and Bidirectional(LSTM); the float .tflite traced from
# the unrolled model differs from the original Keras model by at most 9.2e-7 (softmax outputs).
UNROLL_ATOL = 1e-5
_CHECK_SAMPLES = 8


def _set_unroll(config: Any) -> int:
    """Set ``unroll: True`` in every (nested) layer config that has the key; how many were False."""
    changed = 0
    if isinstance(config, dict):
        if config.get("unroll") is False:
            config["unroll"] = True
            changed += 1
        for value in config.values():
            changed += _set_unroll(value)
    elif isinstance(config, list):
        for value in config:
            changed += _set_unroll(value)
    return changed


def _recurrent_layers(model: Any) -> list[Any]:
    """The layers (top level and in nested models) whose config has ``unroll: False``."""
    found = []
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and not hasattr(layer, "cell") and not hasattr(layer, "forward_layer"):
            found += _recurrent_layers(layer)
        elif _set_unroll(layer.get_config()):
            found.append(layer)
    return found


def _time_steps(layer: Any) -> Any:
    """The layer's input sequence length (None when dynamic), or the string "unknown"."""
    try:
        shape = layer.input.shape
    except (AttributeError, ValueError):
        return "unknown"
    return shape[1] if len(shape) >= 3 else "unknown"


def unroll_recurrent(model: Any, path: Path) -> tuple[Any, str]:
    """``model`` with every recurrent layer unrolled, and a note for the loader string ("" when none).

    A recurrent layer whose sequence length is dynamic cannot be unrolled (nor made static by the
    batch-1 trace): that is a ``ModelLoadError`` telling the user to save the model with a fixed length.
    """
    layers = _recurrent_layers(model)
    if not layers:
        return model, ""
    dynamic = [layer.name for layer in layers if _time_steps(layer) is None]
    if dynamic:
        plural = len(dynamic) > 1
        raise ModelLoadError(
            f"model: {path}: the recurrent layer{'s' if plural else ''} {', '.join(repr(n) for n in dynamic)} "
            f"take{'' if plural else 's'} a sequence of unknown length (time dimension None); a loop of unknown "
            "length stays a float WHILE loop with no int8 kernel. Save the model with a fixed sequence length, "
            "e.g. keras.Input((steps, features)), so edgeconv can unroll it into int8 ops"
        )
    import numpy as np

    def clone(layer: Any) -> Any:
        # Keras's own default clone_function, with unroll set (also in nested configs: Bidirectional, models)
        config = layer.get_config()
        _set_unroll(config)
        return layer.__class__.from_config(config)

    keras_module = _keras_module_of(model)
    try:
        unrolled = keras_module.models.clone_model(model, clone_function=clone)
        unrolled.set_weights(model.get_weights())
    except Exception as e:  # noqa: BLE001 - Keras raises many types while rebuilding a model
        raise ModelLoadError(
            f"model: {path}: cannot rebuild it with unroll=True on its recurrent layers "
            f"({', '.join(layer.name for layer in layers)}): {e}; save the model with unroll=True on those layers"
        ) from e
    shape = [_CHECK_SAMPLES, *(int(d) for d in model.inputs[0].shape[1:])]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    before = _outputs(model(x, training=False))
    after = _outputs(unrolled(x, training=False))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(before, after, strict=True))
    if worst > UNROLL_ATOL:
        raise ConversionError(
            f"model: {path}: unrolling the recurrent layers changed the float outputs by up to {worst:.3g} "
            f"(allowed {UNROLL_ATOL:g}); this is a bug in edgeconv, please report it with the model"
        )
    log.info("unrolled %d recurrent layers of %s; float outputs differ by %.3g at most", len(layers), path.name, worst)
    names = ", ".join(f"{layer.__class__.__name__} '{layer.name}'" for layer in layers)
    note = (
        f"; {len(layers)} recurrent layer{'s' if len(layers) > 1 else ''} ({names}) unrolled over their static "
        f"sequence length (a WHILE loop has no int8 kernel; float outputs differ by {worst:.2g} at most)"
    )
    return unrolled, note


def _keras_module_of(model: Any) -> Any:
    """Keras 3 or tf_keras (Keras 2), whichever built ``model``: each clones only its own models."""
    import importlib

    top = type(model).__module__.split(".", 1)[0]
    return importlib.import_module("tf_keras" if top == "tf_keras" else "keras")


def _outputs(result: Any) -> list[Any]:
    import numpy as np

    if isinstance(result, dict):
        return [np.asarray(item) for item in result.values()]
    if isinstance(result, (list, tuple)):
        return [np.asarray(item) for item in result]
    return [np.asarray(result)]


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
    from tensorflow.lite.python import schema_py_generated as schema

    from . import flatbuf
    from .float_rewrites import _drop_unused_opcodes

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
    from .runtime.interpreter import make_interpreter

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
    import numpy as np

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
