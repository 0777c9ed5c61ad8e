"""A transform the recipe asks for whose result fails its check is dropped, not a crash.

``calibration.equalization: true`` (or ``bias_correction``) on a model where the transformed float model
fails its check (does not prepare, or changes the outputs) used to end the conversion with exit 3. Now
the model is made without that transform, the console warns, and ``report.json`` says why under
``quantization.<transform>.rejected``. The check itself is real; the test only tightens its tolerance
to zero, which any channel rescaling misses by float rounding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import converter.calibration.bias_correction
import converter.calibration.equalize
from converter.cli.main import main
from tests.conftest import tiny_recipe


def _convert(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], out: Path, **calibration: bool
) -> tuple[int, str]:
    recipe = tiny_recipe(tiny_model_dir, calibration={"method": "minmax", **calibration}, benchmark={"enabled": False})
    result = CliRunner().invoke(main, ["convert", "--recipe", str(write_recipe(recipe)), "--out", str(out)])
    return result.exit_code, result.output


def test_a_rejected_equalization_is_dropped_and_reported(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _ = _convert(tiny_model_dir, write_recipe, tmp_path / "ok", equalization=True)
    assert code == 0
    accepted = json.loads((tmp_path / "ok" / "report.json").read_text())["quantization"]["equalization"]
    assert accepted["pairs"] >= 1 and "rejected" not in accepted  # the tiny model has pairs to equalize

    monkeypatch.setattr(converter.calibration.equalize, "TOLERANCE", 0.0)
    code, output = _convert(tiny_model_dir, write_recipe, tmp_path / "o", equalization=True)
    assert code == 0, output  # was exit 3
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    equalization = report["quantization"]["equalization"]
    assert equalization["pairs"] is None
    assert equalization["rejected"].startswith("cross-layer equalization: the transformed model's outputs differ")
    assert "calibration.equalization is dropped for this model" in output
    assert report["accuracy"]["int8"] is not None and report["accuracy"]["drop"] <= 0.02


def test_a_rejected_bias_correction_is_dropped_and_reported(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(converter.calibration.bias_correction, "BIAS_TOLERANCE", 0.0)
    monkeypatch.setattr(converter.calibration.bias_correction, "TOLERANCE", 0.0)
    code, output = _convert(tiny_model_dir, write_recipe, tmp_path / "o", bias_correction=True)
    assert code == 0, output
    bias = json.loads((tmp_path / "o" / "report.json").read_text())["quantization"]["bias_correction"]
    assert bias["layers"] == 0 and bias["rejected"].startswith("bias correction: the transformed model's outputs")
