"""Gates on a fixed report: golden Markdown and JUnit, baselines, relative budgets, bad input."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from converter.errors import UserInputError
from converter.reports.budgets import Budgets, parse_limit
from converter.reports.ci_outputs import finalize
from converter.reports.gates import deltas, evaluate, load_baseline
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "data" / "golden"


def _fixed() -> dict[str, Any]:
    report: dict[str, Any] = json.loads((GOLDEN / "report_fixed.json").read_text())
    return report


def test_markdown_and_junit_match_the_golden_files() -> None:
    files = finalize(_fixed())
    assert files["report.md"].decode() == (GOLDEN / "report.md").read_text()
    assert files["junit.xml"].decode() == (GOLDEN / "junit.xml").read_text()
    suite = ET.fromstring(files["junit.xml"]).find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("8", "3", "1")


def test_gate_values_limits_and_sources() -> None:
    gates = {(g.name, g.target): g for g in evaluate(_fixed())}
    size = gates[("model_bytes", "*")]
    assert (size.value, size.limit, size.status, size.unit) == (120000, 102400, "failed", "bytes")
    assert gates[("accuracy_drop", "*")].passed is True
    arena = gates[("arena_bytes", "arduino-nano-33-ble-sense")]
    assert (arena.source, arena.status) == ("recipe target", "failed")
    flash = gates[("flash_bytes", "arduino-nano-33-ble-sense")]
    assert (flash.source, flash.limit, flash.status) == ("device profile", 1048576, "passed")
    skipped = gates[("latency_p50_ms", "arduino-nano-33-ble-sense")]
    assert skipped.status == "skipped" and skipped.passed is None and "not measured" in (skipped.reason or "")


def test_recipe_budget_wins_over_the_device_profile() -> None:
    report = _fixed()
    report["budgets"]["targets"]["arduino-nano-33-ble-sense"]["device"]["arena_bytes"] = 500000
    arena = [g for g in evaluate(report) if g.name == "arena_bytes"]
    assert len(arena) == 1 and arena[0].limit == 200000


def test_a_regression_only_the_relative_budget_catches() -> None:
    baseline = _fixed()
    current = copy.deepcopy(baseline)
    current["artifacts"]["int8"]["bytes"] = 123000  # +2.5%: still far under an absolute 1 MB budget
    current["budgets"]["recipe"] = {"model_bytes": "1MB"}

    def size_gates(base: dict[str, Any] | None) -> list[Any]:
        return [g for g in evaluate(current, base) if g.name == "model_bytes"]

    assert [g.status for g in size_gates(baseline)] == ["passed"]
    current["budgets"]["recipe"] = {"model_bytes": "+2%"}
    (gate,) = size_gates(baseline)
    assert gate.status == "failed" and gate.limit == pytest.approx(120000 * 1.02) and gate.budget == "+2%"
    (no_base,) = size_gates(None)
    assert no_base.status == "skipped" and "needs a baseline" in (no_base.reason or "")
    rows = {r["figure"]: r for r in deltas(current, baseline)}
    assert rows["int8 model bytes"]["delta"] == 3000 and rows["int8 model bytes"]["delta_pct"] == pytest.approx(2.5)
    md = finalize(current, baseline=baseline, baseline_path="old/report.json")["report.md"].decode()
    assert "### Against the baseline" in md and "| int8 model bytes | 120000 | 123000 | +3000 (+2.50%) |" in md


def test_budget_units_and_errors() -> None:
    assert parse_limit("model_bytes", "1.5MiB").value == 1.5 * 1024**2
    assert parse_limit("latency_p50_ms", "750us").value == pytest.approx(0.75)
    assert Budgets(model_kb=600).items() == {"model_bytes": 614400.0}
    with pytest.raises(ValueError, match=r"model_bytes: unknown unit 'furlongs'.*units for bytes: B, KB"):
        Budgets(model_bytes="3 furlongs")
    with pytest.raises(ValueError, match="arena_bytes: must not be negative"):
        Budgets(arena_bytes=-5)
    with pytest.raises(ValueError, match="give model_bytes or model_kb, not both"):
        Budgets(model_bytes=1, model_kb=1)


def test_bad_baselines(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[1, 2]")
    with pytest.raises(UserInputError, match="not an edgeconv report.json"):
        load_baseline(str(tmp_path / "a.json"))
    old = _fixed()
    old["schema_version"] = 0
    (tmp_path / "b.json").write_text(json.dumps(old))
    with pytest.raises(UserInputError, match="schema_version 0 cannot be compared with 1"):
        load_baseline(str(tmp_path / "b.json"))
    with pytest.raises(UserInputError, match="cannot read a JSON report"):
        load_baseline(str(tmp_path / "missing.json"))


def test_incompatible_target_fails_and_target_accuracy_is_not_borrowed() -> None:
    report = _fixed()
    gates = {(g.name, g.target): g for g in evaluate(report)}
    assert gates[("compatible", "host")].status == "passed"
    broken = gates[("compatible", "arduino-nano-33-ble-sense")]
    assert broken.status == "failed" and "RAM: arena" in (broken.reason or "")
    # An accuracy budget on a target that measured no accuracy is skipped, not judged by the host's.
    report["budgets"]["targets"]["arduino-nano-33-ble-sense"]["recipe"]["min_accuracy"] = 0.5
    acc = next(g for g in evaluate(report) if g.name == "min_accuracy")
    assert acc.status == "skipped"


def test_bad_budget_in_a_report_is_a_user_error() -> None:
    report = _fixed()
    report["budgets"]["recipe"]["model_bytes"] = "12 parsecs"
    with pytest.raises(UserInputError, match="budget model_bytes for target \\*: model_bytes: unknown unit"):
        evaluate(report)
