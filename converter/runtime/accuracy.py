"""Accuracy of a quantized model against its float reference and the labels.

numpy only: the same code scores a model on the host and on a device.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SQNR_CAP_DB = 200.0  # identical outputs have infinite SQNR; JSON has no infinity
Fraction = float | None  # an alias: the field named ``float`` below would shadow the type


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (ref - test)^2), capped."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(test, dtype=np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0:
        return SQNR_CAP_DB
    if signal == 0:
        return -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, 10 * np.log10(signal / noise)))


def cosine(reference: np.ndarray, test: np.ndarray) -> float | None:
    """Cosine similarity of the flattened outputs (None when one of them is all zeros)."""
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(test, dtype=np.float64).ravel()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else None


def output_error(name: str, reference: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """SQNR, cosine, MSE and MAE of one output over all samples."""
    diff = np.asarray(reference, dtype=np.float64) - np.asarray(test, dtype=np.float64)
    return {
        "name": name,
        "sqnr_db": sqnr_db(reference, test),
        "cosine": cosine(reference, test),
        "mse": float(np.mean(diff**2)),
        "mae": float(np.mean(np.abs(diff))),
    }


def _top_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(best == labels[:, None], axis=1)))


@dataclass(frozen=True)
class Accuracy:
    """Top-1 of both models against labels (when given), their agreement, and per-output error."""

    metric: str | None
    float: Fraction
    int8: Fraction
    drop: Fraction
    agreement: Fraction
    samples: int
    where: str = "host"
    top_k: int | None = None
    float_top_k: Fraction = None
    int8_top_k: Fraction = None
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def not_measured(where: str = "host") -> Accuracy:
    return Accuracy(None, None, None, None, None, 0, where)


def compare(
    float_outputs: list[np.ndarray],
    quant_outputs: list[np.ndarray],
    labels: np.ndarray | None,
    *,
    names: list[str] | None = None,
    top_k: int | None = None,
    where: str = "host",
) -> Accuracy:
    """Score the quantized outputs against the float ones and the labels (first output classifies)."""
    names = names or [f"output_{i}" for i in range(len(float_outputs))]
    errors = [output_error(n, f, q) for n, f, q in zip(names, float_outputs, quant_outputs, strict=True)]
    f_out, q_out = float_outputs[0], quant_outputs[0]
    n = len(f_out)
    if not (f_out.ndim == 2 and f_out.shape[1] > 1):  # regression-style: errors only
        return Accuracy(None, None, None, None, None, n, where, outputs=errors)
    f_top, q_top = np.argmax(f_out, axis=1), np.argmax(q_out, axis=1)
    agreement = float(np.mean(f_top == q_top))
    if labels is None:
        return Accuracy(None, None, None, None, agreement, n, where, outputs=errors)
    acc_f, acc_q = float(np.mean(f_top == labels)), float(np.mean(q_top == labels))
    k = top_k if top_k and top_k > 1 else None
    return Accuracy(
        "top1",
        acc_f,
        acc_q,
        acc_f - acc_q,
        agreement,
        n,
        where,
        k,
        _top_k(f_out, labels, k) if k else None,
        _top_k(q_out, labels, k) if k else None,
        errors,
    )
