"""Target checks: will the int8 model run on each target, and does it fit?

Capabilities come from the device profiles (data); nothing here names a board.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import edgetpu, firmware
from .devices import DeviceProfile
from .inspect_model import OpInfo, list_ops, macs
from .recipe import Recipe
from .runtime.model import TFLiteModel
from .tflm import TFLMResult, validate

log = logging.getLogger(__name__)

TFLM_SAMPLES = 100  # evaluation samples compared between TFLM and LiteRT


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


def _cost(ops: list[OpInfo], profile: DeviceProfile) -> dict[str, Any]:
    counted = sorted(((macs(op), op) for op in ops), key=lambda t: (-t[0], t[1].index))
    total = sum(n for n, _ in counted)
    top = [{"index": op.index, "op": op.name, "macs": n} for n, op in counted[:10] if n]
    estimate = None
    if profile.cycles_per_mac and profile.clock_mhz:
        estimate = {
            "latency_ms": total * profile.cycles_per_mac / (profile.clock_mhz * 1e3),
            "basis": f"{total:,} MACs x {profile.cycles_per_mac} cycles/MAC at {profile.clock_mhz} MHz "
            "(the profile's figure; layers without MACs not counted)",
            "kind": "estimate",
        }
    return {"macs": total, "layers": top, "latency_estimate": estimate}


def _fit(profile: DeviceProfile, model_bytes: int, arena: int | None, problems: list[str]) -> dict[str, Any]:
    flash = model_bytes + profile.runtime_flash_bytes
    ram = arena + profile.runtime_ram_bytes if arena is not None else None
    if profile.flash_bytes is not None and flash > profile.flash_bytes:
        problems.append(
            f"flash: model {model_bytes:,} + runtime {profile.runtime_flash_bytes:,} = {flash:,} bytes "
            f"exceeds {profile.flash_bytes:,}"
        )
    if profile.ram_bytes is not None and ram is not None and ram > profile.ram_bytes:
        problems.append(
            f"RAM: arena {arena:,} + runtime {profile.runtime_ram_bytes:,} = {ram:,} bytes "
            f"exceeds {profile.ram_bytes:,}"
        )
    return {
        "flash_bytes": flash,
        "ram_bytes": ram,
        "limits": {"flash_bytes": profile.flash_bytes, "ram_bytes": profile.ram_bytes},
        "overheads": {
            "flash_bytes": profile.runtime_flash_bytes,
            "ram_bytes": profile.runtime_ram_bytes,
            "kind": "stated estimate from the device profile",
        },
    }


def check_targets(
    recipe: Recipe, profiles: dict[str, DeviceProfile], quant: bytes, samples: np.ndarray | None
) -> TargetChecks:
    """Compatibility, fit, cost and exports for every target of the recipe."""
    ops = list_ops(quant)
    info = TFLiteModel(model_content=quant, delegate="none")
    in_dtype, out_dtype = info.inputs[0].dtype, info.outputs[0].dtype
    checks = TargetChecks()
    tflm: TFLMResult | None = None
    warnings = early_warnings(recipe, profiles)
    for name, profile in profiles.items():
        problems = [w.split(": ", 1)[1] for w in warnings if w.startswith(f"{name}: ")]
        section: dict[str, Any] = {"cost": _cost(ops, profile)}
        if profile.runtime == "tflm":
            if tflm is None:
                log.info("tflm       validating with the TFLite Micro interpreter")
                tflm = validate(quant, samples[:TFLM_SAMPLES] if samples is not None else None)
                if tflm.loaded:
                    checks.files.update(
                        {
                            f"firmware/{k}": v.encode()
                            for k, v in firmware.export(quant, recipe.name, ops, tflm.arena_bytes).items()
                        }
                    )
            problems += [f"op {op} has no TFLite Micro kernel" for op in tflm.missing_ops]
            if not tflm.loaded and tflm.error:
                problems.append(tflm.error)
            section.update(
                tflm=tflm.to_json(),
                arena_bytes=tflm.arena_bytes,
                firmware=sorted(k for k in checks.files if k.startswith("firmware/")),
            )
            section.update(_fit(profile, len(quant), tflm.arena_bytes, problems))
        elif profile.runtime == "edgetpu":
            prediction = edgetpu.predict(ops, in_dtype, out_dtype)
            problems += prediction.problems
            compiled = edgetpu.compile_model(quant)
            if compiled is None:
                compiler: dict[str, Any] = {
                    "available": edgetpu.compiler_path() is not None,
                    "reason": "edgetpu_compiler is not installed here; the mapping above is a static prediction"
                    if edgetpu.compiler_path() is None
                    else "edgetpu_compiler failed on this model",
                }
            else:
                data, parsed, raw = compiled
                checks.files["model_int8_edgetpu.tflite"] = data
                compiler = {"available": True, "log": parsed.__dict__, "raw": raw}
            section.update(edgetpu={"prediction": prediction.to_json(), "compiler": compiler})
            section.update(_fit(profile, len(quant), None, problems))
        else:  # LiteRT on a CPU runs every builtin op of a full-integer model
            section.update(flash_bytes=None, ram_bytes=None)
        section.update(compatible=not problems, problems=problems)
        checks.sections[name] = section
    return checks
