"""The one interface every target backend implements, and the figures they share.

A backend (LiteRT on a CPU, TFLite Micro, Edge TPU, Ethos-U, ...) gets the int8 model once per
target and returns that target's report section, its problems, and files to write. Adding an
NPU is one module with a ``check`` function and a device profile; nothing else names it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.devices import DeviceProfile
from converter.recipe import Recipe
from converter.tflite.inspect_model import OpInfo, macs


@dataclass
class Context:
    """What every backend sees: the model, its ops and I/O types, and data to run it on.

    ``shared`` holds results several targets reuse (one TFLM validation for every MCU target).
    """

    recipe: Recipe
    model: bytes
    ops: list[OpInfo]
    input_dtype: str
    output_dtype: str
    samples: np.ndarray | None
    shared: dict[str, Any] = field(default_factory=dict)
    labels: np.ndarray | None = None  # of ``samples``, when they are labelled evaluation data
    samples_kind: str = "evaluation"  # or "calibration" when the recipe has no evaluation data
    # The float .tflite reference and the calibration samples the int8 model was made from, for backends that
    # quantize another form of the model from the same data (TensorRT's ONNX); None when a caller has neither.
    float_model: bytes | None = None
    calibration: np.ndarray | None = None


@dataclass
class Check:
    """One target's outcome: report fields, problems (any problem makes it incompatible), files."""

    section: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)


Backend = Callable[[Context, str, DeviceProfile], Check]


def cost(ops: list[OpInfo], profile: DeviceProfile) -> dict[str, Any]:
    """MACs per layer and, when the profile gives cycles per MAC, a labelled latency estimate."""
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


def fit(profile: DeviceProfile, model_bytes: int, arena: int | None, problems: list[str]) -> dict[str, Any]:
    """Flash and RAM the model needs on the device against the profile's limits (problems appended)."""
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
