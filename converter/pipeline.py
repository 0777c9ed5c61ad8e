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

from .artifacts import check_output_dir, write_outputs
from .data import load_dataset, prepare
from .devices import load_device
from .errors import ModelLoadError
from .evaluate import Accuracy, evaluate_host
from .load import LoadedModel, detect_format, load_model
from .plots import histogram_png, most_clipped
from .quantize import quantize
from .recipe import Recipe
from .report import FLOAT_NAME, HIST_NAME, INT8_NAME, REPORT_NAME, Outcome, build_report, dumps
from .runtime.preprocess import Preprocess

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        model: LoadedModel = _timed(
            "load", steps, lambda: load_model(recipe.model, recipe.custom_objects, cache=recipe.calibration.cache)
        )
    except ModelLoadError as e:
        raise ModelLoadError(f"{recipe.source}: {e}") from e
    log.info("loaded %s (%s) with %s; input %s", recipe.model.name, model.format, model.loader, list(model.input_shape))
    prep = preprocess_of(recipe)
    channels = model.input_shape[-1] if len(model.input_shape) == 4 else None

    def read(kind: str) -> tuple[np.ndarray, np.dtype[Any], np.ndarray | None]:
        src = getattr(recipe.data, kind)
        ds = load_dataset(
            src.path,
            where=f"{where}.{kind}",
            samples=src.samples,
            seed=src.seed,
            channels=channels,
            image_size=recipe.input.resize,
        )
        return prepare(ds, prep, model.input_shape, f"{where}.{kind}"), ds.x.dtype, ds.y

    cal_x, cal_raw_dtype, _ = _timed("data", steps, lambda: read("calibration"))
    eval_x, _, eval_y = read("evaluation") if recipe.data.evaluation else (None, None, None)

    with _step("calibrate", steps):
        quant, calibration = quantize(model.float_tflite, cal_x, recipe, prep, eight_bit_data=cal_raw_dtype == np.uint8)
    accuracy = (
        _timed("evaluate", steps, lambda: evaluate_host(model.float_tflite, quant, eval_x, eval_y))
        if eval_x is not None
        else Accuracy(None, None, None, None, None, 0, where="host")
    )
    files = {FLOAT_NAME: model.float_tflite, INT8_NAME: quant}
    picture = histogram_png(most_clipped(calibration.records)) if calibration else None
    if picture is not None:
        files[HIST_NAME] = picture
    report = build_report(
        Outcome(recipe, model, quant, len(cal_x), accuracy, targets, steps, calibration, HIST_NAME if picture else None)
    )
    write_outputs(out, recipe.name, {**files, REPORT_NAME: dumps(report)})
    return RunResult(out, report)
