"""Run a .tflite model on float samples, whatever its I/O dtypes (float, int8, uint8, int16).

Inputs are quantized with the model's own scale and zero point, outputs dequantized, so
float and integer models are compared on the same float scale. numpy + interpreter only.

An integer tensor without a scale (token ids, attention masks, indices) is no quantized value: its
samples are cast to its dtype as they are, after a check that each is a whole number that fits it
(``quantize``), so an id is never rounded, wrapped around or scaled on its way in.

Samples of a model with several inputs travel as one numpy *structured* array: one record per
sample, one field per model input (named like the float model's input tensor). Selecting,
slicing and counting samples then keeps the inputs of a sample together everywhere, and
``input_arrays`` splits a batch into the arrays the interpreter takes, matched by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .interpreter import make_interpreter


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output: name, shape, dtype and (scale, zero_point) when quantized."""

    name: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    scale: float | None
    zero_point: int | None

    @classmethod
    def from_details(cls, d: dict[str, Any]) -> TensorInfo:
        scale, zero_point = d.get("quantization", (0.0, 0))
        quantized = bool(scale) and np.dtype(d["dtype"]).kind in "iu"
        return cls(
            name=d["name"],
            index=int(d["index"]),
            shape=tuple(int(s) for s in d["shape"]),
            dtype=np.dtype(d["dtype"]).name,
            scale=float(scale) if quantized else None,
            zero_point=int(zero_point) if quantized else None,
        )


def quantize(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Real values to the tensor's dtype: q = clamp(round(x / S + Z)); a cast for float tensors.

    An integer tensor without a scale takes its values as they are: a ``ValueError`` names the tensor
    when one is not a whole number or does not fit its dtype, where a cast would truncate or wrap it
    into another, valid-looking id (the data layer refuses such files earlier, naming their rows).
    """
    if info.scale is None or info.zero_point is None:
        kind = np.dtype(info.dtype).kind
        if kind in "biu":
            return _integers(np.asarray(x), info)
        return np.asarray(x, dtype=info.dtype)
    limits = np.iinfo(info.dtype)
    r = np.asarray(x, dtype=np.float64) / info.scale + info.zero_point
    q = np.sign(r) * np.floor(np.abs(r) + 0.5)  # half away from zero, as TFLite's QUANTIZE (not numpy's half-even)
    out: np.ndarray = np.clip(q, limits.min, limits.max).astype(info.dtype)
    return out


def _integers(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """``x`` cast to the integer (or bool) tensor ``info``'s dtype, refused if a value would change."""
    target = np.dtype(info.dtype)
    if x.dtype == target:
        return x
    if x.size and x.dtype.kind not in "biu":
        whole = np.isfinite(x) & (x == np.round(x)) if x.dtype.kind == "f" else np.zeros(x.shape, dtype=bool)
        if not whole.all():
            raise ValueError(f"input '{info.name}' takes {target} integers, got {x.dtype} values that are not whole")
    lo, hi = (0, 1) if target.kind == "b" else (int(np.iinfo(target).min), int(np.iinfo(target).max))
    exact = x.dtype.kind in "biu"  # compared as Python ints: float(2**63 - 1) would exceed int64's maximum
    least, most = ((int(x.min()), int(x.max())) if exact else (float(x.min()), float(x.max()))) if x.size else (0, 0)
    if least < lo or most > hi:
        raise ValueError(f"input '{info.name}' takes {target} ({lo}..{hi}), got values from {least} to {most}")
    return x.astype(target)


def signature_names(interpreter: Any) -> dict[int, str]:
    """Tensor index -> name in the model's one signature (inputs and outputs); empty without a signature.

    A model exported from a SavedModel or by ``TFLiteConverter.from_keras_model`` names its input tensors
    ``serving_default_image:0`` but its signature calls them ``image``, as the Keras model did.
    """
    try:
        signatures = interpreter.get_signature_list()
        if len(signatures) != 1:
            return {}
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        found = {**runner.get_input_details(), **runner.get_output_details()}
    except (AttributeError, ValueError, RuntimeError, KeyError):
        return {}
    return {int(d["index"]): str(name) for name, d in found.items()}


def pack_inputs(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """One structured array of samples from per-input arrays (same length), fields in the given order."""
    fields = list(arrays.items())
    n = len(fields[0][1])
    out = np.empty(n, dtype=[(name, a.dtype, a.shape[1:]) for name, a in fields])
    for name, a in fields:
        out[name] = a
    return out


def input_names(x: np.ndarray) -> tuple[str, ...] | None:
    """The input names of packed samples (``pack_inputs``), or None for a plain single-input array."""
    return x.dtype.names


def input_arrays(x: np.ndarray, inputs: list[TensorInfo]) -> list[np.ndarray]:
    """The per-input arrays of a batch ``x``, in the order of ``inputs``.

    A plain array feeds a single-input model. Packed samples are matched to ``inputs`` by tensor name,
    else by position (a quantized model's input may carry another name than the float one's).
    """
    names = x.dtype.names
    if names is None:
        if len(inputs) != 1:
            raise ValueError(f"the model has {len(inputs)} inputs but the samples are one array of shape {x.shape}")
        return [x]
    if len(names) != len(inputs):
        raise ValueError(f"the model has {len(inputs)} inputs but the samples hold {len(names)} ({', '.join(names)})")
    if all(info.name in names for info in inputs):
        return [np.ascontiguousarray(x[info.name]) for info in inputs]
    return [np.ascontiguousarray(x[name]) for name in names]


def dequantize(q: np.ndarray, info: TensorInfo) -> np.ndarray:
    """The tensor's values as real numbers: r = (q - Z) * S."""
    if info.scale is None or info.zero_point is None:
        return np.asarray(q, dtype=np.float32)
    return ((q.astype(np.float32) - np.float32(info.zero_point)) * np.float32(info.scale)).astype(np.float32)


class TFLiteModel:
    """A loaded model that takes and returns float arrays, one sample at a time or in loops."""

    def __init__(
        self,
        model_content: bytes | None = None,
        model_path: str | None = None,
        num_threads: int | None = None,
        delegate: str = "xnnpack",
        preserve_all_tensors: bool = False,
    ):
        self.delegate = delegate
        self.interpreter = make_interpreter(
            model_content, model_path, num_threads, delegate=delegate, preserve_all_tensors=preserve_all_tensors
        )
        self.inputs = [TensorInfo.from_details(d) for d in self.interpreter.get_input_details()]
        self.outputs = [TensorInfo.from_details(d) for d in self.interpreter.get_output_details()]

    def run(self, *samples: np.ndarray) -> list[np.ndarray]:
        """One invocation; each sample has the input's full shape (batch included), or one packed batch."""
        if len(samples) == 1 and samples[0].dtype.names is not None:
            samples = tuple(input_arrays(samples[0], self.inputs))
        for info, x in zip(self.inputs, samples, strict=True):
            self.interpreter.set_tensor(info.index, quantize(x, info))
        # Variable tensors (a fused LSTM's state) persist across invocations: each call starts from zero.
        self.interpreter.reset_all_variables()
        self.interpreter.invoke()
        return [dequantize(self.interpreter.get_tensor(o.index), o) for o in self.outputs]

    def predict(self, x: np.ndarray) -> list[np.ndarray]:
        """Outputs for every row of ``x`` (an array, or packed samples for several inputs), stacked along axis 0."""
        batch = self.inputs[0].shape[0] if self.inputs[0].shape else 1
        rows: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            for out, value in zip(rows, self.run(*input_arrays(chunk, self.inputs)), strict=True):
                out.append(value[: len(chunk)])
        return [np.concatenate(r, axis=0) for r in rows]
