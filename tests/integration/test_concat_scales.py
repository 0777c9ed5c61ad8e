"""A U-Net skip connection keeps its own int8 scale: requantized into the concatenation, not widened by it.

The model is a U-Net in miniature, built with Keras: a post-ReLU encoder tensor goes both down (max-pool, then
a conv and a dense head) and across to a concatenation with a transposed convolution's output, which spans three
times as much below zero as the encoder tensor does above it. TensorFlow's quantizer gives the encoder tensor
the concatenation's range; ``concat_scales.own_scales`` gives it back its own, and the real LiteRT and TFLite
Micro interpreters run the result.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from converter.quantization.concat_scales import own_scales  # noqa: E402
from converter.quantization.quantize import Plan, pool_padding_ranges, quantize  # noqa: E402
from converter.quantization.tflite_quantizer import quantize_with_ranges  # noqa: E402
from converter.recipe import recipe_from_mapping  # noqa: E402
from converter.runtime.model import TFLiteModel  # noqa: E402
from converter.runtime.preprocess import Preprocess  # noqa: E402
from converter.targets.tflm_interpreter import validate  # noqa: E402
from converter.tflite.inspect_model import float_ops, list_ops  # noqa: E402

SIZE = 16


@pytest.fixture(scope="module")
def unet() -> bytes:
    keras = tf.keras
    keras.utils.set_random_seed(0)
    x = keras.Input((SIZE, SIZE, 3), batch_size=1)
    skip = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="skip")(x)
    down = keras.layers.MaxPooling2D()(skip)
    mid = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(down)
    mid = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(mid)
    up = keras.layers.Conv2DTranspose(8, 2, strides=2, name="up")(mid)
    joined = keras.layers.Concatenate()([up, skip])
    seg = keras.layers.Conv2D(2, 1)(keras.layers.Conv2D(8, 3, padding="same", activation="relu")(joined))
    label = keras.layers.Dense(4)(keras.layers.Flatten()(down))  # a head on the encoder features
    model = keras.Model(x, [seg, label])
    bias = model.get_layer("up").bias
    bias.assign(bias - 3.0)  # the upsampled half reaches far below zero: the concatenation spans [-3a, a]
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, SIZE, SIZE, 3), dtype=np.float32)


def _sqnr(reference: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / np.sum((reference - got) ** 2)))


def test_the_skip_tensor_keeps_its_own_scale_and_the_output_gains(unet: bytes, tmp_path: Path) -> None:
    raw = {"version": 1, "name": "unet", "model": "m.tflite", "data": {"calibration": {"path": "x.npz"}}}
    recipe = recipe_from_mapping(raw, tmp_path, source=tmp_path / "r.yaml", check_files=False)
    cal, held = _images(64, 1), _images(32, 2)
    plan = Plan(method="minmax", input_type="int8", output_type="int8")
    q = quantize(unet, cal, recipe, Preprocess(), eight_bit_data=False, plan=plan)
    assert q.calibration is not None
    assert len(q.requantized) == 1 and q.to_json()["requantized_concat_inputs"] == list(q.requantized)
    widened = quantize_with_ranges(
        unet, pool_padding_ranges(unet, q.calibration.ranges()), input_type="int8", output_type="int8", per_channel=True
    )  # what TensorFlow's quantizer gives alone
    npu = quantize(unet, cal, recipe, Preprocess(), eight_bit_data=False, plan=plan, concat_scales=False)
    assert npu.model == widened and npu.requantized == ()  # for NPU targets: the stock converter's graph

    after, before = TFLiteModel(model_content=q.model), TFLiteModel(model_content=widened)
    scale = {t["name"]: t["quantization"] for t in before.interpreter.get_tensor_details()}
    own = {t["name"]: t["quantization"] for t in after.interpreter.get_tensor_details()}
    name = q.requantized[0]
    assert own[name][1] == -128  # post-ReLU: the lowest code is 0.0 again
    assert own[name][0] < scale[name][0] / 3  # three quarters of the steps were spent below zero
    assert own[f"{name}/requantized"] == scale[name]  # the concatenation reads what it read before
    ops = [op.name for op in list_ops(q.model)]
    assert ops.count("QUANTIZE") == 1 and ops.index("QUANTIZE") == ops.index("CONCATENATION") - 1
    assert float_ops(q.model) == []

    want, now, then = (TFLiteModel(model_content=unet).predict(held), after.predict(held), before.predict(held))
    gained = sorted(_sqnr(w, a) - _sqnr(w, b) for w, a, b in zip(want, now, then, strict=True))
    assert gained[-1] > 3.0, gained  # the head reading the encoder tensor: measured +5.9 dB
    assert gained[0] > -0.5, gained  # the segmentation, through the concatenation's scale as before: +0.05 dB
    assert own_scales(q.model, dict) == (q.model, [])  # nothing named: nothing changes

    micro = validate(q.model, held[:4])
    assert micro.loaded and micro.samples == 4, micro.error
    assert micro.exact_match is not None and micro.exact_match >= 0.99, micro
