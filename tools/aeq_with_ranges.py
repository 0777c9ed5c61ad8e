"""Quantize a float .tflite with ai-edge-quantizer, fed edgeconv's chosen ranges instead of its own calibration.

Runs in its own virtualenv (``pip install ai-edge-quantizer``: no TensorFlow there), started as a child by
``tools/tf_free_route.py``; it imports nothing from ``converter``.

    python tools/aeq_with_ranges.py FLOAT.tflite RANGES.json OUT.tflite

RANGES.json: ``{"ranges": {tensor name: [lo, hi]}}`` for the activations of subgraph 0. They go in as
ai-edge-quantizer's calibration result (its QSVs: per-tensor ``min``/``max`` arrays of shape (1,)*rank),
so its moving-average min/max never runs. Recipe: ``static_wi8_ai8`` (int8 per-channel weights, int8
asymmetric activations, int32 biases). It quantizes the graph's input and output tensors in place, so the
model's I/O is int8 with no QUANTIZE/DEQUANTIZE at the boundary (LiteRT's ``modify_model_interface`` must not
be run on top: it corrupts such a model's buffers).

Weights that ai-edge-quantizer stored outside the flatbuffer are moved back in (``inline_buffers``: TFLite
Micro cannot read them); the file as exported is kept beside OUT as ``*.exported.tflite``.

Prints one JSON line on stdout: seconds per phase, versions, tensors given and missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def qsvs(model: Any, ranges: dict[str, list[float]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Our ranges in ai-edge-quantizer's QSV form, and the names in ``ranges`` the model does not have."""
    import numpy as np

    out: dict[str, dict[str, Any]] = {}
    for tensor in model.subgraphs[0].tensors:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        if name in ranges:
            lo, hi = ranges[name]
            shape = (1,) * max(len(tensor.shape if tensor.shape is not None else ()), 1)
            out[name] = {"min": np.full(shape, lo, np.float32), "max": np.full(shape, hi, np.float32)}
    return out, sorted(set(ranges) - set(out))


def inline_buffers(model: bytes) -> tuple[bytes, int]:
    """The model with every external (offset) buffer moved back into the flatbuffer, and how many there were.

    ai-edge-quantizer stores the weights after the flatbuffer (``Buffer.offset``/``size``) once they pack to
    256 KiB or more. LiteRT reads that; TFLite Micro does not: it prepares the model, plans the weights into
    its arena and computes with garbage (seen on both MobileNets: no output value equal to LiteRT's).
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    external = sum(1 for b in schema.ModelT.InitFromPackedBuf(model, 0).buffers or [] if b.offset > 1)
    if not external:
        return model, 0
    obj = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj)), external


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("float_model", type=Path)
    parser.add_argument("ranges", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--as-exported", action="store_true", help="keep ai-edge-quantizer's external buffers")
    args = parser.parse_args()
    t0 = time.perf_counter()
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    content = args.float_model.read_bytes()
    ranges = json.loads(args.ranges.read_text())["ranges"]
    qz = quantizer.Quantizer(bytearray(content))
    qz.load_quantization_recipe(recipe.static_wi8_ai8())
    calibration, unknown = qsvs(tfl_flatbuffer_utils.read_model(bytearray(content)), ranges)
    result = qz.quantize(calibration, enable_progress_report=False)
    raw = bytes(result.quantized_model)
    model, external = (raw, 0) if args.as_exported else inline_buffers(raw)
    t_quantize = time.perf_counter() - t1
    if model is not raw:
        args.out.with_suffix(".exported.tflite").write_bytes(raw)
    args.out.write_bytes(model)
    versions = {p: metadata.version(p) for p in ("ai-edge-quantizer", "ai-edge-litert", "numpy")}
    tf_loaded = any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
    report = {
        "seconds": {"import": round(t_import, 3), "quantize": round(t_quantize, 3)},
        "versions": versions,
        "tensors_given": len(calibration),
        "unknown_names": unknown,
        "external_buffers_inlined": external,
        "tensorflow_loaded": tf_loaded,
        "pid": os.getpid(),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
