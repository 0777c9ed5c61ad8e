"""TensorFlow Lite Micro on a microcontroller: the real TFLM interpreter, the arena, firmware sources."""

from __future__ import annotations

import logging

from converter.devices import DeviceProfile
from converter.targets import firmware
from converter.targets.base import Check, Context, fit
from converter.targets.tflm_interpreter import TFLMResult, validate

log = logging.getLogger(__name__)

SAMPLES = 100  # evaluation samples compared between TFLM and LiteRT


def run_tflm(ctx: Context) -> tuple[TFLMResult, dict[str, bytes]]:
    """The model validated by TFLM and its firmware files, once for every MCU target of the recipe."""
    if "tflm" not in ctx.shared:
        log.info("tflm       validating with the TFLite Micro interpreter")
        result = validate(ctx.model, ctx.samples[:SAMPLES] if ctx.samples is not None else None)
        files = (
            {
                f"firmware/{k}": v.encode()
                for k, v in firmware.export(ctx.model, ctx.recipe.name, ctx.ops, result.arena_bytes).items()
            }
            if result.loaded
            else {}
        )
        ctx.shared["tflm"] = (result, files)
    cached: tuple[TFLMResult, dict[str, bytes]] = ctx.shared["tflm"]
    return cached


def check(ctx: Context, name: str, profile: DeviceProfile) -> Check:
    """TFLM kernels for every op, the smallest arena, and whether model + arena fit the board."""
    result, files = run_tflm(ctx)
    out = Check(files=dict(files))
    out.problems += [f"op {op} has no TFLite Micro kernel" for op in result.missing_ops]
    if not result.loaded and result.error:
        out.problems.append(result.error)
    out.section.update(tflm=result.to_json(), arena_bytes=result.arena_bytes, firmware=sorted(files))
    out.section.update(fit(profile, len(ctx.model), result.arena_bytes, out.problems))
    return out
