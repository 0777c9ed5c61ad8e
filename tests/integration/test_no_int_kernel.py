"""An op TFLite has no integer kernel for: kept float where every target runs LiteRT, else exit 2 naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from tests.conftest import ROOT


def _sin_model(folder: Path) -> Path:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.normal(size=(8, 16)).astype(np.float32))
    w2 = tf.constant(rng.normal(size=(16, 4)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])  # type: ignore[untyped-decorator]
    def f(x: tf.Tensor) -> tf.Tensor:
        with tf.name_scope("dense_in"):
            h = tf.matmul(x, w1)
        with tf.name_scope("wave"):
            h = tf.sin(h)  # SIN: float kernels only in TFLite
        return tf.nn.softmax(tf.matmul(h, w2))

    path = folder / "sin.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert())
    return path


def _convert(tmp_path: Path, targets: list[str]) -> tuple[subprocess.CompletedProcess[str], Path]:
    model = _sin_model(tmp_path)
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).normal(size=(32, 8)).astype(np.float32))
    recipe = {
        "version": 1,
        "name": "sin",
        "model": str(model),
        "data": {"calibration": {"path": "cal.npz"}},
        "targets": targets,
        "benchmark": {"enabled": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "converter", "convert", "--recipe", str(tmp_path / "r.yaml"), "--out", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False), out


def test_on_an_mcu_target_it_is_exit_2_naming_op_and_layer(tmp_path: Path) -> None:
    result, out = _convert(tmp_path, ["arduino-nano-33-ble-sense"])
    assert result.returncode == 2, result.stderr  # was 3: a failed step, as if edgeconv were at fault
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: the model is not fully integer: 1 op without an int8 kernel in TFLite stays float: SIN (op "
    ), last
    assert "from 'wave')" in last and "Replace the layer behind SIN in the model" in last
    assert not out.exists()


def test_on_cpu_targets_the_op_stays_float_and_the_rest_is_int8(tmp_path: Path) -> None:
    from converter.tflite.inspect_model import list_ops

    result, out = _convert(tmp_path, ["host"])
    assert result.returncode == 0, result.stderr  # was 3
    assert "warning: 1 op(s) have no int8 kernel and stay float (every target runs LiteRT on a CPU): wave/Sin" in (
        result.stderr
    )
    report = json.loads((out / "report.json").read_text())
    assert report["quantization"]["float_nodes"] == ["wave/Sin"]
    ops = [(op.name, op.output_dtypes) for op in list_ops((out / "model_int8.tflite").read_bytes())]
    assert ops == [
        ("FULLY_CONNECTED", ("int8",)),
        ("DEQUANTIZE", ("float32",)),
        ("SIN", ("float32",)),
        ("QUANTIZE", ("int8",)),
        ("FULLY_CONNECTED", ("int8",)),
        ("SOFTMAX", ("int8",)),
    ]
