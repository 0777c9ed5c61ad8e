"""Host accuracy: float vs quantized model on the evaluation data, with the runtime's own code.

Also the fidelity every run gets (``worst_output``, ``fidelity_warning``): int8 against float on the
evaluation data, or without it on calibration samples held out for the purpose (``data.split_calibration``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from converter.analysis import result_cache
from converter.analysis.side_by_side import side_by_side
from converter.calibration.stats import refused_index
from converter.errors import DataError
from converter.progress import Progress
from converter.runtime.accuracy import Accuracy, MetricError, classifies, compare, is_reconstruction, pick_metric
from converter.runtime.model import TFLiteModel, signature_names

CHUNK = 64  # samples between progress updates
# Below this output SQNR against float, int8 is said to be far from float: the noise holds 1 % of the output's
# power. The demo sits at 28 dB (min/max) and a model whose int8 top-1 collapses at 1 to 10 dB.
LOW_SQNR_DB = 20.0


def check_metric(float_tflite: bytes, x: np.ndarray, labels: np.ndarray | None, metric: str, where: str) -> str:
    """The metric ``evaluate_host`` will use, checked before calibration: a metric the data cannot give fails fast."""
    outputs = TFLiteModel(model_content=float_tflite).outputs
    shaped = [np.empty((len(x), *o.shape[1:]), dtype=np.float32) for o in outputs]
    try:
        chosen = pick_metric(metric, shaped, x, labels)
    except MetricError as e:
        raise DataError(f"{where}: {e}") from e
    if chosen == "top1" and labels is not None and len(labels):
        _check_label_range(labels, shaped, x, where.removesuffix(".metric"))
    return chosen


def _check_label_range(labels: np.ndarray, outputs: list[np.ndarray], x: np.ndarray, where: str) -> None:
    """Top-1 labels index the class-score output top-1 reads: one outside it matches no prediction.

    Labels of another numbering (1-based, a dataset's global class ids) would score 0 % for float and int8 alike
    and the run would pass as if that were the model's accuracy.
    """
    scores = next(o for o in outputs if classifies(o, is_reconstruction(o, x)))
    classes = int(scores.shape[1])
    low, high = int(np.min(labels)), int(np.max(labels))
    if low < 0 or high >= classes:
        raise DataError(
            f"{where}: the labels run from {low} to {high}, but the model's class-score output has {classes} classes "
            f"(0 to {classes - 1}), so top-1 could never match them; give the labels as class indices 0 to "
            f"{classes - 1} in the order of the model's outputs (e.g. subtract 1 from 1-based labels), or set "
            "data.evaluation.metric: mse to compare int8 with float without labels"
        )


def evaluate_host(
    float_tflite: bytes,
    quant_tflite: bytes,
    x: np.ndarray,
    labels: np.ndarray | None,
    top_k: int | None = None,
    metric: str = "auto",
    where: str = "data.evaluation.metric",
    cache: bool = False,
) -> Accuracy:
    """Run both models on preprocessed ``x`` (packed for several inputs) with the runtime used on devices.

    Scored by ``metric``; outputs are named as the float model's signature names them, else by tensor name.

    Raises ``DataError`` (prefixed with ``where``, the recipe file and key) when ``metric`` cannot be
    measured on this model and data, e.g. top1 without labels; ``stats.IndexRefused`` (naming the sample)
    when a lookup kernel of a model with integer inputs refuses an id the data holds.

    Integer inputs reach both models as integers: ``TFLiteModel`` casts them to each model's own dtype
    (``runtime.model.quantize``), so an int64 float model and its int32 int8 model take the same ids.
    """
    if cache:  # a pure function of these inputs: an unchanged re-run takes the figure from the result cache
        entry = result_cache.key("evaluate", {"top_k": top_k, "metric": metric}, float_tflite, quant_tflite, x, labels)
        return result_cache.cached(
            "evaluate",
            entry,
            lambda: evaluate_host(float_tflite, quant_tflite, x, labels, top_k, metric, where),
            Accuracy.to_json,
            lambda d: Accuracy(**d),
        )
    ref, quant = TFLiteModel(model_content=float_tflite), TFLiteModel(model_content=quant_tflite)
    keys = signature_names(ref.interpreter)
    names = [keys.get(o.index, o.name) for o in ref.outputs]
    ref_out: list[list[np.ndarray]] = [[] for _ in ref.outputs]
    quant_out: list[list[np.ndarray]] = [[] for _ in quant.outputs]
    with Progress("evaluate", len(x)) as progress, side_by_side() as pair:
        for start in range(0, len(x), CHUNK):
            chunk = x[start : start + CHUNK]
            try:
                ref_chunk, quant_chunk = pair.run(partial(ref.predict, chunk), partial(quant.predict, chunk))
            except (RuntimeError, ValueError) as e:
                refused = refused_index(float_tflite, x, e, start)
                if refused is None:
                    raise
                raise refused from e
            for acc, out in zip(ref_out, ref_chunk, strict=True):
                acc.append(out)
            for acc, out in zip(quant_out, quant_chunk, strict=True):
                acc.append(out)
            progress.advance(len(chunk))
    try:
        return compare(
            [np.concatenate(o) for o in ref_out],
            [np.concatenate(o) for o in quant_out],
            labels,
            names=names,
            top_k=top_k,
            inputs=x,
            metric=metric,
        )
    except MetricError as e:
        raise DataError(f"{where}: {e}") from e


def worst_output(outputs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The output with the lowest SQNR against float (``runtime.accuracy.output_error``'s figures): its name,
    SQNR, cosine, and top-1 agreement when it holds class scores. None without outputs."""
    if not outputs:
        return None
    worst = min(outputs, key=lambda o: o["sqnr_db"])
    return {key: worst[key] for key in ("name", "sqnr_db", "cosine", "agreement") if key in worst}


def fidelity_warning(
    worst: dict[str, Any] | None,
    data: str,
    *,
    evaluation: bool,
    labels: bool,
    budget: bool,
    layer: str | None = None,
    tried: bool = False,
) -> str | None:
    """What to say when the worst output's SQNR is below ``LOW_SQNR_DB`` (None when it is not).

    ``data``: what it was measured on; ``evaluation``/``labels``: the recipe has evaluation data, with
    labels; ``budget``: an ``accuracy_drop`` budget applies (so the accuracy loop ran where it could);
    ``layer``: the layer that loses most SQNR (``analysis.layers[0]``), named in the advice; ``tried``: the
    no-budget loop already tried every calibration method, equalization and bias correction.
    """
    if worst is None or worst["sqnr_db"] >= LOW_SQNR_DB:
        return None
    figures = [f"cosine {worst['cosine']:.4f}"] if worst.get("cosine") is not None else []
    if worst.get("agreement") is not None:
        figures.append(f"top-1 agreement {100 * worst['agreement']:.2f}%")
    shown = f" ({', '.join(figures)})" if figures else ""
    tries = []
    if not evaluation:
        tries.append(
            "give data.evaluation with labels and set budgets.accuracy_drop, so the accuracy loop can try its fixes "
            "(ranges, equalization, bias correction, float fallbacks) and report accuracy, not only fidelity"
        )
    elif not budget:
        tries.append(
            "set budgets.accuracy_drop"
            + ("" if labels else " (labels in data.evaluation make it top-1 points)")
            + ", so the accuracy loop can try its fixes (ranges, equalization, bias correction, float fallbacks)"
        )
    if tried:
        tries.append(
            "the accuracy loop already tried every calibration.method, equalization and bias correction "
            "(tuning.attempts in report.json), so look at the model"
        )
    else:
        tries += [
            "another calibration.method (percentile, mse, entropy or auto)",
            "calibration.equalization or calibration.bias_correction",
        ]
    tries += [
        "a per-tensor calibration.rules entry for the layer that loses most ("
        + (f"{layer}; " if layer else "")
        + "see analysis.layers in report.json, or edgeconv analyze)",
    ]
    return (
        f"int8 output '{worst['name']}' is at {worst['sqnr_db']:.1f} dB SQNR against float{shown} on {data}, "
        f"below {LOW_SQNR_DB:g} dB: the int8 model's outputs are far from the float model's. To improve it: "
        + "; ".join(tries)
    )


CLIPPED_WARN = 0.001  # a tensor clipping this share of its values on unseen data is worth a word
CLIPPED_BY_WARN = 0.02  # ... when the farthest lies this far beyond its range (a fraction of its width: 5 steps)
FIXED_RANGE_OPS = frozenset({"L2_NORMALIZATION", "LOG_SOFTMAX", "LOGISTIC", "SOFTMAX", "TANH"})  # not calibrated


def coverage_warning(layers: list[dict[str, Any]], data: str, label: Callable[[str], str]) -> str | None:
    """What to say when min/max ranges clip values of ``data`` (the evaluation samples the analysis ran on).

    Min/max ranges cover every value of the calibration data by construction, so a value beyond a tensor's
    int8 range on other data is one calibration never saw: the calibration set does not cover what the model
    is evaluated on, and a few such samples can dominate the error (a few logits clipped by a third carry
    most of the noise). ``layers``: ``analysis.layers`` of report.json; ``label`` shortens a tensor name.
    """
    clipping = [
        layer
        for layer in layers
        if (layer.get("clipped") or 0.0) >= CLIPPED_WARN
        and (layer.get("clipped_by") or 0.0) >= CLIPPED_BY_WARN
        and layer.get("op") not in FIXED_RANGE_OPS
    ]
    if not clipping:
        return None
    worst = max(clipping, key=lambda layer: layer["clipped"])
    return (
        f"on {data}, {len(clipping)} tensor(s) of the int8 model hold values beyond their int8 range, values the "
        f"calibration data never reached (ranges: minmax); most '{label(worst['name'])}' ({worst['op']}): "
        f"{100 * worst['clipped']:.2g}% of its values, the farthest {100 * worst['clipped_by']:.0f}% of the "
        "range's width beyond it. The calibration data do not cover the evaluation data: add samples like these "
        "to data.calibration"
    )
