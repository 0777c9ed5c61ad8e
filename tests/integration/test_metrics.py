"""The evaluation metric fits the model: top-1 only for classifiers, SQNR/MSE for the rest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from converter.cli.main import main
from converter.runtime.accuracy import compare


def _autoencoder_data(n: int = 160, seed: int = 0) -> np.ndarray:
    """12x12x3 smooth images in [0, 1]: a blurred blob per sample, easy to reconstruct."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:12, 0:12]
    centres = rng.uniform(2, 10, size=(n, 2))
    blobs = np.exp(-((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2) / 8.0)
    colours = rng.uniform(0.3, 1.0, size=(n, 1, 1, 3))
    images: np.ndarray = (blobs[..., None] * colours).astype(np.float32)
    return images


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Conv/Conv2DTranspose autoencoder and a Dense regressor (output size 1), seeded, with data."""
    import keras

    folder = tmp_path_factory.mktemp("metrics")
    keras.utils.set_random_seed(0)
    ae = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same"),
        ]
    )
    x = _autoencoder_data()
    ae.compile("adam", "mse")
    ae.fit(x, x, epochs=40, batch_size=16, verbose=0)
    ae.save(folder / "ae.keras")
    np.savez(folder / "ae_cal.npz", x=x[:100])
    np.savez(folder / "ae_eval.npz", x=x[100:])

    rng = np.random.default_rng(1)
    xr = rng.uniform(-1, 1, size=(200, 8)).astype(np.float32)
    yr = (xr @ np.linspace(-1, 1, 8) + 0.5 * xr[:, 0] ** 2).astype(np.float32)
    reg = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    reg.compile("adam", "mse")
    reg.fit(xr, yr, epochs=30, batch_size=16, verbose=0)
    reg.save(folder / "reg.keras")
    np.savez(folder / "reg_cal.npz", x=xr[:100])
    np.savez(folder / "reg_eval.npz", x=xr[100:])
    return folder


def _recipe(folder: Path, name: str, **extra: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "version": 1,
        "name": name,
        "model": str(folder / f"{name}.keras"),
        "data": {
            "calibration": {"path": str(folder / f"{name}_cal.npz")},
            "evaluation": {"path": str(folder / f"{name}_eval.npz")},
        },
        "benchmark": {"warmup": 1, "runs": 5, "min_seconds": 0.0},
        "analysis": {"samples": 0},
    }
    recipe.update(extra)
    return recipe


def _run(write_recipe: Callable[..., Path], recipe: dict[str, Any], out: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["convert", "--recipe", str(write_recipe(recipe)), "--out", str(out), *args])
    return result.exit_code, result.output


def test_autoencoder_is_scored_by_reconstruction_snr_not_agreement(
    models: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    code, text = _run(write_recipe, _recipe(models, "ae"), tmp_path / "out")
    assert code == 0, text
    assert "agreement" not in text and "top-1" not in text
    acc = json.loads((tmp_path / "out" / "report.json").read_text())["accuracy"]
    assert acc["metric"] == "sqnr" and acc["unit"] == "dB" and acc["agreement"] is None
    assert acc["samples"] == 60
    recon = acc["reconstruction"]
    # A trained autoencoder reconstructs to well above 10 dB; int8 keeps it within a dB.
    assert recon["float_snr_db"] > 10 and recon["int8_snr_db"] > 10
    assert acc["float"] == recon["float_snr_db"] and acc["int8"] == recon["int8_snr_db"]
    assert acc["drop"] == pytest.approx(acc["float"] - acc["int8"]) and -0.5 < acc["drop"] < 1.0
    assert 0 < recon["float_mse"] < 0.01 and 0 < recon["int8_mse"] < 0.01
    out = acc["outputs"][0]
    assert out["sqnr_db"] > 20 and out["cosine"] > 0.99 and 0 < out["mse"] < 1e-3
    assert (
        f"accuracy (host, sqnr, 60 samples): reconstruction SNR float {acc['float']:.2f} dB, "
        f"int8 {acc['int8']:.2f} dB, drop {acc['drop']:.2f} dB"
    ) in text
    assert f"int8 vs float: SQNR {out['sqnr_db']:.2f} dB, cosine {out['cosine']:.5f}, MSE {out['mse']:.4g}" in text
    assert "reconstruction error (MSE against the input): float " in text


def test_regressor_is_scored_against_the_float_output(
    models: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    code, text = _run(write_recipe, _recipe(models, "reg"), tmp_path / "out")
    assert code == 0, text
    assert "agreement" not in text and "reconstruction" not in text
    acc = json.loads((tmp_path / "out" / "report.json").read_text())["accuracy"]
    assert acc["metric"] == "mse" and acc["unit"] == "relative MSE" and acc["agreement"] is None
    assert acc["reconstruction"] is None and acc["float"] is None
    out = acc["outputs"][0]
    assert out["sqnr_db"] > 20 and out["cosine"] > 0.99 and out["mse"] > 0
    # relative MSE is the noise-to-signal power ratio: 10^(-SQNR/10)
    assert acc["drop"] == pytest.approx(10 ** (-out["sqnr_db"] / 10), rel=1e-6) and acc["drop"] < 0.01
    assert f"accuracy (host, mse, 100 samples): int8 vs float output: {acc['drop']:.4g} relative MSE" in text
    report_md = (tmp_path / "out" / "report.md").read_text()
    assert "agreement" not in report_md and "relative MSE" in report_md


def test_rank2_reconstruction_gets_no_agreement() -> None:
    """A Dense autoencoder's output is rank 2 with many 'classes': before, its argmax agreement was printed."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(50, 16))
    f = x + rng.normal(0, 0.05, size=x.shape)
    q = f + rng.normal(0, 0.01, size=x.shape)
    acc = compare([f], [q], None, inputs=x)
    assert acc.metric == "sqnr" and acc.agreement is None
    assert acc.reconstruction is not None
    assert acc.reconstruction["float_mse"] == pytest.approx(0.0025, rel=0.15)
    # Classifier without labels: agreement, scored by relative MSE; with labels: top-1.
    scores = rng.normal(size=(50, 4))
    noisy = scores + rng.normal(0, 0.01, size=scores.shape)
    plain = compare([scores], [noisy], None, inputs=x)
    assert plain.metric == "mse" and plain.agreement is not None and plain.agreement > 0.9
    labelled = compare([scores], [noisy], np.argmax(scores, axis=1), inputs=x)
    assert labelled.metric == "top1" and labelled.float == 1.0 and labelled.unit == "fraction"


def test_metric_the_data_cannot_give_is_a_usage_error(
    models: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = _recipe(models, "ae")
    recipe["data"]["evaluation"]["metric"] = "top1"
    code, text = _run(write_recipe, recipe, tmp_path / "out")
    assert code == 2, text
    assert (
        f"{tmp_path / 'recipe.yaml'}: data.evaluation.metric: metric top1 cannot be measured: the evaluation data "
        "has no labels (give an .npz with y, or an image folder with class sub-folders); use auto, or mse"
    ) in text
    recipe = _recipe(models, "reg")
    recipe["data"]["evaluation"]["metric"] = "sqnr"
    code, text = _run(write_recipe, recipe, tmp_path / "out2")
    assert code == 2, text
    assert (
        "data.evaluation.metric: metric sqnr cannot be measured: sqnr is the reconstruction SNR against the input, "
        "and the output shape [1] is not the input shape [8]"
    ) in text
    recipe["data"]["evaluation"]["metric"] = "snr"
    code, text = _run(write_recipe, recipe, tmp_path / "out3")
    assert code == 2 and "data.evaluation.metric" in text and "snr" in text, text


def test_accuracy_drop_gate_is_in_the_metric_unit(
    models: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = _recipe(models, "ae", budgets={"accuracy_drop": 0.5, "min_accuracy": 0.5}, tuning={"enabled": False})
    code, text = _run(write_recipe, recipe, tmp_path / "out")
    assert code == 0, text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    drop = report["accuracy"]["drop"]
    assert f"ok   accuracy_drop [*]: passed: {drop:.2f} dB <= 0.50 dB (budget 0.5 dB, recipe)" in text
    assert "skip min_accuracy [*]: skipped (min_accuracy is a top-1 fraction; this model is scored by sqnr)" in text
    # The same autoencoder scored by relative MSE on request: a tight budget fails, in that unit.
    recipe["data"]["evaluation"]["metric"] = "mse"
    recipe["budgets"] = {"accuracy_drop": 1e-6}
    code, text = _run(write_recipe, recipe, tmp_path / "out2")
    assert code == 1, text
    acc = json.loads((tmp_path / "out2" / "report.json").read_text())["accuracy"]
    assert acc["metric"] == "mse" and acc["unit"] == "relative MSE" and acc["drop"] > 1e-6
    assert acc["reconstruction"] is not None and "agreement" not in text
    assert (
        f"FAIL accuracy_drop [*]: failed: {acc['drop']:.4g} relative MSE exceeds 1e-06 relative MSE "
        "(budget 1e-06 relative MSE, recipe)"
    ) in text


def test_tuning_loop_runs_on_the_metric_without_labels(
    models: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = _recipe(models, "ae", budgets={"accuracy_drop": 0.0})
    code, text = _run(write_recipe, recipe, tmp_path / "out")
    assert code in (0, 1), text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    tuning = report["tuning"]
    assert tuning["ran"] is True and len(tuning["attempts"]) >= 2, tuning
    chosen = next(a for a in tuning["attempts"] if a["chosen"])
    assert all(-1 < a["drop"] < 1 for a in tuning["attempts"])  # dB lost, not top-1 fractions (which would be None)
    assert report["accuracy"]["drop"] == pytest.approx(chosen["drop"])
    assert f"  tuning for drop ≤ 0.00 dB: {len(tuning['attempts'])} attempts" in text


def _layers(recipe: dict[str, Any], write_recipe: Callable[..., Path], out: Path) -> list[dict[str, Any]]:
    from converter.pipeline import convert
    from converter.recipe import load_recipe

    layers: list[dict[str, Any]] = convert(load_recipe(write_recipe(recipe)), out).report["analysis"]["layers"]
    return layers


def test_first_conv_is_not_ranked_worst_by_an_exact_input(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    """8-bit images under a scale-1 input contract quantize exactly (200 dB): the conv they feed once showed
    "158 dB lost" and was always ranked worst; against its own int8 grid it loses what it adds."""
    from tests.conftest import tiny_recipe

    recipe = tiny_recipe(tiny_model_dir, benchmark={"enabled": False}, analysis={"samples": 32})
    layers = _layers(recipe, write_recipe, tmp_path / "out")
    model_input = next(e for e in layers if e["op"] == "")
    assert model_input["sqnr_db"] == 200.0  # the artefact's source: the input is exact
    conv = next(e for e in layers if e["op"] == "CONV_2D")
    assert conv["ceiling_db"] is not None and 30 < conv["ceiling_db"] < 60
    assert conv["sqnr_drop_db"] == pytest.approx(conv["ceiling_db"] - conv["sqnr_db"])
    assert -3 < conv["sqnr_drop_db"] < 10  # it was 200 - sqnr_db, about 160
    assert layers[0]["op"] != "CONV_2D" or layers[0]["name"] != conv["name"], layers[:3]
    assert all(e["sqnr_drop_db"] is None or e["sqnr_drop_db"] < 30 for e in layers), layers


@pytest.mark.full  # test_analyze ranks the outlier layer in the default tier
def test_the_outlier_conv_is_still_ranked_first(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    from tools import outlier_model

    model = outlier_model.build(tmp_path / "outlier.keras")
    spec = outlier_model.recipe(model, benchmark={"enabled": False}, tuning={"enabled": False})  # min/max ranges
    layers = _layers(spec, write_recipe, tmp_path / "out")
    worst = layers[0]
    assert "wide" in worst["name"] and worst["op"] == "CONV_2D", [(e["name"], e["sqnr_drop_db"]) for e in layers]
    # Its range is set by one channel: a high whole-tensor ceiling, starved channels (low median SQNR).
    assert worst["ceiling_db"] - worst["sqnr_db"] > 20
    assert worst["sqnr_drop_db"] > 20 + max(e["sqnr_drop_db"] or 0 for e in layers[1:])
