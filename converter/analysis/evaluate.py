"""Host accuracy: float vs quantized model on the evaluation data, with the runtime's own code."""

from __future__ import annotations

import numpy as np

from converter.analysis import result_cache
from converter.calibration.stats import refused_index
from converter.errors import DataError
from converter.progress import Progress
from converter.runtime.accuracy import Accuracy, MetricError, compare, pick_metric
from converter.runtime.model import TFLiteModel, signature_names

CHUNK = 64  # samples between progress updates


def check_metric(float_tflite: bytes, x: np.ndarray, labels: np.ndarray | None, metric: str, where: str) -> str:
    """The metric ``evaluate_host`` will use, checked before calibration: a metric the data cannot give fails fast."""
    outputs = TFLiteModel(model_content=float_tflite).outputs
    shaped = [np.empty((len(x), *o.shape[1:]), dtype=np.float32) for o in outputs]
    try:
        return pick_metric(metric, shaped, x, labels)
    except MetricError as e:
        raise DataError(f"{where}: {e}") from e


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
    with Progress("evaluate", len(x)) as progress:
        for start in range(0, len(x), CHUNK):
            chunk = x[start : start + CHUNK]
            try:
                ref_chunk = ref.predict(chunk)
            except (RuntimeError, ValueError) as e:
                refused = refused_index(float_tflite, x, e, start)
                if refused is None:
                    raise
                raise refused from e
            for acc, out in zip(ref_out, ref_chunk, strict=True):
                acc.append(out)
            for acc, out in zip(quant_out, quant.predict(chunk), strict=True):
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
