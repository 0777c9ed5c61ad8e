"""Google's ai-edge-quantizer on a float .tflite, as its documentation shows: the peer in the benchmarks.

    AEQ_PYTHON tools/aeq_convert.py FLOAT.tflite SAMPLES.npy OUT.tflite

Runs in ai-edge-quantizer's own virtualenv (it needs no TensorFlow, and must not get it from ours):

    python -m venv build/aeq-venv && build/aeq-venv/bin/pip install ai-edge-quantizer

Static full-integer recipe ``recipe.static_wi8_ai8()`` (int8 weights per channel, int8 activations,
its default min/max algorithm), calibrated with ``Quantizer.calibrate`` on SAMPLES.npy (preprocessed
samples [N, ...], one per step, the same ones the other converters get) through the model's first
signature. Its defaults are kept (the input and output types and the activation ranges are what it
chooses; the benchmark reports the I/O types it wrote). Imports nothing of edgeconv.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    float_path, samples_path, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    samples = np.load(samples_path).astype(np.float32)
    signatures = Interpreter(model_path=str(float_path)).get_signature_list()
    if len(signatures) != 1:
        raise SystemExit(f"{float_path}: expected one signature, found {sorted(signatures)}")
    ((key, signature),) = signatures.items()
    (name,) = signature["inputs"]
    qt = quantizer.Quantizer(str(float_path))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    ranges = qt.calibrate({key: [{name: s[None]} for s in samples]})
    result = qt.quantize(ranges, enable_progress_report=False)
    assert result.quantized_model is not None
    out.write_bytes(bytes(result.quantized_model))


if __name__ == "__main__":
    main()
