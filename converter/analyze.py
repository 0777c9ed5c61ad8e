"""Per-layer error analysis: where does the int8 model depart from the float one?

Both models run on the same samples with every intermediate tensor preserved; tensors are
matched by name (the quantizer keeps them), falling back to position among same-shaped op
outputs. Per tensor: SQNR in dB (the median over channels -- the last axis -- so one large channel cannot hide
the others, as it does in a whole-tensor SQNR), cosine similarity and RMSE in quantization steps, plus
``sqnr_drop_db`` -- the SQNR lost across the op that writes the tensor (its worst input's
SQNR minus its own): an estimate of the error that op adds by itself. Worst first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .runtime.accuracy import cosine, sqnr_db
from .runtime.interpreter import make_interpreter
from .runtime.model import TensorInfo, quantize

ANALYSIS_SAMPLES = 64  # samples both models run with every tensor kept


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _activations(model: bytes, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any], list[dict[str, Any]]]:
    """Every op output over all samples (dequantized), tensor details by name, and the op list."""
    interpreter = make_interpreter(model_content=model, delegate="none", preserve_all_tensors=True)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # noqa: SLF001 - see inspect_model
    info = TensorInfo.from_details(interpreter.get_input_details()[0])
    wanted = [info.index] + [int(i) for op in ops for i in op["outputs"] if int(i) >= 0]
    rows: dict[int, list[np.ndarray]] = {i: [] for i in wanted}
    for sample in x:
        interpreter.set_tensor(info.index, quantize(sample[None], info))
        interpreter.invoke()
        for i in wanted:
            rows[i].append(interpreter.get_tensor(i).astype(np.float32))
    out = {}
    for i in wanted:
        d = details[i]
        values = np.stack(rows[i])
        scale, zero = d["quantization"]
        if scale and np.dtype(d["dtype"]).kind in "iu":
            values = (values - zero) * scale
        out[d["name"]] = values
    return out, {d["name"]: d for d in details.values()}, ops


def channel_sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Median SQNR over the last axis (channels); whole-tensor SQNR for 1-channel tensors."""
    if reference.ndim < 2 or reference.shape[-1] < 2:
        return sqnr_db(reference, test)
    ref = reference.reshape(-1, reference.shape[-1])
    out = test.reshape(-1, test.shape[-1])
    return float(np.median([sqnr_db(ref[:, c], out[:, c]) for c in range(ref.shape[1])]))


def analyze(float_tflite: bytes, quant_tflite: bytes, x: np.ndarray) -> list[LayerError]:
    """Per-tensor error of the quantized model on preprocessed samples ``x``, worst first."""
    ref, _, ref_ops = _activations(float_tflite, x)
    test, test_details, test_ops = _activations(quant_tflite, x)
    producer: dict[int, Any] = {}
    for op in test_ops:
        for i in op["outputs"]:
            producer[int(i)] = op
    index_of = {name: d["index"] for name, d in test_details.items()}
    name_of = {d["index"]: name for name, d in test_details.items()}
    # Match by name, then by position among same-shaped outputs of the float model.
    unmatched_ref = [n for n in ref if n not in test]
    matches: dict[str, tuple[str, str]] = {n: (n, "name") for n in test if n in ref}
    for n in [n for n in test if n not in ref]:
        same = [r for r in unmatched_ref if ref[r].shape == test[n].shape]
        if same:
            matches[n] = (same[0], "position")
            unmatched_ref.remove(same[0])
    sqnr = {n: channel_sqnr_db(ref[r], test[n]) for n, (r, _) in matches.items()}
    results = []
    for n, (r, how) in matches.items():
        d = test_details[n]
        scale = d["quantization"][0]
        rmse = float(np.sqrt(np.mean((ref[r].astype(np.float64) - test[n]) ** 2)))
        writer = producer.get(index_of[n])
        inputs = [
            sqnr[name_of[int(i)]]
            for i in (writer["inputs"] if writer is not None else [])
            if int(i) in name_of and name_of[int(i)] in sqnr
        ]
        drop = (min(inputs) - sqnr[n]) if inputs else None
        results.append(
            LayerError(
                n,
                str(writer["op_name"]) if writer is not None else "",
                sqnr[n],
                cosine(ref[r], test[n]),
                rmse / scale if scale else None,
                drop,
                how,
            )
        )
    return sorted(results, key=lambda e: (e.sqnr_drop_db is None, -(e.sqnr_drop_db or 0), e.sqnr_db))
