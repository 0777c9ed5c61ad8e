"""A ``.rknn`` on a Rockchip board's NPU with ``rknn-toolkit-lite2`` (``RKNNLite``): latency and accuracy.

Runs on the device, inside the runtime bundle: numpy and ``rknnlite`` only, imported here so a board
without the package still measures its TFLite models and says what is missing instead of failing.
The ``.rknn`` was built by rknn-toolkit2 from our int8 TFLite without re-quantizing, so it is fed as
the simulator was fed: the *quantized* input tensor, quantized with the TFLite int8 model's own input
scale. Its outputs are read whatever their type: raw int8/uint8 are dequantized with the TFLite
model's output scales, float outputs are taken as the runtime's own dequantization.

Not run on Rockchip hardware by this project (no board here); the calls are RKNNLite's documented
ones (``load_rknn``, ``init_runtime``, ``inference``, ``release``). ``tests/integration/test_rknn_board.py``
checks this protocol against a stand-in ``rknnlite`` on a loopback SSH "board".
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .latency import Latency, summarize
from .model import TFLiteModel, dequantize, input_arrays, quantize

PACKAGE = "rknn-toolkit-lite2"
INSTALL_HINT = (
    "install Rockchip's runtime on the board: the NPU library librknnrt.so (from rknn-toolkit2's "
    "rknpu2/runtime folder, into /usr/lib) and the Python package rknn-toolkit-lite2 "
    "(pip install rknn-toolkit-lite2, aarch64 wheels) for this Python"
)


class NpuUnavailable(Exception):
    """RKNNLite is not installed on the device, or cannot open the NPU."""


def _api() -> Any:
    try:
        from rknnlite.api import RKNNLite  # type: ignore[import-not-found]
    except ImportError as e:
        raise NpuUnavailable(f"{PACKAGE} is not installed for this Python ({e}); {INSTALL_HINT}") from e
    return RKNNLite


def _version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


class RknnModel:
    """A loaded ``.rknn``: quantized inputs in, outputs as real numbers out (via the TFLite model's scales)."""

    def __init__(self, path: str, reference: TFLiteModel) -> None:
        api = _api()
        self.reference = reference
        self.rknn = api(verbose=False)
        if self.rknn.load_rknn(path) != 0:
            raise NpuUnavailable(f"RKNNLite could not load {path} (load_rknn returned non-zero)")
        if self.rknn.init_runtime() != 0:  # the default core mask: every platform accepts it
            self.rknn.release()
            raise NpuUnavailable(
                "RKNNLite could not start the NPU runtime (init_runtime returned non-zero): check that "
                "librknnrt.so is installed and matches the toolkit version, and that /dev/rknpu (or the "
                "rknpu driver) is present"
            )
        self.output_dtypes: list[str] = []

    def raw(self, qs: list[np.ndarray]) -> list[np.ndarray]:
        """One inference on a quantized sample (batch 1), one array per model input."""
        # One format per input (read for 4-D inputs only; the toolkit calls .lower() on every entry of a list).
        formats = ["nhwc"] * len(qs) if len(qs) > 1 else ["nhwc" if qs[0].ndim == 4 else None]
        outs = self.rknn.inference(inputs=qs, data_format=formats if len(qs) > 1 else formats[0])
        if outs is None:
            raise RuntimeError("RKNNLite inference returned nothing")
        self.output_dtypes = [str(np.asarray(o).dtype) for o in outs]
        return [np.asarray(o) for o in outs]

    def real(self, outs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs as real numbers in the TFLite model's output shapes."""
        values = []
        for o, info in zip(outs, self.reference.outputs, strict=True):
            o = o.reshape(info.shape) if o.size == int(np.prod(info.shape)) else o
            values.append(dequantize(o, info) if o.dtype.kind in "iu" else o.astype(np.float32))
        return values

    def release(self) -> None:
        self.rknn.release()


def _quantized(model: RknnModel, sample: np.ndarray | None) -> list[np.ndarray]:
    """One sample (batch 1; packed for several inputs) as the quantized tensors the .rknn takes; zeros when None."""
    infos = model.reference.inputs
    values = input_arrays(sample, infos) if sample is not None else [np.zeros(i.shape, np.float32) for i in infos]
    return [quantize(v.reshape(info.shape), info) for v, info in zip(values, infos, strict=True)]


def _latency(
    model: RknnModel, q: list[np.ndarray], warmup: int, runs: int, min_seconds: float, max_runs: int
) -> Latency:
    for _ in range(warmup):
        model.raw(q)
    times: list[int] = []
    deadline = time.perf_counter_ns() + int(min_seconds * 1e9)
    while len(times) < runs or (len(times) < max_runs and time.perf_counter_ns() < deadline):
        t0 = time.perf_counter_ns()
        model.raw(q)
        times.append(time.perf_counter_ns() - t0)
    return summarize(times, warmup=warmup, threads=None, delegate="rknn-npu")


def measure(
    path: str,
    reference: TFLiteModel,
    x: np.ndarray | None,
    *,
    warmup: int,
    runs: int,
    min_seconds: float,
    max_runs: int = 100_000,
) -> dict[str, Any]:
    """report.json's ``npu`` block: the .rknn's latency and (with samples) its outputs against the TFLite int8's."""
    try:
        model = RknnModel(path, reference)
    except NpuUnavailable as e:
        return {"measured": False, "runtime": PACKAGE, "version": _version(), "reason": str(e)}
    info = reference.inputs[0]
    try:
        first = x[:1] if x is not None and len(x) else None
        latency = _latency(model, _quantized(model, first), warmup, runs, min_seconds, max_runs)
        block: dict[str, Any] = {
            "measured": True,
            "runtime": PACKAGE,
            "version": _version(),
            "latency": latency.to_json(),
            "input": {"fed": "quantized", "dtype": info.dtype, "scale": info.scale, "zero_point": info.zero_point},
            "inputs": len(reference.inputs),
        }
        if x is not None and len(x):
            outputs: list[list[np.ndarray]] = [[] for _ in reference.outputs]
            for row in range(len(x)):
                raw = model.raw(_quantized(model, x[row : row + 1]))
                for acc, value in zip(outputs, model.real(raw), strict=True):
                    acc.append(value)
            block["outputs"] = [np.concatenate(o) for o in outputs]
            block["output_dtypes"] = model.output_dtypes
        return block
    finally:
        model.release()
