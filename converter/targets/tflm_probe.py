"""One TFLM allocation trial in a fresh process: ``python -m converter.targets.tflm_probe MODEL ARENA INPUT.npy...``.

One INPUT.npy per model input, in the model's input order.

Exit 0 when the model allocates and runs in an arena of ARENA bytes, 1 when it does not.
A process per trial, because the TFLM Python wrapper corrupts its state after repeated
failed allocations and then crashes (seen with tflite-micro 0.dev20261023).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    try:
        import numpy as np
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as e:
        print(f"cannot import TFLite Micro: {e}", file=sys.stderr)
        return 2

    model_path, arena, sample_paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    with open(model_path, "rb") as f:  # noqa: PTH123 - keep the probe minimal
        model = f.read()
    samples = [np.load(path) for path in sample_paths]  # one per model input, in its order
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # TFLM reports failed allocations on stderr; the exit code is the answer
    try:
        interpreter = runtime.Interpreter.from_bytes(model, arena_size=arena)
        for i, sample in enumerate(samples):
            interpreter.set_input(sample, i)
        interpreter.invoke()
    except (RuntimeError, ValueError):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
