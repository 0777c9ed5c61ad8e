"""Target checks: will the int8 model run on each target, and does it fit?

Capabilities come from the device profiles (data); nothing here names a board. Each runtime
is one backend module behind ``base.Backend`` (``BACKENDS``): a new NPU is a module and a profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.devices import DeviceProfile
from converter.recipe import Recipe
from converter.runtime.model import TFLiteModel
from converter.targets import edgetpu, ethos_u, litert, rknn, tensorrt, tflm
from converter.targets.base import Backend, Context, cost
from converter.tflite.inspect_model import list_ops

BACKENDS: dict[str, Backend] = {
    "litert": litert.check,
    "tflm": tflm.check,
    "edgetpu": edgetpu.check,
    "ethos-u": ethos_u.check,
    "rknn": rknn.check,
    "tensorrt": tensorrt.check,
}


def early_warnings(recipe: Recipe, profiles: dict[str, DeviceProfile]) -> list[str]:
    """Problems the recipe will have on its targets, known before anything is converted."""
    q = recipe.quantization
    out = []
    for name, p in profiles.items():
        if q.activations == "int16" and not p.supports_int16:
            out.append(f"{name}: 16x8 quantization (activations: int16) has no fast kernels on this target")
        if q.per_channel and not p.per_channel_fully_connected:
            out.append(
                f"{name}: per-channel FULLY_CONNECTED weights are mis-handled by this target's kernels; "
                "set quantization.per_channel: false"
            )
        if not p.float_io and "float32" in (q.input_type, q.output_type):
            out.append(f"{name}: float model I/O runs its quantize/dequantize on the CPU; use int8 or uint8")
    return out


@dataclass
class TargetChecks:
    """Per-target sections for report.json, and files to write (firmware, compiled models)."""

    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def check_targets(
    recipe: Recipe,
    profiles: dict[str, DeviceProfile],
    quant: bytes,
    samples: np.ndarray | None,
    labels: np.ndarray | None = None,
    samples_kind: str = "evaluation",
    *,
    float_model: bytes | None = None,
    calibration: np.ndarray | None = None,
) -> TargetChecks:
    """Compatibility, fit, cost and exports for every target of the recipe.

    ``float_model`` and ``calibration`` (the float reference and the calibration samples the int8 model came
    from) let a backend that quantizes its own form of the model (TensorRT) use the same model and rows.
    """
    ops = list_ops(quant)
    info = TFLiteModel(model_content=quant, delegate="none")
    dtypes = (info.inputs[0].dtype, info.outputs[0].dtype)
    ctx = Context(
        recipe,
        quant,
        ops,
        *dtypes,
        samples,
        labels=labels,
        samples_kind=samples_kind,
        float_model=float_model,
        calibration=calibration,
    )
    checks = TargetChecks()
    warnings = early_warnings(recipe, profiles)
    for name, profile in profiles.items():
        result = BACKENDS[profile.runtime](ctx, name, profile)
        problems = [w.split(": ", 1)[1] for w in warnings if w.startswith(f"{name}: ")] + result.problems
        checks.sections[name] = {
            "cost": cost(ops, profile),
            **result.section,
            # a target that skipped its work (a TensorRT target of a Keras source) is not judged: its gate skips
            "compatible": None if result.section.get("status") == "skipped" and not problems else not problems,
            "problems": problems,
        }
        checks.files.update(result.files)
    return checks
