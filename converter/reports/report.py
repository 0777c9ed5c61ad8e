"""report.json: everything a run measured, with provenance; what was not measured is null."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.analysis.evaluate import worst_output
from converter.artifacts import file_record
from converter.boards.measure import TargetResult
from converter.devices import DeviceProfile
from converter.provenance import tool_info
from converter.quantization.quantize import Quantized
from converter.recipe import Recipe
from converter.runtime.accuracy import Accuracy, not_measured
from converter.runtime.model import TFLiteModel, signature_names
from converter.sources.load import LoadedModel

SCHEMA_VERSION = 1
FLOAT_NAME = "model_float.tflite"
INT8_NAME = "model_int8.tflite"
REPORT_NAME = "report.json"
HIST_NAME = "calibration_histograms.png"


def dumps(report: dict[str, Any]) -> bytes:
    """Stable JSON text of a report (keys in insertion order, 2-space indent)."""
    return (json.dumps(report, indent=2, allow_nan=False) + "\n").encode()


def _calibration_json(
    recipe: Recipe, cal_samples: int, seconds: float, quantized: Quantized, picture: str | None
) -> dict[str, Any]:
    c, calibration = recipe.calibration, quantized.calibration
    method = quantized.plan.method if calibration is not None else "minmax"
    out: dict[str, Any] = {"method": method, "samples": cal_samples, "seconds": seconds}
    if calibration is None:
        qat = quantized.plan.qat
        out.update(
            {
                "method": "qat" if qat else "minmax",
                "route": "qat" if qat else "tflite-16x8",
                "cache": None,
                "tensors": None,
                "reason": "ranges learned by quantization-aware training; TFLite calibrated the rest (min/max)"
                if qat
                else "16x8 uses TFLite's own min/max calibration; per-tensor statistics are not exposed",
            }
        )
        return out
    out.update(
        {
            "route": "edgeconv",
            "percentile": c.percentile
            if method in ("percentile", "auto") or any(r.method == "percentile" for r in c.rules)
            else None,
            "rules": [{"tensors": r.tensors, "method": r.method, "percentile": r.percentile} for r in c.rules],
            "batch": calibration.batch,
            "cache": {"enabled": c.cache, "hit": calibration.cache_hit, "key": calibration.cache_key},
            "warnings": calibration.warnings(),
            "histograms": picture,
            "tensors": [r.to_json() for r in calibration.records],
        }
    )
    return out


def _io_record(model: TFLiteModel) -> dict[str, Any]:
    """The quantized model's I/O: ``input``/``output`` (the first, as before), and all in ``inputs``/``outputs``.

    Each listed tensor carries ``name`` (its signature name, else the tensor's) and ``tensor``.
    """
    keys = signature_names(model.interpreter)

    def one(info: Any) -> dict[str, Any]:
        return {"dtype": info.dtype, "shape": list(info.shape), "scale": info.scale, "zero_point": info.zero_point}

    def named(info: Any) -> dict[str, Any]:
        return {"name": keys.get(info.index, info.name), "tensor": info.name, **one(info)}

    return {
        "input": one(model.inputs[0]),
        "output": one(model.outputs[0]),
        "inputs": [named(i) for i in model.inputs],
        "outputs": [named(o) for o in model.outputs],
    }


def _model_io(model: LoadedModel) -> dict[str, Any]:
    """The float model's inputs (named as data files key them) and outputs, in the model's order."""
    ref = TFLiteModel(model_content=model.float_tflite, delegate="none")
    keys = signature_names(ref.interpreter)
    return {
        "inputs": [
            {"name": i.name, "tensor": i.tensor, "shape": list(i.shape), "dtype": i.dtype} for i in model.inputs
        ],
        "outputs": [
            {"name": keys.get(o.index, o.name), "tensor": o.name, "shape": list(o.shape), "dtype": o.dtype}
            for o in ref.outputs
        ],
    }


@dataclass(frozen=True)
class Outcome:
    """Everything a conversion run produced that the report describes."""

    recipe: Recipe
    model: LoadedModel
    quant: bytes
    cal_samples: int
    accuracy: Accuracy
    targets: dict[str, DeviceProfile]
    steps: list[dict[str, Any]]
    picture: str | None
    measured: dict[str, TargetResult]
    checks: dict[str, dict[str, Any]]
    layers: list[dict[str, Any]]
    analysis_samples: int
    quantized: Quantized
    tuning: dict[str, Any]


def build_report(o: Outcome) -> dict[str, Any]:
    """report.json of a run; keys not measured are null."""
    recipe, model, quant, steps = o.recipe, o.model, o.quant, o.steps
    calibrate_seconds = next(s["seconds"] for s in steps if s["name"] == "calibrate")
    q = recipe.quantization
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": tool_info(),
        "recipe": {"name": recipe.name, "sha256": recipe.sha256, "path": str(recipe.source)},
        "model": {
            "source": str(recipe.model),
            "format": model.format,
            "loader": model.loader,
            "input_shape": list(model.input_shape),
            **_model_io(model),
        },
        "artifacts": {
            "float": file_record(Path(FLOAT_NAME), model.float_tflite),
            "int8": file_record(Path(INT8_NAME), quant),
        },
        "calibration": _calibration_json(recipe, o.cal_samples, calibrate_seconds, o.quantized, o.picture),
        "quantization": {
            **o.quantized.to_json(),
            "per_channel": q.per_channel,
            **_io_record(TFLiteModel(model_content=quant)),
        },
        "tuning": o.tuning,
        "accuracy": o.accuracy.to_json(),
        "latency": {name: r.latency for name, r in o.measured.items()},
        "targets": {
            name: {**_target_json(profile, o.measured[name], o.accuracy), **o.checks.get(name, {})}
            for name, profile in o.targets.items()
        },
        "analysis": {
            "samples": o.analysis_samples,
            "metric": "median per-channel SQNR (dB); sqnr_drop_db: SQNR lost across the writing op, from its worst "
            "input's SQNR capped at ceiling_db (rounding to its own int8 grid alone)",
            "layers": o.layers,
        },
        # What a reader must not miss (also logged as "warning: ..." and listed in report.md), e.g. int8 far from
        # float (``analysis.evaluate.fidelity_warning``).
        "warnings": [],
        "budgets": {
            "recipe": recipe.budgets.items(),
            "targets": {
                spec.device: {"recipe": spec.budgets.items(), "device": o.targets[spec.device].budgets.items()}
                for spec in recipe.target_specs()
            },
        },
        "gates": [],
        "passed": None,
        "steps": steps,
    }


def _target_json(profile: DeviceProfile, result: TargetResult, host_accuracy: Accuracy) -> dict[str, Any]:
    measured_here = profile.kind == "host"
    return {
        "runtime": profile.runtime,
        "kind": profile.kind,
        "delegate": profile.delegate,
        "threads": profile.threads,
        "measured": result.latency is not None,
        "reason": result.reason,
        "accuracy": host_accuracy.to_json() if measured_here and host_accuracy.samples else result.accuracy,
        "compatible": None,
        "problems": None,
    }


def held_out_data(samples: int) -> str:
    """``accuracy.data`` of figures measured on calibration samples held out (never evaluation data)."""
    return f"held out from calibration ({samples} samples)"


def record_fidelity(report: dict[str, Any], held: Accuracy | None, holdout: dict[str, Any]) -> None:
    """``accuracy.data`` and ``accuracy.worst_output``, and ``calibration.holdout``, in ``report`` (in place).

    ``held``: int8 against float on calibration samples held out (``data.split_calibration``), for a recipe
    without evaluation data. Without labels there is no accuracy, only fidelity: ``accuracy`` keeps its
    metric, figures, drop and agreement null (so no accuracy gate reads it), and gets the per-output SQNR,
    cosine and agreement in ``outputs``, the samples, and ``data`` saying where they came from.
    """
    acc = report["accuracy"]
    if held is not None:
        acc = report["accuracy"] = {**not_measured(held.where).to_json(), "samples": held.samples}
        acc["outputs"] = held.outputs
        acc["data"] = held_out_data(held.samples)
    else:
        acc["data"] = f"data.evaluation ({acc['samples']} samples)" if acc.get("metric") else None
    acc["worst_output"] = worst_output(acc.get("outputs") or [])
    report["calibration"]["holdout"] = holdout
