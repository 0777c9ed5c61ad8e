# mypy: disable-error-code="untyped-decorator"
# (tf.function is untyped)
"""Attention masks built from ``torch.finfo(float32).min`` quantize: the sentinel becomes ``MASK_VALUE``.

The graph is Hugging Face's additive mask: scores + where(mask, 0, -3.4e38), then a softmax. Built with
TensorFlow so the test needs neither PyTorch nor transformers; the hub models' runs are ``test_hub_zoo``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

tf = pytest.importorskip("tensorflow")

from converter.runtime.model import TFLiteModel  # noqa: E402
from converter.sources.float_rewrites import MASK_VALUE, soften_mask_constants  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

LENGTH = 8


@pytest.fixture(scope="module")
def masked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    weights = tf.constant(np.random.default_rng(0).standard_normal((4, LENGTH)).astype(np.float32))

    @tf.function
    def attend(x: Any, mask: Any) -> Any:
        scores = tf.matmul(x, weights)  # [1, LENGTH]
        bias = tf.where(mask > 0, tf.constant(0.0), tf.constant(np.finfo(np.float32).min))
        return tf.nn.softmax(scores + bias)

    spec = [tf.TensorSpec([1, 4], tf.float32), tf.TensorSpec([1, LENGTH], tf.float32)]
    converter = tf.lite.TFLiteConverter.from_concrete_functions([attend.get_concrete_function(*spec)], attend)
    path = tmp_path_factory.mktemp("mask") / "masked.tflite"
    path.write_bytes(converter.convert())
    return path


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    mask = (rng.random((n, LENGTH)) > 0.3).astype(np.float32)
    mask[:, 0] = 1.0  # every row keeps one position
    return x, mask


def _convert(recipe: dict[str, Any], tmp_path: Path) -> None:
    """``edgeconv convert`` in a fresh process (an abort in TensorFlow's quantizer must not end the test run)."""
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "converter",
            "convert",
            "--recipe",
            str(tmp_path / "r.yaml"),
            "--out",
            str(tmp_path / "o"),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_sentinel_becomes_mask_value_with_the_same_softmax(masked: Path) -> None:
    raw = masked.read_bytes()
    softened, count = soften_mask_constants(raw)
    assert count == 1 and softened != raw
    assert soften_mask_constants(softened) == (softened, 0)  # nothing left: same bytes
    x, mask = _data(50)
    before, after = TFLiteModel(model_content=raw), TFLiteModel(model_content=softened)
    names = [i.name for i in before.inputs]
    packed = [x if "x" in n else mask for n in names]
    want = np.concatenate([before.run(*[a[i : i + 1] for a in packed])[0] for i in range(50)])
    got = np.concatenate([after.run(*[a[i : i + 1] for a in packed])[0] for i in range(50)])
    assert float(np.max(np.abs(got - want))) < 1e-6
    assert float(np.max(want[mask == 0])) == 0.0 and float(np.max(got[mask == 0])) < np.exp(MASK_VALUE / 2)


def test_a_masked_model_converts_full_integer(masked: Path, tmp_path: Path) -> None:
    """Without the rewrite TensorFlow's quantizer aborts (SIGABRT) on the mask's range."""
    x, mask = _data(120)
    np.savez(tmp_path / "cal.npz", x=x, mask=mask)
    recipe = {
        "version": 1,
        "name": "masked",
        "model": str(masked),
        "data": {"calibration": {"path": str(tmp_path / "cal.npz")}},
        "benchmark": {"enabled": False},
    }
    _convert(recipe, tmp_path)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "masking or padding constant (-3.4e38 or -inf) replaced by -64" in report["model"]["loader"]
    assert report["accuracy"]["worst_output"]["sqnr_db"] > 20.0, report["accuracy"]


def test_max_pool_padding_keeps_its_inputs_int8_range(tmp_path: Path) -> None:
    """PyTorch's MaxPool2d(padding=1) as TFLite has it: PADV2 with -inf, then MAX_POOL_2D (the ResNet stem)."""
    kernel = tf.constant(np.random.default_rng(2).standard_normal((3, 3, 3, 8)).astype(np.float32) * 0.3)

    @tf.function
    def stem(x: Any) -> Any:
        y = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
        y = tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=-np.inf)
        return tf.reduce_mean(tf.nn.max_pool2d(y, 3, 2, "VALID"), axis=[1, 2])

    spec = tf.TensorSpec([1, 16, 16, 3], tf.float32)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([stem.get_concrete_function(spec)], stem)
    model = tmp_path / "stem.tflite"
    model.write_bytes(converter.convert())
    x = np.random.default_rng(3).random((150, 16, 16, 3)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x[:100])
    np.savez(tmp_path / "eval.npz", x=x[100:])
    recipe = {
        "version": 1,
        "name": "stem",
        "model": str(model),
        "data": {
            "calibration": {"path": str(tmp_path / "cal.npz")},
            "evaluation": {"path": str(tmp_path / "eval.npz")},
        },
        "benchmark": {"enabled": False},
        "tuning": {"enabled": False},
    }
    _convert(recipe, tmp_path)
    int8 = TFLiteModel(model_path=str(tmp_path / "o" / "model_int8.tflite"), delegate="none").interpreter
    details = {d["index"]: d for d in int8.get_tensor_details()}
    (pad,) = [op for op in int8._get_ops_details() if op["op_name"] == "PADV2"]  # noqa: SLF001
    scale_in = details[int(pad["inputs"][0])]["quantization"][0]
    scale_out = details[int(pad["outputs"][0])]["quantization"][0]
    # The ReLU output spans about [0, 2.2]: 0.0086 per step (measured), not 0.26 as when the range reached the pad
    # value -64; PADV2 keeps one scale for input and output either way.
    assert scale_out == pytest.approx(scale_in) and scale_out * 255 < 8.0, (scale_in, scale_out)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["accuracy"]["worst_output"]["sqnr_db"] > 30.0, report["accuracy"]["worst_output"]
