"""A float .tflite given as the source, checked before edgeconv relies on it, and TensorFlow's words about one.

A .tflite arrives as bytes from a pull request; LiteRT's interpreter verifies the flatbuffer's structure
(offsets, sizes) when it opens it, but not what the rest of edgeconv takes for granted: names that are
UTF-8 text (they key the report's layers and the quantizer's list of float ops), ops that the builtin
kernels can run, outputs that some op computes, and shapes that agree with what the ops compute (TensorFlow's
quantizer reads the declared shapes, the interpreter the computed ones). Each gap used to surface later as an
unexplained exit 3 (``UnicodeDecodeError``, "quantization failed in TensorFlow:" with no reason): here it is
exit 2 saying what in the file is wrong and where (``ModelLoadError``). Only reading and one run on zeros:
no TensorFlow, so a warm re-run still needs none.

``vhlo_meaning`` turns TensorFlow's raw "Failed VHLO to version …" into a sentence; ``invalid_op_lines``
names the op behind the importer's ``loc("…")`` errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ModelLoadError
from converter.tflite import flatbuffer_schema as tflite_schema

REEXPORT = (
    "the file is damaged, or was written by a tool that does not follow the TFLite schema: export it again "
    "with the TFLite converter (or give edgeconv the model it came from: .keras, SavedModel, .onnx or .pt2)"
)
_SHOWN_NAME = 60  # characters of a bad name quoted in a message


def _quoted(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="backslashreplace")
    return repr(text if len(text) <= _SHOWN_NAME else text[:_SHOWN_NAME] + "...")


def _strings(model: Any) -> Iterator[tuple[str, bytes | None, bool]]:
    """(where, raw bytes or None, whether it is a key) for each string edgeconv or the interpreter reads.

    Keys must be UTF-8 text: tensor names of the main subgraph (the report's layers, the quantizer's
    ``denylisted_nodes``, matching data to inputs), custom op names (the report's op kinds) and signature
    keys and names (inputs are matched by them); LiteRT decodes each of these as it reads it. Metadata names
    are compared as bytes and only have to be there. Names nothing here reads (other subgraphs' tensors,
    subgraph names) are left alone: TensorFlow's quantizer takes them as they are.
    """
    subgraph = model.Subgraphs(0)
    for t in range(subgraph.TensorsLength()):
        yield f"the name of tensor {t}", subgraph.Tensors(t).Name(), True
    uses: dict[int, list[str]] = {}
    for s in range(model.SubgraphsLength()):
        ops = model.Subgraphs(s)
        for o in range(ops.OperatorsLength()):
            uses.setdefault(ops.Operators(o).OpcodeIndex(), []).append(f"{o}" + (f" of subgraph {s}" if s else ""))
    for c in range(model.OperatorCodesLength()):
        users = uses.get(c)
        used = f" (used by op {', '.join(users[:5])}{', ...' if len(users) > 5 else ''})" if users else ""
        yield f"the custom op name of operator code {c}{used}", model.OperatorCodes(c).CustomCode(), True
    for g in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(g)
        yield f"the key of signature {g}", signature.SignatureKey(), True
        for i in range(signature.InputsLength()):
            yield f"the name of input {i} of signature {g}", signature.Inputs(i).Name(), True
        for i in range(signature.OutputsLength()):
            yield f"the name of output {i} of signature {g}", signature.Outputs(i).Name(), True
    for m in range(model.MetadataLength()):
        yield f"the name of metadata entry {m}", model.Metadata(m).Name(), False


def check_names(content: bytes, path: Path) -> None:
    """Every name used as a key is UTF-8 text, and every metadata entry has a name.

    Names are keys, not decoration (``_strings``), so one that cannot be read is refused, never guessed at:
    a lenient decoding would give two different names the same replacement text. A metadata entry without
    a name cannot be looked up (and broke the step that drops converter metadata).
    """
    model = _root(content)
    for where, raw, key in _strings(model):
        if not key:
            if raw is None:
                raise ModelLoadError(
                    f"model: {path}: the model file is invalid: {where} is missing (an entry is found by its name); "
                    f"{REEXPORT}"
                )
            continue
        try:
            (raw or b"").decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelLoadError(
                f"model: {path}: {where} is not valid UTF-8 text ({_quoted(raw or b'')}: {e.reason} at byte "
                f"{e.start}); names in a .tflite are UTF-8 strings, and edgeconv uses them as keys in its report "
                f"and in the quantizer's list of float ops, so it cannot take the model; {REEXPORT}"
            ) from e


# Ops whose options table carries their fused activation (and strides, padding, axis): TensorFlow's
# converter always writes it, the interpreter takes defaults when it is absent, and TensorFlow's importer
# dereferences it (a SIGSEGV in the quantizer, seen for ADD without AddOptions).
OPTIONS = {
    "ADD": "AddOptions",
    "SUB": "SubOptions",
    "MUL": "MulOptions",
    "DIV": "DivOptions",
    "CONV_2D": "Conv2DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions",
    "CONCATENATION": "ConcatenationOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "MAX_POOL_2D": "Pool2DOptions",
}


# Builtin ops every one of whose inputs is required: LiteRT dereferences an absent one (-1) while it opens
# the model (found by fuzzing: ADD with inputs [1, -1] is a SIGSEGV inside the interpreter).
_ALL_INPUTS_REQUIRED = frozenset(
    {"ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "POW", "FLOOR_DIV", "FLOOR_MOD"}
    | {"LESS", "GREATER", "EQUAL", "NOT_EQUAL", "LESS_EQUAL", "GREATER_EQUAL", "CONCATENATION", "PACK"}
    | {"BATCH_MATMUL", "GATHER", "PAD", "PADV2", "TRANSPOSE", "MEAN", "SUM", "REDUCE_MAX", "SLICE", "STRIDED_SLICE"}
)


def check_before_open(content: bytes, path: Path) -> None:
    """What would crash LiteRT while it opens the model, read in Python first (it raises, never crashes).

    Every op's tensor indices must point into its subgraph's tensors, and an input that is absent (-1) must
    be one the op can do without: never the first, and none of an op in ``_ALL_INPUTS_REQUIRED``.
    """
    model = _root(content)
    schema = tflite_schema.schema()
    names = {int(v): str(k) for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        count = subgraph.TensorsLength()
        for o in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(o)
            code = model.OperatorCodes(op.OpcodeIndex())
            kind = names.get(max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode())), "CUSTOM")
            inputs = [int(t) for t in op.InputsAsNumpy()] if op.InputsLength() else []
            outputs = [int(t) for t in op.OutputsAsNumpy()] if op.OutputsLength() else []
            bad = [t for t in (*inputs, *outputs) if not -1 <= t < count]
            absent = [i for i, t in enumerate(inputs) if t == -1 and (i == 0 or kind in _ALL_INPUTS_REQUIRED)]
            if bad or absent or -1 in outputs:
                what = (
                    f"tensor indices {bad} outside its {count} tensors"
                    if bad
                    else f"no tensor for its required input {absent[0]}"
                    if absent
                    else "an absent output"
                )
                raise ModelLoadError(
                    f"model: {path}: the model file is invalid: op {o} ({kind}) of subgraph {g} has {what} "
                    f"(LiteRT crashes opening such a file); {REEXPORT}"
                )


STATIC_SHAPES = (
    "save or export the model with a fixed input size (a Keras Input(shape=...) without None, a tf.TensorSpec "
    "without None past the batch for a SavedModel or the TFLite converter): microcontrollers and NPUs run "
    "static shapes, and int8 ranges are measured for one size"
)


def check_static_inputs(content: bytes, path: Path) -> None:
    """Every input's size is known past the batch (its ``shape_signature``, where the file has one).

    A converter writes -1 there for a dimension left open (a Keras ``None``, a dynamic sequence length) and a
    placeholder of 1 in the shape, with which LiteRT's prepare step fails deep inside an op ("CONV_2D failed to
    prepare"); said here, the file is not called damaged and no step is called a bug.
    """
    model = _root(content)
    if not model.SubgraphsLength():
        return
    subgraph = model.Subgraphs(0)
    inputs = [int(i) for i in subgraph.InputsAsNumpy()] if subgraph.InputsLength() else []
    for index in inputs:
        if not 0 <= index < subgraph.TensorsLength():
            continue  # check_before_open's to say
        tensor = subgraph.Tensors(index)
        signature = [int(d) for d in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength() else []
        if any(d < 0 for d in signature[1:]):
            shown = [None if d < 0 else d for d in signature]
            which = f" {_quoted(tensor.Name() or b'')}" if len(inputs) > 1 else ""
            raise ModelLoadError(f"model: {path}: input{which} shape {shown} has unknown dimensions; {STATIC_SHAPES}")


def check_ops(content: bytes, path: Path) -> None:
    """What the interpreter would quietly work around but TensorFlow's quantizer reads as written.

    Each was found by fuzzing (``tests/integration/test_fuzz_tflite.py``): a metadata entry pointing to a
    buffer that does not exist (the interpreter never reads it; the quantizer crashes); an op output holding
    constant data (the interpreter writes over it, a delegate crashes); an op of ``OPTIONS`` without its
    options table (the interpreter assumes defaults; the importer crashes); a RESHAPE whose second input is
    not a 1-D int32 (or int64) tensor: the interpreter then silently takes the ``new_shape`` option instead,
    while TensorFlow's importer and quantizer read the input, so the model fails in the quantizer or is
    quantized into one the interpreter cannot open.
    """
    schema = tflite_schema.schema()
    model = _root(content)
    for m in range(model.MetadataLength()):
        if not 0 <= model.Metadata(m).Buffer() < model.BuffersLength():
            raise ModelLoadError(
                f"model: {path}: the model file is invalid: metadata entry {m} points to buffer "
                f"{model.Metadata(m).Buffer()}, and the model has {model.BuffersLength()} buffers (TensorFlow's "
                f"quantizer crashes reading it); {REEXPORT}"
            )
    subgraph = model.Subgraphs(0)
    kinds = op_names(model)
    types = {int(v): str(k) for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    tables = {int(v): str(k) for k, v in vars(schema.BuiltinOptions).items() if not k.startswith("_")}
    for o in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(o)
        for index in (int(t) for t in (op.OutputsAsNumpy() if op.OutputsLength() else ())):
            buffer = subgraph.Tensors(index).Buffer() if 0 <= index < subgraph.TensorsLength() else 0
            if 0 < buffer < model.BuffersLength() and model.Buffers(buffer).DataLength() > 0:
                raise ModelLoadError(
                    f"model: {path}: the model file is invalid: tensor {index}, an output of op {o} ({kinds[o]}), "
                    f"holds constant data (buffer {buffer}); an op computes its outputs, only weights and other "
                    f"constant inputs carry data; {REEXPORT}"
                )
        wanted = OPTIONS.get(kinds[o])
        given = tables.get(int(op.BuiltinOptionsType()), f"options type {op.BuiltinOptionsType()}")
        if wanted is not None and (given != wanted or op.BuiltinOptions() is None):
            raise ModelLoadError(
                f"model: {path}: the model file is invalid: op {o} ({kinds[o]}) has {given} where its {wanted} "
                "belong (its fused activation and other settings); the interpreter would assume defaults, and "
                f"TensorFlow's quantizer crashes on it; {REEXPORT}"
            )
        if kinds[o] != "RESHAPE" or op.InputsLength() < 2 or op.Inputs(1) < 0:
            continue
        index = int(op.Inputs(1))
        tensor = subgraph.Tensors(index)
        kind = types.get(int(tensor.Type()), f"type {tensor.Type()}")
        shape = [int(v) for v in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        if kind not in ("INT32", "INT64") or len(shape) != 1:
            name = (tensor.Name() or b"").decode("utf-8", errors="backslashreplace")
            raise ModelLoadError(
                f"model: {path}: the model file is invalid: op {o} (RESHAPE) takes its target shape from tensor "
                f"{index} ('{name}'), which is {kind} with shape {shape} where a 1-D int32 tensor belongs; the "
                "interpreter then falls back to the op's new_shape option while TensorFlow's quantizer reads the "
                f"tensor, so the two disagree about the model; {REEXPORT}"
            )


def check_runs(content: bytes, path: Path) -> None:
    """The builtin kernels run the model once on zeros, every output gets a value, and the file's shapes and
    types agree with what ran (``_check_declared``).

    Calibration, analysis and the benchmarks all run the model with the builtin kernels (no delegate to
    paper over a broken op), so a model they cannot run is refused here, once, with the reason.
    """
    from converter.runtime.interpreter import make_interpreter

    try:
        interpreter = make_interpreter(model_content=content, delegate="none")
        for d in interpreter.get_input_details():
            interpreter.set_tensor(d["index"], np.zeros(d["shape"], dtype=d["dtype"]))
        interpreter.invoke()
    except Exception as e:  # noqa: BLE001 - LiteRT raises bare RuntimeError/ValueError
        raise ModelLoadError(
            f"model: {path}: the model file is invalid: the TFLite interpreter cannot run it with its builtin "
            f"kernels ({_one_line(e)}); {REEXPORT}"
        ) from e
    details = {int(d["index"]): d for d in interpreter.get_tensor_details()}
    for d in interpreter.get_output_details():
        try:
            interpreter.get_tensor(d["index"])
        except ValueError as e:
            raise ModelLoadError(
                f"model: {path}: the model file is invalid: output tensor {d['index']} ('{d['name']}') holds no "
                f"value after a run ({_one_line(e)}): no op computes it; {REEXPORT}"
            ) from e
    _check_declared(content, path, details)


def builtin_error(content: bytes) -> str | None:
    """Why the builtin kernels cannot open the model, or None: a better "where" than the XNNPACK delegate's.

    A delegate that fails reports its own node ("Node number 2 (TfLiteXNNPackDelegate) failed to prepare");
    the builtin kernels name the model's op and what is wrong with it.
    """
    from converter.runtime.interpreter import make_interpreter

    try:
        make_interpreter(model_content=content, delegate="none")
    except Exception as e:  # noqa: BLE001 - LiteRT raises bare RuntimeError/ValueError
        return _one_line(e)
    return None


# The numpy dtype LiteRT reports for each declared tensor type edgeconv can compare (others are not compared).
_NUMPY = {
    "FLOAT32": "float32",
    "FLOAT16": "float16",
    "FLOAT64": "float64",
    "INT4": "int8",  # LiteRT shows int4 tensors as int8 arrays
    "INT8": "int8",
    "UINT8": "uint8",
    "INT16": "int16",
    "UINT16": "uint16",
    "INT32": "int32",
    "UINT32": "uint32",
    "INT64": "int64",
    "UINT64": "uint64",
    "BOOL": "bool",
}


def _check_declared(content: bytes, path: Path, details: dict[int, dict[str, Any]]) -> None:
    """What the file declares about tensors (subgraph 0) agrees with itself and with what the ops compute.

    A shape signature has the shape's rank, with -1 where the shape holds a placeholder size. An op's
    static output shape and its type are what the interpreter computed: kernels set their outputs' shapes
    (and some, like ADD, their types) from their inputs, so the interpreter runs a model whose file says
    otherwise, while TensorFlow's quantizer reads the file (and aborts, or fails without a reason).
    """
    model = _root(content)
    subgraph, kinds = model.Subgraphs(0), op_names(model)
    types = {int(v): str(k) for k, v in vars(tflite_schema.schema().TensorType).items() if not k.startswith("_")}

    def shape_of(index: int) -> tuple[list[int], list[int]]:
        tensor = subgraph.Tensors(index)
        shape = [int(v) for v in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []
        signature = [int(v) for v in tensor.ShapeSignatureAsNumpy()] if tensor.ShapeSignatureLength() else []
        return shape, signature

    for index in range(subgraph.TensorsLength()):
        shape, signature = shape_of(index)
        if signature and (
            len(signature) != len(shape) or any(g not in (s, -1) for s, g in zip(shape, signature, strict=True))
        ):
            name = (subgraph.Tensors(index).Name() or b"").decode("utf-8", errors="backslashreplace")
            raise ModelLoadError(
                f"model: {path}: the model file is invalid: tensor {index} ('{name}') has the shape signature "
                f"{signature}, which does not fit its shape {shape} (a signature repeats the shape, with -1 for "
                f"each size that may vary); {REEXPORT}"
            )
    for o in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(o)
        for index in (int(t) for t in (op.OutputsAsNumpy() if op.OutputsLength() else ())):
            if index not in details or index >= subgraph.TensorsLength():
                continue  # an optional output (-1)
            name = details[index]["name"]
            declared_type = types.get(int(subgraph.Tensors(index).Type()), "")
            computed_type = np.dtype(details[index]["dtype"]).name
            # A type LiteRT has no plain numpy array for cannot be compared, except with float32, which a
            # float model's op that set its output's type computed (ADD, MUL... copy their inputs' type).
            expected = _NUMPY.get(declared_type)
            if expected != computed_type if expected is not None else computed_type == "float32":
                raise ModelLoadError(
                    f"model: {path}: the model file is invalid: tensor {index} ('{name}'), an output of op {o} "
                    f"({kinds[o]}), is declared {declared_type} but the op computes {computed_type} from its "
                    f"inputs, and TensorFlow's quantizer would go by the declared type; {REEXPORT}"
                )
            shape, signature = shape_of(index)
            if not shape:
                continue  # no shape (unranked): the interpreter's to compute
            declared = signature or shape  # TensorFlow reads the signature when there is one: -1 may vary
            computed = [int(v) for v in details[index]["shape"]]
            if len(computed) != len(declared) or any(d not in (c, -1) for d, c in zip(declared, computed, strict=True)):
                raise ModelLoadError(
                    f"model: {path}: the model file is invalid: tensor {index} ('{name}'), an output of op {o} "
                    f"({kinds[o]}), is declared with shape {declared} but the op computes {computed} from its "
                    f"inputs, and TensorFlow's quantizer would go by the declared shape; {REEXPORT}"
                )


def _root(content: bytes) -> Any:
    """The flatbuffer's root table, read in place (Python's reader raises on bytes that point nowhere)."""
    return tflite_schema.schema().Model.GetRootAsModel(content, 0)


def op_names(model: Any) -> list[str]:
    """The builtin name of every op of subgraph 0 (``CUSTOM`` for a custom op), as TFLite's schema spells it."""
    schema = tflite_schema.schema()
    names = {int(v): str(k) for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    subgraph = model.Subgraphs(0)
    out = []
    for o in range(subgraph.OperatorsLength()):
        code = model.OperatorCodes(subgraph.Operators(o).OpcodeIndex())
        value = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        out.append(names.get(value, f"builtin code {value}"))
    return out


def _one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


_VHLO = re.compile(r"Failed VHLO to version\s*([0-9]+(?:\.[0-9]+)*)?")


def vhlo_meaning(text: str) -> str | None:
    """Our sentence for TensorFlow/LiteRT's raw "Failed VHLO to version X" in ``text``, or None if absent.

    TensorFlow's .tflite importer upgrades the model's StableHLO ops (stored as versioned VHLO) to the
    version it knows, X, and checks every op on the way; it says only this line when that fails. Two
    causes give it: StableHLO ops written by a newer converter than this TensorFlow, or an op that fails
    the importer's checks (then an ``error:`` line about that op comes before it, see ``invalid_op_lines``).
    """
    found = _VHLO.search(text)
    if found is None:
        return None
    version = f" {found.group(1)}" if found.group(1) else ""
    return (
        f"TensorFlow's .tflite importer cannot read the model ('Failed VHLO to version{version}': it could not "
        f"bring the model's ops to the StableHLO version it knows{version}): either the model was written by a "
        "newer converter and holds StableHLO ops this TensorFlow/LiteRT cannot read, or an op in it is invalid"
    )


VHLO_REMEDY = (
    "export the model again with the TensorFlow/LiteRT converter of this install (or an older one) and without "
    "StableHLO ops, or give edgeconv the model it came from (.keras, SavedModel, .onnx or .pt2) to convert itself"
)
_LOC = re.compile(r'loc\((?:fused\[)?"((?:[^"\\]|\\.)*)"')


def invalid_op_lines(diagnostics: str, content: bytes) -> list[str]:
    """The importer's ``error:`` lines, each with the op it names by output tensor (``loc("name")``) as
    "op N (KIND, output 'name')"; the VHLO line is left to ``vhlo_meaning``."""
    model = _root(content)
    subgraph, kinds = model.Subgraphs(0), op_names(model)
    by_name: dict[str, int] = {}
    for o in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(o)
        for t in op.OutputsAsNumpy() if op.OutputsLength() else ():
            name = subgraph.Tensors(int(t)).Name() if 0 <= int(t) < subgraph.TensorsLength() else None
            if name:
                by_name.setdefault(name.decode("utf-8", errors="replace"), o)
    out = []
    for line in diagnostics.splitlines():
        if "error:" not in line or _VHLO.search(line):
            continue
        message = line.split("error:", 1)[1].strip()
        found = _LOC.search(line)
        if found and found.group(1) in by_name:
            o = by_name[found.group(1)]
            message = f"op {o} ({kinds[o]}, output '{found.group(1)}'): {message}"
        out.append(message)
    return out
