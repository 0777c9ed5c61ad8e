"""The stock TensorFlow converter, as a user would call it: the baseline of the benchmarks.

    python tools/stock_convert.py MODEL SAMPLES.npy OUT.tflite
    python tools/stock_convert.py --float MODEL OUT.tflite

MODEL is a .keras/.h5 file or a SavedModel folder; SAMPLES.npy holds preprocessed
calibration samples [N, ...]. Full-integer as TensorFlow's post-training quantization guide
documents it: ``Optimize.DEFAULT``, a ``representative_dataset`` of one sample per step,
``TFLITE_BUILTINS_INT8`` only, int8 input and output. ``--float`` writes the plain float model
instead (with its ``serving_default`` signature): what ai-edge-quantizer starts from.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    float_only = sys.argv[1] == "--float"
    args = sys.argv[2:] if float_only else sys.argv[1:]
    model_path, out = Path(args[0]), Path(args[-1])
    if model_path.is_dir():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(model_path))
    else:
        import keras

        converter = tf.lite.TFLiteConverter.from_keras_model(keras.models.load_model(model_path, compile=False))
    if float_only:
        out.write_bytes(converter.convert())
        return
    samples = np.load(args[1])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None].astype(np.float32)] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    out.write_bytes(converter.convert())


if __name__ == "__main__":
    main()
