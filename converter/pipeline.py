"""The pipeline, top to bottom: load → data → calibrate and quantize → evaluate → write.

Everything that can be checked before the heavy work (recipe, paths, output folder) is
checked first, and nothing is written until every step has succeeded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .artifacts import check_output_dir, file_record, write_outputs
from .data import load_dataset, prepare
from .devices import load_device
from .errors import ModelLoadError
from .evaluate import Accuracy, evaluate_host
from .load import LoadedModel, detect_format, load_model
from .recipe import Recipe
from .report import SCHEMA_VERSION, dumps, tool_info
from .runtime.model import TFLiteModel
from .runtime.preprocess import Preprocess
from .tflite_quantizer import quantize_full_integer

log = logging.getLogger(__name__)
T = TypeVar("T")

FLOAT_NAME = "model_float.tflite"
INT8_NAME = "model_int8.tflite"
REPORT_NAME = "report.json"


@dataclass(frozen=True)
class RunResult:
    """What ``convert`` produced: the report and where the files are."""

    out_dir: Path
    report: dict[str, Any]


def default_out_dir(recipe: Recipe) -> Path:
    return Path("build") / recipe.name


def preprocess_of(recipe: Recipe) -> Preprocess:
    return Preprocess(resize=recipe.input.resize, scale=recipe.input.scale, offset=recipe.input.offset)


@contextmanager
def _step(name: str, steps: list[dict[str, Any]]) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    steps.append({"name": name, "seconds": round(seconds, 3)})
    log.info("%-10s %6.1fs", name, seconds)


def _timed(name: str, steps: list[dict[str, Any]], fn: Callable[[], T]) -> T:
    with _step(name, steps):
        return fn()


def convert(recipe: Recipe, out_dir: Path | None = None, force: bool = False) -> RunResult:
    """Run the whole pipeline for ``recipe`` and write its artifacts into ``out_dir``."""
    out = out_dir or default_out_dir(recipe)
    where = f"{recipe.source}: data"
    # Cheap checks first, so bad input fails in milliseconds and writes nothing.
    try:
        detect_format(recipe.model)
        check_output_dir(out, recipe.name, force)
        targets = {name: load_device(name) for name in recipe.targets}
        steps: list[dict[str, Any]] = []
        model: LoadedModel = _timed("load", steps, lambda: load_model(recipe.model, recipe.custom_objects))
    except ModelLoadError as e:
        raise ModelLoadError(f"{recipe.source}: {e}") from e
    log.info("loaded %s (%s) with %s; input %s", recipe.model.name, model.format, model.loader, list(model.input_shape))
    prep = preprocess_of(recipe)
    channels = model.input_shape[-1] if len(model.input_shape) == 4 else None

    def read(kind: str) -> tuple[np.ndarray, np.ndarray | None]:
        src = getattr(recipe.data, kind)
        ds = load_dataset(
            src.path,
            where=f"{where}.{kind}",
            samples=src.samples,
            seed=src.seed,
            channels=channels,
            image_size=recipe.input.resize,
        )
        return prepare(ds, prep, model.input_shape, f"{where}.{kind}"), ds.y

    cal_x, _ = _timed("data", steps, lambda: read("calibration"))
    eval_x, eval_y = read("evaluation") if recipe.data.evaluation else (None, None)

    q = recipe.quantization
    with _step("calibrate", steps):
        quant = quantize_full_integer(
            model.float_tflite,
            cal_x,
            input_type=q.input_type,
            output_type=q.output_type,
            per_channel=q.per_channel,
            activations=q.activations,
        )
    accuracy = (
        _timed("evaluate", steps, lambda: evaluate_host(model.float_tflite, quant, eval_x, eval_y))
        if eval_x is not None
        else Accuracy(None, None, None, None, None, 0, where="host")
    )
    report = _report(recipe, model, quant, len(cal_x), accuracy, targets, steps)
    write_outputs(out, recipe.name, {FLOAT_NAME: model.float_tflite, INT8_NAME: quant, REPORT_NAME: dumps(report)})
    return RunResult(out, report)


def _io_record(model: TFLiteModel) -> dict[str, Any]:
    def one(info: Any) -> dict[str, Any]:
        return {"dtype": info.dtype, "shape": list(info.shape), "scale": info.scale, "zero_point": info.zero_point}

    return {"input": one(model.inputs[0]), "output": one(model.outputs[0])}


def _report(
    recipe: Recipe,
    model: LoadedModel,
    quant: bytes,
    cal_samples: int,
    accuracy: Accuracy,
    targets: dict[str, Any],
    steps: list[dict[str, Any]],
) -> dict[str, Any]:
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
        },
        "artifacts": {
            "float": file_record(Path(FLOAT_NAME), model.float_tflite),
            "int8": file_record(Path(INT8_NAME), quant),
        },
        "calibration": {"method": recipe.calibration.method, "samples": cal_samples, "seconds": calibrate_seconds},
        "quantization": {
            "activations": q.activations,
            "per_channel": q.per_channel,
            **_io_record(TFLiteModel(model_content=quant)),
        },
        "accuracy": accuracy.to_json(),
        "targets": {
            name: {
                "runtime": profile.runtime,
                "checked": False,
                "compatible": None,
                "reason": "device checks are not implemented in this version",
            }
            for name, profile in targets.items()
        },
        "gates": [],
        "passed": True,
        "steps": steps,
    }
