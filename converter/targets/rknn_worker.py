"""Rockchip's rknn-toolkit2 in its own virtualenv: one toolkit run per request, JSON in and out.

Run only by the RKNN virtualenv's Python (``edgeconv setup rknn`` makes it), as a child process of
edgeconv: ``python rknn_worker.py`` reads one JSON request on stdin and writes one JSON answer on
stdout. It imports nothing from edgeconv (the toolkit pins numpy<=1.26.4 and protobuf<=4.25.4 and
needs TensorFlow<=2.14, none of which can share edgeconv's environment), only the toolkit and numpy.

Request: ``{"model": int8 .tflite, "platform": "rk3588", "rknn": where to export the .rknn,
"inputs": one .npy per model input (in the model's input order) of its *quantized* samples (the int8
tensor: a pre-quantized TFLite is fed its quantized input and returns raw int8 outputs), "outputs":
.npz to write, "probe": bool}``.
The toolkit loads the TFLite without re-quantizing (``build(do_quantization=False)`` keeps the
model's own scales), builds for the platform, exports the .rknn and, in the same run (a saved .rknn
cannot be simulated), runs the x86 simulator on every sample. The toolkit logs to stdout, so its
stdout is sent to stderr and only the answer is written to the real stdout.

Checked with rknn-toolkit2 2.5.0; ``tests/integration/test_rknn.py`` runs it for real.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def _answer(out: Any, payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload) + "\n")
    out.flush()


def _toolkit_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("rknn-toolkit2")
    except metadata.PackageNotFoundError:
        return None


def run(request: dict[str, Any]) -> dict[str, Any]:
    """One toolkit run; a step that returns non-zero ends it with ``ok: false`` and the step's name."""
    import numpy as np
    from rknn.api import RKNN

    if request.get("probe"):
        return {"ok": True, "toolkit": _toolkit_version(), "numpy": np.__version__}
    seconds: dict[str, float] = {}
    current = ["start"]
    rknn = RKNN(verbose=False)

    def step(name: str, call: Any, *args: Any, **kwargs: Any) -> None:
        current[0] = name
        start = time.perf_counter()
        ret = call(*args, **kwargs)
        seconds[name] = round(time.perf_counter() - start, 3)
        if ret != 0:
            raise RuntimeError(f"returned {ret}")

    try:
        step("config", rknn.config, target_platform=request["platform"])
        step("load_tflite", rknn.load_tflite, model=request["model"])
        step("build", rknn.build, do_quantization=False)  # keep the TFLite's own quantization
        step("export_rknn", rknn.export_rknn, request["rknn"])
        step("init_runtime", rknn.init_runtime)  # no target: the x86 simulator
        current[0] = "inference"
        paths = request["inputs"] if isinstance(request["inputs"], list) else [request["inputs"]]
        xs = [np.load(p) for p in paths]
        # One format per input; the toolkit reads it only for 4-D inputs but calls .lower() on every entry.
        formats = ["nhwc"] * len(xs) if len(xs) > 1 else ["nhwc" if xs[0].ndim == 4 else None]
        start = time.perf_counter()
        results: list[list[Any]] = []
        for i in range(len(xs[0])):
            sample = [x[i : i + 1] for x in xs]
            outs = rknn.inference(inputs=sample, data_format=formats if len(xs) > 1 else formats[0])
            if outs is None:
                raise RuntimeError(f"returned nothing for sample {i}")
            results.append(outs)
        seconds["simulate"] = round(time.perf_counter() - start, 3)
        count = len(results[0]) if results else 0
        stacked = {f"output_{k}": np.concatenate([r[k] for r in results]) for k in range(count)}
        np.savez(request["outputs"], **stacked)  # type: ignore[arg-type]  # numpy's stubs type **kwds badly
        return {
            "ok": True,
            "toolkit": _toolkit_version(),
            "samples": len(xs[0]),
            "outputs": {k: [str(v.dtype), list(v.shape)] for k, v in stacked.items()},
            "seconds": seconds,
        }
    except Exception as e:  # noqa: BLE001 - the toolkit raises bare ValueErrors with whole tracebacks inside
        last = str(e).strip().splitlines()[-1:] or [type(e).__name__]
        return {
            "ok": False,
            "toolkit": _toolkit_version(),
            "error": f"{current[0]} failed: {last[0]}",
            "seconds": seconds,
        }
    finally:
        rknn.release()


def main() -> int:
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the toolkit's own log lines go to stderr; stdout carries only the answer
    sys.stdout = sys.stderr
    try:
        request = json.loads(sys.stdin.read())
    except ValueError as e:
        _answer(answer, {"ok": False, "error": f"bad request: {e}"})
        return 2
    _answer(answer, run(request))
    return 0


if __name__ == "__main__":
    sys.exit(main())
