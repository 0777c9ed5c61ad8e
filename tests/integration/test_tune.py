"""The accuracy-target loop on models int8 breaks: one conv channel carries a 1000x larger signal
(tools/outlier_model.py): float and int8 min/max differ by about 60 points of top-1.

``outlier_digits`` has the two convs connected directly, so cross-layer equalization (full
integer) undoes the outlier; ``outlier_pooled`` has a max-pool between them, which our
equalization does not cross, so only the CPU-only fallbacks recover it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from converter.calibration.equalize import equalize
from converter.cli.main import main
from converter.runtime.model import TFLiteModel
from converter.sources.load import load_model
from converter.tflite.inspect_model import float_ops
from tools import outlier_model


@pytest.fixture(scope="module")
def outlier_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return outlier_model.build(tmp_path_factory.mktemp("outlier") / "outlier_digits.keras")


@pytest.fixture(scope="module")
def outlier_pooled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return outlier_model.build(tmp_path_factory.mktemp("pooled") / "outlier_pooled.keras", pooled=True)


def _recipe(model: Path, **extra: Any) -> dict[str, Any]:
    return outlier_model.recipe(model, budgets={"accuracy_drop": 0.005}, benchmark={"enabled": False}, **extra)


def _convert(recipe: Path, out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(out), *args])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads((out / "report.json").read_text())


def _attempts(report: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    attempts = report["tuning"]["attempts"]
    chosen = [a for a in attempts if a["chosen"]]
    assert len(chosen) == 1
    return {a["step"]: a for a in attempts}, chosen[0]


def test_equalization_recovers_it_full_integer_on_an_mcu(
    outlier_digits: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(outlier_digits, targets=["host", "arduino-nano-33-ble-sense"]))
    code, report = _convert(recipe, tmp_path / "o")
    attempts, chosen = _attempts(report)
    assert attempts["recipe"]["drop"] > 0.3  # min/max int8 is broken by the outlier channel
    assert list(attempts)[:2] == ["recipe", "auto ranges"]
    assert chosen["step"] == "equalization" and chosen["meets_budget"] and chosen["plan"]["equalization"]["pairs"] >= 1
    assert code == 0 and report["accuracy"]["drop"] <= 0.005
    assert not float_ops((tmp_path / "o" / "model_int8.tflite").read_bytes())
    assert report["targets"]["arduino-nano-33-ble-sense"]["compatible"] is True
    # Layers are compared with the equalized float model (same function, rescaled channels).
    wide = next(e for e in report["analysis"]["layers"] if "wide" in e["name"])
    assert wide["sqnr_db"] > 20 and wide["alone_sqnr_db"] is None, wide  # the budget is met: nothing to explain
    result = CliRunner().invoke(main, ["analyze", "--recipe", str(recipe), "--out", str(tmp_path / "o"), "--json"])
    again = next(e for e in json.loads(result.stdout) if "wide" in e["name"])
    assert result.exit_code == 0 and again["sqnr_db"] > 20 and again["alone_sqnr_db"] > 20, again


def test_equalization_keeps_the_function_and_evens_the_channels(outlier_digits: Path) -> None:
    model = load_model(outlier_digits)
    equalized, pairs = equalize(model.float_tflite)
    x = np.load(outlier_model.DIGITS / "digits_test.npz")["x"][:64].astype(np.float32)
    before = TFLiteModel(model_content=model.float_tflite).predict(x)[0]
    after = TFLiteModel(model_content=equalized).predict(x)[0]
    assert pairs == 1 and np.abs(before - after).max() < 1e-5

    def wide_channel_spread(tflite: bytes) -> float:
        from converter.tflite.flatbuf import data, linear_ops, load

        m = load(tflite)
        _, op = next(v for k, v in linear_ops(m).items() if "wide" in k)
        w = np.abs(data(m, m.subgraphs[0].tensors[op.inputs[1]], "float32")).reshape(16, -1).max(axis=1)
        return float(w.max() / np.median(w))

    assert wide_channel_spread(model.float_tflite) > 300 and wide_channel_spread(equalized) < 30


def test_the_loop_recovers_float_accuracy_on_a_cpu_target(
    outlier_pooled: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    code, report = _convert(write_recipe(_recipe(outlier_pooled)), tmp_path / "o")
    attempts, chosen = _attempts(report)
    assert attempts["recipe"]["drop"] > 0.3
    assert list(attempts)[-2] == "bias correction" and not attempts["equalization"]["plan"]["equalization"]["pairs"]
    assert chosen["step"].startswith("float ") and chosen["meets_budget"]
    acc = report["accuracy"]
    assert code == 0 and acc["drop"] <= 0.005 and acc["int8"] > 0.95
    nodes = report["quantization"]["float_nodes"]
    # The float region: the outlier conv, the max-pool that passes the outlier on, and the conv reading it.
    assert [n.split(";")[0].split("/")[1] for n in nodes] == ["wide_1", "pool_1", "reader_1"], nodes
    assert all(a["bytes"] > 0 and a["latency_p50_ms"] is not None for a in report["tuning"]["attempts"])
    model = (tmp_path / "o" / "model_int8.tflite").read_bytes()
    assert {op.name for op in float_ops(model)} == {"CONV_2D", "MAX_POOL_2D"} and chosen["bytes"] == len(model)
    assert "### Accuracy tuning" in (tmp_path / "o" / "report.md").read_text()
    assert "Accuracy tuning" in (tmp_path / "o" / "report.html").read_text()


@pytest.mark.full  # a third model through the loop
def test_integer_only_targets_stop_and_name_the_worst_layer(
    outlier_pooled: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(outlier_pooled, targets=["host", "arduino-nano-33-ble-sense"]))
    code, report = _convert(recipe, tmp_path / "o")
    tuning = report["tuning"]
    assert code == 1
    assert tuning["outcome"].startswith("stopped: arduino-nano-33-ble-sense take full-integer models only")
    assert "wide" in tuning["worst_layers"][0]["name"] and "quantization-aware training" in tuning["needed"]
    assert all(not a["plan"]["float_nodes"] and a["plan"]["activations"] == "int8" for a in tuning["attempts"])
    assert not float_ops((tmp_path / "o" / "model_int8.tflite").read_bytes())
    _, chosen = _attempts(report)
    assert chosen["drop"] == min(a["drop"] for a in tuning["attempts"])  # the best full-integer try is kept
    # Entropy clips the outlier channel, which the next layer barely needs: far better than min/max.
    assert chosen["plan"]["method"] == "entropy" and chosen["drop"] < 0.1


def test_16x8_is_tried_when_no_layer_may_stay_float(
    outlier_pooled: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(outlier_pooled, tuning={"max_float_layers": 0}))
    _, report = _convert(recipe, tmp_path / "o")
    attempts, _ = _attempts(report)
    sixteen = attempts["16x8"]
    assert sixteen["plan"]["activations"] == "int16" and "I/O becomes float32" in sixteen["detail"]
    assert sixteen["drop"] < attempts["recipe"]["drop"] / 10  # 16-bit steps resolve the small channels
    # Chosen (a budget only it meets), it changes the recipe's int8 I/O: the outcome, which the summary's tuning
    # line shows, says so.
    earlier = min(a["drop"] for step, a in attempts.items() if step != "16x8")
    assert sixteen["drop"] < earlier
    only_sixteen = _recipe(outlier_pooled, tuning={"max_float_layers": 0})
    only_sixteen["budgets"] = {"accuracy_drop": (sixteen["drop"] + earlier) / 2}
    _, report = _convert(write_recipe(only_sixteen, "sixteen.yaml"), tmp_path / "sixteen")
    assert report["tuning"]["outcome"] == (
        "met with 16x8 activations (CPU targets only; model I/O float32 in, float32 out instead of the recipe's "
        "int8/int8, which a 16x8 model cannot take)"
    ), report["tuning"]["outcome"]
    assert report["quantization"]["input"]["dtype"] == "float32"


def test_no_budget_no_float_layers(outlier_digits: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    """Far from float without a budget: full-integer fixes only (test_holdout has the figures); off, no loop."""
    recipe = _recipe(outlier_digits)
    del recipe["budgets"]
    _, report = _convert(write_recipe(recipe), tmp_path / "o")
    assert report["tuning"]["budget"] is None and report["tuning"]["trigger"].startswith("worst output at ")
    assert report["accuracy"]["drop"] < 0.05 and report["quantization"]["float_nodes"] == []
    recipe["tuning"] = {"enabled": False}
    _, report = _convert(write_recipe(recipe, "off.yaml"), tmp_path / "off")
    assert report["tuning"] == {"ran": False, "reason": "no accuracy_drop budget", "budget": None, "attempts": []}
    assert report["accuracy"]["drop"] > 0.3 and report["quantization"]["float_nodes"] == []


def test_analysis_measures_the_outlier_layer_alone(
    outlier_digits: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(outlier_digits, tuning={"enabled": False}))
    _, report = _convert(recipe, tmp_path / "o")
    assert report["tuning"]["reason"] == "tuning.enabled is false in the recipe"
    layers = report["analysis"]["layers"]
    alone = {e["name"].split(";")[0]: e["alone_sqnr_db"] for e in layers}
    wide = next(v for k, v in alone.items() if "wide" in k)
    assert "wide" in layers[0]["name"]  # ranked first by SQNR lost ...
    # ... and quantized on its own it ruins the output, while the dense head alone costs little.
    assert wide is not None and wide < 6 and alone["Identity"] is not None and alone["Identity"] > 30, alone


@pytest.fixture(scope="module")
def outlier_pooled_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pooled outlier model as a Keras 2 .h5 (tf_keras): what tensorflow-model-optimization wraps."""
    return outlier_model.build(tmp_path_factory.mktemp("pooled_h5") / "outlier_pooled.h5", pooled=True)


def _qat(**extra: Any) -> dict[str, Any]:
    return {"qat": {"data": {"path": str(outlier_model.DIGITS / "digits.npz")}, "epochs": 3, **extra}}


@pytest.mark.full  # fine-tunes with tensorflow-model-optimization: over a minute on 2 cores
def test_qat_recovers_it_full_integer_on_an_mcu(
    outlier_pooled_h5: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(outlier_pooled_h5, targets=["host", "arduino-nano-33-ble-sense"], tuning=_qat()))
    code, report = _convert(recipe, tmp_path / "o")
    attempts, chosen = _attempts(report)
    post_training = [a for a in attempts.values() if a["step"] != "qat"]
    assert min(a["drop"] for a in post_training) > 0.02  # no post-training fix gets there ...
    assert chosen["step"] == "qat" and chosen["meets_budget"] and chosen["plan"]["qat"]  # ... QAT does
    assert code == 0 and report["calibration"]["route"] == "qat"
    model = (tmp_path / "o" / "model_int8.tflite").read_bytes()
    assert not float_ops(model) and report["targets"]["arduino-nano-33-ble-sense"]["compatible"] is True
    # Seeded, deterministic training: the same recipe gives the same bytes.
    _convert(recipe, tmp_path / "again")
    assert (tmp_path / "again" / "model_int8.tflite").read_bytes() == model


@pytest.mark.full  # QAT
def test_qat_is_skipped_with_a_reason_for_keras_3_models(
    outlier_pooled: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(_recipe(outlier_pooled, targets=["host", "arduino-nano-33-ble-sense"], tuning=_qat()))
    code, report = _convert(recipe, tmp_path / "o")
    skipped = report["tuning"]["skipped"]
    assert code == 1 and [s["step"] for s in skipped] == ["qat"] and "needs a Keras 2 model" in skipped[0]["reason"]
    assert "qat" not in {a["step"] for a in report["tuning"]["attempts"]}


@pytest.mark.full  # a fourth model through the loop
def test_a_step_tflite_cannot_do_is_skipped_not_fatal(write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    """TFLite has no 16x8 HARD_SWISH: the 16x8 attempt fails, the loop records why and goes on."""
    model = outlier_model.build(tmp_path / "hswish.keras", pooled=True, hard_swish=True)
    recipe = write_recipe(_recipe(model, tuning={"max_float_layers": 0}))
    code, report = _convert(recipe, tmp_path / "o")
    skipped = report["tuning"]["skipped"]
    assert [s["step"] for s in skipped] == ["16x8"] and "HARD_SWISH" in skipped[0]["reason"], skipped
    assert code == 1 and report["tuning"]["outcome"] == "no fix met the budget; kept the best int8 result"


@pytest.mark.full  # QAT
def test_qat_refuses_a_savedmodel_with_lambda_layers(tmp_path: Path) -> None:
    """Loading a SavedModel into Keras for training would run a Lambda's code: refused, nothing runs."""
    import tf_keras

    from converter.quantization.qat import QatUnavailable, check_available

    marker = str(tmp_path / "ran")
    inp = tf_keras.Input((4,))
    out = tf_keras.layers.Lambda(lambda t: (open(marker, "w").write("ran"), t * 2)[1])(inp)  # noqa: PTH123, SIM115
    tf_keras.Model(inp, out).save(str(tmp_path / "sm"), save_format="tf")
    Path(marker).unlink(missing_ok=True)
    with pytest.raises(QatUnavailable, match="Lambda layers"):
        check_available("saved_model", tmp_path / "sm")
    assert not Path(marker).exists()
    tf_keras.models.load_model(str(tmp_path / "sm"))  # what QAT would have done: the Lambda's code runs
    assert Path(marker).exists()


def test_the_loop_budget_follows_the_gates_rule() -> None:
    from converter.devices import load_device
    from converter.quantization.tune import accuracy_budget
    from converter.recipe import DataSource, DataSpec, Recipe, TargetSpec
    from converter.reports.budgets import Budgets

    strict_board = dataclasses.replace(load_device("raspberry-pi-4"), budgets=Budgets(accuracy_drop=0.001))
    data = DataSpec(DataSource(outlier_model.DIGITS / "digits.npz"))

    def recipe(top: float | None, own: float | None) -> Recipe:
        target = TargetSpec("raspberry-pi-4", budgets=Budgets(accuracy_drop=own))
        return Recipe(1, "r", Path("m.keras"), data, targets=(target,), budgets=Budgets(accuracy_drop=top))

    boards = {"raspberry-pi-4": strict_board}
    assert accuracy_budget(recipe(0.01, None), boards) == 0.01  # the recipe's wins over the profile's ...
    assert accuracy_budget(recipe(None, None), boards) == 0.001  # ... which applies when the recipe sets none
    assert accuracy_budget(recipe(0.01, 0.005), boards) == 0.005  # a target's own budget is a gate too
