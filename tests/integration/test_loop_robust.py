"""The accuracy loop never loses the conversion to one attempt.

A MobileNetV1-style float ``.tflite`` (depthwise/pointwise blocks, ReLU, folded batch norm)
with one dead depthwise channel (weights ~0, bias 1: what weight decay leaves in trained
MobileNets) and one 1000x outlier channel, so int8 min/max misses a tight ``accuracy_drop``
and the loop reaches cross-layer equalization. Equalization used to divide the dead channel's
bias by ``s ≈ 1e-15`` (1.0 became ~1e9), the int8 model's next requantization scale went past
XNNPACK's limit and LiteRT refused it: "failed to create XNNPACK runtime", exit 3.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from converter.calibration.equalize import TOLERANCE, equalize
from converter.calibration.transform_check import TransformRejected, check_transform
from converter.cli.main import main
from converter.runtime.model import TFLiteModel
from converter.tflite import flatbuf
from tools import outlier_model

SIZE = 32
DEAD = 3  # the dead channel of the second depthwise conv
SCALE = 1000.0
pytestmark = pytest.mark.full  # trains a MobileNet v1 and runs it through the loop


def build_mobilenet_v1(out: Path, seed: int = 0) -> Path:
    """Train a small MobileNetV1-style classifier on the digits (seconds), break it as above, export float."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    digits = np.load(outlier_model.DIGITS / "digits.npz")
    x = tf.image.resize(digits["x"].astype(np.float32) / 255.0, (SIZE, SIZE)).numpy()
    inp = keras.Input((SIZE, SIZE, 1))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(h))
    depthwise, pointwise = [], []
    for filters, stride in ((16, 1), (32, 2), (32, 1)):
        if stride == 2:  # MobileNetV1's own padding for strided depthwise convs
            h = keras.layers.ZeroPadding2D(((0, 1), (0, 1)))(h)
        dw = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same" if stride == 1 else "valid", use_bias=False)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(dw(h)))
        pw = keras.layers.Conv2D(filters, 1, use_bias=False)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization(momentum=0.9)(pw(h)))
        depthwise.append(dw)
        pointwise.append(pw)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(h))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, digits["y"], epochs=8, batch_size=32, verbose=0)
    (k,) = depthwise[1].get_weights()
    k[:, :, DEAD, :] = 1e-30
    depthwise[1].set_weights([k])
    bn = model.layers[model.layers.index(depthwise[1]) + 1]
    gamma, beta, mean, var = bn.get_weights()
    beta[DEAD], mean[DEAD] = 1.0, 0.0
    bn.set_weights([gamma, beta, mean, var])
    # The outlier: pointwise[0]'s channel 0 x1000 (its batch norm scale), the next depthwise /1000.
    bn0 = model.layers[model.layers.index(pointwise[0]) + 1]
    gamma, beta, mean, var = bn0.get_weights()
    gamma[0], beta[0], mean[0] = gamma[0] * SCALE, beta[0] * SCALE, mean[0]
    bn0.set_weights([gamma, beta, mean, var])
    (k,) = depthwise[1].get_weights()
    k[:, :, 0, :] /= SCALE
    depthwise[1].set_weights([k])
    out.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return out


@pytest.fixture(scope="module")
def mobilenet_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mobilenet_v1(tmp_path_factory.mktemp("mnv1") / "mobilenet_v1.tflite")


def _recipe(model: Path) -> dict[str, Any]:
    return outlier_model.recipe(
        model,
        input={"resize": [SIZE, SIZE], "scale": 1 / 255.0, "offset": 0.0},
        budgets={"accuracy_drop": 0.002},
        benchmark={"enabled": False},
        targets=["host"],
    )


def _digits(n: int = 16) -> np.ndarray:
    import tensorflow as tf

    x = np.load(outlier_model.DIGITS / "digits_test.npz")["x"][:n].astype(np.float32) / 255.0
    return np.asarray(tf.image.resize(x, (SIZE, SIZE)).numpy(), dtype=np.float32)


def test_mobilenet_v1_through_the_loop_exits_0_or_1_not_3(
    mobilenet_v1: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(mobilenet_v1))
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code in (0, 1), result.output
    tuning = json.loads((tmp_path / "o" / "report.json").read_text())["tuning"]
    steps = [a["step"] for a in tuning["attempts"]]
    assert tuning["ran"] is True and steps[0] == "recipe" and tuning["attempts"][0]["meets_budget"] is False
    # Equalization was tried and built a model LiteRT runs; nothing was skipped for failing.
    assert "equalization" in steps, (steps, tuning["skipped"])
    equalized = next(a for a in tuning["attempts"] if a["step"] == "equalization")
    assert equalized["plan"]["equalization"]["pairs"] >= 1 and equalized["drop"] is not None
    assert all("XNNPACK" not in s["reason"] for s in tuning["skipped"]), tuning["skipped"]
    assert sum(a["chosen"] for a in tuning["attempts"]) == 1


def test_equalization_keeps_dead_channels_and_the_function(mobilenet_v1: Path) -> None:
    source = mobilenet_v1.read_bytes()
    equalized, pairs = equalize(source, check_x=_digits())
    assert pairs >= 1
    x = _digits()
    before, after = TFLiteModel(model_content=source).predict(x)[0], TFLiteModel(model_content=equalized).predict(x)[0]
    assert np.abs(after - before).max() <= TOLERANCE * np.abs(before).max()

    def biggest_bias(model: bytes) -> float:
        m = flatbuf.load(model)
        tensors = m.subgraphs[0].tensors
        return max(
            float(np.abs(flatbuf.data(m, tensors[op.inputs[2]], "float32")).max())
            for _, op in flatbuf.linear_ops(m).values()
            if len(op.inputs) > 2 and op.inputs[2] >= 0
        )

    # The dead channel's bias stays within the layer's largest (it became ~1e9 before the fix).
    assert biggest_bias(equalized) <= biggest_bias(source) * (1 + 1e-6)


def test_a_transform_that_changes_the_function_is_rejected(mobilenet_v1: Path) -> None:
    source = mobilenet_v1.read_bytes()
    m = flatbuf.load(source)
    tensors = m.subgraphs[0].tensors
    _, op = next(iter(flatbuf.linear_ops(m).values()))
    flatbuf.set_data(m, tensors[op.inputs[1]], flatbuf.data(m, tensors[op.inputs[1]], "float32") * 1.01)
    with pytest.raises(TransformRejected, match=r"^cross-layer equalization: the transformed model's outputs differ"):
        check_transform(source, flatbuf.dump(m), _digits(), "cross-layer equalization", TOLERANCE)
    with pytest.raises(TransformRejected, match=r"^bias correction: the transformed model does not run in LiteRT"):
        check_transform(source, b"not a model", _digits(), "bias correction", 1.0)
