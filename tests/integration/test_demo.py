"""The demo the README runs: MobileNetV2 on scikit-learn digits, converted by its recipe."""

from __future__ import annotations

from pathlib import Path

from converter.pipeline import convert
from converter.recipe import load_recipe
from tests.conftest import ROOT, assert_accuracy_drop_below


def test_demo_recipe_converts_with_float_and_int8_accuracy(tmp_path: Path) -> None:
    report = convert(load_recipe(ROOT / "recipes" / "mobilenet.yaml"), tmp_path / "out").report
    acc = report["accuracy"]
    assert acc["samples"] == 360
    assert acc["float"] >= 0.97
    assert_accuracy_drop_below(report, 1.0)
    assert acc["agreement"] >= 0.98
    assert report["calibration"]["samples"] == 200
    # Full-integer weights make the model well under half its float size.
    assert report["artifacts"]["int8"]["bytes"] < 0.45 * report["artifacts"]["float"]["bytes"]
