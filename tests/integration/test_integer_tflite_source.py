"""A float .tflite whose input is integer (token ids) is a float model, not an already quantized one.

Quantized I/O carries a scale; integer I/O without one (ids, an argmax index) belongs to float models, and
the ids are fed as integers like those of every other source.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from converter.cli.main import main
from converter.runtime.model import TFLiteModel


def test_a_float_tflite_with_token_ids_converts(tmp_path: Path, write_recipe: Callable[..., Path]) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12,), dtype="int32"),
            keras.layers.Embedding(50, 16),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(4),
        ]
    )
    (tmp_path / "ids.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    ids = np.random.default_rng(0).integers(0, 50, (300, 12)).astype(np.int32)
    labels = model.predict(ids, verbose=0).argmax(1)
    np.savez(tmp_path / "cal.npz", x=ids[:200])
    np.savez(tmp_path / "test.npz", x=ids[200:], y=labels[200:])
    recipe = {
        "version": 1,
        "name": "ids",
        "model": str(tmp_path / "ids.tflite"),
        "data": {
            "calibration": {"path": str(tmp_path / "cal.npz")},
            "evaluation": {"path": str(tmp_path / "test.npz")},
        },
        "benchmark": {"enabled": False},
        "analysis": {"samples": 0},
    }
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", "--recipe", str(write_recipe(recipe)), "--out", str(out)])
    assert result.exit_code in (0, 1), result.output  # 1: only a gate may fail, never the load
    assert "already quantized" not in result.output
    assert TFLiteModel(model_path=str(out / "model_int8.tflite")).inputs[0].dtype == "int32"
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"]["agreement"] >= 0.95, report["accuracy"]
