"""Load a model in any supported format and return its float .tflite, the pipeline's reference.

Keras, legacy .h5 and SavedModel are converted once (batch fixed to 1, as MCU and
Edge TPU runtimes need static shapes); a float .tflite is taken as it is, except that in every
format a float NEG op (Keras LayerNormalization's ``-mean``; TFLite has no int8 NEG kernel) becomes
the exactly equal MUL by -1, so the model can go full-integer (``rewrite_neg``), and the other exact
rewrites of ``float_rewrites`` apply (int64 index arithmetic narrowed to int32 among them). Loading never
runs code from the model file: Keras safe mode is on, Lambda layers in legacy .h5 files
are refused, custom objects come only from modules the recipe names, and a SavedModel is
inspected before TensorFlow loads it (``saved_model_guard``: no op of the model's runs unless
it is provably harmless). A PyTorch ``torch.export`` archive (.pt2) is inspected before PyTorch reads
it and converted in a child process (``load_torch``); a pickled ``.pt``/``.pth`` file is refused.

Every source kind is one row of ``SOURCES``: a new format adds a row and its converter in ``_CONVERTERS``.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from converter import model_cache
from converter.calibration.data import ModelInput, model_inputs
from converter.errors import ModelLoadError
from converter.extras import require
from converter.progress import named
from converter.runtime.model import TFLiteModel
from converter.sources import load_onnx, load_torch
from converter.sources.float_rewrites import (
    MASK_VALUE,
    fold_shape_arithmetic,
    narrow_int64,
    rewrite_dangling_splits,
    rewrite_neg,
    rewrite_padded_global_pools,
    rewrite_square,
    soften_mask_constants,
)
from converter.sources.unroll import unroll_recurrent
from converter.tflite import flatbuffer_schema as tflite_schema

log = logging.getLogger(__name__)

ModelFormat = Literal["keras", "h5", "saved_model", "tflite", "torch", "onnx"]
Layout = Literal["nhwc", "nchw"]


@dataclass(frozen=True)
class SourceKind:
    """One kind of model file: how it is recognised and what the user is told it is."""

    format: ModelFormat
    suffixes: tuple[str, ...]
    described: str  # as listed in "use ..." hints
    check_installed: Callable[[Path], None] | None = None  # its extra, checked before any work


# The model files edgeconv reads, in the order hints list them (a SavedModel is a folder: see detect_format).
SOURCES: tuple[SourceKind, ...] = (
    SourceKind("keras", (".keras",), ".keras"),
    SourceKind("h5", (".h5", ".hdf5"), ".h5"),
    SourceKind("saved_model", (), "a SavedModel folder"),
    SourceKind("tflite", (".tflite",), "a float .tflite"),
    SourceKind("torch", (".pt2",), "a torch.export archive (.pt2)", load_torch.check_installed),
    SourceKind("onnx", (".onnx",), ".onnx", load_onnx.check_installed),
)
# Files that are never loaded, with the error that says why and what to give instead.
REFUSED: dict[str, Callable[[Path], ModelLoadError]] = {
    ".pt": load_torch.refused_pickle,
    ".pth": load_torch.refused_pickle,
}

# Tensor types that only a quantized model holds with scales, and the ops that move between them.
QUANTIZED_DTYPES = ("int8", "uint8", "int16")
QUANTIZE_OPS = ("QUANTIZE", "DEQUANTIZE")


@dataclass(frozen=True)
class LoadedModel:
    """The float reference model and how it was obtained."""

    source: Path
    format: ModelFormat
    float_tflite: bytes
    loader: str
    input_shape: tuple[int, ...]  # the first input's (the only one for most models)
    input_dtype: str
    inputs: tuple[ModelInput, ...] = ()  # every input, in the float model's order
    layout: Layout | None = None  # of the 4-D (image) inputs: made so for a PyTorch source, declared otherwise


def detect_format(path: Path, check_installed: bool = True) -> ModelFormat:
    """The model format from the path, or a ``ModelLoadError`` that says what is accepted.

    ``check_installed`` also requires what converting it needs (the torch extra, the ONNX virtualenv);
    ``edgeconv init`` writes a recipe before they are installed, so it asks without.
    """
    if not path.exists():
        raise ModelLoadError(f"model: not found: {path}; check the path (relative paths start at the recipe's folder)")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise ModelLoadError(
            f"model: {path} is a folder without saved_model.pb; point to a SavedModel folder or a file"
        )
    suffix = path.suffix.lower()
    if suffix in REFUSED:
        raise REFUSED[suffix](path)
    kind = next((k for k in SOURCES if suffix in k.suffixes), None)
    if kind is None:
        listed = [k.described for k in SOURCES]
        raise ModelLoadError(
            f"model: {path}: unsupported file type '{suffix}'; use {', '.join(listed[:-1])} or {listed[-1]}"
        )
    if check_installed and kind.check_installed is not None:
        kind.check_installed(path)
    return kind.format


def _keras_source(path: Path, fmt: ModelFormat, custom_objects: tuple[str, ...], layout: Layout) -> tuple[bytes, str]:
    model, loader = _load_keras(path, fmt, _import_custom_objects(custom_objects))
    model, unrolled = unroll_recurrent(model, path)
    return _keras_to_tflite(model, path), loader + unrolled


def _saved_model_source(
    path: Path, fmt: ModelFormat, custom_objects: tuple[str, ...], layout: Layout
) -> tuple[bytes, str]:
    _import_custom_objects(custom_objects)
    return _saved_model_to_tflite(path, native=not custom_objects)


def _onnx_source(path: Path, fmt: ModelFormat, custom_objects: tuple[str, ...], layout: Layout) -> tuple[bytes, str]:
    return load_onnx.load_onnx(path, layout=layout)


def _torch_source(path: Path, fmt: ModelFormat, custom_objects: tuple[str, ...], layout: Layout) -> tuple[bytes, str]:
    return load_torch.torch_to_tflite(path, layout)


# Each converted format's route to the float .tflite: (path, format, custom objects, layout) -> (bytes, loader).
_CONVERTERS: dict[ModelFormat, Callable[[Path, ModelFormat, tuple[str, ...], Layout], tuple[bytes, str]]] = {
    "keras": _keras_source,
    "h5": _keras_source,
    "saved_model": _saved_model_source,
    "torch": _torch_source,
    "onnx": _onnx_source,
}
# What besides the source's bytes decides a converted float model (part of its cache key).
_CACHE_FACTS: dict[ModelFormat, Callable[[Layout], tuple[str, ...]]] = {
    "torch": load_torch.cache_facts,
    "onnx": load_onnx.cache_facts,
}


def load_model(
    path: Path, custom_objects: Iterable[str] = (), cache: bool = False, layout: Layout = "nhwc"
) -> LoadedModel:
    """Load ``path`` and produce its float .tflite; every failure is a ``ModelLoadError``.

    With ``cache``, a converted source seen before (same bytes, same versions, same layout) is taken
    from the float model cache instead of being converted again. ``layout`` is the recipe's
    ``input.layout``: a PyTorch or ONNX source is converted with channel-last I/O for nhwc and keeps
    its channel-first inputs for nchw; other sources are taken as they are and the layout only says
    what their 4-D inputs are.
    """
    fmt = detect_format(path)
    custom_objects = tuple(custom_objects)
    facts = _CACHE_FACTS[fmt](layout) if fmt in _CACHE_FACTS else ()
    salt = load_onnx.cache_salt(path) if fmt == "onnx" else ()  # None: an ONNX model with external data
    cache = cache and salt is not None
    key = model_cache.source_key(path, (*custom_objects, *facts, *(salt or ()))) if cache and fmt != "tflite" else None
    cached = model_cache.load(key) if key else None
    if fmt == "tflite":
        content, loader = _read_float_tflite(path), "file"
    elif cached is not None:
        content, loader = cached[0], f"{cached[1]['loader']}, from the float model cache"
    else:
        content, loader = _CONVERTERS[fmt](path, fmt, custom_objects, layout)
        release_memory()  # the Keras model and TensorFlow's conversion buffers: about 250 MB on MobileNetV2-224
        if key:
            model_cache.save(key, content, fmt, loader)
    if fmt != "tflite":  # checked on opening; a SavedModel's open dimension survives its conversion
        from converter.sources.tflite_check import check_static_inputs

        _checked(check_static_inputs, content, path)
    content, dropped = load_torch.drop_metadata(content, load_torch.DROPPED_METADATA)
    if dropped:
        loader += f"; metadata {', '.join(d.decode() for d in dropped)} removed (it keeps conv/dense float)"
    if dropped and fmt == "tflite":  # litert-torch wrote it: its names are module paths, up to 2,000 characters
        content, shortened = load_torch.tidy_names(content, None)
        loader += f"; {shortened} tensor names shortened to module paths" if shortened else ""
    content, rewritten = rewrite_neg(content)
    if rewritten:
        loader += f"; {rewritten} NEG op{'s' if rewritten > 1 else ''} rewritten as MUL by -1 (NEG has no int8 kernel)"
    content, squares = rewrite_square(content)
    if squares:
        loader += (
            f"; {squares} SQUARE op{'s' if squares > 1 else ''} rewritten as MUL of x by x (no int8 SQUARE kernel)"
        )
    content, pools = rewrite_padded_global_pools(content)
    if pools:
        plural = "s" if pools > 1 else ""
        loader += f"; {pools} zero-padded global average pool{plural} computed over the unpadded map"
    content, sliced = rewrite_dangling_splits(content)
    if sliced:
        loader += f"; {sliced} SPLIT op{'s' if sliced > 1 else ''} with unused outputs rewritten as SLICE ops"
    content, folded = fold_shape_arithmetic(content)
    if folded:
        loader += f"; {folded} shape-arithmetic op{'s' if folded > 1 else ''} of the unknown batch folded at batch 1"
    content, narrowed = narrow_int64(content)
    if narrowed:
        plural = "s" if narrowed > 1 else ""
        loader += f"; {narrowed} int64 index tensor{plural} narrowed to int32 (TFLite Micro's GATHER)"
    content, softened = soften_mask_constants(content)
    if softened:
        loader += (
            f"; {softened} masking or padding constant{'s' if softened > 1 else ''} (-3.4e38 or -inf) replaced by "
            f"{MASK_VALUE:g}, which masks and pads as well in float and quantizes"
        )
    try:
        ref = TFLiteModel(model_content=content)
    except Exception as e:  # noqa: BLE001 - the interpreter raises bare RuntimeError/ValueError
        raise ModelLoadError(f"model: {path}: the TFLite interpreter cannot open it: {e}") from e
    _refuse_loops(content, path, fmt)
    inputs = model_inputs(ref)
    images = any(len(i.shape) == 4 for i in inputs)
    return LoadedModel(
        path, fmt, content, loader, inputs[0].shape, inputs[0].dtype, inputs, layout=layout if images else None
    )


# Control-flow ops: TFLite has no int8 kernel for them, so a model holding one cannot go full-integer.
LOOP_OPS = ("WHILE", "IF")


def release_memory() -> None:
    """Hand freed memory back to the OS (gc, then glibc's malloc_trim), so calibration does not stack on it.

    The objects frozen after TensorFlow's import (``extras.long_lived``) are unfrozen first: a few of them are
    garbage that still points at the converted model (Keras's layers, 20-35 MB on MobileNetV2-224), and the
    collector treats frozen objects as alive. This full collection is the one the conversion needs.
    """
    import contextlib
    import ctypes
    import gc

    gc.unfreeze()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): the collection is all we can do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _refuse_loops(content: bytes, path: Path, fmt: ModelFormat) -> None:
    """A WHILE/IF op in the float reference is a ``ModelLoadError`` that names it and the remedy.

    edgeconv's output is full-integer and TFLite has no int8 WHILE kernel (the stock converter leaves the
    loop float), so converting would only fail later; saying it here names the loop and what to do.
    """
    from converter.tflite.inspect_model import list_ops

    loops = [f"{op.name} (op {op.index})" for op in list_ops(content) if op.name in LOOP_OPS]
    if not loops:
        return
    if fmt == "tflite":
        remedy = (
            "a recurrent layer (Keras LSTM, GRU, SimpleRNN) traced without unrolling becomes such a loop: give "
            "edgeconv the Keras model itself (.keras or .h5) with a fixed sequence length, and it unrolls the "
            "recurrent layers into int8 ops, or export this .tflite from the model rebuilt with unroll=True"
        )
    else:
        remedy = (
            "edgeconv unrolls Keras LSTM, GRU and SimpleRNN layers (also in Bidirectional) with a fixed sequence "
            "length, so this loop comes from another layer (a custom layer's loop or tf.cond): rewrite it without "
            "data-dependent control flow, or build the recurrent layers with unroll=True"
        )
    raise ModelLoadError(
        f"model: {path}: the float model has control flow ({', '.join(loops)}), which has no int8 kernel in "
        f"TFLite, so it cannot become a full-integer model; {remedy}"
    )


def _import_custom_objects(specs: Iterable[str]) -> dict[str, Any]:
    objects: dict[str, Any] = {}
    for spec in specs:
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ModelLoadError(f"custom_objects: '{spec}': expected 'module:Name', e.g. 'mypkg.layers:Swish'")
        try:
            objects[attr.rsplit(".", 1)[-1]] = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ModelLoadError(f"custom_objects: '{spec}': cannot import: {e}") from e
    return objects


@named("opening the .tflite in the LiteRT interpreter")
def _read_float_tflite(path: Path) -> bytes:
    """The source's bytes, once the interpreter opens them and ``tflite_check`` finds them whole and float."""
    from converter.sources.tflite_check import (
        REEXPORT,
        VHLO_REMEDY,
        builtin_error,
        check_before_open,
        check_names,
        check_ops,
        check_runs,
        check_static_inputs,
        vhlo_meaning,
    )

    content = path.read_bytes()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ModelLoadError(f"model: {path}: not a TFLite flatbuffer (no 'TFL3' identifier); is the file corrupt?")
    _checked(check_before_open, content, path)
    _checked(check_static_inputs, content, path)
    try:
        ref = TFLiteModel(model_content=content)
    except Exception as e:  # noqa: BLE001 - the interpreter raises bare RuntimeError/ValueError
        if isinstance(e, UnicodeDecodeError):  # an input or output name: say which, and why it matters
            _checked(check_names, content, path)
        meaning = vhlo_meaning(str(e))
        if meaning is not None:
            raise ModelLoadError(f"model: {path}: {meaning}; {VHLO_REMEDY}") from e
        why = builtin_error(content) or str(e)  # names the model's op where the delegate names its own node
        if "unresolved custom op" in why:  # a whole model, but of an op LiteRT does not have
            raise ModelLoadError(
                f"model: {path}: the TFLite interpreter cannot open it ({why}); edgeconv converts models made of "
                "TFLite's builtin ops: rebuild the layer behind the custom op from builtin ones"
            ) from e
        raise ModelLoadError(
            f"model: {path}: the model file is invalid: the TFLite interpreter cannot open it ({why}); {REEXPORT}"
        ) from e
    _checked(check_names, content, path)  # before any name is read: every later step goes by them
    if not ref.inputs or not ref.outputs:
        which = "inputs" if not ref.inputs else "outputs"
        raise ModelLoadError(f"model: {path}: the model file is invalid: its main subgraph has no {which}; {REEXPORT}")
    # Quantized I/O carries a scale; integer I/O without one (token ids, an argmax index) is a float model's.
    if any(t.scale is not None or t.dtype in ("float16", "bfloat16") for t in ref.inputs + ref.outputs):
        raise ModelLoadError(
            f"model: {path}: is already quantized (I/O dtypes {[t.dtype for t in ref.inputs + ref.outputs]}); "
            "give the float model it was made from"
        )
    _checked(check_ops, content, path)
    _checked(check_runs, content, path)
    reason = quantized_reason(content)
    if reason:
        raise ModelLoadError(
            f"model: {path}: is not a float model: {reason}. edgeconv takes a float32 model as the reference "
            "(float I/O alone is not enough: a model with int8/uint8/int16 tensors that carry quantization "
            "scales, QUANTIZE/DEQUANTIZE ops or float16 weights has lost precision already, and its numbers would "
            "be reported as float); give the float32 .tflite, Keras file or SavedModel it was made from"
        )
    return content


def _checked(check: Callable[[bytes, Path], None], content: bytes, path: Path) -> None:
    """Run a ``tflite_check`` check; a file it cannot even read where the interpreter could is refused too.

    The interpreter verified the flatbuffer's structure, not every value the checks follow (an index, a
    length): reading one that points nowhere raises here rather than in a later step, as exit 2.
    """
    try:
        check(content, path)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - flatbuffers' readers raise struct.error, IndexError, ...
        raise ModelLoadError(
            f"model: {path}: the model file is invalid: a value in it points outside the file or its tables "
            f"({type(e).__name__}: {e}); the file is damaged: export it again with the TFLite converter"
        ) from e


def quantized_reason(content: bytes) -> str | None:
    """Why a .tflite with float I/O is not a float32 model, or None.

    Refused: any int8/uint8/int16 tensor with quantization scales (dynamic-range weights, full-integer
    internals), any QUANTIZE/DEQUANTIZE op, and any float16 tensor (float16-weights models: TFLite's
    quantizer cannot read their weights, and their rounding would be reported as float).
    """
    import numpy as np

    from converter.runtime.interpreter import make_interpreter

    interpreter = make_interpreter(model_content=content, delegate="none")
    for d in interpreter.get_tensor_details():
        dtype = np.dtype(d["dtype"]).name
        scales = d.get("quantization_parameters", {}).get("scales")
        if dtype in QUANTIZED_DTYPES and scales is not None and len(scales) > 0:
            return f"tensor '{d['name']}' is {dtype} with quantization scales"
        if dtype == "float16":
            return f"tensor '{d['name']}' is float16 (a float16-weights model)"
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only op listing LiteRT offers
        if op["op_name"] in QUANTIZE_OPS:
            return f"it has a {op['op_name']} op (op {op['index']})"
    return None


def _h5_has_lambda(path: Path) -> bool:
    """Whether a legacy .h5 model config contains Lambda layers (their code would run on load)."""
    h5py = require("h5py")

    _check_not_empty(path)
    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
    except OSError as e:
        what = (
            "is truncated: shorter than its HDF5 header says"
            if "truncated" in str(e)
            else "is not an HDF5 file: it has no HDF5 signature"
            if "signature" in str(e)
            else "is not a readable HDF5 file"
        )
        raise ModelLoadError(
            f"model: {path}: {what} (h5py: {e}); copy or save the model again (a complete Keras HDF5 file)"
        ) from e
    if config is None:
        raise ModelLoadError(
            f"model: {path}: the HDF5 file holds no model config (a weights-only file?); save the whole model "
            "with model.save()"
        )

    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("class_name") == "Lambda" or any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(json.loads(config.decode() if isinstance(config, bytes) else str(config)))


def _check_not_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model: {path}: the file is empty (0 bytes); copy or save the model again")


def _check_keras_archive(path: Path) -> None:
    """A .keras file is a zip archive with config.json: say what is wrong before Keras says "File not found"."""
    _check_not_empty(path)
    redo = "copy or save the model again with model.save('model.keras')"
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"model: {path}: is not a .keras archive: a .keras file is a zip archive and this one has no zip "
            f"directory ({path.stat().st_size} bytes; truncated or not a Keras file); {redo}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ModelLoadError(f"model: {path}: is a damaged zip archive ({e}); {redo}") from e
    if bad is not None:
        raise ModelLoadError(f"model: {path}: the archive member '{bad}' is damaged (bad CRC); {redo}")
    if "config.json" not in names:
        raise ModelLoadError(f"model: {path}: is a zip archive but not a Keras model (no config.json inside); {redo}")


_MISSING_CLASS = re.compile(r"(?:Could not locate (?:class|function)|Unknown \w+):? '([^']+)'")
_REGISTERED = re.compile(r"'registered_name': '([^']+)'")
_KERAS_MESSAGE_CHARS = 300


def _explain_keras_error(path: Path, errors: Iterable[Exception]) -> ModelLoadError | None:
    """Our own paragraph for Keras errors whose advice we do not follow (safe_mode=False) or that dump configs."""
    for error in errors:
        text = str(error)
        found = _MISSING_CLASS.search(text)
        if found:
            name = found.group(1).rsplit(">", 1)[-1]
            # The config dump holds every enclosing object's registered_name too (the model's first): the class's own.
            registered = next((r for r in _REGISTERED.findall(text) if r.rsplit(">", 1)[-1] == name), None)
            as_registered = f" (registered as '{registered}')" if registered and registered != name else ""
            return ModelLoadError(
                f"model: {path}: uses the custom class '{name}'{as_registered}, which is not among the recipe's "
                f"custom_objects; add the class to the recipe's custom_objects as 'module:{name}', naming the Python "
                "module (importable here) that defines it"
            )
        if "safe_mode" in text:
            first = text.split(". ", 1)[0].strip()
            return ModelLoadError(
                f"model: {path}: refused: {first}; loading it would run Python code stored in the model file, so "
                "edgeconv keeps Keras safe_mode on. Rewrite the Lambda (or lambda function) as a custom layer class "
                "and list it under the recipe's custom_objects as 'module:Name'"
            )
    return None


def _short(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= _KERAS_MESSAGE_CHARS else text[: _KERAS_MESSAGE_CHARS - 3] + "..."


def _load_keras(path: Path, fmt: ModelFormat, objects: dict[str, Any]) -> tuple[Any, str]:
    if fmt == "keras":
        _check_keras_archive(path)
    keras = require("keras")

    # Keras before 3.11.3 ignored safe_mode for .h5 files (CVE-2025-9905): look before loading.
    if fmt == "h5" and _h5_has_lambda(path):
        raise ModelLoadError(
            f"model: {path}: contains Lambda layers, whose code would run on load; rewrite them as "
            "custom layers and list them under custom_objects"
        )

    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True, custom_objects=objects or None)
        return model, f"keras {keras.__version__} (safe mode)"
    except Exception as e:  # noqa: BLE001 - Keras raises many types for bad files
        first_error = e
    if fmt != "h5":
        raise _explain_keras_error(path, [first_error]) or ModelLoadError(
            f"model: {path}: Keras cannot load it ({_short(first_error)}); is the file complete and a Keras model?"
        ) from first_error
    # Many real Keras 2 .h5 files (e.g. old DepthwiseConv2D configs) fail in Keras 3:
    # fall back to tf_keras, the Keras 2 line, which reads them as they were written.
    tf_keras = require("tf_keras")
    try:
        model = tf_keras.models.load_model(path, compile=False, custom_objects=objects or None)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _explain_keras_error(path, [first_error, e]) or ModelLoadError(
            f"model: {path}: cannot load this .h5 with Keras 3 ({_short(first_error)}) nor with tf_keras "
            f"({_short(e)}); is the file complete and a Keras model?"
        ) from e
    log.info(  # Keras 3's message can hold the whole model config: its first lines are enough here
        "Keras 3 could not read %s (%s); loaded with tf_keras %s", path.name, _short(first_error), tf_keras.__version__
    )
    return model, f"tf_keras {tf_keras.__version__} (Keras 3 failed: {type(first_error).__name__})"


@named("TensorFlow's float converter (Keras)")
def _keras_to_tflite(model: Any, path: Path) -> bytes:
    tf = require("tensorflow")

    inputs = list(model.inputs)
    for tensor in inputs:
        if any(d is None for d in tuple(tensor.shape[1:])):
            which = f" '{_keras_input_name(tensor)}'" if len(inputs) > 1 else ""
            raise ModelLoadError(
                f"model: {path}: input{which} shape {list(tensor.shape)} has unknown dimensions; "
                "save the model with a fixed input size (microcontrollers and Edge TPU need static shapes)"
            )
    # Trace with a batch-1 input (MCU and Edge TPU runtimes need static shapes; a fixed batch
    # also keeps a dynamic batch's SHAPE/PACK ops out of the graph) and freeze the variables
    # ourselves: 3x faster than from_keras_model, which round-trips a SavedModel on disk.
    # One input keeps the name "input" (calibration rules and caches name it); several keep their Keras
    # names, which is how a data file keys them.
    names = ["input"] if len(inputs) == 1 else _unique_op_names([_keras_input_name(t) for t in inputs])
    specs = [
        tf.TensorSpec([1, *t.shape[1:]], tf.as_dtype(getattr(t.dtype, "name", t.dtype)), name=name)
        for t, name in zip(inputs, names, strict=True)
    ]
    try:
        if len(specs) == 1:
            concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(specs[0])
        else:
            concrete = tf.function(lambda *xs: model(list(xs), training=False)).get_concrete_function(*specs)
        content = bytes(_frozen_converter(tf, concrete).convert())
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"model: {path}: TensorFlow cannot convert it to TFLite: {_converter_said(e)}") from e
    outputs = [str(n) for n in getattr(model, "output_names", None) or []]
    content = _name_outputs(content, outputs) if len(outputs) > 1 else content
    return add_signature(content, names, outputs)


# Ops whose graphs TensorFlow's own freeze (lower_control_flow=False) writes differently from ours.
_CONTROL_FLOW = frozenset(
    {"If", "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase", "PartitionedCall",
     "StatefulPartitionedCall", "Switch", "Merge", "Enter", "Exit", "NextIteration", "LoopCond"}
)  # fmt: skip


def _frozen_graph_def(tf: Any, concrete: Any) -> tuple[Any, list[Any]] | None:
    """The traced function's graph with its variables and captured tensors as constants
    (``convert_variables_to_constants_v2``'s graph) and the inputs left (the function's own), without building a
    function around it; None where TensorFlow's internals differ."""
    try:
        from tensorflow.python.framework import convert_to_constants as freezing

        data = freezing._FunctionConverterDataInEager(  # noqa: SLF001
            func=concrete, lower_control_flow=True, aggressive_inlining=False
        )
        graph_def, converted = freezing._replace_variables_by_constants(converter_data=data)  # noqa: SLF001
        captures = concrete.graph.internal_captures  # what ``converted`` indexes, as _construct_concrete_function
        frozen = {id(captures[int(i)]) for i in converted}
    except (ImportError, AttributeError, TypeError, IndexError) as e:
        log.debug("freezing the graph alone failed (%s): convert_variables_to_constants_v2", e)
        return None
    return graph_def, [t for t in concrete.inputs if id(t) not in frozen and t.dtype != tf.resource]


def _frozen_converter(tf: Any, concrete: Any) -> Any:
    """TensorFlow's converter for the traced function, its variables frozen once.

    ``convert_variables_to_constants_v2`` freezes the graph and then builds a function around it (0.5-0.6 s on
    MobileNetV2-224), and ``TFLiteFrozenGraphConverterV2.convert`` starts by freezing that function again. On a
    graph without control flow and without functions both steps give back the graph frozen once, so the
    converter is handed that graph, with the traced function's own input and output tensors (the same names,
    shapes and types): the same bytes, checked in ``tests/integration/test_convert.py``, 1.7 -> 0.8 s of
    MobileNetV2-224's conversion. A graph with either keeps TensorFlow's two passes, whose output differs there.
    """
    found = _frozen_graph_def(tf, concrete)
    graph_def, inputs = found if found is not None else (None, [])
    straight = graph_def is not None and not (
        graph_def.library.function or any(node.op in _CONTROL_FLOW for node in graph_def.node)
    )
    if straight:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
        if callable(getattr(converter, "_freeze_concrete_function", None)):
            frozen = (graph_def, inputs, concrete.outputs, concrete)
            converter._freeze_concrete_function = lambda: frozen  # noqa: SLF001
            return converter
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(concrete)])


def add_signature(content: bytes, inputs: list[str], outputs: list[str]) -> bytes:
    """The model with a ``serving_default`` signature, as the stock converter writes one, if it has none.

    ``from_concrete_functions`` (the fast route for Keras models) writes no SignatureDef, and without one
    ``interpreter.get_signature_runner()``, Android's ``runSignature`` and tools that require signatures
    fail. Inputs are keyed by the names the data file uses (the input tensors' names), outputs by the
    Keras output names when they are unique, else ``output_0``, ``output_1``... TensorFlow's quantizer
    keeps the signature in the int8 model.
    """
    from converter.tflite import flatbuf

    schema = tflite_schema.schema()
    model = flatbuf.load(content)
    subgraph = model.subgraphs[0]
    if model.signatureDefs or len(inputs) != len(subgraph.inputs):
        return content
    if len(outputs) != len(subgraph.outputs) or len(set(outputs)) != len(outputs):
        outputs = [f"output_{k}" for k in range(len(subgraph.outputs))]

    def entry(name: str, index: int) -> Any:
        tensor_map = schema.TensorMapT()
        tensor_map.name, tensor_map.tensorIndex = name, int(index)
        return tensor_map

    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs = [entry(n, i) for n, i in zip(inputs, subgraph.inputs, strict=True)]
    signature.outputs = [entry(n, i) for n, i in zip(outputs, subgraph.outputs, strict=True)]
    model.signatureDefs = [signature]
    return flatbuf.dump(model)


def _name_outputs(content: bytes, names: list[str]) -> bytes:
    """Several outputs get their Keras names (the traced graph calls them Identity, Identity_1, ...).

    Only when the names are unique and no other tensor has one of them: analysis matches tensors by name.
    """
    from converter.tflite import flatbuf

    model = flatbuf.load(content)
    subgraph = model.subgraphs[0]
    taken = {t.name.decode() if isinstance(t.name, bytes) else str(t.name) for t in subgraph.tensors}
    if len(subgraph.outputs) != len(names) or len(set(names)) != len(names) or taken & set(names):
        return content
    for index, name in zip(subgraph.outputs, names, strict=True):
        subgraph.tensors[index].name = name.encode()
    return flatbuf.dump(model)


def _keras_input_name(tensor: Any) -> str:
    """A Keras input's name without TensorFlow's ``:0`` suffix (tf_keras tensors carry it)."""
    return str(getattr(tensor, "name", "input")).split(":", 1)[0]


_OP_NAME = re.compile(r"[^A-Za-z0-9_.\-/]")


def _unique_op_names(names: list[str]) -> list[str]:
    """Valid TensorFlow op names, kept as they are where possible, made unique with _1, _2 suffixes."""
    out: list[str] = []
    for name in names:
        base = _OP_NAME.sub("_", name) or "input"
        base = base if base[0].isalnum() or base[0] == "." else f"input_{base}"
        candidate, n = base, 0
        while candidate in out:
            n += 1
            candidate = f"{base}_{n}"
        out.append(candidate)
    return out


SAVED_MODEL_LOADER = "tf.lite.TFLiteConverter.from_saved_model"
NATIVE_SAVED_MODEL_LOADER = "TensorFlow's MLIR converter called directly (the bytes of " + SAVED_MODEL_LOADER + ")"


@named("TensorFlow's float converter (SavedModel)")
def _saved_model_to_tflite(path: Path, native: bool = True) -> tuple[bytes, str]:
    """The float .tflite and how it was made: TensorFlow's converter, natively where it can be.

    TFLiteConverter.from_saved_model works on Keras 2 SavedModels where tf.saved_model.load fails (optimizer
    slots), so it is the one route here, taken without importing TensorFlow where ``saved_model_native`` can
    (one serving signature, a verified TensorFlow). Its MLIR importer runs the model's load-time ops
    (restore, init and table ops): the guard refuses any it cannot prove harmless, before either route.
    """
    from converter.sources.saved_model_guard import check_saved_model, read_proto
    from converter.tfnative.extensions import package_folder

    if package_folder() is None:
        require("tensorflow")  # not installed: says which extra to install
    proto = read_proto(path)
    check_saved_model(path, proto)
    try:
        if native:
            content = _native_saved_model(path, proto)
            if content is not None:
                return content, NATIVE_SAVED_MODEL_LOADER
        tf = require("tensorflow")
        return bytes(_saved_model_converter(tf, path, proto).convert()), SAVED_MODEL_LOADER
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"model: {path}: TensorFlow cannot convert this SavedModel: {_converter_said(e)}") from e


def _serving_key(proto: Any) -> str | None:
    """The signature ``from_saved_model`` converts, where it converts one, read from the protobuf; else None.

    That is the one signature of the one serving MetaGraph, or ``serving_default`` in a Keras ``model.export``
    folder (a ``serve`` endpoint on the root and no ``_default_save_signature``: ``from_saved_model`` takes
    its ``serving_default`` copy). Several signatures otherwise: ``from_saved_model`` decides.
    """
    from converter.sources.saved_model_guard import INIT_SIGNATURE

    serving = [m for m in proto.meta_graphs if set(m.meta_info_def.tags) == {"serve"}]
    if len(serving) != 1:
        return None
    keys = [k for k in serving[0].signature_def if k != INIT_SIGNATURE]
    if len(keys) == 1:
        return str(keys[0])
    nodes = serving[0].object_graph_def.nodes
    root = {child.local_name for child in nodes[0].children} if len(nodes) else set()
    exported = "serve" in root and "_default_save_signature" not in root
    return "serving_default" if exported and "serving_default" in keys else None


def _native_saved_model(path: Path, proto: Any) -> bytes | None:
    """``saved_model_native.convert`` where ``from_saved_model`` would import the signature the same way.

    ``TFLiteSavedModelConverterV2`` takes the SavedModel import only for schema versions 1 and 2; anything else
    goes through TensorFlow as it is.
    """
    from converter.sources import saved_model_native

    key = _serving_key(proto)
    if key is None or proto.saved_model_schema_version not in (1, 2):
        return None
    return saved_model_native.convert(path, key, int(proto.saved_model_schema_version))


def _saved_model_converter(tf: Any, path: Path, proto: Any) -> Any:
    """``TFLiteConverter.from_saved_model(path)``, without its eager load of the model where that load is unused.

    ``from_saved_model`` loads the whole SavedModel into Python (1.7 s of DS-CNN KWS's 3.5 s conversion) to list
    its signatures, then hands the folder to the MLIR converter, which reads it again. With one serving
    signature, read here from the protobuf, the converter it would return is built directly: the same class,
    arguments and conversion metadata, so the same bytes. Anything else (several signatures, a TensorFlow
    without these internals, a model the MLIR importer cannot take) goes through ``from_saved_model``.
    """
    key = _serving_key(proto)
    if key is not None:
        try:
            from tensorflow.lite.python import conversion_metadata_schema_py_generated as metadata
            from tensorflow.lite.python.lite import TFLiteConverterBase, TFLiteSavedModelConverterV2

            TFLiteConverterBase._set_original_model_type(metadata.ModelType.TF_SAVED_MODEL)  # noqa: SLF001
            converter = TFLiteSavedModelConverterV2(str(path), {"serve"}, [key])
            if converter.saved_model_dir:
                return converter
        except (ImportError, AttributeError, TypeError) as e:
            log.debug("building TensorFlow's SavedModel converter directly failed (%s): from_saved_model", e)
    return tf.lite.TFLiteConverter.from_saved_model(str(path))


def _converter_said(error: Exception) -> str:
    """TensorFlow's converter error, its raw "Failed VHLO to version …" put in words first (``vhlo_meaning``)."""
    from converter.sources.tflite_check import vhlo_meaning

    meaning = vhlo_meaning(str(error))
    return str(error) if meaning is None else f"{meaning}. TensorFlow said: {error}"
