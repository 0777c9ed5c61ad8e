"""Bias correction: undo the mean shift that weight rounding puts into each conv/dense output.

Rounding int8 weights changes ``W`` to ``Wq``; on average the output then moves by
``(W - Wq) · E[x]`` per output channel (Nagel et al., "Data-Free Quantization", §4.2, with
empirical input means from the calibration data). Adding that to the float bias before
quantizing cancels the shift; weights quantize exactly as before because their scales
depend on the weights only. ``E[x]`` is the per-channel mean of the layer's float input;
zero padding at conv borders is ignored (an approximation). Corrections are computed from
the already quantized model's own weights, so they match TFLite's rounding exactly.

The corrected float model is checked before use (``transform_check``): it must prepare and
run, and it may move away from the original only as far as the quantized model does. The
correction adds, per channel, the mean of the error weight rounding puts into the int8
model, so it changes the outputs by part of that model's own error; ``BIAS_TOLERANCE``
times the int8 model's relative output error (plus the float rounding allowance) is the
limit. A correction that moves the outputs further is wrong (a mismatched layer or layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converter.calibration.equalize import TOLERANCE
from converter.calibration.transform_check import check_transform, outputs, relative_error
from converter.runtime.interpreter import make_interpreter
from converter.runtime.model import TensorInfo, input_arrays, quantize
from converter.tflite import flatbuf

MAX_SAMPLES = 256
BIAS_TOLERANCE = 2.0


@dataclass(frozen=True)
class BiasFix:
    """One corrected layer: its output, op, and the shift removed (in output quantization steps)."""

    name: str
    op: str
    mean_shift_steps: float
    max_shift_steps: float


def _input_means(float_tflite: bytes, indices: set[int], x: np.ndarray) -> dict[int, np.ndarray]:
    """Per-channel (last axis) mean of each float tensor in ``indices`` over the samples ``x``."""
    interpreter = make_interpreter(model_content=float_tflite, delegate="none", preserve_all_tensors=True)
    infos = [TensorInfo.from_details(d) for d in interpreter.get_input_details()]
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for row in range(min(len(x), MAX_SAMPLES)):
        for info, values in zip(infos, input_arrays(x[row : row + 1], infos), strict=True):
            interpreter.set_tensor(info.index, quantize(values, info))
        interpreter.reset_all_variables()  # a fused LSTM's state starts from zero for each sample
        interpreter.invoke()
        for i in indices:
            t = interpreter.get_tensor(i).astype(np.float64)
            flat = t.reshape(-1, t.shape[-1])
            sums[i] = sums.get(i, 0) + flat.sum(axis=0)
            counts[i] = counts.get(i, 0) + flat.shape[0]
    return {i: sums[i] / counts[i] for i in sums}


def _shift(op: str, delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """Per-output-channel ``(W - Wq) · E[x]``; None where the layout is not one we handle."""
    if op == "FULLY_CONNECTED" and delta.ndim == 2 and delta.shape[1] == mean.size:
        return np.asarray(delta @ mean)
    if op == "CONV_2D" and delta.ndim == 4 and delta.shape[3] == mean.size:
        return np.asarray(delta.sum(axis=(1, 2)) @ mean)
    if op == "DEPTHWISE_CONV_2D" and delta.ndim == 4 and delta.shape[3] % mean.size == 0:
        multiplier = delta.shape[3] // mean.size
        return np.asarray(delta[0].sum(axis=(0, 1)) * np.repeat(mean, multiplier))
    return None


def correct_biases(
    float_tflite: bytes, quant_tflite: bytes, x: np.ndarray, skip: set[str] | None = None
) -> tuple[bytes, list[BiasFix]]:
    """The float model with corrected biases (quantize it again with the same ranges), and what moved.

    Layers named in ``skip`` (kept float) are left alone: their weights are not rounded.
    """
    fmodel, qmodel = flatbuf.load(float_tflite), flatbuf.load(quant_tflite)
    ftensors, qtensors = fmodel.subgraphs[0].tensors, qmodel.subgraphs[0].tensors
    fops, qops = flatbuf.linear_ops(fmodel), flatbuf.linear_ops(qmodel)
    # By name; the model's last layer is renamed when the quantizer adds a dequantize after it, so
    # fall back to order (linear ops keep their order) when the counts match.
    by_order = dict(zip(fops, qops.values(), strict=True)) if len(fops) == len(qops) else {}
    pairs = []
    for name, (code, fop) in fops.items():
        code_q, qop = qops.get(name) or by_order.get(name) or ("", None)
        if qop is None or code_q != code or name in (skip or set()):
            continue
        wq = flatbuf.dequantized_weights(qmodel, qtensors[qop.inputs[1]])
        if wq is None or flatbuf.type_name(ftensors[fop.inputs[1]].type) != "FLOAT32":
            continue
        w = flatbuf.data(fmodel, ftensors[fop.inputs[1]], "float32").astype(np.float64)
        if w.shape != wq.shape:
            continue
        pairs.append((name, code, fop, w - wq, qtensors[qop.outputs[0]]))
    means = _input_means(float_tflite, {int(p[2].inputs[0]) for p in pairs}, x)
    fixes = []
    for name, code, fop, delta, qout in pairs:
        shift = _shift(code, delta, means[int(fop.inputs[0])])
        if shift is None:
            continue
        bias_t = flatbuf.bias_tensor(fmodel, fop, shift.size, name)
        if flatbuf.type_name(bias_t.type) != "FLOAT32":
            continue
        bias = flatbuf.data(fmodel, bias_t, "float32").astype(np.float64)
        if bias.shape != shift.shape:
            continue
        flatbuf.set_data(fmodel, bias_t, bias + shift)
        scale = float(qout.quantization.scale[0]) if qout.quantization and qout.quantization.scale else 1.0
        steps = np.abs(shift) / scale
        fixes.append(BiasFix(name, code, float(steps.mean()), float(steps.max())))
    corrected = flatbuf.dump(fmodel)
    if fixes:
        what = "bias correction"
        int8_error = relative_error(
            outputs(float_tflite, x, f"{what} (original model)"), outputs(quant_tflite, x, what)
        )
        check_transform(float_tflite, corrected, x, what, BIAS_TOLERANCE * int8_error + TOLERANCE)
    return corrected, fixes
