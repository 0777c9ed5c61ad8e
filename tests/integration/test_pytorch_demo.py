"""The PyTorch demo from the README: one trained network as ``.pt2`` and as ``.onnx``, side by side.

``recipes/digits_cnn_pt2.yaml`` and ``recipes/digits_cnn_onnx.yaml`` convert the committed
``recipes/models/digits_cnn.pt2`` / ``.onnx`` (the same weights, made by ``tools/train_torch_digits.py``)
with the README's command, full-integer, for the host and an MCU (Arduino Nano 33 BLE Sense, TFLite Micro).
Each route needs its own install: the ``[torch]`` extra for ``.pt2`` (EDGECONV_REQUIRE_TORCH=1 makes its
absence a failure) and ``edgeconv setup onnx`` for ``.onnx`` (EDGECONV_REQUIRE_ONNX=1); a missing one skips.

Measured (2026-11-28): float top-1 98.89 % on the 360 held-out digits from both routes, int8 98.89 %
(agreement 100 %), float references within 1e-6 of PyTorch and of each other, TFLite Micro 100 % top-1
agreement with LiteRT in a 5,440-byte arena for both.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.reports.report import FLOAT_NAME, INT8_NAME
from converter.runtime.model import TFLiteModel
from converter.tflite.inspect_model import float_ops
from tests.conftest import ROOT

MCU = "arduino-nano-33-ble-sense"
RECIPES = {"pt2": ROOT / "recipes" / "digits_cnn_pt2.yaml", "onnx": ROOT / "recipes" / "digits_cnn_onnx.yaml"}
TORCH_MISSING = [m for m in ("torch", "litert_torch") if importlib.util.find_spec(m) is None]


def _missing(route: str, request: pytest.FixtureRequest) -> str | None:
    """Why ``route`` cannot run here (None when it can); a failure instead of a skip where CI requires it. The
    ONNX route takes conftest's ``onnx_venv``, made on first use (and exported as ``$EDGECONV_ONNX_VENV``)."""
    if route == "pt2" and TORCH_MISSING:
        why = f"{', '.join(TORCH_MISSING)} not installed: pip install -e '.[torch]'"
        if os.environ.get("EDGECONV_REQUIRE_TORCH") == "1":
            pytest.fail(f"EDGECONV_REQUIRE_TORCH=1 but {why}")
        return why
    if route == "onnx":
        try:
            request.getfixturevalue("onnx_venv")  # fails instead where EDGECONV_REQUIRE_ONNX=1
        except pytest.skip.Exception as skipped:
            return str(skipped.msg)
    return None


@pytest.fixture(scope="module")
def runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Each available route converted once with the README's command (a real ``edgeconv convert`` process)."""
    done: dict[str, tuple[Path, dict[str, Any]]] = {}
    for route, recipe in RECIPES.items():
        if _missing(route, request):
            continue
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # with $EDGECONV_ONNX_VENV, which onnx_venv exported
        out = tmp_path_factory.mktemp(route) / "out"
        cmd = [sys.executable, "-m", "converter", "convert", "--recipe", str(recipe), "--out", str(out)]
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        done[route] = (out, json.loads((out / "report.json").read_text()))
    return done


def _test_data() -> tuple[np.ndarray, np.ndarray]:
    with np.load(ROOT / "recipes" / "data" / "digits_test.npz") as d:
        return d["x"].astype(np.float32) / 255.0, d["y"]


@pytest.mark.parametrize("route", list(RECIPES))
def test_full_integer_within_one_point_on_host_and_mcu(
    route: str, runs: dict[str, tuple[Path, dict[str, Any]]], request: pytest.FixtureRequest
) -> None:
    why = _missing(route, request)
    if why:
        pytest.skip(why)
    out, report = runs[route]
    assert report["model"]["format"] == ("torch" if route == "pt2" else "onnx")
    assert float_ops((out / INT8_NAME).read_bytes()) == []
    acc = report["accuracy"]
    assert acc["samples"] == 360 and acc["float"] >= 0.97, acc
    assert acc["float"] - acc["int8"] <= 0.01 and acc["agreement"] >= 0.99, acc
    target = report["targets"][MCU]
    assert target["compatible"] is True, target["problems"]
    tflm = target["tflm"]
    assert tflm["loaded"] and tflm["missing_ops"] == [] and tflm["error"] is None
    assert tflm["samples"] == 100 and tflm["top1_agreement"] >= 0.99 and tflm["max_abs_diff_steps"] <= 1
    assert 0 < target["arena_bytes"] < 64 * 1024
    assert all(g["status"] == "passed" for g in report["gates"]), report["gates"]


def test_pt2_and_onnx_give_the_same_network(
    runs: dict[str, tuple[Path, dict[str, Any]]], request: pytest.FixtureRequest
) -> None:
    """The two front doors agree with PyTorch and with each other: float to 1e-4, int8 on the same answers."""
    for route in RECIPES:
        why = _missing(route, request)
        if why:
            pytest.skip(why)
    x, _ = _test_data()  # [N, 8, 8, 1], the channel-last layout both float references take
    floats = {r: TFLiteModel(model_path=str(out / FLOAT_NAME)).predict(x)[0] for r, (out, _) in runs.items()}
    import torch

    program = torch.export.load(str(ROOT / "recipes" / "models" / "digits_cnn.pt2"))
    module, nchw = program.module(), torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():  # exported for batch 1, as the device runs it
        want = np.concatenate([module(nchw[i : i + 1]).numpy() for i in range(len(nchw))])
    for route, got in floats.items():
        assert float(np.max(np.abs(got - want))) < 1e-4, route
    assert float(np.max(np.abs(floats["pt2"] - floats["onnx"]))) < 1e-4
    tops = {}
    for route, (out, report) in runs.items():
        int8 = TFLiteModel(model_path=str(out / INT8_NAME)).predict(x)[0].astype(np.float64)  # quantizes the input
        cosine = float(np.sum(int8 * want) / (np.linalg.norm(int8) * np.linalg.norm(want)))
        sqnr = float(10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want - int8) ** 2)))
        assert cosine >= 0.999 and sqnr >= 30.0, (route, cosine, sqnr)  # measured: 0.99977 and 33.4 dB, both routes
        tops[route] = int8.argmax(1)
        assert report["accuracy"]["float"] == runs["pt2"][1]["accuracy"]["float"]
    assert float(np.mean(tops["pt2"] == tops["onnx"])) >= 0.99


@pytest.mark.full  # retrains the demo network
def test_training_script_makes_the_committed_weights(request: pytest.FixtureRequest) -> None:
    """tools/train_torch_digits.py --check retrains (seeded, deterministic kernels) and reproduces the model.

    Bit-identical weights hold on one processor only (float rounding differs between them), so the check
    passes on identical weights or on the committed model's held-out top-1 within one point.
    """
    why = _missing("pt2", request)
    if why:
        pytest.skip(why)
    import torch

    from tools import train_torch_digits

    if torch.__version__ != train_torch_digits.TRAINED_WITH:
        pytest.skip(f"the committed weights were trained with torch {train_torch_digits.TRAINED_WITH}")
    result = subprocess.run(
        [sys.executable, "tools/train_torch_digits.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    top1, committed = (float(v) for v in re.findall(r"\b[01]\.\d{4}\b", result.stdout)[:2])
    assert committed == pytest.approx(0.9889, abs=1e-4), result.stdout
    assert abs(top1 - committed) <= 0.01, result.stdout
