"""Per-layer error analysis on a deliberately broken model: one conv channel with outlier weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from converter.analysis.analyze import analyze, channel_sqnr_db
from converter.calibration.calibrate import choose_ranges, ranges_of
from converter.calibration.stats import collect
from converter.cli.main import main
from converter.quantization.tflite_quantizer import quantize_with_ranges
from converter.recipe import CalibrationSpec
from converter.sources.load import load_model
from tests.conftest import tiny_recipe


def _outlier_model(folder: Path) -> Path:
    """Conv -> Conv -> pool -> dense; channel 5 of the first conv is scaled 300x, so its output
    stretches the per-tensor activation range and the other channels get a handful of levels."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 10, 3))
    first = keras.layers.Conv2D(8, 3, name="outlier_conv")
    h = first(inp)
    h = keras.layers.Conv2D(8, 1, activation="relu", name="mixer")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(4, name="head")(h)
    model = keras.Model(inp, out)
    kernel, bias = first.get_weights()
    kernel[..., 5] *= 300.0
    first.set_weights([kernel, bias])
    model.save(folder / "outlier.keras")
    return folder / "outlier.keras"


def test_the_outlier_layer_is_ranked_first(tmp_path: Path) -> None:
    model = load_model(_outlier_model(tmp_path))
    x = np.random.default_rng(0).normal(size=(64, 10, 10, 3)).astype(np.float32)
    records = choose_ranges(collect(model.float_tflite, x), CalibrationSpec(method="minmax"))
    quant = quantize_with_ranges(
        model.float_tflite, ranges_of(records), input_type="int8", output_type="int8", per_channel=True
    )
    report = analyze(model.float_tflite, quant, x[:32])
    worst = report[0]
    assert "outlier_conv" in worst.name and worst.op == "CONV_2D", [(e.name, e.sqnr_drop_db) for e in report[:3]]
    others = [e.sqnr_drop_db for e in report if "outlier_conv" not in e.name and e.sqnr_drop_db is not None]
    assert worst.sqnr_drop_db is not None and all(worst.sqnr_drop_db > drop + 10 for drop in others)
    assert worst.sqnr_db is not None and worst.sqnr_db < 25 and worst.matched_by == "name"


def test_channel_sqnr_is_not_hidden_by_one_large_channel() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(100, 4))
    ref[:, 0] *= 1000
    noisy = ref + rng.normal(scale=0.5, size=ref.shape)  # the same absolute noise everywhere
    from converter.runtime.accuracy import sqnr_db

    assert sqnr_db(ref, noisy) > 50  # the whole-tensor figure looks fine ...
    assert channel_sqnr_db(ref, noisy) < 10  # ... the typical channel does not


def test_analyze_command_and_report(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir))
    runner = CliRunner()
    assert runner.invoke(main, ["convert", "--recipe", str(recipe), "--out", str(tmp_path / "o")]).exit_code == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    layers = report["analysis"]["layers"]
    assert report["analysis"]["samples"] == 32 and len(layers) >= 4
    assert {"name", "op", "sqnr_db", "cosine", "rmse_steps", "sqnr_drop_db", "matched_by"} <= set(layers[0])
    assert "Per-layer error (worst first)" in (tmp_path / "o" / "report.html").read_text()
    result = runner.invoke(main, ["analyze", "--recipe", str(recipe), "--out", str(tmp_path / "o"), "--samples", "16"])
    assert result.exit_code == 0 and "per-layer error on 16 samples" in result.stdout and "dB lost" in result.stdout
    missing = runner.invoke(main, ["analyze", "--recipe", str(recipe), "--out", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "run edgeconv convert" in missing.stderr
    # Another recipe's folder: refused as convert refuses it, and its report left as it was.
    before = (tmp_path / "o" / "report.json").read_bytes()
    other = write_recipe({**tiny_recipe(tiny_model_dir), "name": "other"}, "other.yaml")
    refused = runner.invoke(main, ["analyze", "--recipe", str(other), "--out", str(tmp_path / "o")])
    assert refused.exit_code == 2, refused.output
    assert "holds the conversion of recipe 'tiny', not of" in refused.stderr and "nothing was written" in refused.stderr
    assert (tmp_path / "o" / "report.json").read_bytes() == before
