"""The "alone" figures (the worst layers each quantized on their own, one TensorFlow requantization each)
are spent only where an error is to be explained: a default convert whose gates pass makes none and says
why in report.json and report.html; a failed accuracy gate, ``analysis.alone: always`` and
``edgeconv analyze`` measure them.

Requantizations are counted twice: by ``analysis.alone.requantizations`` and, independently, by the
quantized-model cache's lookups (``cache.quantized_models``: the recipe's model is one, each alone model one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from converter.cli.main import main
from tests.conftest import tiny_recipe
from tools import outlier_model

ASK = "edgeconv analyze measures them (or set analysis.alone: always)"


@pytest.fixture(scope="module")
def outlier_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return outlier_model.build(tmp_path_factory.mktemp("outlier") / "outlier_digits.keras")


def _convert(recipe: Path, out: Path) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads((out / "report.json").read_text())


def _quantizations(report: dict[str, Any]) -> int:
    counts = report["cache"]["quantized_models"]
    return int(counts["hits"] + counts["misses"])


def _alone_figures(report: dict[str, Any]) -> list[float]:
    return [e["alone_sqnr_db"] for e in report["analysis"]["layers"] if e["alone_sqnr_db"] is not None]


def test_a_default_convert_whose_gates_pass_makes_no_alone_requantization(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = write_recipe(tiny_recipe(tiny_model_dir))
    code, report = _convert(recipe, tmp_path / "o")
    assert code == 0 and report["passed"] is True
    alone = report["analysis"]["alone"]
    assert list(report["analysis"]) == ["samples", "metric", "layers", "alone"]
    assert list(alone) == ["run", "reason", "requantizations"]
    drop = report["accuracy"]["drop"]
    assert drop <= 0.01 and report["accuracy"]["metric"] == "top1"
    assert alone == {
        "run": False,
        "reason": f"accuracy drop {drop:.4g} (top1) is within 0.01 and no accuracy gate is set; {ASK}",
        "requantizations": 0,
    }
    assert _quantizations(report) == 1  # the recipe's model, nothing else
    assert report["analysis"]["layers"] and _alone_figures(report) == []
    assert "alone" not in [s["name"] for s in report["steps"]]
    html = (tmp_path / "o" / "report.html").read_text()
    assert f"Not measured quantized alone: accuracy drop {drop:.4g} (top1) is within 0.01" in html

    # edgeconv analyze always measures them, and records that it did.
    result = CliRunner().invoke(main, ["analyze", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    analyzed = json.loads((tmp_path / "o" / "report.json").read_text())
    figures = _alone_figures(analyzed)
    assert analyzed["analysis"]["alone"] == {"run": True, "reason": "edgeconv analyze", "requantizations": 6}
    assert len(figures) == 6 and all(-200 <= f <= 200 for f in figures)
    alone_column = [line.split("alone")[1].split("dB")[0].strip() for line in result.stdout.splitlines()[1:]]
    assert len([v for v in alone_column if v != "n/a"]) == 6, result.stdout


def test_passed_accuracy_gate_and_the_recipe_switch(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    gated = tiny_recipe(tiny_model_dir, budgets={"accuracy_drop": 0.5})
    code, report = _convert(write_recipe(gated), tmp_path / "gated")
    assert code == 0
    assert report["analysis"]["alone"] == {
        "run": False,
        "reason": f"every accuracy gate passed; {ASK}",
        "requantizations": 0,
    }
    assert _quantizations(report) == 1

    always = tiny_recipe(tiny_model_dir, budgets={"accuracy_drop": 0.5}, analysis={"alone": "always"})
    code, report = _convert(write_recipe(always, "always.yaml"), tmp_path / "always")
    assert code == 0
    assert report["analysis"]["alone"] == {
        "run": True,
        "reason": "analysis.alone is always in the recipe",
        "requantizations": 6,
    }
    assert len(_alone_figures(report)) == 6 and _quantizations(report) == 1 + 6
    assert [s["name"] for s in report["steps"]].count("alone") == 1

    off = tiny_recipe(tiny_model_dir, analysis={"samples": 0})
    _, report = _convert(write_recipe(off, "off.yaml"), tmp_path / "off")
    assert report["analysis"]["layers"] == []
    assert report["analysis"]["alone"] == {
        "run": False,
        "reason": "analysis.samples is 0 in the recipe",
        "requantizations": 0,
    }


def test_a_missed_accuracy_budget_measures_the_worst_layers_alone(
    outlier_digits: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    spec = outlier_model.recipe(
        outlier_digits, budgets={"accuracy_drop": 0.005}, benchmark={"enabled": False}, tuning={"enabled": False}
    )
    code, report = _convert(write_recipe(spec), tmp_path / "o")
    assert code == 1 and report["accuracy"]["drop"] > 0.3
    alone = report["analysis"]["alone"]
    drop = report["accuracy"]["drop"]
    assert alone["run"] is True and alone["reason"] == f"accuracy gate failed: accuracy_drop {drop:.4g} > 0.005"
    figures = _alone_figures(report)
    assert len(figures) == alone["requantizations"] and 4 <= len(figures) <= 8, report["analysis"]["layers"]
    assert _quantizations(report) == 1 + alone["requantizations"]
    wide = next(e for e in report["analysis"]["layers"] if "wide" in e["name"])
    assert wide["alone_sqnr_db"] is not None and wide["alone_sqnr_db"] < 6  # the outlier conv ruins the output

    spec["analysis"] = {"alone": "never"}
    code, report = _convert(write_recipe(spec, "never.yaml"), tmp_path / "never")
    assert code == 1
    assert report["analysis"]["alone"] == {
        "run": False,
        "reason": "analysis.alone is never in the recipe",
        "requantizations": 0,
    }
    assert _alone_figures(report) == [] and _quantizations(report) == 1
