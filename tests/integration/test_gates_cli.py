"""Budgets in CI: exit codes, console, Markdown, JUnit, GitHub summary, baselines, and the HTML in a browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from converter.cli.main import main
from tests.conftest import tiny_recipe


def _convert(write_recipe: Callable[..., Path], recipe: dict[str, Any], out: Path, *extra: str) -> Result:
    path = write_recipe(recipe, f"{out.name}.yaml")
    return CliRunner().invoke(main, ["convert", "--recipe", str(path), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def passing(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gates")
    recipe = folder / "r.yaml"
    recipe.write_text(
        json.dumps(
            tiny_recipe(
                tiny_model_dir,
                budgets={"model_bytes": "1MB", "accuracy_drop": 0.02},
                targets=["host", "arduino-nano-33-ble-sense"],
            )
        )
    )
    result = CliRunner().invoke(main, ["convert", "--recipe", str(recipe), "--out", str(folder / "out")])
    assert result.exit_code == 0, result.output
    return folder / "out"


def test_too_small_budget_fails_everywhere_it_is_shown(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = _convert(write_recipe, tiny_recipe(tiny_model_dir, budgets={"model_bytes": 1000}), tmp_path / "small")
    assert result.exit_code == 1, result.output
    assert re.search(r"FAIL model_bytes \[\*\]: failed: [\d,]+ B exceeds 1,000 B", result.stdout)
    md = (tmp_path / "small" / "report.md").read_text()
    assert "— **failed**" in md and "| model_bytes | * |" in md and "❌ failed" in md
    assert summary.read_text() == md + "\n"
    suite = ET.parse(tmp_path / "small" / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and "exceeds 1,000 B" in (failure.get("message") or "")
    report = json.loads((tmp_path / "small" / "report.json").read_text())
    assert report["passed"] is False and report["gates"][0]["status"] == "failed"


def test_fitting_budget_passes_and_mcu_latency_is_skipped(passing: Path) -> None:
    report = json.loads((passing / "report.json").read_text())
    statuses = {(g["name"], g["target"]): g["status"] for g in report["gates"]}
    assert statuses[("model_bytes", "*")] == "passed" and statuses[("accuracy_drop", "*")] == "passed"
    # The device profile's arena budget applies to the MCU target and holds.
    assert statuses[("arena_bytes", "arduino-nano-33-ble-sense")] == "passed"
    assert report["passed"] is True


def test_skipped_gate_does_not_fail(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    recipe = tiny_recipe(tiny_model_dir, targets=["arduino-nano-33-ble-sense"], budgets={"latency_p50_ms": "50ms"})
    result = _convert(write_recipe, recipe, tmp_path / "skip")
    assert result.exit_code == 0, result.output
    assert "skip latency_p50_ms [arduino-nano-33-ble-sense]: skipped" in result.stdout


def test_bad_budgets_are_usage_errors(tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path) -> None:
    unknown = _convert(write_recipe, tiny_recipe(tiny_model_dir, budgets={"model_byte": 5}), tmp_path / "a")
    assert unknown.exit_code == 2 and "budgets.model_byte: unknown key (did you mean 'model_bytes'?)" in unknown.stderr
    unit = _convert(
        write_recipe, tiny_recipe(tiny_model_dir, budgets={"latency_p50_ms": "5 fortnights"}), tmp_path / "b"
    )
    assert unit.exit_code == 2 and "latency_p50_ms: unknown unit 'fortnights'" in unit.stderr
    negative = _convert(write_recipe, tiny_recipe(tiny_model_dir, budgets={"model_bytes": -1}), tmp_path / "c")
    assert negative.exit_code == 2 and "must not be negative" in negative.stderr
    assert not (tmp_path / "a").exists()


def test_an_unreachable_device_fails_its_gate_not_the_run(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    unreachable = {"device": "raspberry-pi-4", "host": "nobody@127.0.0.1", "port": 1}
    result = _convert(write_recipe, tiny_recipe(tiny_model_dir, targets=[unreachable]), tmp_path / "step")
    assert result.exit_code == 1 and "FAIL measured [raspberry-pi-4]: failed (connect:" in result.stdout
    assert (tmp_path / "step" / "report.json").is_file()  # the conversion is kept


def test_check_command_with_baselines(passing: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    folder = tmp_path / "current"
    shutil.copytree(passing, folder)
    ok = runner.invoke(
        main, ["check", "--report", str(folder / "report.json"), "--baseline", str(passing / "report.json")]
    )
    assert ok.exit_code == 0, ok.output
    assert "### Against the baseline" in (folder / "report.md").read_text()
    report = json.loads((folder / "report.json").read_text())
    report["artifacts"]["int8"]["bytes"] = int(report["artifacts"]["int8"]["bytes"] * 1.03)
    report["budgets"]["recipe"]["model_bytes"] = "+2%"
    (folder / "report.json").write_text(json.dumps(report))
    regressed = runner.invoke(
        main, ["check", "--report", str(folder / "report.json"), "--baseline", str(passing / "report.json"), "--json"]
    )
    assert regressed.exit_code == 1
    gates = json.loads(regressed.stdout)["gates"]
    assert [g["status"] for g in gates if g["name"] == "model_bytes"] == ["failed"]
    (tmp_path / "not_a_report.json").write_text('{"hello": 1}')
    bad = runner.invoke(
        main, ["check", "--report", str(folder / "report.json"), "--baseline", str(tmp_path / "not_a_report.json")]
    )
    assert bad.exit_code == 2 and "not an edgeconv report.json" in bad.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium; .ci/run does)")
def test_html_report_renders_in_a_real_browser(passing: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None  # the skipif above
    page = passing / "report.html"
    text = page.read_text()
    # Self-contained: no resource is fetched at view time.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text) and "@import" not in text
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1600",
    ]
    shot = tmp_path / "report.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120, check=True)
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"))
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10  # not a blank page
    assert (pixels < 100).mean() > 0.005  # text was drawn
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "Gates" in dom and "model_bytes" in dom and "arduino-nano-33-ble-sense" in dom and "passed" in dom
    # Tensors are shown by the layer a user wrote, the full TFLite name on hover (names were cut from the left).
    report = json.loads((passing / "report.json").read_text())
    shown = sorted(report["calibration"]["tensors"], key=lambda t: -t["clipped_fraction"])[:15]
    clipped = next(t["name"] for t in shown if "/" in t["name"])  # e.g. sequential_1/conv2d_1/Relu;…
    label = clipped.split(";")[0].split("/")[1]
    assert f'<span title="{html.escape(clipped)}">{html.escape(label)}</span>' in dom
