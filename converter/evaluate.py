"""Host accuracy: float vs quantized model on the evaluation data, with the runtime's own code."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .runtime.model import TFLiteModel

Fraction = float | None  # an alias: the field named ``float`` below would shadow the type


@dataclass(frozen=True)
class Accuracy:
    """Top-1 of both models against labels (when given) and their top-1 agreement."""

    metric: str | None
    float: Fraction
    int8: Fraction
    drop: Fraction
    agreement: Fraction
    samples: int
    where: str = "host"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _is_classifier(out: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[1] > 1


def compare(float_out: np.ndarray, quant_out: np.ndarray, labels: np.ndarray | None) -> Accuracy:
    """Accuracy figures from the first output of each model; ``None`` where they do not apply."""
    n = len(float_out)
    if not _is_classifier(float_out):
        return Accuracy(None, None, None, None, None, n)
    f_top = np.argmax(float_out, axis=1)
    q_top = np.argmax(quant_out, axis=1)
    agreement = float(np.mean(f_top == q_top))
    if labels is None:
        return Accuracy(None, None, None, None, agreement, n)
    acc_f = float(np.mean(f_top == labels))
    acc_q = float(np.mean(q_top == labels))
    return Accuracy("top1", acc_f, acc_q, acc_f - acc_q, agreement, n)


def evaluate_host(float_tflite: bytes, quant_tflite: bytes, x: np.ndarray, labels: np.ndarray | None) -> Accuracy:
    """Run both models on preprocessed ``x`` with the runtime used on devices."""
    float_out = TFLiteModel(model_content=float_tflite).predict(x)[0]
    quant_out = TFLiteModel(model_content=quant_tflite).predict(x)[0]
    return compare(float_out, quant_out, labels)
