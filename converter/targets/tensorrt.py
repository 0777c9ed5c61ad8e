"""NVIDIA GPUs with TensorRT: a Q/DQ ONNX model and a calibration cache from the recipe's own calibration.

TensorRT takes ONNX, not TFLite, so this backend works on an ONNX form of the source model (``route``): an
``.onnx`` source as given, a ``.pt2`` archive through ``torch.onnx.export``, and every other source (Keras
``.keras``/``.h5``, SavedModel, float ``.tflite``) through tf2onnx's TFLite reader applied to the float ``.tflite``
reference the pipeline already made: one route for all of them, and the same graph the TFLite int8 model was
calibrated on. In a child process (``tensorrt_worker``, onnx + onnxruntime on the CPU, tf2onnx where needed) the
ONNX graph's activations are observed on the pipeline's calibration samples, ranges chosen with edgeconv's range
code (``calibration.ranges``: the recipe's method; ``minmax`` takes ``mse``'s thresholds on TensorRT's symmetric
grid), at most 2 layers left fp16 when the all-int8 model misses 99 % top-1 agreement with float on the calibration
samples, and ``qdq`` writes

- ``firmware/<target>/model_qdq.onnx``: the float model with QuantizeLinear/DequantizeLinear pairs where
  TensorRT's explicit-quantization rules want them (symmetric int8, weights per output channel, activations per
  tensor); ``trtexec --onnx=model_qdq.onnx --int8`` (or ``--stronglyTyped`` on TensorRT 10) builds the engine;
- ``firmware/<target>/calibration.cache``: the same ranges as TensorRT's calibration table, for implicit
  quantization of the float ONNX model (``IInt8Calibrator.readCalibrationCache``).

Checked here: onnxruntime runs the Q/DQ model on the evaluation samples; its top-1 is reported against the
float ONNX model and against our TFLite int8 model (``accuracy.where: onnxruntime-qdq``: a CPU simulation of the
int8 rounding, float accumulation, not a GPU figure). Engine build and latency need an NVIDIA GPU and the
``tensorrt`` package: ``gpu`` says so, with nulls, never a guess. onnx 1.23.2 / onnxruntime 1.32.0 / tf2onnx
1.17.0 (with TensorFlow 2.21, numpy 2.4, protobuf 7: its requirements are unpinned, so it shares edgeconv's
environment) checked; ``tests/integration/test_tensorrt.py`` runs every route for real.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.calibration.data import model_inputs, read_samples
from converter.devices import DeviceProfile, TensorRTSpec
from converter.errors import UserInputError
from converter.runtime.accuracy import classifies, is_reconstruction, output_error
from converter.runtime.model import TFLiteModel, input_arrays
from converter.targets import qdq
from converter.targets.base import Check, Context

log = logging.getLogger(__name__)

TIMEOUT_S = 1800.0
ARTIFACT = "model_qdq.onnx"
CACHE = "calibration.cache"
WHERE = "onnxruntime-qdq"
INSTALL = 'pip install "edgeconv[tensorrt]" (onnx, onnxruntime and tf2onnx)'
NO_GPU = "no NVIDIA GPU / tensorrt package here"
# What each route runs besides edgeconv: onnx and onnxruntime always, tf2onnx (and the TensorFlow it imports)
# for the float .tflite, torch for the .pt2 export (the torch extra, checked when the source is loaded).
PACKAGES = {
    "onnx": ("onnx", "onnxruntime"),
    "pt2": ("onnx", "onnxruntime"),
    "tflite": ("onnx", "onnxruntime", "tf2onnx"),
}
_RESULT = "EDGECONV-RESULT "


class TensorRTError(Exception):
    """The worker refused the model, failed, crashed or timed out; the message says which."""


@dataclass(frozen=True)
class Route:
    """How this recipe's source reaches ONNX: ``onnx`` (as given), ``pt2`` (exported), ``tflite`` (tf2onnx)."""

    kind: str
    path: Path
    source: str  # the source's format, as the report names it


def route(model: Path) -> Route:
    """The ONNX route for the recipe's ``model`` path (the user's path, as the recipe gives it).

    Keras, SavedModel and ``.tflite`` sources all go through the float ``.tflite`` the pipeline made from them:
    tf2onnx reads that one format for all of them, without loading the user's Keras code or SavedModel again.
    """
    suffix = model.suffix.lower()
    if suffix == ".onnx":
        return Route("onnx", model, "onnx")
    if suffix == ".pt2":
        return Route("pt2", model, "pt2")
    return Route("tflite", model, "saved_model" if model.is_dir() else suffix.lstrip("."))


def missing_packages(way: Route | None = None) -> list[str]:
    """Of the packages ``way`` needs (onnx and onnxruntime without one), those not installed in this Python."""
    needed = PACKAGES[way.kind] if way is not None else PACKAGES["onnx"]
    return [m for m in needed if importlib.util.find_spec(m) is None]


def check_installed(model: Path, what: str) -> None:
    """Exit 2 before any work when the route from ``model`` to ONNX needs a package that is not installed."""
    way = route(model)
    missing = missing_packages(way)
    if missing:
        via = {"onnx": "the .onnx as given", "pt2": "torch.onnx.export", "tflite": "tf2onnx of the float .tflite"}
        raise UserInputError(
            f"{what} makes its Q/DQ ONNX model from {model.name} through {via[way.kind]} and needs "
            f"{' and '.join(missing)}, not installed in this Python: {INSTALL}"
        )


def _samples(ctx: Context) -> tuple[list[str], list[np.ndarray], list[np.ndarray] | None]:
    """Input names and the calibration (and evaluation) samples per input, as the pipeline preprocessed them.

    The calibration samples are the context's (the rows the TFLite calibration used); a context built without
    them (a caller of ``check_targets`` other than the pipeline) has them read with the pipeline's reader and
    preprocessing contract (``read_samples``: seeded, so the same rows).
    """
    recipe = ctx.recipe
    model = TFLiteModel(model_content=ctx.model, delegate="none")
    inputs = model_inputs(model)
    cal = ctx.calibration
    if cal is None:
        src = recipe.data.calibration
        cal, _ = read_samples(
            src.path,
            inputs,
            recipe.preprocess(),
            where=f"{recipe.source}: data.calibration",
            samples=src.samples,
            seed=src.seed,
            layout=recipe.input.layout,
            reshape=recipe.input.reshape,
        )
    names = [i.name for i in inputs]
    evaluation = None
    if ctx.samples is not None and ctx.samples_kind == "evaluation":
        evaluation = input_arrays(ctx.samples, model.inputs)
    return names, input_arrays(cal, model.inputs), evaluation


def run_worker(job: dict[str, Any], folder: Path, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    """One worker run (``tensorrt_worker``); its refusal, failure, crash or hang is a ``TensorRTError``."""
    (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "-1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",  # tf2onnx imports TensorFlow: keep its banner out of the error tail
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "converter.targets.tensorrt_worker", str(folder / "job.json")],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise TensorRTError(f"the ONNX calibration worker did not finish within {timeout_s:g} s") from e
    tail = " / ".join(line.strip() for line in done.stderr.strip().splitlines()[-3:] if line.strip()) or "no output"
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else "a signal"
        raise TensorRTError(f"onnxruntime crashed ({name}) in the ONNX calibration worker; its last words: {tail}")
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode != 0 or not lines:
        raise TensorRTError(f"the ONNX calibration worker failed (exit {done.returncode}): {tail}")
    answer: dict[str, Any] = json.loads(lines[-1][len(_RESULT) :])
    if not answer.get("ok"):
        raise TensorRTError(str(answer.get("error")))
    return answer


@dataclass(frozen=True)
class QdqRun:
    """One worker run, shared by every TensorRT target of the recipe."""

    answer: dict[str, Any]
    model: bytes
    amax: dict[str, float]
    outputs: dict[str, np.ndarray]


def _run(ctx: Context, way: Route) -> QdqRun:
    names, cal, evaluation = _samples(ctx)
    spec = ctx.recipe.calibration
    with tempfile.TemporaryDirectory(prefix="edgeconv-tensorrt-") as tmp:
        folder = Path(tmp)
        arrays = {f"cal:{n}": a for n, a in zip(names, cal, strict=True)}
        if evaluation is not None:
            arrays.update({f"eval:{n}": a for n, a in zip(names, evaluation, strict=True)})
        np.savez(folder / "samples.npz", **arrays)  # type: ignore[arg-type]
        if way.kind == "tflite":
            if ctx.float_model is None:
                raise TensorRTError(
                    f"the float .tflite made from {way.path.name} was not handed to the TensorRT target; "
                    "tf2onnx needs it (pass float_model to check_targets)"
                )
            (folder / "model_float.tflite").write_bytes(ctx.float_model)
            given = folder / "model_float.tflite"
        else:
            given = way.path.resolve()
        job = {
            "folder": str(folder),
            way.kind: str(given),
            "source": way.source,
            "input_names": names,
            "evaluate": evaluation is not None,
            "method": spec.method,
            "percentile": spec.percentile,
            "rules": [{"tensors": r.tensors, "method": r.method, "percentile": r.percentile} for r in spec.rules],
            "seed": ctx.recipe.data.calibration.seed,
            "header": qdq.cache_header("10.0.0"),  # rewritten per target below
        }
        log.info("tensorrt   Q/DQ ONNX from %s (onnxruntime on %d calibration samples)", way.path.name, len(cal[0]))
        answer = run_worker(job, folder)
        _, amax = qdq.parse_calibration_cache((folder / CACHE).read_text(encoding="utf-8"))
        amax = {k: v * qdq.QMAX for k, v in amax.items()}
        outputs: dict[str, np.ndarray] = {}
        if (folder / "outputs.npz").is_file():
            with np.load(folder / "outputs.npz") as out:
                outputs = {k: out[k] for k in out.files}
        return QdqRun(answer, (folder / ARTIFACT).read_bytes(), amax, outputs)


def _tflite_top(ctx: Context) -> np.ndarray | None:
    """Our TFLite int8 model's first output on the evaluation samples (as the host evaluation runs it)."""
    if ctx.samples is None:
        return None
    if "tensorrt:tflite" not in ctx.shared:
        ctx.shared["tensorrt:tflite"] = TFLiteModel(model_content=ctx.model).predict(ctx.samples)[0]
    out: np.ndarray = ctx.shared["tensorrt:tflite"]
    return out


def accuracy_section(ctx: Context, run: QdqRun) -> dict[str, Any]:
    """The Q/DQ model (onnxruntime) against the float ONNX model, the labels and our TFLite int8 model."""
    section: dict[str, Any] = {
        "where": WHERE,
        "note": "CPU simulation on onnxruntime: weights and activations rounded to TensorRT's int8 grid, float "
        "accumulation; not measured on a GPU",
        "data": ctx.samples_kind,
    }
    if "qdq" not in run.outputs:
        return {**section, "samples": 0, "metric": None, "reason": "no evaluation data in the recipe"}
    flt, q = run.outputs["float"], run.outputs["qdq"]
    n = len(q)
    section.update(samples=n, outputs=[output_error("output 0 (float ONNX vs Q/DQ ONNX)", flt, q)])
    ours = _tflite_top(ctx)
    labels = ctx.labels
    if q.ndim == 2 and classifies(q, is_reconstruction(q, ctx.samples)):
        q_top, f_top = np.argmax(q, axis=1), np.argmax(flt, axis=1)
        if labels is not None:
            section.update(
                metric="top1",
                float=float(np.mean(f_top == labels[:n])),
                int8=float(np.mean(q_top == labels[:n])),
            )
            section["drop"] = section["float"] - section["int8"]
        else:
            section["metric"] = "agreement"
        section["agreement_vs_float"] = float(np.mean(q_top == f_top))
        section["agreement"] = section["agreement_vs_float"]  # what the min_agreement gate reads, as on the host
        if ours is not None and ours.ndim == 2 and ours.shape == q.shape:
            our_top = np.argmax(ours, axis=1)
            section["agreement_vs_tflite_int8"] = float(np.mean(q_top == our_top))
            if labels is not None:
                section["tflite_int8"] = float(np.mean(our_top == labels[:n]))
    else:
        section.update(metric="sqnr", sqnr_db_vs_float=section["outputs"][0]["sqnr_db"])
    return section


def _gpu() -> dict[str, Any]:
    installed = importlib.util.find_spec("tensorrt") is not None
    reason = (
        NO_GPU
        if not installed
        else "the tensorrt package is installed, but this version of edgeconv builds no engine: "
        f"trtexec --onnx={ARTIFACT} --int8 builds one on the device"
    )
    return {"engine": None, "engine_bytes": None, "latency_ms": None, "reason": reason}


def _device(spec: TensorRTSpec) -> dict[str, Any]:
    return {
        "tensorrt": spec.version,
        "jetpack": spec.jetpack,
        "gpu": spec.gpu,
        "compute_capability": spec.compute_capability,
        "int8": spec.int8,
        "memory_bytes": spec.memory_bytes,
        "ai_tops": spec.ai_tops,
    }


def check(ctx: Context, name: str, profile: DeviceProfile) -> Check:
    """The Q/DQ ONNX model and calibration cache for the profile's TensorRT, checked with onnxruntime."""
    spec = profile.tensorrt
    if spec is None:  # devices.load_device refuses this; a profile built by hand may not
        return Check(problems=[f"profile {profile.name} has runtime tensorrt but no tensorrt section"])
    way = route(ctx.recipe.model)
    base: dict[str, Any] = {"device": _device(spec), "gpu": _gpu()}
    missing = missing_packages(way)  # the pipeline refuses this before any work; a hand-built context may not
    if missing:
        return Check(
            {**base, "status": "failed", "artifact": None, "accuracy": None},
            problems=[f"the TensorRT target needs {' and '.join(missing)}, not installed in this Python: {INSTALL}"],
        )
    if "tensorrt:run" not in ctx.shared:
        try:
            ctx.shared["tensorrt:run"] = _run(ctx, way)
        except TensorRTError as e:
            ctx.shared["tensorrt:run"] = e
    run = ctx.shared["tensorrt:run"]
    if isinstance(run, TensorRTError):
        return Check(
            {**base, "status": "failed", "artifact": None, "accuracy": None, "error": str(run)},
            problems=[f"the Q/DQ ONNX model could not be made: {run}"],
        )
    out = Check()
    header = qdq.cache_header(spec.version)
    cache = qdq.calibration_cache(header, run.amax).encode()
    folder = f"firmware/{profile.name}"
    answer = run.answer
    out.section.update(
        base,
        status="built",
        onnx={
            "from": str(way.path),
            "route": way.kind,
            "made_by": answer["origin"],
            "layout": answer["layout"],
            "opset": answer["opset"],
        },
        quantization={
            "scheme": "int8 symmetric (zero point 0); weights per output channel, activations per tensor",
            "placement": "edgeconv (TensorRT's explicit-quantization rules; see docs/targets/tensorrt.md)",
            "calibration_method": ctx.recipe.calibration.method,
            "methods_used": answer["methods"],
            "calibration_samples": answer["calibration_samples"],
            **answer["summary"],
        },
        artifact={
            "path": f"{folder}/{ARTIFACT}",
            "bytes": len(run.model),
            # tf2onnx's names and transpose folding vary from run to run (equal outputs); the other routes do not
            "deterministic": way.kind != "tflite",
        },
        calibration_cache={"path": f"{folder}/{CACHE}", "header": header, "tensors": len(run.amax)},
        tools={**answer["versions"], "seconds": answer["seconds"]},
        accuracy=accuracy_section(ctx, run),
    )
    if not spec.int8:
        out.problems.append(
            f"TensorRT has no INT8 kernels for {spec.gpu or 'this GPU'} (compute capability "
            f"{spec.compute_capability or 'below 6.1'}): neither {ARTIFACT} nor {CACHE} gives an int8 engine there "
            "(TensorRT would build FP16 or FP32); the files are written for GPUs that have them"
        )
    out.files = {f"{folder}/{ARTIFACT}": run.model, f"{folder}/{CACHE}": cache}
    out.section["firmware"] = sorted(out.files)
    return out
