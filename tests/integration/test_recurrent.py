"""Keras recurrent models (LSTM, GRU, SimpleRNN, Bidirectional) convert to full-integer models.

Traced as they are, Keras recurrent layers become a TFLite WHILE loop, which has no int8 kernel: the
conversion ended in exit 3 ("not fully integer: WHILE"). edgeconv now rebuilds them with ``unroll=True``
(static sequence length), so every op between input and output runs in int8. A loop it cannot unroll
(a float .tflite with WHILE, a dynamic sequence length) is exit 2 with the remedy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from converter.calibration.stats import activation_tensors, collect
from converter.cli.main import main
from converter.reports.report import INT8_NAME
from converter.runtime.interpreter import make_interpreter
from converter.runtime.model import TFLiteModel
from converter.sources.load import load_model
from converter.sources.unroll import UNROLL_ATOL
from converter.tflite.inspect_model import list_ops

REPO = Path(__file__).resolve().parents[2]
INTEGER_DTYPES = {"int8", "int16", "int32"}
# Measured on these seeded models (2026-11-28, 360 digits / 200 sine-wave held-out samples): float/int8 top-1
# LSTM 94.72/94.72, Bidirectional(LSTM) 93.06/93.33, GRU 100/100, SimpleRNN 100/100; 1 point allowed.
MAX_DROP_POINTS = 1.0
pytestmark = pytest.mark.full  # trains four recurrent classifiers first: about a minute on 2 cores
STEPS, CHANNELS, CLASSES = 16, 2, 4


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn digits as 8 time steps (rows) of 8 features, scaled to [0, 1]: train and held-out."""
    train = np.load(REPO / "recipes" / "data" / "digits.npz")
    test = np.load(REPO / "recipes" / "data" / "digits_test.npz")
    x, xt = (d["x"][..., 0].astype(np.float32) / 16.0 for d in (train, test))
    return x, train["y"], xt, test["y"]


def waves(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 2-channel sine sequences; the class sets the frequency (1-4 cycles), the phase is random."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=n)
    t = np.linspace(0, 1, STEPS, endpoint=False)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    angle = 2 * np.pi * (y[:, None] + 1) * t[None] + phase
    x = np.stack([np.sin(angle), np.cos(angle)], axis=-1) + rng.normal(0, 0.2, size=(n, STEPS, CHANNELS))
    return x.astype(np.float32), y.astype(np.int64)


def build(kind: str, x: np.ndarray, y: np.ndarray, epochs: int) -> Any:
    """A small seeded recurrent classifier, trained a few seconds."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(x.shape[1:])
    layer = {
        "lstm": lambda: keras.layers.LSTM(32, name=kind),
        "bilstm": lambda: keras.layers.Bidirectional(keras.layers.LSTM(16), name=kind),
        "gru": lambda: keras.layers.GRU(16, name=kind),
        "simplernn": lambda: keras.layers.SimpleRNN(16, name=kind),
    }[kind]()
    model = keras.Model(inputs, keras.layers.Dense(int(y.max()) + 1, activation="softmax")(layer(inputs)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def trace_without_unrolling(model: Any) -> bytes:
    """The float .tflite of ``model`` traced at batch 1 as it is: its recurrent layer becomes a WHILE loop."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec([1, *model.inputs[0].shape[1:]], tf.float32)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four classifiers as .keras, their data, a WHILE .tflite and a dynamic-length LSTM."""
    import keras

    folder = tmp_path_factory.mktemp("recurrent")
    x, y, xt, yt = digits()
    np.savez(folder / "digits_train.npz", x=x, y=y)
    np.savez(folder / "digits_test.npz", x=xt, y=yt)
    wx, wy = waves()
    np.savez(folder / "waves_train.npz", x=wx[:800], y=wy[:800])
    np.savez(folder / "waves_test.npz", x=wx[800:], y=wy[800:])
    for kind in ("lstm", "bilstm"):
        build(kind, x, y, epochs=15).save(folder / f"{kind}.keras")
    for kind in ("gru", "simplernn"):
        model = build(kind, wx[:800], wy[:800], epochs=20)
        model.save(folder / f"{kind}.keras")
        if kind == "gru":
            (folder / "gru_while.tflite").write_bytes(trace_without_unrolling(model))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, 8))
    keras.Model(inputs, keras.layers.LSTM(4, name="speech")(inputs)).save(folder / "dynamic.keras")
    return folder


def _convert(model_dir: Path, source: str, data: str, out: Path) -> tuple[int, str]:
    recipe = {
        "version": 1,
        "name": Path(source).stem,
        "model": str(model_dir / source),
        "data": {
            "calibration": {"path": str(model_dir / f"{data}_train.npz"), "samples": 100},
            "evaluation": {"path": str(model_dir / f"{data}_test.npz")},
        },
        "benchmark": {"warmup": 1, "runs": 5, "min_seconds": 0.0},
    }
    recipe_path = out.parent / f"{out.name}.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe_path), "--out", str(out)])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("kind", "data", "layers"),
    [
        ("lstm", "digits", "LSTM 'lstm'"),
        ("bilstm", "digits", "Bidirectional 'bilstm'"),
        ("gru", "waves", "GRU 'gru'"),
        ("simplernn", "waves", "SimpleRNN 'simplernn'"),
    ],
)
def test_int8_top1_within_one_point(kind: str, data: str, layers: str, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = _convert(model_dir, f"{kind}.keras", data, out)
    assert code == 0, output
    ops = list_ops((out / INT8_NAME).read_bytes())
    float_ops = [f"{op.name} (op {op.index})" for op in ops if set(op.input_dtypes + op.output_dtypes) - INTEGER_DTYPES]
    assert float_ops == []
    assert {"WHILE", "QUANTIZE", "DEQUANTIZE"}.isdisjoint(op.name for op in ops)
    assert {"FULLY_CONNECTED", "TANH"} <= {op.name for op in ops}

    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert f"1 recurrent layer ({layers}) unrolled over their static sequence length" in json.dumps(report)
    acc = report["accuracy"]
    assert acc["metric"] == "top1"
    assert acc["float"] >= 0.85, acc  # trained, so top-1 means something
    assert acc["drop"] * 100 <= MAX_DROP_POINTS, acc


def test_unrolled_float_reference_equals_keras(model_dir: Path) -> None:
    """The float reference (unrolled) gives the original Keras model's outputs, and has no loop."""
    import keras

    for kind, data, splits in (("lstm", "digits", 1), ("bilstm", "digits", 2), ("gru", "waves", 0)):
        loaded = load_model(model_dir / f"{kind}.keras")
        names = [op.name for op in list_ops(loaded.float_tflite)]
        assert "WHILE" not in names
        assert "unrolled over their static sequence length (a WHILE loop has no int8 kernel" in loaded.loader
        # each LSTM's first step reads 3 of its SPLIT's 4 gates (the forget gate meets the zero state)
        assert names.count("SLICE") == 3 * splits
        if splits:
            plural = "s" if splits > 1 else ""
            assert f"; {splits} SPLIT op{plural} with unused outputs rewritten as SLICE ops" in loaded.loader
        x = np.load(model_dir / f"{data}_test.npz")["x"][:64]
        expected = keras.models.load_model(model_dir / f"{kind}.keras").predict(x, verbose=0)
        ours = TFLiteModel(model_content=loaded.float_tflite, delegate="none").predict(x)[0]
        np.testing.assert_allclose(ours, expected, atol=UNROLL_ATOL)


def test_legacy_h5_bidirectional_gru_is_unrolled(tmp_path: Path) -> None:
    """A tf_keras (Keras 2) .h5 with Bidirectional(GRU) is unrolled by tf_keras itself."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.Input((8, 8)),
            tf_keras.layers.Bidirectional(tf_keras.layers.GRU(8), name="bigru"),
            tf_keras.layers.Dense(10),
        ]
    )
    model.save(tmp_path / "bigru.h5")
    loaded = load_model(tmp_path / "bigru.h5")
    assert "1 recurrent layer (Bidirectional 'bigru') unrolled" in loaded.loader
    assert {"WHILE", "IF"}.isdisjoint(op.name for op in list_ops(loaded.float_tflite))
    x = np.random.default_rng(1).random((16, 8, 8), dtype=np.float32)
    ours = TFLiteModel(model_content=loaded.float_tflite, delegate="none").predict(x)[0]
    np.testing.assert_allclose(ours, model.predict(x, verbose=0), atol=UNROLL_ATOL)


def test_while_tflite_is_exit_2_naming_the_loop(model_dir: Path, tmp_path: Path) -> None:
    """A float .tflite with a GRU's WHILE loop: exit 2 naming WHILE and the remedy (was exit 3)."""
    code, output = _convert(model_dir, "gru_while.tflite", "waves", tmp_path / "out")
    assert code == 2, output
    text = " ".join(output.split())
    assert "the float model has control flow (WHILE (op 1)), which has no int8 kernel in TFLite" in text
    assert "with a fixed sequence length, and it unrolls the recurrent layers into int8 ops" in text
    assert "NaN" not in text


def test_dynamic_sequence_length_is_exit_2(model_dir: Path, tmp_path: Path) -> None:
    code, output = _convert(model_dir, "dynamic.keras", "digits", tmp_path / "out")
    assert code == 2, output
    text = " ".join(output.split())
    assert "the recurrent layer 'speech' takes a sequence of unknown length (time dimension None)" in text
    assert "Save the model with a fixed sequence length, e.g. keras.Input((steps, features))" in text


def test_loop_state_is_never_calibrated(model_dir: Path) -> None:
    """Only float32 activations get statistics: not a WHILE's counters, tensor lists or carried state."""
    content = (model_dir / "gru_while.tflite").read_bytes()
    interpreter = make_interpreter(model_content=content, delegate="none")
    loop_outputs = {int(i) for op in interpreter._get_ops_details() if op["op_name"] == "WHILE" for i in op["outputs"]}
    assert len(loop_outputs) >= 4  # counters (int32), tensor list and state (float32)
    observed = activation_tensors(interpreter)
    assert observed and all(np.dtype(d["dtype"]) == np.float32 for d in observed)
    assert loop_outputs.isdisjoint(d["index"] for d in observed)
    stats = collect(content, np.load(model_dir / "waves_train.npz")["x"][:20])
    assert all(s.op != "WHILE" and s.nonfinite == 0 for s in stats.tensors)
