"""Child process of the TensorRT target: the ONNX model observed, calibrated, given Q/DQ and run by onnxruntime.

Run by ``tensorrt.run_worker`` as ``python -m converter.targets.tensorrt_worker job.json``. It runs apart from
edgeconv's process because onnxruntime, onnx and (for a .pt2 source) torch are native code that a hostile or
unusual model can crash, and because none of them needs to be loaded into the converter's process. Answers
with one line ``EDGECONV-RESULT {json}`` on stdout: ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``
for a model it refuses or cannot handle; anything else (a traceback, a signal) is a failure the parent explains.

Steps, each in the job's folder:

1. the ONNX model: the source file as given, ``torch.onnx.export`` of a ``.pt2`` archive's module
   (TorchScript exporter, opset 17, batch 1; torch's own reader, after ``pt2_guard`` checked the archive), or
   tf2onnx's TFLite reader on the float ``.tflite`` reference the pipeline made (Keras, SavedModel and
   ``.tflite`` sources; opset 17, the TFLite model's NHWC input kept). tf2onnx runs no code from the model: it
   reads the flatbuffer and asks TensorFlow's TFLite interpreter for tensor shapes.
2. statistics: every float activation (``qdq.activation_names``) observed by onnxruntime (CPU) on the
   calibration samples, folded into ``calibration.stats.TensorStats`` exactly as the TFLite pass folds them
   (min/max over all elements, a seeded subsample of ``SUBSAMPLE`` per sample in the 4096-bin histogram).
3. ranges: ``calibration.ranges.choose`` with the recipe's method (and rules, by ONNX tensor name); graph
   inputs take their observed range unless a rule names them; ``minmax`` not named by a rule takes ``mse``'s
   threshold (TensorRT's grid is symmetric: a post-ReLU tensor gets 128 levels). amax = max(|lo|, |hi|).
4. fp16 layers (``_fp16_layers``): when the all-int8 model's top-1 agrees with float on fewer than 99 % of the
   calibration samples, at most 2 layers, the most sensitive on those samples, are left without Q/DQ.
5. ``qdq.insert_qdq`` and ``qdq.calibration_cache``; the Q/DQ model is checked by ``onnx.checker``.
6. the float and the Q/DQ model run by onnxruntime on the evaluation samples (one at a time: exported models
   have a fixed batch of 1); their first outputs are saved for the parent to score.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULT = "EDGECONV-RESULT "
FP16_AIM = 0.99  # top-1 agreement with float on the calibration samples below which layers are left fp16
FP16_MAX_LAYERS = 2


class Refused(Exception):
    """A model this route cannot take (external data, no float input); the message says why."""


def _export_pt2(pt2: Path, out: Path) -> str:
    """``torch.onnx.export`` of the archive's module (TorchScript exporter: no onnxscript needed)."""
    import warnings

    import torch

    from converter.sources.torch_worker import _check_as_torch_reads

    _check_as_torch_reads(pt2)
    program = torch.export.load(str(pt2))
    args = tuple(program.example_inputs[0])
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise Refused("the archive's example inputs are not all tensors; export needs them to trace the module")
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            program.module(),
            args,
            str(out),
            opset_version=17,
            dynamo=False,
            # PRESERVE: the exporter's EVAL mode calls train(False), which a torch.export module refuses; it is
            # exported in eval mode already, and fold_batch_norm folds the BatchNormalization it leaves.
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=names if len(names) == len(args) else None,
        )
    return f"torch.onnx.export (TorchScript exporter, opset 17) of {pt2.name} with torch {torch.__version__}"


def _export_tflite(tflite: Path, out: Path, source: str) -> str:
    """tf2onnx's TFLite reader on the float reference (its graph optimizer folds the NHWC transposes it adds).

    Not byte-deterministic: tf2onnx numbers the names it makes from a counter that differs from run to run, and
    its transpose optimizer does not always fold the same pairs (the demo MobileNetV2 came out with 113 or 115
    nodes, one Transpose or a Reshape and a Transpose, with equal outputs); the parent reports that.
    """
    import logging

    import tf2onnx
    from tf2onnx import convert

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    try:
        convert.from_tflite(str(tflite), opset=17, output_path=str(out))
    except Exception as e:  # tf2onnx raises bare exceptions for ops it has no handler for
        raise Refused(
            f"tf2onnx {tf2onnx.__version__} could not convert the float .tflite made from the {source} source to "
            f"ONNX ({type(e).__name__}: {e}); give an .onnx export of the model as the source instead"
        ) from e
    return f"tf2onnx {tf2onnx.__version__} (TFLite reader, opset 17) of the float .tflite made from the {source} source"


def _load(path: Path) -> Any:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = [i.name for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise Refused(
            f"its weights live in external data files ({len(external)} tensors, e.g. '{external[0]}'); "
            "the TensorRT target takes a self-contained .onnx (below 2 GB) for now"
        )
    return model


def _feeds(session: Any, arrays: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
    return {i.name: arrays[i.name][row : row + 1] for i in session.get_inputs()}


def _arranged(model: Any, given: list[tuple[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The samples per ONNX input (matched by name, else by position), NHWC data transposed to an NCHW input."""
    constants = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in constants]
    if len(inputs) != len(given):
        raise Refused(f"the ONNX model has {len(inputs)} inputs and the data {len(given)}")
    by_name = dict(given)
    out, notes = {}, []
    for k, spec in enumerate(inputs):
        x = by_name.get(spec.name, given[k][1])
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in spec.type.tensor_type.shape.dim]
        want = tuple(dims[1:])
        got = tuple(x.shape[1:])
        fits = len(want) == len(got) and all(w in (-1, g) for w, g in zip(want, got, strict=True))
        channels_first = got[2:] + got[:2]  # NHWC data for an NCHW input
        if (
            not fits
            and len(want) == 3
            and len(got) == 3
            and all(w in (-1, g) for w, g in zip(want, channels_first, strict=True))
        ):
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            notes.append(f"'{spec.name}' NHWC data transposed to the ONNX model's NCHW {[1, *want]}")
        elif not fits:
            raise Refused(f"input '{spec.name}' takes {[1, *want]} and the data has {[1, *got]}")
        out[spec.name] = x.astype(np.float32) if np.dtype(x.dtype).kind == "f" else x
    return out, notes


def _observe(model: Any, arrays: dict[str, np.ndarray], seed: int) -> tuple[list[Any], int]:
    """``TensorStats`` of every float activation over the calibration samples (as ``calibration.stats``)."""
    import onnxruntime as ort

    from converter.calibration.stats import SUBSAMPLE, TensorStats
    from converter.targets import qdq

    names = qdq.activation_names(model)
    probe = qdq.observable(model, names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # no fusions: exact float values
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    returned = {o.name for o in session.get_outputs()}
    wanted = [n for n in names if n in returned]  # graph order: the cache lists tensors as the graph runs
    stats = {n: TensorStats(k, n, ()) for k, n in enumerate(wanted)}
    picks: dict[str, np.ndarray | None] = {}
    rows = len(next(iter(arrays.values())))
    for row in range(rows):
        values = session.run(wanted, _feeds(session, arrays, row))
        for k, (name, v) in enumerate(zip(wanted, values, strict=True)):
            if not isinstance(v, np.ndarray) or v.dtype != np.float32:
                stats.pop(name, None)
                continue
            if name not in stats:
                continue
            flat = v.reshape(-1)
            if name not in picks:
                rng = np.random.default_rng([seed, k])
                picks[name] = (
                    np.sort(rng.choice(flat.size, SUBSAMPLE, replace=False)) if flat.size > SUBSAMPLE else None
                )
            idx = picks[name]
            stats[name].update(flat, flat if idx is None else flat[idx])
    return list(stats.values()), rows


def _ranges(stats: list[Any], inputs: set[str], job: dict[str, Any]) -> tuple[dict[str, float], dict[str, int]]:
    """amax per tensor from the recipe's method (rules matched against ONNX names); counts per method."""
    from converter.calibration.calibrate import method_for
    from converter.calibration.ranges import choose, minmax
    from converter.recipe import CalibrationRule, CalibrationSpec

    spec = CalibrationSpec(
        method=job["method"],
        percentile=job["percentile"],
        rules=tuple(CalibrationRule(**r) for r in job["rules"]),
    )
    amax: dict[str, float] = {}
    methods: dict[str, int] = {}
    for s in stats:
        if s.nonfinite or not s.written:
            continue  # no range: the tensor stays float (listed by insert_qdq)
        method, pct, by_rule = method_for(s.name, spec)
        if s.name in inputs and not by_rule:
            choice = minmax(s)
        elif method == "minmax" and not by_rule:
            # TensorRT's grid is symmetric: the observed range leaves a post-ReLU tensor 128 levels, so the
            # recipe's minmax (the default) takes mse's clipping threshold here; a rule naming minmax keeps it.
            choice = choose(s, "mse", pct)
            choice = type(choice)(choice.lo, choice.hi, "minmax->mse", choice.threshold)
        else:
            choice = choose(s, method, pct)
        amax[s.name] = max(abs(choice.lo), abs(choice.hi))
        methods[choice.method] = methods.get(choice.method, 0) + 1
    return amax, methods


def _top1(outputs: np.ndarray) -> np.ndarray | None:
    """Top-1 per sample of a [N, classes] output; None for any other shape (no classifier to agree on)."""
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return None
    top: np.ndarray = np.argmax(outputs, axis=1)
    return top


def _fp16_layers(
    model: Any, amax: dict[str, float], arrays: dict[str, np.ndarray]
) -> tuple[frozenset[str], dict[str, Any]]:
    """The layers left without Q/DQ (TensorRT runs them in fp16), chosen on the calibration samples only.

    When the all-int8 model's top-1 agrees with the float model's on fewer than ``FP16_AIM`` of the calibration
    samples, each Q/DQ-carrying layer is left float alone and scored by the output's mean squared error against
    float; the most sensitive are left float one at a time, at most ``FP16_MAX_LAYERS``, until the aim is met.
    """
    from converter.targets import qdq

    flt = _run_all(model.SerializeToString(), arrays)
    f_top = _top1(flt)
    if f_top is None:
        return frozenset(), {"fp16_layers": [], "reason": "not a classifier: all int8"}

    def scored(exclude: frozenset[str]) -> tuple[float, float]:
        quantized, _ = qdq.insert_qdq(model, amax, exclude)
        out = _run_all(quantized.SerializeToString(), arrays)
        return float(np.mean((out - flt) ** 2)), float(np.mean(np.argmax(out, axis=1) == f_top))

    _, agreement = scored(frozenset())
    info: dict[str, Any] = {"calibration_agreement_all_int8": agreement}
    if agreement >= FP16_AIM:
        return frozenset(), {**info, "fp16_layers": []}
    where = qdq.placement(model)
    nodes = list(model.graph.node)
    carrying = sorted({k for uses in where.activations.values() for k, _ in uses} | {k for k, _, _ in where.weights})
    ranked = sorted(((scored(frozenset({qdq.node_key(nodes[k])}))[0], k) for k in carrying), key=lambda r: r)
    chosen: list[dict[str, Any]] = []
    exclude: frozenset[str] = frozenset()
    for error, k in ranked[:FP16_MAX_LAYERS]:
        exclude = exclude | {qdq.node_key(nodes[k])}
        _, agreement = scored(exclude)
        chosen.append({"node": qdq.node_key(nodes[k]), "op": nodes[k].op_type, "output_mse_alone_float": error})
        if agreement >= FP16_AIM:
            break
    return exclude, {**info, "calibration_agreement": agreement, "fp16_layers": chosen}


def _run_all(model_bytes: bytes, arrays: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    rows = len(next(iter(arrays.values())))
    first = session.get_outputs()[0].name
    outs = [session.run([first], _feeds(session, arrays, row))[0] for row in range(rows)]
    return np.concatenate(outs) if outs else np.empty((0,), np.float32)


def work(job: dict[str, Any]) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    from converter.targets import qdq

    folder = Path(job["folder"])
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if job.get("pt2"):
        onnx_path = folder / "model.onnx"
        origin = _export_pt2(Path(job["pt2"]), onnx_path)
        seconds["export"] = time.perf_counter() - start
    elif job.get("tflite"):
        onnx_path = folder / "model.onnx"
        origin = _export_tflite(Path(job["tflite"]), onnx_path, job.get("source", "tflite"))
        seconds["export"] = time.perf_counter() - start
    else:
        onnx_path, origin = Path(job["onnx"]), "the source .onnx as given"
    model, folded = qdq.fold_batch_norm(_load(onnx_path))
    with np.load(folder / "samples.npz") as data:
        cal = [(n, data[f"cal:{n}"]) for n in job["input_names"]]
        ev = [(n, data[f"eval:{n}"]) for n in job["input_names"]] if job["evaluate"] else None
    cal_arrays, notes = _arranged(model, cal)
    t = time.perf_counter()
    stats, rows = _observe(model, cal_arrays, job["seed"])
    seconds["statistics"] = time.perf_counter() - t
    inputs = {i.name for i in model.graph.input}
    amax, methods = _ranges(stats, inputs, job)
    t = time.perf_counter()
    exclude, mixed = _fp16_layers(model, amax, cal_arrays)
    seconds["fp16_layers"] = time.perf_counter() - t
    quantized, summary = qdq.insert_qdq(model, amax, exclude)
    summary = {**summary, **mixed}
    onnx.checker.check_model(quantized)
    qdq_bytes = quantized.SerializeToString()
    (folder / "model_qdq.onnx").write_bytes(qdq_bytes)
    (folder / "calibration.cache").write_text(qdq.calibration_cache(job["header"], amax), encoding="utf-8")
    answer: dict[str, Any] = {
        "ok": True,
        "origin": origin,
        "layout": notes,
        "tensors": len(amax),
        "calibration_samples": rows,
        "methods": methods,
        "summary": {"folded_batch_norms": folded, **summary},
        "opset": next((o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")), None),
        "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }
    if ev is not None:
        t = time.perf_counter()
        ev_arrays, _ = _arranged(model, ev)
        np.savez(
            folder / "outputs.npz",
            float=_run_all(model.SerializeToString(), ev_arrays),
            qdq=_run_all(qdq_bytes, ev_arrays),
        )
        seconds["evaluate"] = time.perf_counter() - t
    answer["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    return answer


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    from converter.errors import ModelLoadError

    try:
        answer = work(job)
    except (Refused, ModelLoadError) as e:
        answer = {"ok": False, "error": str(e)}
    print(RESULT + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
