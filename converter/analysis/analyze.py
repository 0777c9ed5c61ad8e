"""Per-layer error analysis: where does the int8 model depart from the float one?

Both models run on the same samples with every intermediate tensor preserved; tensors are
matched by name (the quantizer keeps them), falling back to position among same-shaped op
outputs. Per tensor: SQNR in dB (the median over channels -- the last axis -- so one large channel cannot hide
the others, as it does in a whole-tensor SQNR), cosine similarity and RMSE in quantization steps, plus
``sqnr_drop_db`` -- the SQNR lost across the op that writes the tensor: an estimate of the error that op
adds by itself. Worst first.

``sqnr_drop_db`` means the same for every op: the best SQNR its output could have, minus the SQNR it has.
That best is its worst input's SQNR, but never more than ``ceiling_db``, the SQNR of rounding the
tensor to its own int8 grid and nothing else: 10 log10(mean(x^2) / (scale^2 / 12)) over the whole
float tensor ``x``. Without that floor an op fed by an exactly quantized model input (SQNR at the 200 dB
cap, as 8-bit images under a scale-1 input contract are) showed "158 dB lost" -- the cap minus its own
SQNR -- and was always ranked worst; measured against its own grid it loses what it really adds. The
ceiling is whole-tensor on purpose: a tensor whose range is set by one outlier channel still has a high
ceiling, so the starved channels (a low median SQNR) show as a large drop.

``isolate`` then measures that directly for the worst few: the model quantized with only that op in
int8 (every other op denylisted, so float), scored by the model output's SQNR against float. Each is a
full requantization (a TensorFlow quantizer call), the most expensive part of the analysis, so
``convert`` runs them only when an error is worth explaining (``alone_decision``); ``edgeconv analyze``
always does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from converter.analysis.side_by_side import side_by_side
from converter.errors import ConversionError
from converter.progress import named
from converter.runtime.accuracy import SQNR_CAP_DB, sqnr_db
from converter.runtime.interpreter import make_interpreter
from converter.runtime.model import TensorInfo, TFLiteModel, input_arrays, quantize
from converter.tflite.inspect_model import op_graph

log = logging.getLogger(__name__)
ISOLATE = 8  # worst layers measured alone
AloneMode = Literal["auto", "always", "never"]
# The gates whose failure the "alone" figures explain (``gates.MODEL_LEVEL`` minus the size).
ACCURACY_GATES = ("accuracy_drop", "min_accuracy", "min_agreement")
# Without an accuracy gate, the accuracy drop (in its metric's unit, ``runtime.accuracy``) above which
# ``auto`` explains it: 1 top-1 point, 1 dB of reconstruction SNR, a relative MSE of 1 % (20 dB).
UNGATED_DROP = {"top1": 0.01, "sqnr": 1.0, "mse": 0.01}
ASK = "edgeconv analyze measures them (or set analysis.alone: always)"


@dataclass(frozen=True)
class AloneRun:
    """Whether the "alone" requantizations ran, why (or why not), and how many models they built."""

    run: bool
    reason: str
    requantizations: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def alone_decision(mode: AloneMode, failed: list[str], gated: bool, drop: float | None, metric: str | None) -> AloneRun:
    """Run the "alone" requantizations (``run``) or not, with the reason report.json records.

    ``failed``: the accuracy gates that failed (``name [target]``); ``gated``: whether any accuracy gate
    was checked at all. ``auto`` spends them where an error is to be explained: a failed accuracy gate,
    or, with no accuracy gate, an accuracy drop above ``UNGATED_DROP`` for its metric.
    """
    if mode == "never":
        return AloneRun(False, "analysis.alone is never in the recipe")
    if mode == "always":
        return AloneRun(True, "analysis.alone is always in the recipe")
    if failed:
        return AloneRun(True, f"accuracy gate failed: {', '.join(failed)}")
    if gated:
        return AloneRun(False, f"every accuracy gate passed; {ASK}")
    limit = UNGATED_DROP.get(metric or "")
    if drop is None or limit is None:
        return AloneRun(False, f"no accuracy gate and no accuracy drop measured (data.evaluation); {ASK}")
    measured = f"accuracy drop {drop:.4g} ({metric})"
    if drop > limit:
        return AloneRun(True, f"{measured} is above {limit:g} and no accuracy gate is set")
    return AloneRun(False, f"{measured} is within {limit:g} and no accuracy gate is set; {ASK}")


@dataclass(frozen=True)
class LayerError:
    """Error of one activation tensor of the int8 model against the float model."""

    name: str
    op: str
    sqnr_db: float
    cosine: float | None
    rmse_steps: float | None
    sqnr_drop_db: float | None
    matched_by: str
    alone_sqnr_db: float | None = None
    ceiling_db: float | None = None
    # Share of the float tensor's values outside the int8 tensor's range, and how far the farthest lies beyond
    # it (a fraction of the range's width); None for a float tensor.
    clipped: float | None = None
    clipped_by: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _sqnr(signal: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Elementwise SQNR in dB from sums of squares, capped like ``runtime.accuracy.sqnr_db``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10 * np.log10(signal / noise)
    db = np.where(noise == 0, SQNR_CAP_DB, db)
    db = np.where((signal == 0) & (noise > 0), -SQNR_CAP_DB, db)
    return np.clip(db, -SQNR_CAP_DB, SQNR_CAP_DB)


@dataclass
class _Sums:
    """Running sums for one tensor pair, per channel (last axis)."""

    signal: np.ndarray
    noise: np.ndarray
    dot: float = 0.0
    ref_sq: float = 0.0
    test_sq: float = 0.0
    count: int = 0
    outside: int = 0
    farthest: float = 0.0  # beyond the range, in the tensor's units

    def add(self, ref: np.ndarray, test: np.ndarray, bounds: tuple[float, float] | None = None) -> None:
        if bounds is not None:
            lo, hi = bounds
            self.outside += int(np.count_nonzero((ref < lo) | (ref > hi)))
            self.farthest = max(self.farthest, float(lo - ref.min()), float(ref.max() - hi))
        channels = self.signal.shape[0]
        r = ref.astype(np.float64).reshape(-1, channels)
        t = test.astype(np.float64).reshape(-1, channels)
        # One scratch array for every product: the same arithmetic in the same order as computing each
        # into a new array (the figures are bit-identical), without allocating a tensor-sized array each time.
        scratch = r * r
        self.signal += scratch.sum(axis=0)
        self.ref_sq += float(scratch.sum())
        np.square(np.subtract(r, t, out=scratch), out=scratch)
        self.noise += scratch.sum(axis=0)
        self.dot += float(np.multiply(r, t, out=scratch).sum())
        self.test_sq += float(np.multiply(t, t, out=scratch).sum())
        self.count += r.size


def _outputs(interpreter: Any) -> tuple[list[int], dict[int, Any], dict[int, Any]]:
    """Model input and op outputs (tensor indices), tensor details, and each tensor's writing op."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    writer: dict[int, Any] = {}
    wanted = [int(d["index"]) for d in interpreter.get_input_details()]
    for op in interpreter._get_ops_details():  # noqa: SLF001 - see inspect_model
        for i in op["outputs"]:
            if int(i) >= 0:
                wanted.append(int(i))
                writer[int(i)] = op
    return wanted, details, writer


def _real(interpreter: Any, index: int, d: dict[str, Any]) -> np.ndarray:
    values = interpreter.get_tensor(index)
    scale, zero = d["quantization"]
    out: np.ndarray = values.astype(np.float32, copy=False)  # get_tensor returns a copy already
    if scale and np.dtype(d["dtype"]).kind in "iu":
        out -= np.float32(zero)  # in place: the same float32 arithmetic as (out - zero) * scale
        out *= np.float32(scale)
    return out


def int_bounds(details: dict[str, Any]) -> tuple[float, float] | None:
    """The real values an integer tensor can hold, to half a step beyond its end codes; None for float."""
    scale, zero = details["quantization"]
    dtype = np.dtype(details["dtype"])
    if not scale or dtype.kind not in "iu":
        return None
    info = np.iinfo(dtype)
    return (info.min - zero - 0.5) * scale, (info.max - zero + 0.5) * scale


def channel_sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Median SQNR over the last axis (channels); whole-tensor SQNR for 1-channel tensors."""
    if reference.ndim < 2 or reference.shape[-1] < 2:
        return sqnr_db(reference, test)
    ref = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    out = test.reshape(-1, test.shape[-1]).astype(np.float64)
    return float(np.median(_sqnr((ref * ref).sum(axis=0), ((ref - out) ** 2).sum(axis=0))))


def rounding_ceiling_db(mean_square: float, scale: float, dtype: Any) -> float | None:
    """SQNR of rounding a tensor of power ``mean_square`` to its integer grid (uniform error, scale^2 / 12).

    None for a float tensor or one without a scale; capped like every SQNR here.
    """
    if not scale or np.dtype(dtype).kind not in "iu":
        return None
    if mean_square <= 0:
        return -SQNR_CAP_DB
    return float(np.clip(10 * np.log10(mean_square / (scale * scale / 12)), -SQNR_CAP_DB, SQNR_CAP_DB))


@named("per-layer errors (LiteRT interpreter)")
def analyze(float_tflite: bytes, quant_tflite: bytes, x: np.ndarray) -> list[LayerError]:
    """Per-tensor error of the quantized model on preprocessed samples ``x``, worst first.

    Streams: both models run sample by sample and only per-channel sums are kept, so memory
    does not grow with the number of samples or the size of the activations.
    """
    ref_i = make_interpreter(model_content=float_tflite, delegate="none", preserve_all_tensors=True)
    test_i = make_interpreter(model_content=quant_tflite, delegate="none", preserve_all_tensors=True)
    ref_idx, ref_details, _ = _outputs(ref_i)
    test_idx, test_details, writer = _outputs(test_i)
    ref_by_name = {ref_details[i]["name"]: i for i in ref_idx}
    # Match by name, then by position among same-shaped outputs of the float model.
    matches: dict[int, tuple[int, str]] = {}
    unmatched = [i for i in ref_idx if ref_details[i]["name"] not in {test_details[j]["name"] for j in test_idx}]
    for j in test_idx:
        name = test_details[j]["name"]
        if name in ref_by_name:
            matches[j] = (ref_by_name[name], "name")
            continue
        same = [i for i in unmatched if tuple(ref_details[i]["shape"]) == tuple(test_details[j]["shape"])]
        if same:
            matches[j] = (same[0], "position")
            unmatched.remove(same[0])
    sums = {
        j: _Sums(
            np.zeros(max(1, int(test_details[j]["shape"][-1]) if len(test_details[j]["shape"]) > 1 else 1)),
            np.zeros(max(1, int(test_details[j]["shape"][-1]) if len(test_details[j]["shape"]) > 1 else 1)),
        )
        for j in matches
    }
    bounds = {j: int_bounds(test_details[j]) for j in matches}
    ref_in = [TensorInfo.from_details(d) for d in ref_i.get_input_details()]
    test_in = [TensorInfo.from_details(d) for d in test_i.get_input_details()]
    with side_by_side() as pair:
        for row in range(len(x)):
            for interpreter, infos in ((ref_i, ref_in), (test_i, test_in)):
                for info, values in zip(infos, input_arrays(x[row : row + 1], infos), strict=True):
                    interpreter.set_tensor(info.index, quantize(values, info))
            ref_i.reset_all_variables()  # a fused LSTM's state starts from zero for each sample
            test_i.reset_all_variables()
            pair.run(ref_i.invoke, test_i.invoke)
            for j, (i, _) in matches.items():
                sums[j].add(_real(ref_i, i, ref_details[i]), _real(test_i, j, test_details[j]), bounds[j])
    sqnr = {j: float(np.median(_sqnr(s.signal, s.noise))) for j, s in sums.items()}
    results = []
    for j, (_, how) in matches.items():
        s, d, op = sums[j], test_details[j], writer.get(j)
        inputs = [sqnr[int(i)] for i in (op["inputs"] if op is not None else []) if int(i) in sqnr]
        norm = np.sqrt(s.ref_sq * s.test_sq)
        scale = d["quantization"][0]
        rmse = float(np.sqrt(s.noise.sum() / max(s.count, 1)))
        ceiling = rounding_ceiling_db(s.ref_sq / max(s.count, 1), scale, d["dtype"])
        best = None if not inputs else min(min(inputs), ceiling) if ceiling is not None else min(inputs)
        edges = bounds[j]
        results.append(
            LayerError(
                d["name"],
                str(op["op_name"]) if op is not None else "",
                sqnr[j],
                float(s.dot / norm) if norm > 0 else None,
                rmse / scale if scale else None,
                (best - sqnr[j]) if best is not None else None,
                how,
                ceiling_db=ceiling,
                clipped=s.outside / max(s.count, 1) if edges else None,
                clipped_by=max(s.farthest, 0.0) / (edges[1] - edges[0]) if edges else None,
            )
        )
    return sorted(results, key=lambda e: (e.sqnr_drop_db is None, -(e.sqnr_drop_db or 0), e.sqnr_db))


def isolate(
    layers: list[LayerError],
    float_tflite: bytes,
    requantize: Callable[..., bytes],
    x: np.ndarray,
    count: int = ISOLATE,
) -> tuple[list[LayerError], int]:
    """``layers`` with ``alone_sqnr_db`` for the worst ``count`` (output SQNR with only that op quantized),
    and the number of requantizations that took.

    ``requantize(float_nodes=…)`` returns the model quantized the same way with those nodes float.
    """
    nodes = [n.name for n in op_graph(float_tflite).nodes]
    reference = TFLiteModel(model_content=float_tflite, delegate="none").predict(x)
    out = list(layers)
    calls = 0
    for i, layer in enumerate(layers[:count]):
        if layer.name not in nodes or layer.op in ("", "QUANTIZE", "DEQUANTIZE"):
            continue
        try:
            calls += 1
            model = requantize(float_nodes=tuple(n for n in nodes if n != layer.name))
        except ConversionError as e:
            log.info("analysis: %s not quantized alone: %s", layer.name, e)
            continue
        test = TFLiteModel(model_content=model, delegate="none").predict(x)
        worst = min(sqnr_db(r, t) for r, t in zip(reference, test, strict=True))  # several outputs: the worst
        out[i] = dataclasses.replace(layer, alone_sqnr_db=worst)
    return out, calls
