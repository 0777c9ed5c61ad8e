"""Host accuracy: float vs quantized model on the evaluation data, with the runtime's own code."""

from __future__ import annotations

import numpy as np

from .runtime.accuracy import Accuracy, compare
from .runtime.model import TFLiteModel


def evaluate_host(
    float_tflite: bytes, quant_tflite: bytes, x: np.ndarray, labels: np.ndarray | None, top_k: int | None = None
) -> Accuracy:
    """Run both models on preprocessed ``x`` with the runtime used on devices."""
    ref, quant = TFLiteModel(model_content=float_tflite), TFLiteModel(model_content=quant_tflite)
    names = [o.name for o in ref.outputs]
    return compare(ref.predict(x), quant.predict(x), labels, names=names, top_k=top_k)
