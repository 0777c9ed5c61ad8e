"""The stock TensorFlow converter, as a user would call it: the baseline of the benchmarks.

    python tools/stock_convert.py MODEL SAMPLES.npy OUT.tflite

MODEL is a .keras/.h5 file or a SavedModel folder; SAMPLES.npy holds preprocessed
calibration samples [N, ...]. Full-integer (TFLITE_BUILTINS_INT8), int8 I/O,
representative_dataset of one sample per step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    model_path, samples_path, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    samples = np.load(samples_path)
    if model_path.is_dir():
        converter = tf.lite.TFLiteConverter.from_saved_model(str(model_path))
    else:
        import keras

        converter = tf.lite.TFLiteConverter.from_keras_model(keras.models.load_model(model_path, compile=False))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None].astype(np.float32)] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    out.write_bytes(converter.convert())


if __name__ == "__main__":
    main()
