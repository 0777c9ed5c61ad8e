"""Rockchip RKNN targets: the real rknn-toolkit2 2.5.0 and its x86 simulator, in the virtualenv
``edgeconv setup rknn`` makes.

The virtualenv is conftest's ``rknn_venv``: made once per machine by the real command where ``edgeconv setup
rknn`` puts it (``$EDGECONV_RKNN_VENV``, else the cache folder), so reruns take seconds. CI sets
EDGECONV_REQUIRE_RKNN=1: there a failed setup fails the tests. Elsewhere a setup that cannot download its
packages skips them with pip's message.

Measured on the tiny model (2026-11-28, 100 evaluation samples): the simulator's int8 outputs equal our
TFLite int8 model's on rk3588 and rv1106 (top-1 agreement 100%, raw outputs within 1 step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from converter.cli.main import main
from tests.conftest import REALDATA, ROOT, tiny_recipe

TARGETS = ["rk3588", "rv1106"]
# Agreement bound: the issue asks for the simulator within 1 point of our TFLite int8; measured 100%.
MIN_AGREEMENT = 0.99


def _setup(venv: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "converter", "setup", "rknn", "--venv", str(venv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )


def _convert(recipe: dict[str, Any], write_recipe: Callable[..., Path], out: Path) -> tuple[int, str, dict[str, Any]]:
    result = CliRunner().invoke(main, ["convert", "--recipe", str(write_recipe(recipe)), "--out", str(out)])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return result.exit_code, result.output, report


def test_rknn_targets_build_and_simulate(
    rknn_env: Path, tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = tiny_recipe(tiny_model_dir, targets=TARGETS)
    code, output, report = _convert(recipe, write_recipe, tmp_path / "o")
    assert code == 0, output
    host = report["accuracy"]
    for name in TARGETS:
        t = report["targets"][name]
        assert t["compatible"] is True and t["problems"] == [], t["problems"]
        assert t["compiler"]["name"] == "rknn-toolkit2" and t["compiler"]["version"] == "2.5.0"
        options = t["compiler"]["options"]
        assert options["target_platform"] == name and options["do_quantization"] is False
        artifact = tmp_path / "o" / t["artifact"]["path"]
        assert t["artifact"]["path"] == f"firmware/{name}/model.rknn" and t["artifact"]["deterministic"] is False
        assert artifact.stat().st_size == t["artifact"]["bytes"] > 1000
        acc = t["accuracy"]
        assert acc["where"] == "simulator" and acc["metric"] == "top1" and acc["data"] == "evaluation"
        assert acc["samples"] == host["samples"] == 100
        # Our TFLite int8 on the same samples is the host's int8 figure: the comparison is like for like.
        assert acc["tflite_int8"] == pytest.approx(host["int8"])
        assert acc["agreement"] >= MIN_AGREEMENT
        assert abs(acc["drop_vs_tflite_int8"]) <= 0.01  # within 1 point of our TFLite int8
        assert acc["raw_max_abs_diff_steps"] <= 1
        assert report["latency"][name] is None
        assert "rknn-toolkit2's simulator" in t["reason"]
        assert f"npu {name}: rknn-toolkit2 2.5.0, model.rknn" in output and "simulator top-1" in output
    assert "### RKNN (rknn-toolkit2 and its simulator)" in (tmp_path / "o" / "report.md").read_text()


@pytest.mark.full  # a second RKNN conversion
def test_a_toolkit_crash_or_refusal_is_the_targets_problem(
    rknn_env: Path,
    tiny_model_dir: Path,
    write_recipe: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    for name, platform in (("rk2118-board", "rk2118"), ("no-such-rk", "rk9999")):
        (devices / f"{name}.yaml").write_text(
            f"name: {name}\ndescription: x\nruntime: rknn\nrknn: {{platform: {platform}}}\n"
        )
    monkeypatch.setenv("EDGECONV_DEVICES", str(devices))
    recipe = tiny_recipe(tiny_model_dir, targets=["rk2118-board", "no-such-rk"], benchmark={"enabled": False})
    code, output, report = _convert(recipe, write_recipe, tmp_path / "o")
    assert code == 1, output  # the compatible gates fail; exit 3 would mean the crash took the run down
    crashed = report["targets"]["rk2118-board"]
    assert crashed["compatible"] is False and crashed["artifact"] is None
    assert crashed["problems"][0].startswith(
        "rknn-toolkit2 could not build or simulate the model: rknn-toolkit2 crashed (SIGABRT) working for rk2118"
    )
    refused = report["targets"]["no-such-rk"]
    assert refused["problems"] == [
        "rknn-toolkit2 could not build or simulate the model: rknn-toolkit2 failed for rk9999: "
        "config failed: ValueError: Invalid target_platform 'rk9999'!"
    ]
    gates = {(g["name"], g["target"]): g["status"] for g in report["gates"]}
    assert gates[("compatible", "rk2118-board")] == gates[("compatible", "no-such-rk")] == "failed"


def test_without_the_rknn_virtualenv_convert_stops_before_any_work(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECONV_RKNN_VENV", str(tmp_path / "nothing-here"))
    recipe = tiny_recipe(tiny_model_dir, targets=["host", "rk3588"])
    path = write_recipe(recipe)
    result = CliRunner().invoke(main, ["convert", "--recipe", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: {path}: targets: rk3588 (Rockchip RKNN) needs Rockchip's rknn-toolkit2, which runs in a virtualenv "
        f"of its own that is not set up at {tmp_path / 'nothing-here'}; run `edgeconv setup rknn` once (about 2 "
        "minutes and 2.6 GB; see docs/targets/rknn.md), or drop the RKNN targets from the recipe"
    )
    assert not (tmp_path / "o").exists()


def test_setup_is_idempotent(rknn_venv: Path) -> None:
    again = _setup(rknn_venv)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"rknn-toolkit2 2.5.0 already set up in {rknn_venv} (")


def test_setup_never_removes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    """``--venv`` may name anything; setup used to ``rmtree`` it first. Only its own or empty folders go."""
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    done = _setup(folder)
    assert done.returncode == 2, done.stderr
    assert "is not an RKNN virtualenv made by edgeconv setup rknn" in done.stderr
    assert (folder / "thesis.tex").read_text() == "years of work" and len(list(folder.iterdir())) == 1


def test_every_rknn_profile_names_a_platform_the_toolkit_knows() -> None:
    from converter.devices import available_devices, load_device

    known = {"rk3588", "rk3576", "rk3566", "rk3568", "rk3562", "rv1103", "rv1106"}
    rknn = [load_device(n) for n in available_devices() if load_device(n).runtime == "rknn"]
    assert {p.name for p in rknn} >= known | {"orange-pi-5"}
    for profile in rknn:
        assert profile.rknn is not None and profile.rknn.platform in known, profile.name
        assert profile.rknn.source, profile.name


# Measured 2026-11-28 (rknn-toolkit2 2.5.0, both platforms alike): ResNet-8 simulator 86.00% = our TFLite
# int8 86.00%, agreement 97.0%; KWS 90.86% vs 91.43%, agreement 99.0%. Raw outputs are not bit-exact
# (up to 81 and 48 int8 steps on a few samples), so the bounds are the 1 point and a margin below
# the measured agreement.
REAL_MODELS = [("resnet8", 200, 0.95), ("kws", 700, 0.97)]


@pytest.mark.realdata
@pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real models not found at {REALDATA}")
@pytest.mark.full  # the real models run in test_realdata, the simulator in test_rknn_targets_build_and_simulate
@pytest.mark.parametrize(("name", "samples", "min_agreement"), REAL_MODELS)
def test_real_models_on_the_rknn_simulator_within_one_point(
    rknn_env: Path, tmp_path: Path, name: str, samples: int, min_agreement: float
) -> None:
    from converter.pipeline import convert
    from converter.recipe import load_recipe
    from tools import realdata

    sets = ["targets=[rk3588]", "benchmark.enabled=false", "analysis.samples=0"]
    report = convert(load_recipe(realdata.recipe_path(name), [*realdata.overrides(name), *sets]), tmp_path).report
    t = report["targets"]["rk3588"]
    assert t["compatible"] is True, t["problems"]
    acc = t["accuracy"]
    assert acc["samples"] == report["accuracy"]["samples"] == samples
    assert acc["tflite_int8"] == pytest.approx(report["accuracy"]["int8"])
    assert abs(acc["drop_vs_tflite_int8"]) <= 0.01  # the "within 1 point of our TFLite int8"
    assert acc["agreement"] >= min_agreement
    assert (tmp_path / "firmware" / "rk3588" / "model.rknn").stat().st_size == t["artifact"]["bytes"]
