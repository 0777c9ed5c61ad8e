"""A small transformer encoder (LayerNormalization, MultiHeadAttention, Dense with GELU) goes full-integer.

Keras 3 LayerNormalization computes ``x * inv + (-mean * inv + beta)``: every converter, ours and
``TFLiteConverter.from_keras_model`` alike, emits a NEG op for ``-mean``, and TFLite has no int8 NEG
kernel (the stock converter leaves it float between DEQUANTIZE and QUANTIZE). The float reference
rewrites NEG as MUL by -1 (exact in float), so the whole model quantizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from converter.cli.main import main
from converter.reports.report import INT8_NAME
from converter.runtime.model import TFLiteModel
from converter.sources.float_rewrites import rewrite_neg
from converter.sources.load import load_model
from converter.tflite.inspect_model import list_ops

TOKENS, FEATURES, CLASSES = 16, 32, 4
INTEGER_DTYPES = {"int8", "int16", "int32"}
# Measured on these seeded models (2026-11-28): cosine 0.9996-0.99998 (the stock converter's int8 model,
# which keeps NEG float: 0.9997), top-1 drop -0.5 to +0.5 points.
MIN_COSINE = 0.998
MAX_DROP_POINTS = 2.0


def sequence_data(n: int = 800, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy [16, 32] token sequences whose class c raises features 8c..8c+7 on 4 random tokens."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, size=(n, TOKENS, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=n)
    width = FEATURES // CLASSES
    for i, label in enumerate(y):
        tokens = rng.choice(TOKENS, 4, replace=False)
        x[i, tokens, label * width : (label + 1) * width] += 1.0
    return x, y.astype(np.int64)


def build_model(kind: str, seed: int = 0) -> Any:
    """A pre-norm transformer encoder block classifier, or Dense(gelu) alone, trained a few seconds."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((TOKENS, FEATURES))
    if kind == "gelu":
        h = keras.layers.Dense(FEATURES, activation="gelu")(inputs)
    else:
        h = keras.layers.Dense(FEATURES)(inputs)
        a = keras.layers.LayerNormalization()(h)
        a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)(a, a)
        h = keras.layers.Add()([h, a])
        f = keras.layers.LayerNormalization()(h)
        f = keras.layers.Dense(2 * FEATURES, activation="gelu")(f)
        f = keras.layers.Dense(FEATURES)(f)
        h = keras.layers.Add()([h, f])
        h = keras.layers.LayerNormalization()(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(h))
    x, y = sequence_data()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:600], y[:600], epochs=8, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The transformer and the Dense(gelu) model as .keras and as the stock converter's float .tflite."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("transformer")
    for kind in ("transformer", "gelu"):
        model = build_model(kind)
        model.save(folder / f"{kind}.keras")
        (folder / f"{kind}.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    x, y = sequence_data()
    np.savez(folder / "train.npz", x=x[:600], y=y[:600])
    np.savez(folder / "test.npz", x=x[600:], y=y[600:])
    return folder


def _convert(model_dir: Path, source: str, out: Path) -> dict[str, Any]:
    recipe = {
        "version": 1,
        "name": Path(source).stem,
        "model": str(model_dir / source),
        "data": {
            "calibration": {"path": str(model_dir / "train.npz"), "samples": 100},
            "evaluation": {"path": str(model_dir / "test.npz")},
        },
        "benchmark": {"warmup": 1, "runs": 5, "min_seconds": 0.0},
    }
    recipe_path = out.parent / f"{out.name}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("transformer.keras", id="keras"),
        pytest.param("transformer.tflite", id="stock-float-tflite", marks=pytest.mark.full),
        pytest.param("gelu.keras", id="gelu", marks=pytest.mark.full),
    ],
)
def test_converts_to_full_integer_within_accuracy(source: str, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = _convert(model_dir, source, out)
    int8 = (out / INT8_NAME).read_bytes()
    ops = list_ops(int8)
    float_ops = [f"{op.name} (op {op.index})" for op in ops if set(op.input_dtypes + op.output_dtypes) - INTEGER_DTYPES]
    assert float_ops == []
    assert {"NEG", "QUANTIZE", "DEQUANTIZE"}.isdisjoint(op.name for op in ops)
    if source.startswith("transformer"):
        names = [op.name for op in ops]
        assert {"BATCH_MATMUL", "SOFTMAX", "GELU", "RSQRT", "SQUARED_DIFFERENCE"} <= set(names)
        assert names.count("SOFTMAX") == 2  # attention and classifier, both int8

    x = np.load(model_dir / "test.npz")["x"]
    f_out = TFLiteModel(model_path=str(out / "model_float.tflite")).predict(x)[0]
    q_out = TFLiteModel(model_path=str(out / INT8_NAME)).predict(x)[0]
    assert _cosine(f_out, q_out) > MIN_COSINE
    acc = report["accuracy"]
    assert acc["metric"] == "top1"
    assert acc["float"] >= 0.8, acc  # a trained classifier, so top-1 means something
    assert acc["drop"] * 100 <= MAX_DROP_POINTS, acc
    assert acc["agreement"] >= 0.95, acc


def test_float_reference_rewrites_neg_exactly(model_dir: Path) -> None:
    """The stock float .tflite has a NEG per LayerNormalization; ours has none and gives the same numbers."""
    stock = (model_dir / "transformer.tflite").read_bytes()
    assert [op.name for op in list_ops(stock)].count("NEG") == 3

    loaded = load_model(model_dir / "transformer.keras")
    names = [op.name for op in list_ops(loaded.float_tflite)]
    assert "NEG" not in names
    assert loaded.loader.endswith("; 3 NEG ops rewritten as MUL by -1 (NEG has no int8 kernel)")

    rewritten, count = rewrite_neg(stock)
    assert count == 3
    assert "NEG" not in [op.name for op in list_ops(rewritten)]
    x = np.load(model_dir / "test.npz")["x"][:50]
    before = TFLiteModel(model_content=stock, delegate="none").predict(x)[0]
    after = TFLiteModel(model_content=rewritten, delegate="none").predict(x)[0]
    np.testing.assert_array_equal(before, after)  # x * -1 == -x in IEEE float

    import keras

    expected = keras.models.load_model(model_dir / "transformer.keras").predict(x, verbose=0)
    ours = TFLiteModel(model_content=loaded.float_tflite, delegate="none").predict(x)[0]
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_models_without_neg_keep_their_bytes(tiny_model_dir: Path, model_dir: Path) -> None:
    """A CNN (and the Dense(gelu) model) have no NEG: the float reference is left byte for byte."""
    for path in (tiny_model_dir / "tiny.tflite", model_dir / "gelu.tflite"):
        content = path.read_bytes()
        assert rewrite_neg(content) == (content, 0)
