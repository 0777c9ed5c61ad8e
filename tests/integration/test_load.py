"""Model loading: the tf_keras fallback for legacy .h5, and refusal to run code from a model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.errors import ModelLoadError
from converter.runtime.model import TFLiteModel
from converter.sources.load import detect_format, load_model


def _legacy_depthwise_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A Keras 2 (tf_keras) .h5 with DepthwiseConv2D: Keras 3 rejects its config ('groups')."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.Input((8, 8, 3)),
            tf_keras.layers.DepthwiseConv2D(3),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(2),
        ]
    )
    model.save(path)
    x = np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32)
    return np.asarray(model.predict(x, verbose=0)), x


def test_legacy_h5_falls_back_to_tf_keras(tmp_path: Path) -> None:
    import keras

    expected, x = _legacy_depthwise_h5(tmp_path / "dw.h5")
    with pytest.raises(Exception, match="DepthwiseConv2D"):
        keras.models.load_model(tmp_path / "dw.h5", compile=False)  # the failure the fallback exists for
    loaded = load_model(tmp_path / "dw.h5")
    assert loaded.loader.startswith("tf_keras") and "Keras 3 failed" in loaded.loader
    assert loaded.input_shape == (1, 8, 8, 3)
    got = TFLiteModel(model_content=loaded.float_tflite).predict(x)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_lambda_layers_are_refused(tmp_path: Path) -> None:
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Lambda(lambda t: t * 2)])
    model.save(tmp_path / "lam.h5")
    with pytest.raises(ModelLoadError, match="contains Lambda layers, whose code would run on load"):
        load_model(tmp_path / "lam.h5")


def test_keras_safe_mode_refuses_lambda(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2)])
    model.save(tmp_path / "lam.keras")
    with pytest.raises(ModelLoadError, match="safe_mode"):
        load_model(tmp_path / "lam.keras")


def test_format_detection_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model: not found"):
        detect_format(tmp_path / "x.keras")
    (tmp_path / "m.mlmodel").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unsupported file type '.mlmodel'"):
        detect_format(tmp_path / "m.mlmodel")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelLoadError, match="folder without saved_model.pb"):
        detect_format(tmp_path / "folder")


def test_custom_objects_spec_errors(tmp_path: Path) -> None:
    (tmp_path / "m.keras").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="expected 'module:Name'"):
        load_model(tmp_path / "m.keras", ["no_colon"])
    with pytest.raises(ModelLoadError, match="cannot import"):
        load_model(tmp_path / "m.keras", ["no_such_module_xyz:Thing"])


def _open_length_model() -> Any:
    """Conv1D over a sequence of any length (``None`` past the batch), as sequence models are often saved."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(None, 3))
    x = keras.layers.Conv1D(4, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("kind", ["keras", "saved_model", "tflite"])
def test_an_open_input_dimension_is_named_in_every_source(kind: str, tmp_path: Path) -> None:
    """An input size left open is exit 2 naming the shape and the fix, never a prepare failure inside an op.

    Before, the SavedModel's open length reached LiteRT as a 1 and failed "CONV_2D failed to prepare" (exit 3,
    "a bug in edgeconv"), and the float .tflite was called damaged.
    """
    import tensorflow as tf

    model = _open_length_model()
    if kind == "keras":
        path = tmp_path / "model.keras"
        model.save(path)
    elif kind == "saved_model":
        path = tmp_path / "exported"
        model.export(str(path), verbose=False)
    else:
        path = tmp_path / "model.tflite"
        path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    with pytest.raises(ModelLoadError) as e:
        load_model(path)
    assert "shape [None, None, 3] has unknown dimensions" in str(e.value), str(e.value)
    assert "fixed input size" in str(e.value)
    assert "damaged" not in str(e.value)
