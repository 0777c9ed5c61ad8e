"""What a model file says about its inputs, read without running anything from it (for ``edgeconv init``).

Each format is read the way edgeconv's loaders and guards already read it before anything runs:

- ``.tflite``: the flatbuffer, read in place with the schema (``converter.tflite``), names checked as
  ``tflite_check`` does; no interpreter.
- ``.keras``: ``config.json`` in the zip archive; ``.h5``: the ``model_config`` attribute (h5py). JSON only:
  Keras is not imported, no layer is built.
- SavedModel: ``saved_model.pb`` parsed with the protobuf classes ``saved_model_guard`` uses (TensorFlow's
  protos are imported, nothing of the model executes); the ``serving_default`` signature.
- ``.pt2``: ``pt2_guard.check_pt2`` first (refuses what loading could run), then ``models/model.json``:
  the user inputs' sizes and dtypes. torch is not imported.
- ``.onnx``: not parsed. edgeconv reads ONNX files only inside onnx2tf's own virtualenv, so the inputs stay a
  placeholder in the recipe.

Whatever cannot be read is ``None`` with ``unread`` saying why and how to find it; nothing is guessed.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from converter.errors import ModelLoadError
from converter.sources.load import SOURCES, ModelFormat, detect_format

Layout = Literal["nhwc", "nchw"]
MAX_CONFIG_BYTES = 64 * 1024 * 1024  # a Keras config.json is kilobytes; a larger one is not read

# Channel counts an image input has: a 4-D input whose last axis is one of these is channel-last.
_CHANNELS = (1, 2, 3, 4)
# torch.export's ScalarType codes (torch/_export/serde/schema.py) for the dtypes a model input has.
_TORCH_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32"}
_TORCH_DTYPES.update({8: "float64", 12: "bool", 13: "bfloat16"})
# TensorFlow DataType enum values (types.proto) of usual inputs.
_TF_DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 6: "int8", 9: "int64", 10: "bool", 19: "float16"}
DESCRIBED: dict[ModelFormat, str] = {
    "keras": "Keras .keras archive",
    "h5": "legacy Keras 2 .h5",
    "saved_model": "TensorFlow SavedModel folder",
    "tflite": "float .tflite",
    "torch": "PyTorch torch.export archive (.pt2)",
    "onnx": "ONNX model",
}


@dataclass(frozen=True)
class InputFact:
    """One model input: its name and shape (``None`` for a dimension the file leaves open) and dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str | None = None


@dataclass(frozen=True)
class ModelFacts:
    """What the file says, where it was read from, and what could not be read (with how to find it)."""

    path: Path
    format: ModelFormat
    inputs: tuple[InputFact, ...] = ()
    read_from: str = ""
    unread: str | None = None
    channels_first: bool = False  # a Keras layer declares data_format channels_first
    rescales: bool = False  # a Keras Rescaling/Normalization layer: the model scales its input itself
    custom_classes: tuple[str, ...] = ()  # Keras classes outside Keras (they need custom_objects)
    notes: tuple[str, ...] = ()


def source_format(path: Path) -> ModelFormat:
    """The model's format from its name (a folder with saved_model.pb is a SavedModel); nothing is read.

    Unlike the loader this does not require the source's extra or virtualenv: a recipe can be written before
    they are installed (``install_problem`` says what converting will need).
    """
    return detect_format(path, check_installed=False)


def install_problem(path: Path, fmt: ModelFormat) -> str | None:
    """What converting this format still needs installed here (the torch extra, the ONNX virtualenv), or None."""
    kind = next(k for k in SOURCES if k.format == fmt)
    if kind.check_installed is None:
        return None
    try:
        kind.check_installed(path)
    except ModelLoadError as e:
        return str(e)
    return None


def read_facts(path: Path) -> ModelFacts:
    """The model's format and inputs, read without executing the model; bad files are ``ModelLoadError``."""
    fmt = source_format(path)
    readers: dict[ModelFormat, Callable[[Path], ModelFacts]] = {
        "tflite": _tflite,
        "keras": _keras,
        "h5": _h5,
        "saved_model": _saved_model,
        "torch": _pt2,
        "onnx": _onnx,
    }
    try:
        return readers[fmt](path)
    except RecursionError as e:  # a config nested thousands deep: no model is
        raise ModelLoadError(f"model: {path}: its config is nested too deeply to be a model's; is it one?") from e


def image_layout(shape: tuple[int | None, ...]) -> Layout | None:
    """nhwc or nchw for a 4-D input whose channel axis is plain from its sizes; None when it is not."""
    if len(shape) != 4:
        return None
    first, last = shape[1], shape[3]
    if last in _CHANNELS and (first is None or first not in _CHANNELS):
        return "nhwc"
    if first in _CHANNELS and (last is None or last not in _CHANNELS):
        return "nchw"
    return None


def _tflite(path: Path) -> ModelFacts:
    from converter.sources.tflite_check import REEXPORT, check_names
    from converter.tflite import flatbuffer_schema

    content = path.read_bytes()
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ModelLoadError(f"model: {path}: not a TFLite flatbuffer (no 'TFL3' identifier); is the file corrupt?")
    schema = flatbuffer_schema.schema()
    types = {int(v): str(k).lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    try:
        check_names(content, path)
        model = schema.Model.GetRootAsModel(content, 0)
        if model.SubgraphsLength() < 1:
            raise ModelLoadError(f"model: {path}: the model file is invalid: it has no subgraph; {REEXPORT}")
        graph = model.Subgraphs(0)
        inputs = []
        for i in range(graph.InputsLength()):
            index = int(graph.Inputs(i))
            if not 0 <= index < graph.TensorsLength():
                raise ModelLoadError(
                    f"model: {path}: the model file is invalid: input {i} names tensor {index} of "
                    f"{graph.TensorsLength()}; {REEXPORT}"
                )
            tensor = graph.Tensors(index)
            signature = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else tensor.ShapeAsNumpy()
            shape = tuple(None if int(d) < 0 else int(d) for d in signature) if tensor.ShapeLength() else ()
            inputs.append(InputFact((tensor.Name() or b"").decode(), shape, types.get(int(tensor.Type()))))
        quantized = _quantized_tensor(graph, types)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - flatbuffers' readers raise struct.error, IndexError, ...
        raise ModelLoadError(
            f"model: {path}: the model file is invalid: a value in it points outside the file or its tables "
            f"({type(e).__name__}: {e}); {REEXPORT}"
        ) from e
    if quantized:
        raise ModelLoadError(
            f"model: {path}: is already quantized ({quantized}); edgeconv takes a float32 model as the reference: "
            "give the float .tflite, Keras file or SavedModel it was made from"
        )
    if not inputs:
        raise ModelLoadError(f"model: {path}: the model file is invalid: its main subgraph has no inputs; {REEXPORT}")
    return ModelFacts(path, "tflite", tuple(inputs), "the .tflite flatbuffer")


def _quantized_tensor(graph: Any, types: dict[int, str]) -> str | None:
    """A tensor that only a quantized model holds (integer with scales, or float16), as ``load`` refuses them."""
    for t in range(graph.TensorsLength()):
        tensor = graph.Tensors(t)
        kind = types.get(int(tensor.Type()), "")
        q = tensor.Quantization()
        if kind in ("int8", "uint8", "int16") and q is not None and q.ScaleLength() > 0:
            return f"tensor '{(tensor.Name() or b'').decode()}' is {kind} with quantization scales"
        if kind == "float16":
            return f"tensor '{(tensor.Name() or b'').decode()}' is float16"
    return None


def _keras(path: Path) -> ModelFacts:
    redo = "save the model again with model.save('model.keras')"
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"model: {path}: is not a .keras archive (a .keras file is a zip archive); {redo}")
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise ModelLoadError(f"model: {path}: config.json declares {info.file_size:,} bytes; {redo}")
            with archive.open(info) as member:
                text = member.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
        config = json.loads(text)
    except KeyError as e:
        raise ModelLoadError(f"model: {path}: is a zip archive but not a Keras model (no config.json); {redo}") from e
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RecursionError) as e:
        raise ModelLoadError(f"model: {path}: config.json cannot be read ({e}); {redo}") from e
    return _from_keras_config(path, "keras", config, "config.json in the .keras archive")


def _h5(path: Path) -> ModelFacts:
    from converter.extras import require

    h5py = require("h5py")
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw)) if raw is not None else None
    except (OSError, ValueError, RecursionError) as e:
        raise ModelLoadError(
            f"model: {path}: is not a readable Keras HDF5 file ({e}); save the model again with model.save()"
        ) from e
    if config is None:
        raise ModelLoadError(
            f"model: {path}: the HDF5 file holds no model config (a weights-only file?); save the whole model "
            "with model.save()"
        )
    return _from_keras_config(path, "h5", config, "the model_config of the .h5 file")


def _layers(node: Any) -> Iterator[dict[str, Any]]:
    """Every layer entry of a Keras config, nested models' included."""
    if isinstance(node, dict):
        if "class_name" in node and isinstance(node.get("config"), dict):
            yield node
        for value in node.values():
            yield from _layers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _layers(value)


def _keras_shape(layer_config: dict[str, Any]) -> tuple[int | None, ...] | None:
    shape = layer_config.get("batch_shape") or layer_config.get("batch_input_shape")
    if not isinstance(shape, list) or not all(d is None or isinstance(d, int) for d in shape):
        return None
    return tuple(None if d is None or d < 0 else d for d in shape)


def _keras_dtype(layer_config: dict[str, Any]) -> str | None:
    dtype = layer_config.get("dtype")
    if isinstance(dtype, dict):  # a DTypePolicy
        dtype = (dtype.get("config") or {}).get("name")
    return dtype if isinstance(dtype, str) else None


def _from_keras_config(path: Path, fmt: ModelFormat, config: Any, read_from: str) -> ModelFacts:
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ModelLoadError(f"model: {path}: {read_from} is not a Keras model config; save the model again")
    body = config["config"]
    layers = [entry for entry in body.get("layers") or [] if isinstance(entry, dict)]
    by_name = {str(entry.get("name") or (entry.get("config") or {}).get("name")): entry for entry in layers}
    wanted = body.get("input_layers")
    if isinstance(wanted, list) and wanted and isinstance(wanted[0], str):
        wanted = [wanted]  # one input: [name, 0, 0]
    inputs: list[InputFact] = []
    if isinstance(wanted, list) and wanted:  # a functional model names its input layers
        for ref in wanted:
            entry = by_name.get(str(ref[0])) if isinstance(ref, list) and ref else None
            shape = _keras_shape(entry["config"]) if entry else None
            if entry is None or shape is None:
                inputs = []
                break
            inputs.append(InputFact(str(ref[0]), shape, _keras_dtype(entry["config"])))
    elif layers:  # Sequential: an InputLayer first (Keras 3), or the first layer's batch_input_shape (Keras 2)
        first = layers[0].get("config") or {}
        shape = _keras_shape(first)
        if shape is None:
            build = (config.get("build_config") or {}).get("input_shape")
            if isinstance(build, list) and all(d is None or isinstance(d, int) for d in build):
                shape = tuple(build)
        if shape is not None:
            inputs.append(InputFact(str(first.get("name") or "input"), shape, _keras_dtype(first)))
    every = list(_layers(body))
    formats = {str(e["config"].get("data_format")) for e in every}
    custom = sorted(
        {
            str(e.get("registered_name") or e["class_name"])
            for e in every
            if isinstance(e.get("module"), str) and not str(e["module"]).startswith("keras")
        }
    )
    unread = None if inputs else f"{read_from} names no input shape (a subclassed model?); look at model.inputs"
    return ModelFacts(
        path,
        fmt,
        tuple(inputs),
        read_from,
        unread,
        channels_first="channels_first" in formats,
        rescales=any(e["class_name"] in ("Rescaling", "Normalization") for e in every),
        custom_classes=tuple(custom),
    )


def _saved_model(path: Path) -> ModelFacts:
    from converter.sources.saved_model_guard import read_proto  # the guard's protobuf reader: parses, runs nothing

    read_from = "the serving_default signature of saved_model.pb"
    try:
        proto = read_proto(path)
    except ImportError as e:
        return ModelFacts(
            path,
            "saved_model",
            unread=f"reading saved_model.pb needs TensorFlow's protobuf classes ({e}); install the convert extra",
        )
    signatures = proto.meta_graphs[0].signature_def
    if "serving_default" not in signatures:
        names = ", ".join(sorted(k for k in signatures if not k.startswith("__"))) or "none"
        return ModelFacts(
            path,
            "saved_model",
            unread=f"saved_model.pb has no serving_default signature (signatures: {names}); export one",
        )
    signature = signatures["serving_default"]
    inputs = []
    for key in sorted(signature.inputs):
        info = signature.inputs[key]
        dims = () if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
        shape = tuple(None if d < 0 else d for d in dims)
        inputs.append(InputFact(key, shape, _TF_DTYPES.get(int(info.dtype))))
    return ModelFacts(path, "saved_model", tuple(inputs), read_from)


def _pt2(path: Path) -> ModelFacts:
    from converter.sources.pt2_guard import EXPORT_HINT, ZipView, check_pt2

    check_pt2(path)  # refuses what loading could run; what follows reads JSON only
    try:
        with zipfile.ZipFile(path) as archive:
            program = json.loads(ZipView(path, archive).read("models/model.json").decode("utf-8"))
        graph = program["graph_module"]["graph"]
        values = graph["tensor_values"]
        inputs = []
        for spec in program["graph_module"]["signature"]["input_specs"]:
            user = spec.get("user_input") if isinstance(spec, dict) else None
            if user is None:
                continue  # parameters, buffers and constants
            name = user["arg"]["as_tensor"]["name"] if "as_tensor" in user["arg"] else None
            if name is None:
                return ModelFacts(
                    path, "torch", unread="a user input is not a tensor; look at the exported program's signature"
                )
            meta = values[name]
            shape = tuple(_size(d) for d in meta["sizes"])
            inputs.append(InputFact(str(name), shape, _TORCH_DTYPES.get(int(meta["dtype"]))))
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError, RecursionError) as e:
        raise ModelLoadError(f"model: {path}: is a damaged torch.export archive ({e}); {EXPORT_HINT}") from e
    return ModelFacts(path, "torch", tuple(inputs), "models/model.json in the .pt2 archive")


def _size(dim: Any) -> int | None:
    """A serialized torch size: ``{"as_int": 8}``, or None for a symbolic one (``{"as_expr": ...}``)."""
    value = dim.get("as_int") if isinstance(dim, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _onnx(path: Path) -> ModelFacts:
    return ModelFacts(
        path,
        "onnx",
        unread="edgeconv reads .onnx files only inside onnx2tf's own virtualenv, never in its own process; "
        "look the inputs up in Netron, or with onnx.load(path).graph.input",
    )
