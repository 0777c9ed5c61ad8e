"""When ``convert`` spends a requantization per worst layer on the "alone" figures, and the reason it records."""

from __future__ import annotations

import pytest

from converter.analysis.analyze import AloneRun, alone_decision
from converter.recipe import AnalysisSpec

ASK = "edgeconv analyze measures them (or set analysis.alone: always)"


def test_default_mode_is_auto() -> None:
    assert AnalysisSpec().alone == "auto"


def test_a_failed_accuracy_gate_is_explained() -> None:
    decision = alone_decision("auto", ["accuracy_drop 0.3 > 0.01", "min_agreement [pi] 0.9 < 0.95"], True, 0.3, "top1")
    assert decision == AloneRun(True, "accuracy gate failed: accuracy_drop 0.3 > 0.01, min_agreement [pi] 0.9 < 0.95")


def test_passed_gates_skip_them_whatever_the_drop() -> None:
    decision = alone_decision("auto", [], True, 0.2, "top1")
    assert decision.to_json() == {
        "run": False,
        "reason": f"every accuracy gate passed; {ASK}",
        "requantizations": 0,
    }


@pytest.mark.parametrize(
    ("drop", "metric", "run", "reason"),
    [
        (0.0, "top1", False, f"accuracy drop 0 (top1) is within 0.01 and no accuracy gate is set; {ASK}"),
        (0.01, "top1", False, f"accuracy drop 0.01 (top1) is within 0.01 and no accuracy gate is set; {ASK}"),
        (0.0125, "top1", True, "accuracy drop 0.0125 (top1) is above 0.01 and no accuracy gate is set"),
        (0.9, "sqnr", False, f"accuracy drop 0.9 (sqnr) is within 1 and no accuracy gate is set; {ASK}"),
        (1.5, "sqnr", True, "accuracy drop 1.5 (sqnr) is above 1 and no accuracy gate is set"),
        (0.02, "mse", True, "accuracy drop 0.02 (mse) is above 0.01 and no accuracy gate is set"),
    ],
)
def test_without_a_gate_the_drop_decides(drop: float, metric: str, run: bool, reason: str) -> None:
    assert alone_decision("auto", [], False, drop, metric) == AloneRun(run, reason)


def test_no_accuracy_measured_skips_them() -> None:
    decision = alone_decision("auto", [], False, None, None)
    assert decision == AloneRun(False, f"no accuracy gate and no accuracy drop measured (data.evaluation); {ASK}")


def test_the_recipe_can_force_either_way() -> None:
    assert alone_decision("always", [], True, 0.0, "top1") == AloneRun(True, "analysis.alone is always in the recipe")
    never = alone_decision("never", ["accuracy_drop [host]"], True, 0.5, "top1")
    assert never == AloneRun(False, "analysis.alone is never in the recipe")
