"""An RKNN target measured on its board over SSH: the .rknn with rknn-toolkit-lite2 (RKNNLite).

The board is a real sshd on 127.0.0.1 and the .rknn is built by the real rknn-toolkit2. RKNNLite
itself runs only on a Rockchip board (aarch64 with librknnrt.so and the NPU driver), so:
- the "board" without it is real: the report must say what to install, keep the CPU figures, and
  skip the target's latency gate with that reason; ``edgeconv deploy`` exits 2 with the same words;
- the "board" with it uses a STAND-IN ``rknnlite`` package (written below): it runs our int8 TFLite
  on the raw int8 tensor it is fed and returns raw int8 outputs, as rknn-toolkit2's simulator does
  for a pre-quantized model. It checks the protocol (the .rknn file is shipped and loaded, the input
  is the quantized NHWC tensor, raw outputs are dequantized with the model's scales, figures land in
  the report and gates), not Rockchip's NPU: no number from it is an NPU measurement.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from converter.cli.main import main
from tests.conftest import tiny_recipe
from tests.sshd import LoopbackSSH, loopback_sshd, sshd_available

pytestmark = pytest.mark.skipif(sshd_available() is not None, reason=str(sshd_available()))

BOARD = "orange-pi-5"
FAST = {"warmup": 1, "runs": 5, "min_seconds": 0.0}

STAND_IN = '''
"""STAND-IN for Rockchip's rknnlite (tests only): runs the int8 TFLite beside the .rknn on raw int8 inputs."""
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter


class RKNNLite:
    NPU_CORE_AUTO = 0

    def __init__(self, verbose=False):
        self.interpreter = None

    def load_rknn(self, path):
        rknn = Path(path)
        if not rknn.is_file() or rknn.stat().st_size == 0:
            return -1
        self.interpreter = Interpreter(model_path=str(rknn.parent / "model_int8.tflite"))
        self.interpreter.allocate_tensors()
        return 0

    def init_runtime(self, core_mask=0):
        return 0 if self.interpreter is not None else -1

    def inference(self, inputs, data_format=None):
        info = self.interpreter.get_input_details()[0]
        x = inputs[0]
        assert x.dtype == np.int8, f"fed {x.dtype}, not the quantized int8 tensor"
        assert tuple(x.shape) == tuple(info["shape"]), (x.shape, info["shape"])
        assert data_format in ("nhwc", None)
        self.interpreter.set_tensor(info["index"], x)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(o["index"]) for o in self.interpreter.get_output_details()]

    def release(self):
        self.interpreter = None
'''


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSSH]:
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def _board_python(folder: Path, with_rknnlite: bool) -> str:
    """A Python for the "board": this one's packages (numpy, ai-edge-litert), plus the stand-in when asked."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    lines = [p for p in site.getsitepackages() if Path(p).is_dir()]
    if with_rknnlite:
        package = folder / "standin" / "rknnlite"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "api.py").write_text(STAND_IN)
        lines.append(str(folder / "standin"))
    own_site = next((folder / "lib").glob("python*/site-packages"))
    (own_site / "board.pth").write_text("\n".join(lines) + "\n")
    return str(folder / "bin" / "python")


def _recipe(tiny_model_dir: Path, sshd: LoopbackSSH, python: str, **budgets: Any) -> dict[str, Any]:
    target: dict[str, Any] = {
        "device": BOARD,
        "host": sshd.destination,
        "port": sshd.port,
        "identity": str(sshd.identity),
        "known_hosts": str(sshd.known_hosts),
        "python": python,
    }
    if budgets:
        target["budgets"] = budgets
    return tiny_recipe(tiny_model_dir, targets=[target], benchmark=FAST)


def _convert(recipe: dict[str, Any], write_recipe: Callable[..., Path], out: Path) -> tuple[int, str, dict[str, Any]]:
    result = CliRunner().invoke(main, ["convert", "--recipe", str(write_recipe(recipe)), "--out", str(out)])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return result.exit_code, result.output, report


@pytest.mark.full  # a second board; the measured one stays
def test_board_without_rknnlite_says_what_to_install(
    rknn_env: Path,
    sshd: LoopbackSSH,
    tiny_model_dir: Path,
    write_recipe: Callable[..., Path],
    tmp_path: Path,
) -> None:
    python = _board_python(tmp_path / "board", with_rknnlite=False)
    recipe = _recipe(tiny_model_dir, sshd, python, latency_p50_ms=50)
    code, output, report = _convert(recipe, write_recipe, tmp_path / "o")
    assert code == 0, output  # the gate is skipped (not measured), not failed
    t = report["targets"][BOARD]
    assert t["measured"] is False and report["latency"][BOARD] is None
    assert "rknn-toolkit-lite2 is not installed for this Python" in t["reason"]
    assert "pip install rknn-toolkit-lite2" in t["reason"] and "librknnrt.so" in t["reason"]
    assert t["device_cpu"]["latency"]["where"] == "device" and t["device_cpu"]["latency"]["int8"]["runs"] >= 5
    assert t["accuracy"]["where"] == "simulator"  # the simulator's figure stays the target's accuracy
    gate = next(g for g in report["gates"] if g["name"] == "latency_p50_ms" and g["target"] == BOARD)
    assert gate["status"] == "skipped"
    # deploy to that board: a clear refusal with the same words, exit 2, and the report untouched
    before = (tmp_path / "o" / "report.json").read_bytes()
    plain = write_recipe(tiny_recipe(tiny_model_dir, targets=[BOARD], benchmark=FAST), "plain.yaml")
    args = ["deploy", "--recipe", str(plain), "--out", str(tmp_path / "o"), "--device", BOARD]
    args += ["--host", sshd.destination, "--port", str(sshd.port), "--identity", str(sshd.identity)]
    args += ["--known-hosts", str(sshd.known_hosts), "--python", python]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "rknn-toolkit-lite2 is not installed" in result.stderr
    assert (tmp_path / "o" / "report.json").read_bytes() == before


def test_board_with_rknnlite_measures_the_rknn(
    rknn_env: Path,
    sshd: LoopbackSSH,
    tiny_model_dir: Path,
    write_recipe: Callable[..., Path],
    tmp_path: Path,
) -> None:
    python = _board_python(tmp_path / "board", with_rknnlite=True)
    recipe = _recipe(tiny_model_dir, sshd, python, latency_p50_ms=1000, accuracy_drop=0.05)
    code, output, report = _convert(recipe, write_recipe, tmp_path / "o")
    assert code == 0, output
    assert "latency orange-pi-5 (device NPU): int8 p50 " in output and "; rknn-npu\n" in output
    t, lat = report["targets"][BOARD], report["latency"][BOARD]
    assert t["measured"] is True and lat["where"] == "device NPU" and lat["runtime"] == "rknn-toolkit-lite2"
    assert lat["int8"]["delegate"] == "rknn-npu" and lat["int8"]["runs"] >= 5
    assert lat["cpu_int8"]["runs"] >= 5  # the TFLite int8 model on the board's CPU, kept beside it
    assert t["npu_runtime"]["input"]["fed"] == "quantized" and t["npu_runtime"]["input"]["dtype"] == "int8"
    # the stand-in computes exactly what our TFLite int8 model computes: the protocol loses nothing
    assert t["npu_runtime"]["vs_tflite_int8"]["agreement"] == 1.0
    assert t["npu_runtime"]["vs_tflite_int8"]["max_abs_diff_steps"] == [0.0]
    assert t["accuracy"]["where"] == f"{BOARD} NPU" and t["accuracy"]["int8"] == report["accuracy"]["int8"]
    assert t["simulator_accuracy"]["where"] == "simulator"
    gates = {g["name"]: g for g in report["gates"] if g["target"] == BOARD}
    assert gates["latency_p50_ms"]["status"] == "passed"
    assert gates["latency_p50_ms"]["value"] == pytest.approx(lat["int8"]["p50_ms"])
    assert gates["accuracy_drop"]["status"] == "passed"
    # edgeconv bench takes the .rknn too (on a board only)
    out = tmp_path / "o"
    bench = ["bench", "--model", str(out / "model_int8.tflite"), "--float", str(out / "model_float.tflite")]
    bench += ["--rknn", str(out / "firmware" / BOARD / "model.rknn"), "--data", str(tiny_model_dir / "test.npz")]
    bench += ["--runs", "3", "--warmup", "0", "--min-seconds", "0"]
    local = CliRunner().invoke(main, bench)
    assert local.exit_code == 2 and "a .rknn runs only on a Rockchip board; add --host" in local.stderr
    remote = bench + ["--device", BOARD, "--host", sshd.destination, "--port", str(sshd.port)]
    remote += ["--identity", str(sshd.identity), "--known-hosts", str(sshd.known_hosts), "--python", python]
    result = CliRunner().invoke(main, remote)
    assert result.exit_code == 0, result.output
    assert "  npu   p50 " in result.stdout and "rknn-toolkit-lite2" in result.stdout
    assert f"accuracy on {BOARD} NPU (100 samples): float 100.00%, int8 100.00%, agreement 100.00%" in result.stdout
