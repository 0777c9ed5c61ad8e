"""Quantization-aware fine-tuning, run in its own process (``python -m converter.quantization.qat_worker JOB.json``).

tensorflow-model-optimization wraps Keras 2 models only, so this process starts with
``TF_USE_LEGACY_KERAS=1`` (``tf.keras`` is ``tf_keras``), which cannot be switched once
TensorFlow is imported in the pipeline's process. Layers the default 8-bit scheme supports
are annotated (the rest, e.g. ``Rescaling``, stay as they are and are calibrated by the
converter), the model is fine-tuned with fake quantization in the loop, then converted
full-integer with the calibration samples for the ranges training did not learn.
Seeded, with op determinism, so the same job gives the same model.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _annotated(model: Any, tf_keras: Any, tfmot: Any) -> Any:
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry,
    )

    supported = registry.Default8BitQuantizeRegistry()

    def annotate(layer: Any) -> Any:
        return tfmot.quantization.keras.quantize_annotate_layer(layer) if supported.supports(layer) else layer

    clone = tf_keras.models.clone_model(model, clone_function=annotate)
    clone.set_weights(model.get_weights())
    return clone


def _set_input_ranges(qat: Any, x: np.ndarray, tf_keras: Any) -> int:
    """Start each ``QuantizeLayer`` (where float data enters the quantized graph) at its input's range.

    tfmot starts every range at [-6, 6] and follows an exponential moving average (decay
    0.999): a short fine-tune (a few hundred steps) barely moves it, so inputs such as raw
    pixels (0..255) or MFCC features would stay clipped at 6. Interior ranges keep tfmot's
    start: starting them at the float min/max was tried and is worse where one channel
    stretches the range (the outlier fixture: 75 % instead of 96 %). Returns how many were set.
    """
    layers = [layer for layer in qat.layers if type(layer).__name__ == "QuantizeLayer"]
    if not layers:
        return 0
    probe = tf_keras.Model(qat.inputs, [layer.input for layer in layers])
    count = 0
    for layer, out in zip(layers, _as_list(probe.predict(x[:512], batch_size=64, verbose=0)), strict=True):
        lo, hi = min(0.0, float(out.min())), max(0.0, float(out.max()))
        for w in layer.weights:
            short = w.name.split("/")[-1].split(":")[0]
            if short.endswith(("_min", "_max")):
                w.assign(lo if short.endswith("_min") else hi)
                count += 1
    return count


def _as_list(value: Any) -> list[np.ndarray]:
    return [np.asarray(v) for v in value] if isinstance(value, list) else [np.asarray(value)]


def run(job: dict[str, Any]) -> None:
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    tf_keras.utils.set_random_seed(int(job["seed"]))
    tf.config.experimental.enable_op_determinism()
    objects = {}
    for spec in job.get("custom_objects") or []:  # 'module:Name', listed in the recipe by the user
        module, _, attr = spec.partition(":")
        objects[attr.rsplit(".", 1)[-1]] = getattr(importlib.import_module(module), attr)
    model = tf_keras.models.load_model(job["model"], compile=False, custom_objects=objects or None)
    for layer in model.submodules:
        # Batch statistics of a few hundred samples would replace the trained ones: BN stays in inference mode.
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = False
    x, y = np.load(job["x"]), np.load(job["y"])
    probe = np.asarray(model(x[:8], training=False))
    softmax = bool(np.all(probe >= 0) and np.allclose(probe.sum(axis=-1), 1, atol=1e-3))
    with tfmot.quantization.keras.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(_annotated(model, tf_keras, tfmot))
    _set_input_ranges(qat, x, tf_keras)
    qat.compile(
        tf_keras.optimizers.Adam(float(job["learning_rate"])),
        tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax),
    )
    qat.fit(x, y, epochs=int(job["epochs"]), batch_size=int(job["batch_size"]), shuffle=True, verbose=0)
    cal = np.load(job["calibration"])
    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None].astype(np.float32)] for row in cal)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.as_dtype(job["input_type"])
    converter.inference_output_type = tf.as_dtype(job["output_type"])
    Path(job["out"]).write_bytes(converter.convert())


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run(json.loads(Path(sys.argv[1]).read_text()))
