"""The accuracy loop's last full-integer step: a short quantization-aware fine-tune (``tuning.qat``).

Runs ``converter.quantization.qat_worker`` in a fresh process (see there for why). Needs a Keras 2
model (legacy ``.h5`` or a Keras 2 SavedModel) and tensorflow-model-optimization; a
Keras 3 ``.keras`` file cannot be wrapped by it, and the loop records why QAT was skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from converter.errors import ConversionError
from converter.quantization.quantize import Plan, Quantized
from converter.recipe import QatSpec, Recipe

QAT_FORMATS = ("h5", "saved_model")


class QatUnavailable(Exception):
    """QAT cannot run for this model or on this machine; the message says why."""


def check_available(fmt: str, model: Path) -> None:
    """Raise ``QatUnavailable`` unless QAT can run on ``model`` here without running its code."""
    if fmt not in QAT_FORMATS:
        raise QatUnavailable(
            f"QAT needs a Keras 2 model (legacy .h5 or SavedModel); tensorflow-model-optimization cannot wrap a "
            f"{fmt} model"
        )
    for module in ("tensorflow_model_optimization", "tf_keras"):
        if importlib.util.find_spec(module) is None:
            raise QatUnavailable(f"QAT needs the {module} package: pip install 'edgeconv[qat]'")
    # The main path converts a SavedModel without running Python from it; loading it into Keras
    # for training would run any Lambda layer's code, so refuse those, as for .h5 files on load.
    metadata = model / "keras_metadata.pb"
    if fmt == "saved_model" and metadata.is_file() and re.search(rb'"class_name":\s*"Lambda"', metadata.read_bytes()):
        raise QatUnavailable(
            f"{model} has Lambda layers, whose code would run when Keras loads it for training; QAT is not tried"
        )


def fine_tune(
    model: Path,
    fmt: str,
    x: np.ndarray,
    y: np.ndarray,
    calibration: np.ndarray,
    spec: QatSpec,
    *,
    input_type: str,
    output_type: str,
    custom_objects: tuple[str, ...] = (),
) -> bytes:
    """The full-integer model after ``spec.epochs`` of quantization-aware training on ``x``, ``y``."""
    check_available(fmt, model)
    with tempfile.TemporaryDirectory(prefix="edgeconv-qat-") as tmp:
        folder = Path(tmp)
        np.save(folder / "x.npy", x)
        np.save(folder / "y.npy", y)
        np.save(folder / "calibration.npy", calibration)
        job = {
            "model": str(model),
            "x": str(folder / "x.npy"),
            "y": str(folder / "y.npy"),
            "calibration": str(folder / "calibration.npy"),
            "epochs": spec.epochs,
            "learning_rate": spec.learning_rate,
            "batch_size": spec.batch_size,
            "seed": spec.data.seed,
            "input_type": input_type,
            "output_type": output_type,
            "out": str(folder / "qat.tflite"),
            "custom_objects": list(custom_objects),
        }
        (folder / "job.json").write_text(json.dumps(job))
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
        result = subprocess.run(
            [sys.executable, "-m", "converter.quantization.qat_worker", str(folder / "job.json")],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-3:]
            raise ConversionError(f"quantization-aware training failed: {' / '.join(tail)}")
        return (folder / "qat.tflite").read_bytes()


def quantize_qat(
    recipe: Recipe, fmt: str, plan: Plan, train_x: np.ndarray, train_y: np.ndarray, cal_x: np.ndarray
) -> Quantized:
    """The loop's QAT attempt for ``recipe`` (which must set ``tuning.qat``)."""
    if recipe.tuning.qat is None:
        raise QatUnavailable("tuning.qat is not set in the recipe")
    if train_x.dtype.names is not None:
        raise QatUnavailable(f"QAT trains single-input models only; this model has {len(train_x.dtype.names)} inputs")
    model = fine_tune(
        recipe.model,
        fmt,
        train_x,
        train_y,
        cal_x,
        recipe.tuning.qat,
        input_type=plan.input_type,
        output_type=plan.output_type,
        custom_objects=recipe.custom_objects,
    )
    return Quantized(model, plan, None)
