"""onnx2tf in its own virtualenv: one ONNX file to one float .tflite per request, JSON in and out.

Run only by the ONNX virtualenv's Python (``edgeconv setup onnx`` makes it), as a child process of
edgeconv: ``python -I onnx_worker.py`` reads one JSON request on stdin and writes one JSON answer on
stdout. It imports nothing from edgeconv (onnx2tf 1.29.24 pins tensorflow==2.19.0, numpy==1.26.4 and
protobuf==4.25.5, none of which can share edgeconv's environment).

Request: ``{"onnx": the user's .onnx, "work": an empty private folder, "out": the .tflite to write}``
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

Security: an ONNX file is protobuf and loading it runs no code; tensors stored as external data name
files by path, so every such path must be relative and stay inside the model's folder (no absolute
path, no ``..``, no symlink out), else the request is refused before onnx2tf reads anything. Custom
operator domains are refused with their names (onnx2tf has no conversion for them and loads no
custom-op libraries).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

CALIBRATION_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"  # onnx2tf's download_test_image_data
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


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


def check_external_data(model: Any, folder: Path) -> int:
    """Refuse external data that points outside the model's folder; returns how many tensors use it."""
    from onnx import TensorProto

    root = folder.resolve()
    count = 0
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        count += 1
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = f"tensor '{tensor.name}' keeps its data in external file '{location}'"
        if not location or Path(location).is_absolute() or ".." in Path(location).parts:
            raise ModelRefused(
                f"{where}, which is not a plain relative path inside the model's folder; external data may only "
                "name files next to the model (re-save it with onnx.save(..., save_as_external_data=True) or as "
                "one file)"
            )
        target = (folder / location).resolve()
        if not target.is_relative_to(root):
            raise ModelRefused(f"{where}, which resolves to {target}, outside the model's folder {root}")
        if not target.is_file():
            raise ModelRefused(f"{where}, which does not exist; copy it next to the model")
    return count


def check_domains(model: Any) -> None:
    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
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
    external = check_external_data(model, source.parent)
    check_domains(model)
    if external:
        onnx.load_external_data_for_model(model, str(source.parent))
    initializers = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    shapes = {v.name: _shape(v) for v in inputs}
    for name, shape in shapes.items():
        if any(isinstance(d, str) for d in shape[1:]):
            raise ModelRefused(
                f"input '{name}' has shape {shape} with a dynamic dimension after the batch; edgeconv needs fixed "
                "shapes (MCU and NPU runtimes are static): export the model with fixed input sizes"
            )
    keep = [name for name, shape in shapes.items() if len(shape) == 3]
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
    try:
        onnx2tf.convert(
            input_onnx_file_path=str(copy),
            output_folder_path=str(work / "out"),
            keep_shape_absolutely_input_names=keep or None,
            enable_rnn_unroll=True,
            batch_size=1 if dynamic_batch else None,
            non_verbose=True,
            verbosity="error",
        )
    except SystemExit as e:
        raise RuntimeError(f"onnx2tf gave up (exit {e.code}); its log above says why") from e
    seconds["onnx2tf"] = round(time.perf_counter() - start, 3)
    produced = work / "out" / "model_float32.tflite"
    if not produced.is_file():
        raise RuntimeError(f"onnx2tf finished without writing {produced.name}")
    out.write_bytes(produced.read_bytes())
    return {
        "ok": True,
        "onnx2tf": _version("onnx2tf"),
        "inputs": [{"name": n, "onnx_shape": s, "kept": n in keep} for n, s in shapes.items()],
        "external_data": external,
        "onnxsim": shutil.which("onnxsim"),  # the virtualenv's own, first on PATH
        "seconds": seconds,
    }


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


if __name__ == "__main__":
    sys.exit(main())
