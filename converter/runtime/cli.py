"""The device-side command: latency and accuracy of .tflite models, printed as one JSON document.

    python edgeconv_runtime.pyz bench --model model_int8.tflite --float model_float.tflite \\
        --data eval.npz --scale 0.0039 --threads 4 --delegate xnnpack

Stdlib at import time; numpy and the interpreter are imported inside ``main`` so a device
that lacks them gets a JSON error naming the package to install, not a traceback.
Exit codes: 0 ok, 2 bad input, 3 the device cannot run it (missing package, delegate, failure).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SCHEMA = "edgeconv-runtime/1"


class RuntimeInputError(Exception):
    """Bad model file or data given to the runtime."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeconv-runtime", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="latency (and accuracy with --data) of one or two models")
    bench.add_argument("--model", required=True, type=Path, help="the model to measure (usually int8)")
    bench.add_argument("--float", dest="float_model", type=Path, help="its float reference, measured alongside")
    bench.add_argument(
        "--data",
        type=Path,
        help=".npz with x (raw samples) and optional y (labels); a model with several inputs: one array per input, "
        "keyed by input name",
    )
    bench.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"))
    bench.add_argument("--scale", type=float, default=1.0)
    bench.add_argument("--offset", type=float, default=0.0)
    bench.add_argument("--threads", type=int, help="interpreter threads (default: every core)")
    bench.add_argument("--delegate", default="xnnpack", choices=["xnnpack", "none", "edgetpu"])
    bench.add_argument(
        "--float-delegate", help="delegate for the float model (default: --delegate; xnnpack with edgetpu)"
    )
    bench.add_argument(
        "--rknn", type=Path, help="a .rknn built from --model, run on the NPU with rknn-toolkit-lite2 when installed"
    )
    bench.add_argument("--warmup", type=int, default=10)
    bench.add_argument("--runs", type=int, default=50)
    bench.add_argument("--min-seconds", type=float, default=1.0)
    bench.add_argument("--max-runs", type=int, default=100_000, help="at most this many timed runs")
    bench.add_argument("--top-k", type=int)
    bench.add_argument("--label", default="device", help="where this runs, recorded with the accuracy")
    sub.add_parser("info", help="the machine and interpreter this would run with")
    return parser


def _load(path: Path, threads: int | None, delegate: str) -> Any:
    from .model import TFLiteModel

    if not path.is_file():
        raise RuntimeInputError(f"{path}: model file not found")
    head = path.read_bytes()[:8]
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise RuntimeInputError(f"{path}: not a TFLite model (no 'TFL3' identifier)")
    try:
        return TFLiteModel(model_path=str(path), num_threads=threads, delegate=delegate)
    except (ValueError, RuntimeError) as e:
        if "delegate" in type(e).__name__.lower():
            raise
        raise RuntimeInputError(f"{path}: the interpreter cannot load it: {e}") from e


def _is_integer(info: Any) -> bool:
    """An input that takes integers as they are (ids, masks, indices): an integer or bool tensor without a scale."""
    import numpy as np

    return bool(np.dtype(info.dtype).kind in "biu" and info.scale is None)


def _integers(a: Any, info: Any, where: str) -> Any:
    """Samples for an integer input (``_is_integer``): integers stored as such, checked to fit its dtype, cast to it.

    No preprocessing touches them (edgeconv refuses recipes that scale or resize an integer input), and
    float data is refused as edgeconv's data checks refuse it: a float id means the ids were preprocessed.
    """
    from .model import quantize

    if a.dtype.kind not in "biu":
        raise RuntimeInputError(
            f"{where}: input '{info.name}' takes {info.dtype} integers (ids, indices or masks) as they are, but the "
            f"samples are {a.dtype}; store them as integers"
        )
    try:
        return quantize(a, info)  # a range check and the cast (runtime.model)
    except ValueError as e:
        raise RuntimeInputError(f"{where}: {e}") from e


def _packed_samples(args: argparse.Namespace, model: Any) -> tuple[Any, Any]:
    """Samples of a model with several inputs: one array per input in the .npz, keyed by input name.

    A float input's array is read as float32; an integer input's keeps its integers (``_integers``).
    """
    import numpy as np

    from .model import pack_inputs, signature_names

    keys = signature_names(model.interpreter)
    try:
        with np.load(args.data, allow_pickle=False) as npz:
            files = [f for f in npz.files if f != "y"]
            arrays = {}
            for position, info in enumerate(model.inputs):
                names = [info.name, keys.get(info.index, info.name)]
                key = next((n for n in names if n in files), None)
                if key is None and len(files) == len(model.inputs):
                    key = files[position]  # written by edgeconv for the float model, whose names may differ
                if key is None:
                    raise RuntimeInputError(
                        f"{args.data}: no array for the model input '{names[-1]}'; it has: {', '.join(files)}"
                    )
                stored = npz[key]  # an integer input's array as stored: checked and cast below (``_integers``)
                arrays[info.name] = stored if _is_integer(info) else np.asarray(stored, dtype=np.float32)
            y = npz["y"] if "y" in npz.files else None
    except (OSError, KeyError, ValueError) as e:
        raise RuntimeInputError(f"{args.data}: cannot read the input arrays from it: {e}") from e
    if args.resize or args.scale != 1.0 or args.offset != 0.0:
        raise RuntimeInputError("--resize/--scale/--offset apply to single-input models; this model has several")
    for info in model.inputs:
        a = arrays[info.name]
        if a.ndim == len(info.shape) - 1 and info.shape[-1] == 1:
            arrays[info.name] = a = a[..., None]
        if tuple(a.shape[1:]) != tuple(info.shape[1:]):
            raise RuntimeInputError(
                f"{args.data}: input '{info.name}' samples have shape {list(a.shape[1:])}, "
                f"the model expects {list(info.shape[1:])}"
            )
        if _is_integer(info):
            arrays[info.name] = _integers(a, info, str(args.data))
            continue
        if not np.isfinite(a).all():
            raise RuntimeInputError(f"{args.data}: input '{info.name}' samples contain NaN or Inf")
    if len({len(a) for a in arrays.values()}) > 1:
        raise RuntimeInputError(f"{args.data}: the input arrays hold different numbers of samples")
    return pack_inputs(arrays), y


def _samples(args: argparse.Namespace, info: Any) -> tuple[Any, Any]:
    """Samples of a single-input model: ``x`` preprocessed by the contract, or, for an integer input, as stored.

    An integer input (``_is_integer``) takes no preprocessing: ``--resize``/``--scale``/``--offset`` other
    than their defaults are refused for it (they would turn ids into other ids or fractions).
    """
    import numpy as np

    from .preprocess import Preprocess

    shape = info.shape
    try:
        with np.load(args.data, allow_pickle=False) as npz:
            if "x" not in npz.files:  # a data file of several inputs, or keyed by the input's name
                raise RuntimeInputError(
                    f"{args.data}: no array 'x'; it has {', '.join(npz.files) or 'none'}. This model has one input "
                    f"('{info.name}'): store its samples as x (and the labels as y)"
                )
            x, y = npz["x"], (npz["y"] if "y" in npz.files else None)
    except (OSError, KeyError, ValueError) as e:
        raise RuntimeInputError(f"{args.data}: cannot read x[, y] from it: {e}") from e
    if x.ndim == len(shape) - 1 and shape[-1] == 1:
        x = x[..., None]
    if _is_integer(info):
        if args.resize or args.scale != 1.0 or args.offset != 0.0:
            raise RuntimeInputError(
                f"--resize/--scale/--offset change values, and the model input '{info.name}' takes {info.dtype} "
                "integers (ids, indices or masks) as they are; leave them out"
            )
        if tuple(x.shape[1:]) != tuple(shape[1:]):
            raise RuntimeInputError(
                f"{args.data}: samples have shape {list(x.shape[1:])}, the model expects {list(shape[1:])}"
            )
        return _integers(x, info, str(args.data)), y
    prep = Preprocess(tuple(args.resize) if args.resize else None, args.scale, args.offset)
    try:
        x = prep(x)
    except ValueError as e:
        raise RuntimeInputError(f"{args.data}: preprocessing failed: {e}") from e
    if tuple(x.shape[1:]) != tuple(shape[1:]):
        raise RuntimeInputError(
            f"{args.data}: samples have shape {list(x.shape[1:])} after preprocessing, "
            f"the model expects {list(shape[1:])}"
        )
    if not np.isfinite(x).all():
        raise RuntimeInputError(f"{args.data}: samples contain NaN or Inf after preprocessing")
    return x, y


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Latency of each model, then accuracy on ``--data`` when given."""
    import os

    from .accuracy import compare
    from .latency import measure
    from .machine import machine_info, peak_rss_mb
    from .model import signature_names

    args.threads = args.threads or os.cpu_count() or 1
    models = {"model": _load(args.model, args.threads, args.delegate)}
    if args.float_model:
        # The Edge TPU runs int8 only: its float reference runs on the CPU (XNNPACK) beside it.
        float_delegate = args.float_delegate or ("xnnpack" if args.delegate == "edgetpu" else args.delegate)
        models["float"] = _load(args.float_model, args.threads, float_delegate)
    data = None
    if args.data:
        many = len(models["model"].inputs) > 1
        data = _packed_samples(args, models["model"]) if many else _samples(args, models["model"].inputs[0])
    out: dict[str, Any] = {"schema": SCHEMA, "machine": machine_info(), "models": {}}
    for key, model in models.items():
        sample = data[0][:1] if data is not None else None
        latency = measure(
            model,
            sample,
            warmup=args.warmup,
            runs=args.runs,
            min_seconds=args.min_seconds,
            max_runs=args.max_runs,
            threads=args.threads,
        )
        out["models"][key] = {
            "path": args.model.name if key == "model" else args.float_model.name,
            "input": {"dtype": model.inputs[0].dtype, "shape": list(model.inputs[0].shape)},
            "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in model.inputs],
            "latency": latency.to_json(),
        }
    predictions: dict[str, list[Any]] = {}
    if data is not None and "float" in models:
        x, y = data
        ref, test = models["float"], models["model"]
        predictions = {"float": ref.predict(x), "model": test.predict(x)}
        acc = compare(
            predictions["float"],
            predictions["model"],
            y,
            names=[signature_names(ref.interpreter).get(o.index, o.name) for o in ref.outputs],
            top_k=args.top_k,
            where=args.label,
            inputs=x,
        )
        out["accuracy"] = acc.to_json()
    else:
        out["accuracy"] = None
    if args.rknn:
        out["npu"] = _npu(args, models, data, predictions)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _npu(args: argparse.Namespace, models: dict[str, Any], data: Any, predictions: dict[str, list[Any]]) -> Any:
    """The .rknn on the board's NPU: latency, and its outputs scored like the int8 model's."""
    import numpy as np

    from .accuracy import compare
    from .model import signature_names
    from .rknn_lite import measure

    if not args.rknn.is_file():
        raise RuntimeInputError(f"{args.rknn}: .rknn file not found")
    x = data[0] if data is not None else None
    block = measure(
        str(args.rknn),
        models["model"],
        x,
        warmup=args.warmup,
        runs=args.runs,
        min_seconds=args.min_seconds,
        max_runs=args.max_runs,
    )
    npu = block.pop("outputs", None)
    if npu is None or not predictions:
        block["accuracy"] = None
        return block
    ref, tflite = models["float"], predictions["model"]
    block["accuracy"] = compare(
        predictions["float"],
        npu,
        data[1],
        names=[signature_names(ref.interpreter).get(o.index, o.name) for o in ref.outputs],
        top_k=args.top_k,
        where=f"{args.label} NPU",
        inputs=x,
    ).to_json()
    steps = [
        float(np.max(np.abs(a - b)) / info.scale) if info.scale else None
        for a, b, info in zip(tflite, npu, models["model"].outputs, strict=True)
    ]
    block["vs_tflite_int8"] = {
        "agreement": float(np.mean(np.argmax(tflite[0], 1) == np.argmax(npu[0], 1))) if tflite[0].ndim == 2 else None,
        "max_abs_diff_steps": steps,
    }
    return block


def _fail(kind: str, message: str, code: int) -> int:
    print(json.dumps({"schema": SCHEMA, "error": {"kind": kind, "message": message}}))
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import numpy  # noqa: F401
    except ImportError:
        return _fail("missing_package", "numpy is not installed on this device; install it: pip install numpy", 3)
    from .interpreter import DelegateUnavailable, InterpreterUnavailable, interpreter_module

    try:
        interpreter_module()
        if args.command == "info":
            from .machine import machine_info

            print(json.dumps({"schema": SCHEMA, "machine": machine_info()}))
            return 0
        print(json.dumps(bench(args)))
        return 0
    except InterpreterUnavailable as e:
        return _fail("missing_package", str(e), 3)
    except DelegateUnavailable as e:
        return _fail("delegate", str(e), 3)
    except RuntimeInputError as e:
        return _fail("bad_input", str(e), 2)
    except Exception as e:  # noqa: BLE001 - the device reports every failure as JSON
        return _fail("failed", f"{type(e).__name__}: {e}", 3)


if __name__ == "__main__":
    sys.exit(main())
