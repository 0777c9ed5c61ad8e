"""A toolkit's float .tflite checked against the source framework on seeded random inputs, at load.

onnx2tf and litert-torch can write a model that runs and computes something else (measured: onnx2tf on
transformers' Swin and SegFormer, 3-4 dB against onnxruntime). Every later figure (SQNR, agreement, accuracy
against float) is measured against that float model, so a wrong one would look fine; the load stops it. The
workers compute the figures (the ONNX worker in its own virtualenv, with a copy of ``sqnr_db``); this module
judges them and words the loader's note or the error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from converter.errors import ConversionError

MIN_DB = 40.0  # faithful conversions measured 65-141 dB on the hub zoo's models; the wrong ones 3-21 dB
SAMPLES = 4


def sqnr_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise), capped at 200 dB (identical outputs) and -200 dB (a zero reference)."""
    if noise == 0:
        return 200.0
    return max(min(10 * math.log10(signal / noise), 200.0), -200.0) if signal > 0 else -200.0


def loader_note(path: Path, check: dict[str, Any], toolkit: str, source: str, reference: str, remedy: str) -> str:
    """The loader's words on the check; a ``ConversionError`` (exit 3) when an output is below ``MIN_DB``."""
    if not check.get("checked"):
        return f"; not checked against {reference} ({check.get('reason', 'no check ran')})"
    worst = min(check["outputs"], key=lambda o: float(o["sqnr_db"]))
    said = f"output '{worst['name']}' at {worst['sqnr_db']:.1f} dB SQNR (largest difference {worst['max_abs']:.3g})"
    if worst["sqnr_db"] < MIN_DB:
        raise ConversionError(
            f"{toolkit}'s float model of {path} does not compute what the {source} model does: on {check['samples']} "
            f"seeded random inputs, {said} against {reference}, where a faithful conversion is above {MIN_DB:g} dB; "
            f"an int8 model made from it would inherit the error. {remedy}"
        )
    return f"; float model checked against {reference} on {check['samples']} random inputs: worst {said}"
