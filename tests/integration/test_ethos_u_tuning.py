"""The accuracy loop on an Ethos-U target: integer-only, but 16x8 is kept where Vela maps every op.

On the outlier model (tools/outlier_model.py, pooled) no int8 fix meets a 2-point budget (measured: best
int8, bias correction, 4.17 points; 16x8 1.39 points); before, the loop stopped at "take full-int8 models
only" for any integer-only target and exited 1. An Ethos-U runs int16 activations,
so the loop tries 16x8 with int16 I/O and keeps it only after Vela compiled it with no op left to the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from converter.cli.main import main
from converter.tflite.inspect_model import float_ops
from tools import outlier_model

pytest.importorskip("ethosu.vela", reason="the npu extra (ethos-u-vela) is not installed")


@pytest.fixture(scope="module")
def outlier_pooled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return outlier_model.build(tmp_path_factory.mktemp("pooled") / "outlier_pooled.keras", pooled=True)


@pytest.mark.full  # a second Ethos-U model through the loop; test_ethos_u covers the target
def test_16x8_is_kept_for_an_ethos_u_when_vela_maps_it(
    outlier_pooled: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = outlier_model.recipe(
        outlier_pooled, budgets={"accuracy_drop": 0.02}, benchmark={"enabled": False}, targets=["ethos-u55-128"]
    )
    result = CliRunner().invoke(main, ["convert", "--recipe", str(write_recipe(recipe)), "--out", str(tmp_path / "o")])
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    tuning = report["tuning"]
    attempts = {a["step"]: a for a in tuning["attempts"]}
    sixteen = attempts["16x8"]
    assert sixteen["plan"]["activations"] == "int16" and "compiled by Vela" in sixteen["detail"]
    assert sixteen["drop"] < attempts["recipe"]["drop"] / 10
    assert result.exit_code == 0, result.output
    assert tuning["outcome"] == "met with 16x8 activations (Vela maps every op to each Ethos-U)" and sixteen["chosen"]
    model = (tmp_path / "o" / "model_int8.tflite").read_bytes()
    assert not float_ops(model) and report["quantization"]["input"]["dtype"] == "int16"
    target = report["targets"]["ethos-u55-128"]
    assert target["compatible"] is True and target["cpu_ops"] == [] and target["npu_ops_fraction"] == 1.0
