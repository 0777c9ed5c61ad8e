"""onnx2tf in its own virtualenv: one ONNX file to one float .tflite per request, JSON in and out.

Run only by the ONNX virtualenv's Python (``edgeconv setup onnx`` makes it), as a child process of
edgeconv: ``python -I onnx_worker.py`` reads one JSON request on stdin and writes one JSON answer on
stdout. It imports nothing from edgeconv (onnx2tf 1.29.24 pins tensorflow==2.19.0, numpy==1.26.4 and
protobuf==4.25.5, none of which can share edgeconv's environment).

Request: ``{"onnx": the user's .onnx, "work": an empty private folder, "out": the .tflite to write,
"keep_nchw": keep 4-D inputs channel-first (the recipe's ``input.layout: nchw``)}``
or ``{"probe": true}``. Answer: ``{"ok": true, "onnx2tf": version, "inputs": [{"name", "onnx_shape",
"kept"}], "seconds": ...}`` or ``{"ok": false, "error": ..., "user": bool}`` (``user``: the model file
is at fault, not the tool).

onnx2tf's traps, each handled here (checked against onnx2tf 1.29.24's source):
- It downloads ``calibration_image_sample_data_20x128x128x3_float32.npy`` from GitHub whenever every
  input is 4-D with 3 channels, even for a float conversion (``download_test_image_data``), and fails
  offline; it reads the file from the working directory instead when one is there. The worker runs in
  the private ``work`` folder with that file pre-made (seeded uniform [0, 1) values: onnx2tf only feeds
  them to its own onnxruntime-vs-TensorFlow consistency checks).
- It simplifies the model by running ``onnxsim`` from PATH three times, writing over its input file:
  the worker puts its own virtualenv's ``bin`` first on PATH (so the pinned onnxsim runs, never another
  one) and gives onnx2tf a copy of the model inside ``work``, so the user's file is never rewritten.
- It transposes 3-D inputs ([1, 12, 8] becomes [1, 8, 12]) as if they were NCW: every 3-D input is
  named in ``keep_shape_absolutely_input_names`` so the float model takes the data as the ONNX model does.
  4-D inputs are transposed NCHW -> NHWC on purpose (TFLite kernels and NPUs are channel-last); the
  answer lists every input's ONNX shape so the caller can say which.
- Its LSTM/GRU/RNN become a WHILE loop, on which TensorFlow's calibrator crashes and which has no int8
  kernel: ``enable_rnn_unroll`` unrolls them into plain ops.
- It calls ``sys.exit`` deep inside: SystemExit is caught and answered as a failure.
- onnxsim folds a Pad into the next Conv's ``pads`` but keeps its ``auto_pad="VALID"`` (Hugging Face's
  EfficientNet exports both), and onnx2tf then honours VALID and drops the padding: every VALID becomes
  explicit zero pads first (``explicit_valid_pads``, the same meaning).
- An AveragePool whose window covers its whole input (PyTorch's ``AvgPool2d(k, ceil_mode=True)`` with k above
  the map, EfficientNet's pooler) is padded to the window and divided by its area, by onnx2tf and by
  onnxruntime alike, where PyTorch averages the map: it becomes a GlobalAveragePool (``whole_window_pools``).
- It cannot tell channel-first from channel-last for a 4-D tensor whose channels, height and width are equal
  and may then transpose it wrongly. When the float check fails on a model with such tensors, the worker
  converts again with onnx2tf's ``param_replacement_file`` set to make its guess true (``onnx_layout``) and
  keeps that model only if the check then passes; otherwise the answer names the tensors
  (``square_tensors``) so the message can say so.

Security: an ONNX file is protobuf and loading it runs no code. Tensors stored as external data name
files by path: the worker reads them itself (``inline_external_data``), each key once, only regular
files inside the model's folder reached without a symbolic link, offsets and lengths checked against
the file and the tensor's size, and puts the bytes into the model, so onnxsim and onnx2tf never open a
file the model names. Every tensor must hold the data its dimensions declare, onnx's checker must
accept the model, and no tensor computed from constants may exceed ``MAX_TENSOR_BYTES`` (a
``ConstantOfShape`` bomb). Model-local functions are inlined; what is left in another domain is a custom
operator, refused with its name (onnx2tf has no conversion for them and loads no custom-op libraries).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import re
import shutil
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

CALIBRATION_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"  # onnx2tf's download_test_image_data
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
EXTERNAL_KEYS = ("location", "offset", "length", "checksum")
MAX_MODEL_BYTES = (2 << 30) - (64 << 20)  # protobuf's 2 GiB bound on one message, less room for the graph
MAX_TENSOR_BYTES = 1 << 30  # one tensor computed from constants; far above any edge model's
ERF_TANH_A, ERF_TANH_B = 1.1283791670955126, 0.10091094891335169  # erf(u) ~ tanh(u * (A + B u^2)): replace_erf
# TensorProto.DataType -> bytes per element, where the type has a fixed size (onnx.proto).
_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}
_ELEMENT_BYTES.update({17: 1, 18: 1, 19: 1, 20: 1, 24: 1})
_PACKED_4BIT = frozenset({21, 22, 23})  # UINT4, INT4, FLOAT4E2M1: two per byte
# TensorProto.DataType -> (the typed field that holds it without raw_data, entries per element).
_TYPED_FIELD = {1: ("float_data", 1), 14: ("float_data", 2), 7: ("int64_data", 1), 11: ("double_data", 1)}
_TYPED_FIELD.update({15: ("double_data", 2), 12: ("uint64_data", 1), 13: ("uint64_data", 1), 8: ("string_data", 1)})
_TYPED_FIELD.update({t: ("int32_data", 1) for t in (2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23, 24)})


class ModelRefused(Exception):
    """The ONNX file itself is at fault (unreadable, external data out of its folder, custom ops)."""


def _answer(out: Any, payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload) + "\n")
    out.flush()


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _all_tensors(model: Any) -> list[Any]:
    """Every TensorProto of the model: initializers and Constant/attribute tensors, also in subgraphs."""
    from onnx import external_data_helper

    return list(external_data_helper._get_all_tensors(model))  # noqa: SLF001 - onnx's own walk over every tensor


def inline_external_data(model: Any, folder: Path) -> int:
    """Read every tensor's external data ourselves, checked, into the model; how many tensors had some.

    onnx's own loader is not used for it: it takes the *last* of repeated keys (so a checked first
    ``location`` can hide another), sets any key as an attribute (``basepath`` too), follows symbolic links
    and trusts offsets. Here each key may appear once, the file must be a regular file inside the model's
    folder reached without a symbolic link at any step, and offset and length must fit the file and give
    exactly the bytes the tensor's type and dimensions need. The bytes then live in the model itself, so
    nothing downstream (onnxsim, onnx2tf) ever opens a file the model names.
    """
    from onnx import TensorProto

    count = total = 0
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        count += 1
        entries: dict[str, str] = {}
        for entry in tensor.external_data:
            if entry.key in entries:
                raise ModelRefused(
                    f"tensor '{tensor.name}' gives its external data key '{entry.key}' twice ('{entries[entry.key]}' "
                    f"and '{entry.value}'); onnx would use the last, so the model is refused: re-save it with "
                    "onnx.save(..., save_as_external_data=True)"
                )
            if entry.key not in EXTERNAL_KEYS:
                raise ModelRefused(
                    f"tensor '{tensor.name}' has the external data key '{entry.key}'; only {', '.join(EXTERNAL_KEYS)} "
                    "are part of the format"
                )
            entries[entry.key] = entry.value
        location = entries.get("location", "")
        where = f"tensor '{tensor.name}' keeps its data in external file '{location}'"
        if not location or Path(location).is_absolute() or ".." in Path(location).parts or "\\" in location:
            raise ModelRefused(
                f"{where}, which is not a plain relative path inside the model's folder; external data may only "
                "name files next to the model (re-save it with onnx.save(..., save_as_external_data=True) or as "
                "one file)"
            )
        expected = _tensor_bytes(tensor)
        if expected is None:
            raise ModelRefused(f"{where}, but its type {tensor.data_type} cannot be stored as external data")
        total += expected
        if total > MAX_MODEL_BYTES:
            raise ModelRefused(
                f"{where}, and its type and dimensions need {expected:,} bytes: the model's tensors would exceed "
                f"{MAX_MODEL_BYTES:,} bytes, more than one ONNX model can hold"
            )
        offset, length = _count(entries, "offset", where), _count(entries, "length", where)
        tensor.raw_data = _read_external(folder, location, offset, length, expected, where)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
    return count


def _count(entries: dict[str, str], key: str, where: str) -> int | None:
    text = entries.get(key)
    if text is None:
        return None
    if not text.isdigit() or len(text) > 20:
        raise ModelRefused(f"{where} with {key} '{text[:40]}', which is not a byte count")
    return int(text)


def _read_external(
    folder: Path, location: str, offset: int | None, length: int | None, expected: int, where: str
) -> bytes:
    """The bytes of one external tensor, opened without following any symbolic link."""
    path, info = folder, None
    for part in Path(location).parts:
        path = path / part
        try:
            info = os.lstat(path)
        except OSError:
            raise ModelRefused(f"{where}, which does not exist; copy it next to the model") from None
        if stat.S_ISLNK(info.st_mode):
            raise ModelRefused(
                f"{where}, but '{path}' is a symbolic link; external data must be plain files inside the model's "
                "folder (copy the file there instead of linking it)"
            )
    if info is None or not stat.S_ISREG(info.st_mode):
        raise ModelRefused(f"{where}, which is not a regular file")
    start = offset or 0
    if start > info.st_size:
        raise ModelRefused(f"{where} at offset {start:,}, past the end of the file ({info.st_size:,} bytes)")
    size = info.st_size - start if length is None else length
    if size != expected or start + size > info.st_size:
        raise ModelRefused(
            f"{where}: {size:,} bytes at offset {start:,} of a {info.st_size:,}-byte file, where the tensor's type "
            f"and dimensions need {expected:,} bytes"
        )
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            raise ModelRefused(f"{where}, which changed while it was read")
        data = os.pread(fd, size, start)
    finally:
        os.close(fd)
    if len(data) != size:
        raise ModelRefused(f"{where}, which holds fewer bytes than it did a moment ago")
    return data


def _numel(tensor: Any) -> int | None:
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        return None
    return int(math.prod(dims))


def _tensor_bytes(tensor: Any) -> int | None:
    """Bytes of a tensor's raw data as its type and dimensions say, or None for strings and unknown types."""
    numel = _numel(tensor)
    if numel is None:
        return None
    if tensor.data_type in _PACKED_4BIT:
        return (numel + 1) // 2
    size = _ELEMENT_BYTES.get(tensor.data_type)
    return None if size is None else numel * size


def check_tensor_data(model: Any) -> None:
    """Every tensor holds the data its dimensions declare: a huge declared shape with no data is refused.

    onnxsim and onnx2tf would otherwise allocate what the dimensions claim (or fail deep inside).
    """
    for tensor in _all_tensors(model):
        numel = _numel(tensor)
        where = f"tensor '{tensor.name}' declares dimensions {list(tensor.dims)[:8]}"
        if numel is None:
            raise ModelRefused(f"{where}, with a negative dimension")
        if tensor.HasField("raw_data") or tensor.data_type not in _TYPED_FIELD:
            held, needed = len(tensor.raw_data), _tensor_bytes(tensor)
            unit = "bytes"
        else:
            field, per = _TYPED_FIELD[tensor.data_type]
            held, needed, unit = len(getattr(tensor, field)), numel * per, "values"
            if tensor.data_type in _PACKED_4BIT and held == (numel + 1) // 2:
                needed = held
        if needed is None or held != needed:
            raise ModelRefused(
                f"{where} ({needed if needed is not None else '?'} {unit}) but holds {held:,} {unit}; the file is "
                "damaged or was not written by onnx.save"
            )


def check_static_sizes(model: Any) -> None:
    """No tensor the graph would compute from constants is over ``MAX_TENSOR_BYTES``.

    A ``ConstantOfShape`` (or ``Expand``, ``Tile``, ``Range``) fed constant sizes is folded into a
    constant by onnxsim before any conversion: a few bytes of file can ask for terabytes. onnx's shape
    inference with data propagation gives every such tensor's size without computing it; run strict, it
    also refuses shapes that cannot meet (an Add of [5, 9] and [4]), which onnx2tf would fail on deep inside.
    """
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001 - onnx raises InferenceError and others for malformed graphs
        raise ModelRefused(f"onnx's shape inference rejects the model: {_first_line(e)}") from e
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        dims = tensor_type.shape.dim
        if not dims or not all(d.HasField("dim_value") for d in dims):
            continue
        size = math.prod(d.dim_value for d in dims) * _ELEMENT_BYTES.get(tensor_type.elem_type, 1)
        if size > MAX_TENSOR_BYTES:
            raise ModelRefused(
                f"the graph computes '{value.name}' of shape {[d.dim_value for d in dims]} ({size:,} bytes), over "
                f"the {MAX_TENSOR_BYTES:,} bytes edgeconv lets one tensor take (converting would fold it into a "
                "constant of that size); export the model with the sizes it really uses"
            )


def check_model(model: Any) -> None:
    """onnx's own checker: a model it rejects is malformed (exit 2 with its reason), not a conversion failure."""
    import onnx

    if model.ir_version > onnx.IR_VERSION:  # a newer exporter's version number alone is no malformation
        model = type(model).FromString(model.SerializeToString())
        model.ir_version = onnx.IR_VERSION
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - ValidationError, and protobuf's errors for odd fields
        raise ModelRefused(f"onnx's checker rejects the model: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _all_nodes(graph: Any) -> list[Any]:
    """Every node of a graph and of the subgraphs in its nodes' attributes (If, Loop, Scan bodies)."""
    return [node for g in _all_graphs(graph) for node in g.node]


def inline_functions(model: Any) -> Any:
    """The model with its model-local functions expanded into their standard operators.

    Exporters (torch.onnx's dynamo exporter, for one) group ops into functions of their own domain; onnx2tf
    does not look inside them. Inlined, a function made of standard ops is standard ops.
    """
    if not model.functions:
        return model
    import onnx.inliner

    try:
        return onnx.inliner.inline_local_functions(model)
    except Exception as e:  # noqa: BLE001 - onnx raises for recursive or malformed functions
        raise ModelRefused(f"its model-local functions cannot be expanded: {_first_line(e)}") from e


def replace_erf(model: Any) -> int:
    """Every ``Erf`` becomes ``tanh(u * (A + B * u * u))``; returns how many were replaced.

    ``Erf`` is how exporters write the exact GELU of every transformer (``x/2 * (1 + erf(x/sqrt 2))``).
    TFLite has no ``Erf`` builtin, so onnx2tf leaves a ``FlexErf`` op that no integer target runs and
    the quantizer cannot make integer. The tanh form is the one PyTorch's ``gelu(approximate='tanh')``
    uses (A = 2/sqrt(pi), B = 0.044715 * 4/sqrt(pi)): its error is at most 3.6e-4 on erf and 4.7e-4 on
    GELU, below one int8 step of any activation range, and every op in it has an int8 kernel.
    """
    from onnx import TensorProto, helper

    count = 0
    for graph in _all_graphs(model.graph):
        nodes = list(graph.node)
        if not any(n.op_type == "Erf" and n.domain in ("", "ai.onnx") for n in nodes):
            continue
        rebuilt = []
        for node in nodes:
            if node.op_type != "Erf" or node.domain not in ("", "ai.onnx"):
                rebuilt.append(node)
                continue
            count += 1
            u, y, tag = node.input[0], node.output[0], f"{node.output[0]}__erf_tanh"
            for name, value in ((f"{tag}_a", ERF_TANH_A), (f"{tag}_b", ERF_TANH_B)):
                graph.initializer.append(helper.make_tensor(name, TensorProto.FLOAT, [], [value]))
            rebuilt += [
                helper.make_node("Mul", [u, u], [f"{tag}_u2"], name=f"{tag}_square"),
                helper.make_node("Mul", [f"{tag}_u2", f"{tag}_b"], [f"{tag}_bu2"], name=f"{tag}_cubic"),
                helper.make_node("Add", [f"{tag}_bu2", f"{tag}_a"], [f"{tag}_poly"], name=f"{tag}_linear"),
                helper.make_node("Mul", [u, f"{tag}_poly"], [f"{tag}_arg"], name=f"{tag}_arg"),
                helper.make_node("Tanh", [f"{tag}_arg"], [y], name=node.name or f"{tag}_tanh"),
            ]
        del graph.node[:]
        graph.node.extend(rebuilt)
    return count


def _all_graphs(graph: Any) -> list[Any]:
    """A graph and every subgraph in its nodes' attributes."""
    graphs, stack = [], [graph]
    while stack:
        current = stack.pop()
        graphs.append(current)
        for node in current.node:
            for attribute in node.attribute:
                stack.extend([attribute.g] if attribute.HasField("g") else [])
                stack.extend(attribute.graphs)
    return graphs


def check_domains(model: Any) -> None:
    custom = sorted({f"{n.domain}::{n.op_type}" for n in _all_nodes(model.graph) if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise ModelRefused(
            f"custom operators {', '.join(custom)} are not standard ONNX and onnx2tf cannot convert them; "
            "export the model with standard ONNX operators only"
        )


def _shape(value_info: Any) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def convert(request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import onnx

    source, work, out = Path(request["onnx"]), Path(request["work"]), Path(request["out"])
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors
        raise ModelRefused(f"not a readable ONNX model: {str(e).strip()[:300] or type(e).__name__}") from e
    try:
        external = inline_external_data(model, source.parent)
        check_tensor_data(model)
        model = inline_functions(model)
        check_domains(model)
        check_model(model)
        check_static_sizes(model)
        valid_pads = explicit_valid_pads(model)
        global_pools = whole_window_pools(model)
        reference = model.SerializeToString()  # what onnxruntime runs to check onnx2tf's result: Erf as written
        replaced_erf = replace_erf(model)
    except ModelRefused:
        raise
    except Exception as e:  # noqa: BLE001 - a field no exporter writes (bytes for a name, odd types) is the file's
        raise ModelRefused(f"the model is malformed ({type(e).__name__}: {_first_line(e)})") from e
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    shapes = {v.name: _shape(v) for v in inputs}
    for name, shape in shapes.items():
        if any(isinstance(d, str) for d in shape[1:]):
            raise ModelRefused(
                f"input '{name}' has shape {shape} with a dynamic dimension after the batch; edgeconv needs fixed "
                "shapes (MCU and NPU runtimes are static): export the model with fixed input sizes"
            )
    keep = [n for n, shape in shapes.items() if len(shape) == 3 or (len(shape) == 4 and request.get("keep_nchw"))]
    dynamic_batch = any(shape and isinstance(shape[0], str) for shape in shapes.values())
    copy = work / "model.onnx"  # onnx2tf's onnxsim step writes over its input file: never the user's
    onnx.save(model, str(copy))
    rng = np.random.default_rng(0)
    np.save(work / CALIBRATION_FILE, rng.random((20, 128, 128, 3), dtype=np.float32))
    seconds["prepare"] = round(time.perf_counter() - start, 3)

    os.chdir(work)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    import onnx2tf

    start = time.perf_counter()
    options: dict[str, Any] = {
        "input_onnx_file_path": str(copy),
        "output_folder_path": str(work / "out"),
        "keep_shape_absolutely_input_names": keep or None,
        "enable_rnn_unroll": True,
        "batch_size": 1 if dynamic_batch else None,
        "non_verbose": True,
        "verbosity": "error",
    }
    signaturedefs = False
    code, said = _onnx2tf(onnx2tf, options, work)
    if code is not None and OSD_ADVICE in said:
        # Its SavedModel step rejects a name (a leading "/" from torch.onnx's node names): onnx2tf's own remedy.
        shutil.rmtree(work / "out", ignore_errors=True)
        signaturedefs = options["output_signaturedefs"] = True
        code, said = _onnx2tf(onnx2tf, options, work)
    if code is not None:
        raise RuntimeError(f"onnx2tf gave up (exit {code}): {_errors(said) or 'without a message'}")
    seconds["onnx2tf"] = round(time.perf_counter() - start, 3)
    produced = work / "out" / "model_float32.tflite"
    if not produced.is_file():
        raise RuntimeError(f"onnx2tf finished without writing {produced.name}")
    start = time.perf_counter()
    check = float_check(reference, produced, tuple(keep))
    seconds["float_check"] = round(time.perf_counter() - start, 3)
    layout_fixes, first_db = 0, None
    square = square_tensors(model) if _failed(check) else []  # shape inference: only where the check failed
    if square and os.environ.get(LAYOUT_RETRY_ENV, "").lower() not in ("off", "0", "no", "false"):
        start, first_db = time.perf_counter(), min(float(o["sqnr_db"]) for o in check["outputs"])
        layout_fixes, check = _with_layout_fix(onnx2tf, model, options, work, reference, tuple(keep), check)
        seconds["layout_fix"] = round(time.perf_counter() - start, 3)
    out.write_bytes(produced.read_bytes())
    return {
        "ok": True,
        "rnn_equal_dims": rnn_equal_dims(model) if _failed(check) else [],
        "onnx2tf": _version("onnx2tf"),
        "inputs": [{"name": n, "onnx_shape": s, "kept": n in keep} for n, s in shapes.items()],
        "external_data": external,
        "erf_as_tanh": replaced_erf,
        "explicit_valid_pads": valid_pads,
        "global_pools": global_pools,
        "square_tensors": square if _failed(check) else [],
        "layout_fixes": layout_fixes,
        "layout_first_sqnr_db": first_db if layout_fixes else None,
        "output_signaturedefs": signaturedefs,
        "float_check": check,
        "onnxsim": shutil.which("onnxsim"),  # the virtualenv's own, first on PATH
        "seconds": seconds,
    }


LAYOUT_RETRY_ENV = "EDGECONV_ONNX_LAYOUT_RETRY"  # off: report the first conversion's failure (a comparison, a test)
CHECK_SAMPLES = 4  # converter.sources.float_check.SAMPLES
CHECK_MIN_DB = 40.0  # converter.sources.float_check.MIN_DB


def _failed(check: dict[str, Any]) -> bool:
    return bool(check.get("checked")) and min(float(o["sqnr_db"]) for o in check["outputs"]) < CHECK_MIN_DB


def _with_layout_fix(
    onnx2tf: Any,
    model: Any,
    options: dict[str, Any],
    work: Path,
    reference: bytes,
    kept: tuple[str, ...],
    failed: dict[str, Any],
) -> tuple[int, dict[str, Any]]:
    """Convert again with ``onnx_layout``'s corrections; kept only if the float check then passes.

    Returns how many corrections the kept model has (0: none kept) and its float check. The first model stays
    in ``out`` unless the corrected one passes, so a failed correction leaves the first failure to report.
    """
    import onnx

    layout = _sibling("onnx_layout")
    try:
        simplified = layout.simplified(model, work)
        operations = layout.replacements(simplified, kept)
    except Exception:  # noqa: BLE001 - a correction that cannot be worked out leaves the first result
        return 0, failed
    if not operations:
        return 0, failed
    folder = work / "layout"
    folder.mkdir()
    (folder / "replacements.json").write_text(json.dumps({"format_version": 1, "operations": operations}))
    onnx.save(simplified, str(folder / "model.onnx"))
    retry = {
        **options,
        "input_onnx_file_path": str(folder / "model.onnx"),
        "output_folder_path": str(folder / "out"),
        "param_replacement_file": str(folder / "replacements.json"),
    }
    produced = folder / "out" / "model_float32.tflite"
    try:
        code, _ = _onnx2tf(onnx2tf, retry, work)
        check = float_check(reference, produced, kept) if code is None and produced.is_file() else failed
    except Exception:  # noqa: BLE001 - onnx2tf raises anything; the first conversion's failure is what to report
        return 0, failed
    if _failed(check):
        return 0, failed
    shutil.copyfile(produced, work / "out" / "model_float32.tflite")
    return len(operations), check


def _sibling(name: str) -> Any:
    """A module beside this file, loaded by path (``python -I`` puts no script folder on ``sys.path``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


POOLS_AND_CONVS = ("Conv", "ConvTranspose", "AveragePool", "MaxPool", "LpPool")


def explicit_valid_pads(model: Any) -> int:
    """Every ``auto_pad="VALID"`` of a conv or pool as explicit zero ``pads`` (the same meaning); how many."""
    from onnx import helper

    weights = {t.name: len(t.dims) for t in model.graph.initializer}
    count = 0
    for node in _all_nodes(model.graph):
        auto = next((a for a in node.attribute if a.name == "auto_pad"), None)
        if node.op_type not in POOLS_AND_CONVS or auto is None or auto.s != b"VALID":
            continue
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
        rank = len(kernel) if kernel else weights.get(node.input[1], 0) - 2 if len(node.input) > 1 else -1
        if rank < 1:
            continue  # a conv whose weights are computed: its rank is not known here
        node.attribute.remove(auto)
        if not any(a.name == "pads" for a in node.attribute):
            node.attribute.append(helper.make_attribute("pads", [0] * (2 * rank)))
        count += 1
    return count


def _static_shapes(model: Any) -> dict[str, list[int | None]]:
    """Every tensor's shape that onnx's shape inference finds (empty where it fails)."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a help here, never a requirement
        return {}
    graph = inferred.graph
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in [*graph.value_info, *graph.input, *graph.output]
    }


def whole_window_pools(model: Any) -> int:
    """Each unpadded AveragePool with one output position whose window covers its input: GlobalAveragePool."""
    from onnx import helper

    pools = [n for n in model.graph.node if n.op_type == "AveragePool"]
    shapes = _static_shapes(model) if pools else {}
    unknown = [n.input[0] for n in pools if None in (shapes.get(n.input[0]) or [None])[2:]]
    shapes.update(_runtime_shapes(model, unknown) if unknown else {})
    count = 0
    for node in pools:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        spatial = (shapes.get(node.input[0]) or [])[2:]
        kernel = list(attrs.get("kernel_shape", []))
        if not spatial or None in spatial or len(kernel) != len(spatial) or any(attrs.get("pads", [])):
            continue
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID") or set(attrs.get("dilations", [])) - {1}:
            continue
        strides = list(attrs.get("strides", [1] * len(kernel)))
        rounding = math.ceil if attrs.get("ceil_mode", 0) else math.floor
        outputs = [rounding((n - k) / st) + 1 for n, k, st in zip(spatial, kernel, strides, strict=True)]
        if any(k < n for k, n in zip(kernel, spatial, strict=True)) or any(o != 1 for o in outputs):
            continue
        node.CopyFrom(helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]], name=node.name))
        count += 1
    return count


def _runtime_shapes(model: Any, names: list[str]) -> dict[str, list[int | None]]:
    """The shapes of tensors ``names`` as onnxruntime computes them on zero inputs (empty where it cannot).

    Shape inference leaves a map's size unknown after a Pad whose amounts are computed (as torch.onnx writes
    them); one run of the model settles it.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        feed = {}
        for spec in session.get_inputs():
            kind = spec.type[len("tensor(") : -1]
            dtype = {"float": "float32", "double": "float64"}.get(kind, kind)
            feed[spec.name] = np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in spec.shape], dtype)
        values = session.run(names, feed)
    except Exception:  # noqa: BLE001 - a help here, never a requirement
        return {}
    return {n: list(v.shape) for n, v in zip(names, values, strict=True)}


def square_tensors(model: Any, most: int = 3) -> list[dict[str, Any]]:
    """4-D tensors whose channels, height and width are equal (more than 1): where onnx2tf guesses the layout."""
    found = []
    for name, shape in _static_shapes(model).items():
        dims = [d for d in shape if d is not None]
        if len(shape) == len(dims) == 4 and dims[1] == dims[2] == dims[3] > 1:
            found.append({"name": name, "shape": dims})
    return found[:most]


def rnn_equal_dims(model: Any, most: int = 3) -> list[dict[str, Any]]:
    """LSTM/GRU/RNN nodes whose sequence length equals their hidden size (more than 1).

    Measured: onnx2tf's unrolled LSTM computes something else exactly then (16 steps of hidden 16, 10 of 10,
    12 of 12, LSTM and GRU: -1.4 to 10.5 dB against onnxruntime), and faithfully at 16 steps of hidden 12 or 12
    of 16.
    """
    shapes = _static_shapes(model)
    found = []
    for node in _all_nodes(model.graph):
        if node.op_type not in ("LSTM", "GRU", "RNN") or not node.input:
            continue
        attributes = {a.name: a.i for a in node.attribute if a.name in ("hidden_size", "layout")}
        x = shapes.get(node.input[0]) or []
        if len(x) != 3 or not attributes.get("hidden_size"):
            continue
        steps = x[1] if attributes.get("layout") else x[0]  # layout 1: [batch, steps, features]
        if steps == attributes["hidden_size"] and steps is not None and steps > 1:
            found.append({"op": node.op_type, "name": node.name, "steps": steps, "hidden": steps})
    return found[:most]


def float_check(reference: bytes, tflite: Path, kept: tuple[str, ...] = ()) -> dict[str, Any]:
    """onnx2tf's float .tflite against onnxruntime on the ONNX model, on seeded random inputs.

    onnx2tf can write a model that runs and computes something else (a window-attention reshape, a pooling
    border): every later step would measure int8 against a wrong reference and report it as fine. Float
    inputs are standard normal, integer ones (token ids, masks) 0 or 1, valid for any vocabulary. Inputs and
    outputs are matched by signature name, else by position. Inputs of 4 or more dimensions not in ``kept``
    are fed channel-last, as onnx2tf transposes them; an output is compared as it is and channel-first, and
    the closer counts (a square [1, 16, 16, 16] output reads either way). Answer: per output, the SQNR in dB
    over all samples and the largest absolute difference, or ``{"checked": false, "reason": ...}`` where the
    check cannot run.
    """
    import numpy as np

    try:
        import onnxruntime as ort
        import tensorflow as tf

        session = ort.InferenceSession(reference, providers=["CPUExecutionProvider"])
        interpreter = tf.lite.Interpreter(model_path=str(tflite))
        interpreter.allocate_tensors()
    except Exception as e:  # noqa: BLE001 - a Flex op, an op onnxruntime lacks: the check says why it did not run
        return {"checked": False, "reason": f"{type(e).__name__}: {_first_line(e)[:200]}"}
    rng = np.random.default_rng(0)
    tfl_in, tfl_out = _io_order(interpreter)
    names = [o.name for o in session.get_outputs()]
    sums: dict[tuple[str, bool], list[float]] = {}  # (output, read channel-first) -> signal, noise, max |error|
    for _ in range(CHECK_SAMPLES):
        feed = {}
        for spec in session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
            if "float" in spec.type:
                feed[spec.name] = rng.standard_normal(shape).astype(np.float16 if "16" in spec.type else np.float32)
            else:
                dtype = bool if "bool" in spec.type else np.dtype(spec.type[len("tensor(") : -1])
                feed[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        for k, detail in enumerate(tfl_in):
            name = detail["sig"] if detail["sig"] in feed else list(feed)[k] if k < len(feed) else None
            value = feed[name] if name is not None else None
            if value is not None and value.ndim >= 4 and name not in kept:
                value = np.moveaxis(value, 1, -1)
            if value is None or tuple(value.shape) != tuple(detail["shape"]):
                return {"checked": False, "reason": f"no ONNX input matches the .tflite input {detail['sig']!r}"}
            interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        interpreter.invoke()
        for k, (name, want) in enumerate(zip(names, session.run(None, feed), strict=True)):
            fallback = tfl_out[k] if k < len(tfl_out) else None
            found: dict[str, Any] | None = next((d for d in tfl_out if d["sig"] == name), fallback)
            got = interpreter.get_tensor(found["index"]) if found is not None else None
            if got is None or got.size != want.size or not np.all(np.isfinite(want)):
                return {"checked": False, "reason": f"output {name!r}: no .tflite output of its size, or not finite"}
            for first in (False, True):
                read = np.moveaxis(got, -1, 1) if first and got.ndim >= 3 else got
                if first and got.ndim < 3 or read.shape != want.shape and read.size != want.size:
                    continue
                err = read.reshape(want.shape).astype(np.float64) - want.astype(np.float64)
                total = sums.setdefault((name, first), [0.0, 0.0, 0.0])
                total[0] += float(np.sum(np.square(want.astype(np.float64))))
                total[1] += float(np.sum(np.square(err)))
                total[2] = max(total[2], float(np.max(np.abs(err))) if err.size else 0.0)
    outputs = []
    for name in names:
        best = None
        for key in ((name, False), (name, True)):
            if key not in sums:
                continue
            signal, noise, max_abs = sums[key]
            sqnr = _sqnr_db(signal, noise)
            if best is None or sqnr > best["sqnr_db"]:
                best = {"name": name, "sqnr_db": round(sqnr, 2), "max_abs": max_abs}
        if best is None:
            return {"checked": False, "reason": f"output {name!r}: no .tflite output of its shape"}
        outputs.append(best)
    return {"checked": True, "samples": CHECK_SAMPLES, "outputs": outputs}


def _sqnr_db(signal: float, noise: float) -> float:
    """``converter.sources.float_check.sqnr_db`` (this worker imports nothing from edgeconv)."""
    if noise == 0:
        return 200.0
    return max(min(10 * math.log10(signal / noise), 200.0), -200.0) if signal > 0 else -200.0


def _io_order(interpreter: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The interpreter's inputs and outputs, each with its signature name (``sig``) where the model has one."""
    names: dict[int, str] = {}
    signatures = interpreter.get_signature_list()
    if signatures:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        for table in (runner.get_input_details(), runner.get_output_details()):
            names.update({detail["index"]: sig for sig, detail in table.items()})
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    return (
        [{**d, "sig": names.get(d["index"], d["name"])} for d in inputs],
        [{**d, "sig": names.get(d["index"], d["name"])} for d in outputs],
    )


# onnx2tf's advice when its SavedModel step rejects a name: "Please convert again with the `-osd` or
# `--output_signaturedefs` option."
OSD_ADVICE = "--output_signaturedefs"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _onnx2tf(onnx2tf: Any, options: dict[str, Any], work: Path) -> tuple[int | None, str]:
    """``onnx2tf.convert(**options)``: None or the exit code it gave up with, and what it printed (passed on too).

    onnx2tf prints its reasons to stdout and then calls ``sys.exit``; they are kept here, so the reason and the
    remedy it names can be acted on, and written to stderr afterwards for the parent to read.
    """
    log = work / "onnx2tf.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]  # main() sent stdout (fd 1 and sys.stdout) to stderr: both into the log
    code: int | None = None
    with log.open("wb") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            onnx2tf.convert(**options)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:  # an exception too: its log (the node, the message) is what the parent reads the reason from
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            said = log.read_text(encoding="utf-8", errors="replace")
            sys.stderr.write(said)
            sys.stderr.flush()
    return code, said


def _errors(said: str) -> str:
    """onnx2tf's ERROR lines, joined: its reason when it exits without raising."""
    lines = [_ANSI.sub("", line).strip() for line in said.splitlines()]
    errors = [line.split("ERROR:", 1)[1].strip() for line in lines if "ERROR:" in line]
    return " ".join(e for e in errors if e)[:600]


def run(request: dict[str, Any]) -> dict[str, Any]:
    if request.get("probe"):
        import onnx2tf  # noqa: F401 - the import is the check

        return {"ok": True, "onnx2tf": _version("onnx2tf"), "tensorflow": _version("tensorflow")}
    try:
        return convert(request)
    except ModelRefused as e:
        return {"ok": False, "user": True, "error": str(e)}
    except Exception as e:  # noqa: BLE001 - onnx2tf raises anything, with whole tracebacks inside
        last = str(e).strip().splitlines()[-1:] or [type(e).__name__]
        return {"ok": False, "user": False, "error": f"{type(e).__name__}: {last[0]}"}


def main() -> int:
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # onnx2tf prints its log to stdout: send it to stderr, stdout carries only the answer
    sys.stdout = sys.stderr
    try:
        request = json.loads(sys.stdin.read())
    except ValueError as e:
        _answer(answer, {"ok": False, "error": f"bad request: {e}"})
        return 2
    _answer(answer, run(request))
    return 0


def _end(code: int) -> NoReturn:
    """End the worker without Python's teardown of TensorFlow and onnx2tf (0.9-1.0 s), once the answer is out.

    What the interpreter's exit does first is kept, in its order: threads joined (``threading._shutdown``),
    ``atexit`` handlers run, streams flushed; then ``os._exit``. ``converter.supervise.quick_exit`` does the
    same for edgeconv's own processes; this worker imports nothing from edgeconv, so it has its own.
    """
    threading._shutdown()  # type: ignore[attr-defined]  # noqa: SLF001 - the interpreter's own first exit step
    atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter runs next; no public name
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _end(main())
