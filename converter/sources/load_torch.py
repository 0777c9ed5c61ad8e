"""PyTorch sources: a ``torch.export`` archive (.pt2) becomes the float .tflite reference with litert-torch.

The vendor toolkit fenced here is Google's ``litert-torch`` (checked: 0.10.0 with torch 2.13.0+cpu). It
runs in a child process (``torch_worker``) after ``pt2_guard`` has inspected the archive, so neither a
crash of its native converter nor anything in the file reaches edgeconv's process; a crash is a
``ConversionError`` that names the step. One of its habits is undone here: it writes a metadata entry
``keep_stablehlo_constant``, with which TensorFlow's quantizer (``mlir_quantize``) keeps CONV_2D and
FULLY_CONNECTED float between DEQUANTIZE/QUANTIZE ops; edgeconv's output is full-integer, so
``load.load_model`` removes the entry from every float model, also a .tflite that litert-torch wrote
(``tests/integration/test_torch_source.py`` checks the int8 models have no float op). A pickled
``.pt``/``.pth`` file is never loaded (``refused_pickle``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from converter.errors import ConversionError, ModelLoadError
from converter.quantization.tflite_quantizer import finish_prefetch, prefetch_tensorflow
from converter.sources import float_check
from converter.sources.pt2_guard import EXPORT_HINT, check_pt2
from converter.tflite import flatbuffer_schema as tflite_schema

log = logging.getLogger(__name__)

INSTALL_TORCH = 'pip install "edgeconv[torch]"'
# Metadata litert-torch writes that makes TensorFlow's quantizer leave CONV_2D/FULLY_CONNECTED float.
DROPPED_METADATA = (b"keep_stablehlo_constant",)
TIMEOUT_S = 1800.0  # a large model converts in minutes; a hung converter must still end
_RESULT = "EDGECONV-RESULT "


def refused_pickle(path: Path) -> ModelLoadError:
    """Why a ``.pt``/``.pth`` file is not read, and how to make the file edgeconv takes."""
    return ModelLoadError(
        f"model: {path}: a '{path.suffix}' file is a pickle (torch.save) or TorchScript archive; loading it "
        "(torch.load, torch.jit.load) unpickles Python objects, which can run any code on this machine, and a "
        "whole module saved this way also needs its class's source code. edgeconv never loads it: "
        f"{EXPORT_HINT}, then set model: model.pt2 in the recipe"
    )


def check_installed(path: Path) -> None:
    """Fail before any work when the ``torch`` extra is missing (exit 2, with the install command)."""
    missing = [m for m in ("torch", "litert_torch") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelLoadError(
            f"model: {path}: a PyTorch source needs {' and '.join(repr(m) for m in missing)}, not installed in "
            f"this Python; install the extra with {INSTALL_TORCH} (on a machine without a GPU, take the CPU-only "
            "build of torch first, from PyTorch's own 'cpu' wheel index, or pip pulls the CUDA build, about 2.8 GB)"
        )


def versions() -> tuple[str, str]:
    """The installed torch and litert-torch versions (for the cache key), without importing them."""
    out = []
    for name in ("torch", "litert-torch"):
        try:
            out.append(metadata.version(name))
        except metadata.PackageNotFoundError:
            out.append("none")
    return out[0], out[1]


def cache_facts(layout: str) -> tuple[str, ...]:
    """What besides the file's bytes decides the float model: the route, its versions and the layout."""
    torch_version, litert_version = versions()
    return (
        "torch.export",
        f"torch {torch_version}",
        f"litert-torch {litert_version}",
        f"layout {layout}",
        "named inputs, short tensor names",
        f"float check {float_check.MIN_DB:g} dB",  # a model cached before the check is converted and checked again
    )


def torch_to_tflite(path: Path, layout: str) -> tuple[bytes, str]:
    """The float .tflite of a .pt2 archive, channel-last I/O for 4-D tensors when ``layout`` is nhwc."""
    check_installed(path)
    check_pt2(path)
    with tempfile.TemporaryDirectory(prefix="edgeconv-torch-") as tmp:
        folder = Path(tmp)
        job = {"model": str(path.resolve()), "layout": layout, "out": str(folder / "float.tflite")}
        (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
        prefetch_tensorflow()  # the quantizer needs it next: its import overlaps the child's conversion
        try:
            result = _run_worker(folder / "job.json", path)
        finally:
            finish_prefetch()
        if "refused" in result:
            if result.get("whole"):
                raise ModelLoadError(result["refused"])
            raise ModelLoadError(f"model: {path}: refused: {result['refused']}; {EXPORT_HINT}")
        content = (folder / "float.tflite").read_bytes()
    content, shortened = tidy_names(content, result.get("input_names"))
    moved = result["channel_last_inputs"] or result["channel_last_outputs"]
    loader = f"torch.export.load (torch {result['torch']}) + litert-torch {result['litert_torch']}"
    loader += ", channel-last I/O (NHWC)" if moved else ""
    loader += f", {shortened} tensor names shortened to module paths" if shortened else ""
    dynamic = result.get("dynamic_batch") or []
    loader += (
        f", dimension 0 of {', '.join(repr(n) for n in dynamic)} exported as dynamic and converted at 1 (the batch)"
        if dynamic
        else ""
    )
    note = float_check.loader_note(
        path,
        result.get("float_check") or {},
        "litert-torch",
        "PyTorch",
        "the exported program",
        "litert-torch mis-converts an op of this model: export it to ONNX (torch.onnx.export) and convert that, "
        "or report the model to litert-torch",
    )
    return content, loader + note.replace("; ", ", ", 1)


def _run_worker(job: Path, path: Path) -> dict[str, Any]:
    step = "converting the PyTorch model with litert-torch (child process)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "converter.sources.torch_worker", str(job)],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise ConversionError(f"model: {path}: {step} did not finish within {TIMEOUT_S:g} s") from e
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode == 0 and lines:
        result: dict[str, Any] = json.loads(lines[-1][len(_RESULT) :])
        return result
    tail = " / ".join(line.strip() for line in done.stderr.strip().splitlines()[-3:] if line.strip())
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else "a signal"
        raise ConversionError(
            f"model: {path}: {step} crashed ({name}) in native code; edgeconv's own process is unharmed. "
            f"Last output: {tail or 'none'}. Report it to litert-torch with the model, or simplify the layer it names"
        )
    raise ConversionError(f"model: {path}: {step} failed (exit {done.returncode}): {tail or 'no output'}")


def drop_metadata(content: bytes, names: tuple[bytes, ...]) -> tuple[bytes, tuple[bytes, ...]]:
    """``content`` without the metadata entries ``names`` (their buffers emptied); which were there."""
    if not any(name in content for name in names):  # an entry's name is stored as its bytes: none can be there
        return content, ()
    model = tflite_schema.load(content)
    entries = list(model.metadata or [])
    dropped = tuple(bytes(m.name) for m in entries if bytes(m.name) in names)
    if not dropped:
        return content, ()
    for entry in entries:
        if bytes(entry.name) in names:
            model.buffers[entry.buffer].data = None
    model.metadata = [m for m in entries if bytes(m.name) not in names]
    return tflite_schema.dump(model), dropped


def tidy_names(content: bytes, names: list[str] | None) -> tuple[bytes, int]:
    """Readable tensor names in one pass: inputs after ``forward``'s parameters, the rest by module path.

    litert-torch names the inputs ``args_0``, ``args_1`` and every other tensor by its MLIR location,
    the qualified class and attribute of each module on the way, repeated once per fused op
    (``__main__.Net/torch.nn.modules.conv.Conv2d_conv1;;__main__.Net/torch.nn.…``): hundreds of
    characters a tensor, kept in the flatbuffer, so microcontroller flash (about 17 % of a MobileNetV2's
    int8 model) and unreadable in the report's per-layer tables. Each such name becomes the attribute
    path of its first location with litert-torch's index (``conv1;2``), made unique; ``arith.constant``
    and the like stay. Inputs are renamed in the signature and the tensors (``serving_default_<name>``),
    not by giving litert-torch keyword inputs: that wraps the module and prefixes every name. Returns
    the model and how many names were shortened.
    """
    model = tflite_schema.load(content)
    graph = model.subgraphs[0]
    signatures = model.signatureDefs or []
    renamed_inputs: set[int] = set()
    if names and len(signatures) == 1 and len(graph.inputs) == len(names):
        positional = {f"args_{i}": name for i, name in enumerate(names)}
        entries = signatures[0].inputs or []
        keys = [e.name.decode() if isinstance(e.name, bytes) else str(e.name) for e in entries]
        if all(k in positional for k in keys):  # litert-torch's positional names: rename
            for entry, key in zip(entries, keys, strict=True):
                entry.name = positional[key]
                graph.tensors[entry.tensorIndex].name = f"serving_default_{positional[key]}"
                renamed_inputs.add(int(entry.tensorIndex))
    taken: set[str] = set()
    shortened = 0
    for index, tensor in enumerate(graph.tensors):
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name or "")
        short = name if index in renamed_inputs else _short_name(name)
        candidate, n = short, 1
        while candidate in taken:
            n += 1
            candidate = f"{short}#{n}"
        taken.add(candidate)
        if candidate != name:
            tensor.name = candidate
            shortened += index not in renamed_inputs
    if not shortened and not renamed_inputs:
        return content, 0
    return tflite_schema.dump(model), shortened


def _short_name(name: str) -> str:
    """``a.B/pkg.Conv2d_conv1/pkg.ReLU_act;;…;3`` -> ``conv1/act;3``; other names unchanged."""
    if "/" not in name and ";" not in name:
        return name
    first, _, rest = name.partition(";")
    index = rest.rsplit(";", 1)[-1] if rest else ""
    attributes = []
    for component in first.split("/"):
        _, underscore, attribute = component.rsplit(".", 1)[-1].partition("_")
        if underscore and attribute:
            attributes.append(attribute)
    base = "/".join(attributes) or first.rsplit(".", 1)[-1] or "t"
    return f"{base};{index}" if index else base
