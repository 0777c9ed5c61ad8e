"""Check a transformed float model (equalized, bias-corrected) before it is quantized.

A transform that breaks the model must cost one attempt of the accuracy loop, never the
conversion: the transformed model has to prepare and run in LiteRT with its default CPU
delegate (XNNPACK, as evaluation and the host target use it), give finite outputs, and stay
within the transform's tolerance of the original's outputs on a few calibration samples.
"""

from __future__ import annotations

import numpy as np

from converter.errors import ConversionError
from converter.runtime.model import TFLiteModel

SAMPLES = 8  # the function is compared, not the accuracy: a few real inputs find a broken transform


class TransformRejected(ConversionError):
    """A transformed float model failed its check; the message says which transform and why.

    ``transform`` is the plan field it came from ("equalization", "bias_correction"), so a caller can
    drop that one transform and go on.
    """

    def __init__(self, message: str, transform: str = "") -> None:
        super().__init__(message)
        self.transform = transform


TRANSFORMS = {"cross-layer equalization": "equalization", "bias correction": "bias_correction"}


def outputs(model: bytes, x: np.ndarray, what: str) -> list[np.ndarray]:
    """The model's float outputs on ``x``; ``TransformRejected`` if it does not prepare or run."""
    try:
        return TFLiteModel(model_content=model).predict(x[:SAMPLES])
    except Exception as e:  # noqa: BLE001 - any refusal by the interpreter rejects the transform
        raise TransformRejected(
            f"{what}: the transformed model does not run in LiteRT ({type(e).__name__}: {' '.join(str(e).split())})",
            TRANSFORMS.get(what.split(" (")[0], ""),
        ) from e


def relative_error(reference: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Largest ``max|got - ref| / max|ref|`` over the outputs (inf when ``got`` is not finite)."""
    worst = 0.0
    for ref, out in zip(reference, got, strict=True):
        if not np.all(np.isfinite(out)):
            return float("inf")
        scale = max(float(np.abs(ref).max(initial=0.0)), 1e-12)
        worst = max(worst, float(np.abs(out.astype(np.float64) - ref).max(initial=0.0)) / scale)
    return worst


def check_transform(original: bytes, transformed: bytes, x: np.ndarray, what: str, tolerance: float) -> float:
    """The transformed model's relative output error against the original; rejected above ``tolerance``."""
    error = relative_error(outputs(original, x, f"{what} (original model)"), outputs(transformed, x, what))
    if not error <= tolerance:
        raise TransformRejected(
            f"{what}: the transformed model's outputs differ from the original's by {error:.3g} of their largest "
            f"magnitude on {min(len(x), SAMPLES)} calibration samples (tolerance {tolerance:g})",
            TRANSFORMS.get(what, ""),
        )
    return error
