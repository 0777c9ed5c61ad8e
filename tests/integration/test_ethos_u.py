"""Arm Ethos-U targets: the int8 model compiled by the real Vela, its figures read from Vela's own outputs.

Measured on the tiny model (2026-11-28, Vela 5.2.0): every op on the NPU for U55-128, the Grove Vision AI V2
(U55-64 with Seeed's Vela config) and the i.MX 93 (U65-256); a model with REDUCE_PROD keeps that op on the
CPU, which TFLite Micro cannot run, so the MCU targets are incompatible (exit 1) and the i.MX 93 (LiteRT on
its Cortex-A55) is not.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from converter.cli.main import main
from converter.tflite import flatbuf
from tests.conftest import tiny_recipe

pytest.importorskip("ethosu.vela", reason="the npu extra (ethos-u-vela) is not installed")

MCU_TARGETS = ["ethos-u55-128", "grove-vision-ai-v2"]
LINUX_TARGET = "nxp-imx93"


def _convert(recipe: dict[str, Any], write_recipe: Callable[..., Path], out: Path) -> tuple[int, str, dict[str, Any]]:
    result = CliRunner().invoke(main, ["convert", "--recipe", str(write_recipe(recipe)), "--out", str(out)])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return result.exit_code, result.output, report


def _custom_ops(model: bytes) -> list[str]:
    m = flatbuf.load(model)
    return [c.customCode.decode() for c in m.operatorCodes if c.customCode]


def _vela_cli(model: Path, folder: Path, accelerator: str) -> dict[str, str]:
    """Vela run by hand, as a user would, for the figures the report must equal."""
    subprocess.run(
        [sys.executable, "-m", "ethosu.vela", str(model), "--accelerator-config", accelerator]
        + ["--system-config", "Ethos_U55_High_End_Embedded", "--memory-mode", "Shared_Sram"]
        + ["--output-dir", str(folder)],
        check=True,
        capture_output=True,
    )
    return next(csv.DictReader(io.StringIO(next(folder.glob("*_summary_*.csv")).read_text())))


def test_ethos_u_targets_compile_with_vela(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = tiny_recipe(tiny_model_dir, targets=[*MCU_TARGETS, LINUX_TARGET], benchmark={"enabled": False})
    recipe["budgets"] = {"npu_ops_fraction": 1.0, "sram_bytes": "1MB", "latency_estimate_ms": 50}
    code, output, report = _convert(recipe, write_recipe, tmp_path / "o")
    assert code == 0, output
    for name in [*MCU_TARGETS, LINUX_TARGET]:
        t = report["targets"][name]
        assert t["compatible"] is True and t["problems"] == []
        assert t["compiler"]["name"] == "vela" and t["compiler"]["version"].startswith("5.")
        assert t["npu_ops"] >= 5 and t["cpu_op_count"] == 0 and t["cpu_ops"] == [] and t["npu_ops_fraction"] == 1.0
        assert t["sram_bytes"] > 0 and t["cycles"] > 0 and t["latency_estimate"]["kind"] == "estimate"
        compiled = (tmp_path / "o" / t["compiled_model"]["path"]).read_bytes()
        assert len(compiled) == t["compiled_model"]["bytes"] == t["flash_bytes"]
        assert _custom_ops(compiled) == ["ethos-u"]  # the NPU part is one ethos-u custom op
        assert {row["runs_on"] for row in t["layers"]} == {"NPU"} and sum(r["cycles"] for r in t["layers"]) > 0
        assert report["latency"][name] is None  # nothing measured on a board from here
    # MCU boards get firmware sources with the Ethos-U op registered; the Linux board only the model.
    for name in MCU_TARGETS:
        folder = tmp_path / "o" / "firmware" / name
        assert "resolver.AddEthosU()" in (folder / "op_resolver.h").read_text()
        assert f"kTensorArenaSize = {report['targets'][name]['sram_bytes']};" in (folder / "model_data.h").read_text()
    assert sorted(p.name for p in (tmp_path / "o" / "firmware" / LINUX_TARGET).iterdir()) == ["model_vela.tflite"]
    grove = report["targets"]["grove-vision-ai-v2"]
    assert grove["npu"] == {
        "accelerator": "ethos-u55-64",
        "system_config": "My_Sys_Cfg",
        "memory_mode": "My_Mem_Mode_Parent",
        "clock_mhz": 400.0,
    }
    assert grove["compiler"]["config_file"] == "seeed-grove-vision-ai-v2.ini"
    # The figures are Vela's own: the same model compiled by hand gives the same SRAM, cycles and time.
    summary = _vela_cli(tmp_path / "o" / "model_int8.tflite", tmp_path / "by-hand", "ethos-u55-128")
    u55 = report["targets"]["ethos-u55-128"]
    assert u55["sram_bytes"] == round(float(summary["sram_memory_used"]) * 1024)
    assert u55["cycles"] == int(float(summary["cycles_total"]))
    assert u55["latency_estimate_ms"] == pytest.approx(float(summary["inference_time"]) * 1e3, rel=1e-12)
    by_hand = next((tmp_path / "by-hand").glob("*_vela.tflite")).read_bytes()
    assert by_hand == (tmp_path / "o" / "firmware" / "ethos-u55-128" / "model_vela.tflite").read_bytes()
    gates = {(g["name"], g["target"]): g["status"] for g in report["gates"]}
    for name in [*MCU_TARGETS, LINUX_TARGET]:
        for gate in ("npu_ops_fraction", "sram_bytes", "latency_estimate_ms", "compatible"):
            assert gates[(gate, name)] == "passed", (gate, name)
    assert "npu ethos-u55-128: Vela 5." in output and "100.00% of ops on the NPU" in output
    assert "### NPU (compiled by Vela)" in (tmp_path / "o" / "report.md").read_text()


@pytest.fixture(scope="module")
def reduce_prod_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float .tflite with REDUCE_PROD, which Vela leaves to the CPU and TFLite Micro has no kernel for."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(0, 0.3, (3, 3, 3, 8)).astype(np.float32))
    dense = tf.constant(rng.normal(0, 0.3, (80, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 12, 12, 3], tf.float32)])  # type: ignore[untyped-decorator]
    def net(x: Any) -> Any:
        y = tf.nn.relu(tf.nn.conv2d(x / 255.0, kernel, 1, "VALID"))
        y = tf.reduce_prod(tf.sigmoid(y), axis=1)  # [1, 10, 8]
        return tf.nn.softmax(tf.matmul(tf.reshape(y, [1, 80]), dense))

    path = tmp_path_factory.mktemp("reduce_prod") / "reduce_prod.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([net.get_concrete_function()], net).convert())
    return path


def test_an_op_left_to_a_cpu_without_its_kernel_fails_mcu_targets(
    reduce_prod_model: Path, tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path
) -> None:
    recipe = tiny_recipe(tiny_model_dir, targets=[*MCU_TARGETS, LINUX_TARGET], benchmark={"enabled": False})
    recipe["model"] = str(reduce_prod_model)
    recipe["budgets"] = {"npu_ops_fraction": 1.0}
    code, output, report = _convert(recipe, write_recipe, tmp_path / "o")
    assert code == 1, output
    for name in MCU_TARGETS:
        t = report["targets"][name]
        assert t["cpu_ops"] == ["REDUCE_PROD"] and t["cpu_op_count"] == 1 and t["cpu_runtime"] == "TFLite Micro"
        assert t["cpu_op_reasons"]["REDUCE_PROD"] == "Unsupported opType"
        assert t["compatible"] is False
        assert t["problems"] == ["op REDUCE_PROD is left to the CPU by Vela and has no TFLite Micro kernel"]
        assert "runs_on" in t["layers"][0] and "CPU" in {row["runs_on"] for row in t["layers"]}
    imx = report["targets"][LINUX_TARGET]
    assert imx["cpu_ops"] == ["REDUCE_PROD"] and imx["cpu_runtime"] == "LiteRT" and imx["compatible"] is True
    gates = {(g["name"], g["target"]): g for g in report["gates"]}
    fraction = gates[("npu_ops_fraction", LINUX_TARGET)]
    assert fraction["status"] == "failed" and 0 < fraction["value"] < 1
    assert fraction["value"] == imx["npu_ops"] / (imx["npu_ops"] + imx["cpu_op_count"])


def test_a_vela_failure_is_the_targets_problem_not_a_crash(
    tiny_model_dir: Path, write_recipe: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "broken-npu.yaml").write_text(
        "name: broken-npu\ndescription: a system config Vela does not have\nruntime: ethos-u\nkind: mcu\n"
        "npu: {accelerator: ethos-u55-128, system_config: No_Such_Config, memory_mode: Shared_Sram}\n"
    )
    monkeypatch.setenv("EDGECONV_DEVICES", str(devices))
    recipe = tiny_recipe(tiny_model_dir, targets=["broken-npu"], benchmark={"enabled": False})
    code, output, report = _convert(recipe, write_recipe, tmp_path / "o")
    assert code == 1, output  # the compatible gate fails; exit 3 would mean a bug here
    t = report["targets"]["broken-npu"]
    assert t["compatible"] is False and t["problems"][0].startswith("Vela could not compile the model: Vela exited")
    assert "No_Such_Config" in t["compiler"]["error"]


def test_a_profile_must_say_which_npu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from converter.devices import load_device
    from converter.errors import RecipeError

    (tmp_path / "no-npu.yaml").write_text("name: no-npu\ndescription: x\nruntime: ethos-u\nkind: mcu\n")
    with pytest.raises(RecipeError, match="give an npu section exactly when runtime is ethos-u"):
        load_device("no-npu", tmp_path)
