"""Regenerate the tiny models committed under tests/data (a few hundred bytes each).

python tools/make_test_models.py
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "tests" / "data"


def add_one() -> bytes:
    """y = x + 1 on a [1, 2] float input: lets runtime tests check exact numbers without TensorFlow."""

    def add(x: tf.Tensor) -> tf.Tensor:
        return x + 1.0

    fn = tf.function(add, input_signature=[tf.TensorSpec([1, 2], tf.float32)])
    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()]).convert())


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "add_one_float.tflite").write_bytes(add_one())
    print(f"wrote {OUT / 'add_one_float.tflite'}")
