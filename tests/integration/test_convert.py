"""Whole conversions of the tiny model from every source format, checked with the interpreter."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.pipeline import convert
from converter.recipe import load_recipe
from converter.reports.report import INT8_NAME
from converter.runtime.model import TFLiteModel
from tests.conftest import assert_accuracy_drop_below, reproducible_figures, tiny_data, tiny_recipe


def _convert(write_recipe: Callable[..., Path], recipe: dict[str, Any], out: Path) -> dict[str, Any]:
    return convert(load_recipe(write_recipe(recipe)), out).report


def _int8_vs_float(out: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = TFLiteModel(model_path=str(out / "model_float.tflite")).predict(x)[0]
    q = TFLiteModel(model_path=str(out / INT8_NAME)).predict(x)[0]
    return f, q


@pytest.mark.parametrize("source", ["tiny.keras", "tiny.h5", "tiny_savedmodel", "tiny.tflite"])
def test_every_source_format_converts_to_full_integer(
    source: str, tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    report = _convert(write_recipe, tiny_recipe(tiny_model_dir, source), tmp_path / "out")
    out = tmp_path / "out"
    q = TFLiteModel(model_path=str(out / INT8_NAME))
    assert q.inputs[0].dtype == "int8" and q.outputs[0].dtype == "int8"
    # Full integer: every tensor but none is int8/int32 (biases); no float op survived.
    tensor_types = {d["dtype"].__name__ for d in q.interpreter.get_tensor_details()}
    assert tensor_types <= {"int8", "int32"}, tensor_types
    x, _ = tiny_data()
    f_out, q_out = _int8_vs_float(out, x[300:].astype(np.float32))
    # Softmax outputs quantized with scale 1/256: allow a few steps of accumulated error.
    assert np.max(np.abs(f_out - q_out)) < 0.05
    assert report["accuracy"]["float"] >= 0.95
    assert report["accuracy"]["agreement"] >= 0.98
    assert_accuracy_drop_below(report, 2.0)
    assert report["model"]["format"] == {"tiny.keras": "keras", "tiny.h5": "h5"}.get(
        source, "saved_model" if "savedmodel" in source else "tflite"
    )
    assert report["artifacts"]["int8"]["bytes"] == (out / INT8_NAME).stat().st_size
    assert report["artifacts"]["int8"]["bytes"] < report["artifacts"]["float"]["bytes"]


def test_report_has_the_promised_keys(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    _convert(write_recipe, tiny_recipe(tiny_model_dir), tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["schema_version"] == 1
    assert report["recipe"]["name"] == "tiny" and len(report["recipe"]["sha256"]) == 64
    assert report["tool"]["version"]
    for kind in ("float", "int8"):
        assert set(report["artifacts"][kind]) == {"path", "bytes", "sha256"}
    assert report["calibration"]["method"] == "minmax"
    assert report["calibration"]["samples"] == 100
    assert report["calibration"]["seconds"] >= 0
    io = report["quantization"]
    # 8-bit data under a scale-1 contract: the input keeps the contract's [0, 255], so int8
    # input is pixel - 128 exactly (S = 255 / 255, Z = -128), whatever the samples' max.
    assert io["input"]["dtype"] == "int8"
    assert io["input"]["scale"] == pytest.approx(1.0, rel=1e-6)
    assert io["input"]["zero_point"] == -128
    assert io["output"] == {"dtype": "int8", "shape": [1, 4], "scale": 1 / 256, "zero_point": -128}
    assert set(report["accuracy"]) >= {"metric", "float", "int8", "drop", "agreement", "samples"}
    assert report["accuracy"]["samples"] == 100
    assert report["targets"]["host"]["compatible"] is True and report["targets"]["host"]["problems"] == []
    assert [g["name"] for g in report["gates"]] == ["compatible"] and report["passed"] is True


@pytest.mark.parametrize(
    ("overrides", "in_dtype", "out_dtype"),
    [
        ({"input_type": "uint8", "output_type": "uint8"}, "uint8", "uint8"),
        ({"input_type": "float32", "output_type": "float32"}, "float32", "float32"),
        ({"per_channel": False}, "int8", "int8"),
        ({"activations": "int16", "input_type": "int16", "output_type": "int16"}, "int16", "int16"),
    ],
)
def test_quantization_options(
    overrides: dict[str, Any],
    in_dtype: str,
    out_dtype: str,
    tiny_model_dir: Path,
    write_recipe: Callable[..., Path],
    tmp_path: Path,
) -> None:
    report = _convert(write_recipe, tiny_recipe(tiny_model_dir, quantization=overrides), tmp_path / "out")
    assert report["quantization"]["input"]["dtype"] == in_dtype
    assert report["quantization"]["output"]["dtype"] == out_dtype
    assert_accuracy_drop_below(report, 2.0)
    q = TFLiteModel(model_path=str(tmp_path / "out" / INT8_NAME))
    details = q.interpreter.get_tensor_details()
    weights = [d for d in details if len(d["shape"]) == 4 and d["dtype"] == np.int8 and "conv" in d["name"].lower()]
    assert weights, [d["name"] for d in details]
    per_channel = any(len(d["quantization_parameters"]["scales"]) > 1 for d in weights)
    assert per_channel == overrides.get("per_channel", True)
    if overrides.get("activations") == "int16":
        assert any(d["dtype"] == np.int16 for d in details)


def test_identical_inputs_give_identical_bytes(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two conversions in one process, each from scratch, give the same bytes and figures.

    The cache is off and each run has its own empty cache folder, so the second run converts
    the Keras model and collects statistics again instead of reading the first run's results
    (state leaking between conversions in one process would show here; across processes, see
    test_cli.test_separate_processes_give_identical_models).
    """
    recipe = tiny_recipe(tiny_model_dir, calibration={"cache": False})
    reports = {}
    for run in ("a", "b"):
        cache = tmp_path / f"cache-{run}"
        monkeypatch.setenv("EDGECONV_CACHE_DIR", str(cache))
        reports[run] = _convert(write_recipe, recipe, tmp_path / run)
        assert "from the float model cache" not in reports[run]["model"]["loader"]
        assert reports[run]["calibration"]["cache"]["hit"] is None
        assert not cache.exists() or not any(cache.rglob("*")), sorted(cache.rglob("*"))
    for name in ("model_float.tflite", INT8_NAME):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert reproducible_figures(reports["a"]) == reproducible_figures(reports["b"])


def test_calibration_subset_changes_with_seed(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    base = tiny_recipe(tiny_model_dir)
    base["data"]["calibration"]["samples"] = 5
    a = _convert(write_recipe, base, tmp_path / "a")
    base["data"]["calibration"]["seed"] = 1
    b = _convert(write_recipe, base, tmp_path / "b")
    assert a["artifacts"]["int8"]["sha256"] != b["artifacts"]["int8"]["sha256"]


@pytest.mark.parametrize("source", ["tiny.keras", "tiny.h5", "tiny_savedmodel"])
def test_float_reference_matches_keras(source: str, tiny_model_dir: Path) -> None:
    import keras

    from converter.sources.load import load_model

    x, _ = tiny_data()
    expected = keras.models.load_model(tiny_model_dir / "tiny.keras").predict(x[:20].astype(np.float32), verbose=0)
    loaded = load_model(tiny_model_dir / source)
    got = TFLiteModel(model_content=loaded.float_tflite).predict(x[:20].astype(np.float32))[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert loaded.input_shape == (1, 12, 12, 3)


def test_a_keras_graph_is_frozen_once_to_the_same_bytes(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The converter takes the graph frozen once (no function built around it, no second freeze) and writes the
    bytes TensorFlow's two passes write."""
    import keras

    from converter.sources import load

    tiny = keras.models.load_model(tiny_model_dir / "tiny.keras")
    # A Normalization with given statistics captures them as tensors, not variables (as EfficientNet's stem).
    inputs = keras.Input((12, 12, 3))
    normalized = keras.layers.Normalization(mean=[100.0, 110.0, 120.0], variance=[900.0, 1000.0, 1100.0])(inputs)
    model = keras.Model(inputs, tiny(normalized * 255.0))
    handed: list[bool] = []
    original = load._frozen_converter

    def spy(tf: Any, concrete: Any) -> Any:
        converter = original(tf, concrete)
        handed.append("_freeze_concrete_function" in vars(converter))
        return converter

    monkeypatch.setattr(load, "_frozen_converter", spy)
    once = load._keras_to_tflite(model, tiny_model_dir / "tiny.keras")
    assert len(TFLiteModel(model_content=once).inputs) == 1
    monkeypatch.setattr(load, "_frozen_graph_def", lambda tf, concrete: None)  # TensorFlow's own passes
    twice = load._keras_to_tflite(model, tiny_model_dir / "tiny.keras")
    assert handed == [True, False]
    assert once == twice
