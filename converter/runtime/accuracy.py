"""Accuracy of a quantized model against its float reference and the labels.

numpy only: the same code scores a model on the host and on a device.

The metric fits the model (``pick_metric``); ``drop`` is always "lower is better", in the metric's unit:

- ``top1`` (class scores with labels): float top-1 minus int8 top-1, a fraction (0.01 = 1 point).
- ``sqnr`` (a reconstruction model, whose output has the input's shape): the reconstruction SNR
  (10 log10(sum x^2 / sum (x - model(x))^2) against the input ``x``) of the float model minus the int8
  model's, in dB lost. It needs that reference: the output of any other model has no ground truth here.
- ``mse``: relative MSE of the int8 output against the float output, MSE(int8, float) / mean(float^2),
  a fraction (0.01: the noise has 1% of the output's power, 20 dB SQNR).

Per-output SQNR, cosine and MSE against the float model are reported for every metric; top-1
agreement only when the output is a class-score vector (rank 2, more than one class, not a reconstruction).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SQNR_CAP_DB = 200.0  # identical outputs have infinite SQNR; JSON has no infinity
Fraction = float | None  # an alias: the field named ``float`` below would shadow the type
Number = float  # the same reason, for annotations below that field


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


METRICS = ("auto", "top1", "sqnr", "mse")
UNITS = {"top1": "fraction", "sqnr": "dB", "mse": "relative MSE"}
DEFINITIONS = {
    "top1": "float top-1 minus int8 top-1 against the labels (0.01 = 1 point)",
    "sqnr": "reconstruction SNR against the input, float minus int8 (dB lost)",
    "mse": "relative MSE of the int8 output against the float output: MSE(int8, float) / mean(float^2)",
}


class MetricError(ValueError):
    """The metric asked for cannot be measured on this model and data (the message says why)."""


def classifies(output: np.ndarray, reconstruction: bool) -> bool:
    """A class-score vector: rank 2 with more than one class, and not a copy of the input's shape."""
    return output.ndim == 2 and output.shape[1] > 1 and not reconstruction


def is_reconstruction(output: np.ndarray, inputs: np.ndarray | None) -> bool:
    """The model's output has its input's shape (an autoencoder, a denoiser); never for several inputs.

    Never for integer inputs either: token ids or indices are not a signal an output reconstructs, and a
    classifier of 12 classes over 12 ids would otherwise lose its top-1 to a "reconstruction" of the ids.
    """
    return (
        inputs is not None
        and inputs.dtype.names is None
        and inputs.dtype.kind == "f"
        and tuple(output.shape) == tuple(inputs.shape)
    )


def pick_metric(
    asked: str, output: np.ndarray | list[np.ndarray], inputs: np.ndarray | None, labels: np.ndarray | None
) -> str:
    """``asked`` when this model and data can give it; ``auto``: top1, else sqnr, else mse.

    ``output`` is the model's output, or all of its outputs: top1 needs one that holds class scores
    (and labels), sqnr one with the input's shape.
    """
    outputs = output if isinstance(output, list) else [output]
    recon = [is_reconstruction(o, inputs) for o in outputs]
    can = {
        "top1": labels is not None and any(classifies(o, r) for o, r in zip(outputs, recon, strict=True)),
        "sqnr": any(recon),
        "mse": True,
    }
    if asked == "auto":
        return next(m for m in ("top1", "sqnr", "mse") if can[m])
    if asked not in can:
        raise MetricError(f"unknown metric {asked!r}; use one of {', '.join(METRICS)}")
    if can[asked]:
        return asked
    shapes = ", ".join(str(list(o.shape[1:])) for o in outputs)
    shape = f"output shape {shapes}" if len(outputs) == 1 else f"output shapes {shapes}"
    if asked == "top1":
        why = (
            "the evaluation data has no labels (give an .npz with y, or an image folder with class sub-folders)"
            if labels is None
            else f"the model does not output class scores ({shape}; top-1 needs [classes] with classes > 1)"
        )
    else:
        packed = inputs is not None and inputs.dtype.names is not None
        where = (
            f"input shape {list(inputs.shape[1:])}"
            if inputs is not None and not packed
            else "one of several inputs"
            if packed
            else "no input"
        )
        why = f"sqnr is the reconstruction SNR against the input, and the {shape} is not the {where}"
    raise MetricError(f"metric {asked} cannot be measured: {why}; use auto, or mse (relative to the float output)")


def relative_mse(reference: np.ndarray, test: np.ndarray) -> float:
    """MSE(test, reference) / mean(reference^2): the noise's share of the output's power (1e300 for a zero output)."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = float(np.mean((ref - np.asarray(test, dtype=np.float64)) ** 2))
    power = float(np.mean(ref**2))
    return min(noise / power, 1e300) if power > 0 else (0.0 if noise == 0 else 1e300)  # JSON has no infinity


@dataclass(frozen=True)
class Accuracy:
    """The chosen metric for both models (``float``, ``int8``, ``drop`` in ``unit``), agreement and per-output error.

    ``float``/``int8``: top-1 fractions (top1), reconstruction SNR in dB (sqnr), or for mse ``int8`` is the
    relative MSE and ``float`` is null (the float output is the reference). ``reconstruction`` holds the
    MSE and SNR of both models against the input when the output has the input's shape.
    """

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
    unit: str | None = None
    definition: str | None = None
    reconstruction: dict[str, Number] | None = None  # MSE and SNR of both models against the input
    output: str | None = None  # the output the metric scores (top1: the first class-score output; mse: the worst)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def not_measured(where: str = "host") -> Accuracy:
    return Accuracy(None, None, None, None, None, 0, where)


def _reconstruction(inputs: np.ndarray, f_out: np.ndarray, q_out: np.ndarray) -> dict[str, float]:
    x = np.asarray(inputs, dtype=np.float64)
    return {
        "float_mse": float(np.mean((x - f_out) ** 2)),
        "int8_mse": float(np.mean((x - q_out) ** 2)),
        "float_snr_db": sqnr_db(x, f_out),
        "int8_snr_db": sqnr_db(x, q_out),
    }


def compare(
    float_outputs: list[np.ndarray],
    quant_outputs: list[np.ndarray],
    labels: np.ndarray | None,
    *,
    names: list[str] | None = None,
    top_k: int | None = None,
    where: str = "host",
    inputs: np.ndarray | None = None,
    metric: str = "auto",
) -> Accuracy:
    """Score the quantized outputs against the float ones, the labels and the ``inputs``.

    Every output gets SQNR, cosine, MSE, MAE and relative MSE against float; an output of class scores
    also its top-1 agreement. The metric scores one output: top1 the first class-score output (the
    labels are its classes), sqnr the first output with the input's shape, mse the output with the
    largest relative MSE (the worst). Raises ``MetricError`` when ``metric`` cannot be measured.
    """
    names = names or [f"output_{i}" for i in range(len(float_outputs))]
    recon_flags = [is_reconstruction(f, inputs) for f in float_outputs]
    errors = []
    for name, f, q, recon_i in zip(names, float_outputs, quant_outputs, recon_flags, strict=True):
        error = {**output_error(name, f, q), "relative_mse": relative_mse(f, q)}
        if classifies(f, recon_i):
            error["agreement"] = float(np.mean(np.argmax(f, axis=1) == np.argmax(q, axis=1)))
        errors.append(error)
    n = len(float_outputs[0])
    chosen = pick_metric(metric, list(float_outputs), inputs, labels)
    classifier = next((i for i, e in enumerate(errors) if "agreement" in e), None)
    agreement = errors[classifier]["agreement"] if classifier is not None else None
    first_recon = next((i for i, r in enumerate(recon_flags) if r), None)
    recon = None
    if inputs is not None and first_recon is not None:
        recon = _reconstruction(inputs, float_outputs[first_recon], quant_outputs[first_recon])
    unit, definition = UNITS[chosen], DEFINITIONS[chosen]
    common: dict[str, Any] = {"outputs": errors, "reconstruction": recon, "unit": unit, "definition": definition}
    if chosen == "sqnr" and recon is not None and first_recon is not None:  # sqnr: only for a reconstruction
        f_db, q_db = recon["float_snr_db"], recon["int8_snr_db"]
        return Accuracy("sqnr", f_db, q_db, f_db - q_db, agreement, n, where, output=names[first_recon], **common)
    if chosen == "mse" or labels is None or classifier is None:
        worst = max(range(len(errors)), key=lambda i: errors[i]["relative_mse"])
        rel = errors[worst]["relative_mse"]
        return Accuracy("mse", None, rel, rel, agreement, n, where, output=names[worst], **common)
    f_out, q_out = float_outputs[classifier], quant_outputs[classifier]
    f_top, q_top = np.argmax(f_out, axis=1), np.argmax(q_out, axis=1)
    acc_f, acc_q = float(np.mean(f_top == labels)), float(np.mean(q_top == labels))
    errors[classifier].update(float_top1=acc_f, int8_top1=acc_q)
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
        output=names[classifier],
        **common,
    )
