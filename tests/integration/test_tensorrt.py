"""The TensorRT target on the CPU: a Q/DQ ONNX model and a calibration cache, checked with onnxruntime.

A small residual CNN trained in PyTorch on the tiny data and exported with ``torch.onnx.export`` (opset 17) goes
through a recipe with the ``tensorrt`` target: the ONNX source needs onnx2tf's virtualenv (conftest's
``onnx_venv``; EDGECONV_REQUIRE_ONNX=1 makes its absence a failure) for the float .tflite reference, and
onnxruntime for the target (EDGECONV_REQUIRE_ONNX=1 too); torch exports the model (EDGECONV_REQUIRE_TORCH=1).
Keras, SavedModel and .tflite sources reach ONNX through tf2onnx (the tensorrt extra) from the float .tflite;
the real models (demo, MLPerf Tiny ResNet-8 and DS-CNN, the PyTorch demo) go through every route in the full
tier. No GPU is used or needed: the GPU figures must be null with the reason.

Measured (2026-11-29, onnxruntime 1.32.0 CPU): on 300 test samples float and Q/DQ top-1 equal, 100 % top-1
agreement with the TFLite int8 model; the README's digits CNN: 98.89 % float, Q/DQ and TFLite int8 alike.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from converter.cli.main import main
from converter.targets import qdq
from tests.conftest import tiny_data, tiny_recipe


def _require(modules: tuple[str, ...], variable: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        why = f"{', '.join(missing)} not installed: pip install -e '.[test]'"
        if os.environ.get(variable) == "1":
            pytest.fail(f"{variable}=1 but {why}")
        pytest.skip(why)


def _train_and_export(path: Path) -> None:
    import warnings

    import torch
    from torch import nn

    torch.manual_seed(0)

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(8, 4)

        def forward(self, x: Any) -> Any:
            a = torch.relu(self.c1(x / 255.0))
            b = torch.relu(self.bn(self.c2(a)) + a)  # a residual add: one input straight from a conv
            return self.fc(self.pool(b).mean((2, 3)))

    module = Residual()
    x, y = tiny_data(600)
    xt, yt = torch.from_numpy(x[:300].transpose(0, 3, 1, 2).astype(np.float32)), torch.from_numpy(y[:300])
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    module.train()
    for _ in range(80):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(module(xt), yt).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, 3, 12, 12),), str(path), opset_version=17, dynamo=False, input_names=["x"]
        )


@pytest.fixture(scope="module")
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The residual CNN converted once for the host and the tensorrt target."""
    _require(("torch", "onnx"), "EDGECONV_REQUIRE_TORCH")
    _require(("onnx", "onnxruntime"), "EDGECONV_REQUIRE_ONNX")
    request.getfixturevalue("onnx_venv")  # skips (or fails where required) when onnx2tf's virtualenv is missing
    folder = tmp_path_factory.mktemp("tensorrt")
    _train_and_export(folder / "cnn.onnx")
    x, y = tiny_data(600)
    np.savez(folder / "train.npz", x=x[:300], y=y[:300])
    np.savez(folder / "test.npz", x=x[300:], y=y[300:])
    recipe = tiny_recipe(folder, "cnn.onnx", name="trt", targets=["host", "tensorrt"])
    recipe["calibration"] = {"method": "entropy"}
    (folder / "recipe.yaml").write_text(json.dumps(recipe))
    out = folder / "out"
    result = CliRunner().invoke(main, ["convert", "--recipe", str(folder / "recipe.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "report.json").read_text())


def test_qdq_model_follows_tensorrt_rules(converted: tuple[Path, dict[str, Any]]) -> None:
    import onnx
    from onnx import numpy_helper

    out, report = converted
    section = report["targets"]["tensorrt"]
    assert section["status"] == "built" and section["compatible"] is True, section
    model = onnx.load(str(out / section["artifact"]["path"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == section["quantization"]["activation_qdq_pairs"] >= 4
    for node in quantize:  # activations: per tensor, int8, zero point 0
        assert inits[node.input[1]].shape == () and inits[node.input[2]].dtype == np.int8
        assert inits[node.input[2]] == 0
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weights) == section["quantization"]["quantized_weights"] == 3  # two convs, one Gemm
    for node in weights:  # weights: int8, per output channel
        assert inits[node.input[0]].dtype == np.int8
        assert inits[node.input[1]].ndim == 1 and inits[node.input[1]].size in (4, 8)
        assert not inits[node.input[2]].any()
    producers = {o: n for n in model.graph.node for o in n.output}
    add = next(n for n in model.graph.node if n.op_type == "Add")
    kinds = sorted(producers[i].op_type for i in add.input)
    assert kinds == ["Conv", "DequantizeLinear"], kinds  # the conv branch stays float for TensorRT's fusion
    assert section["quantization"]["folded_batch_norms"] == 0  # the exporter folded it (eval mode)
    assert section["gpu"] == {
        "engine": None,
        "engine_bytes": None,
        "latency_ms": None,
        "reason": "no NVIDIA GPU / tensorrt package here",
    }


def test_calibration_cache_lists_every_observed_tensor(converted: tuple[Path, dict[str, Any]]) -> None:
    import onnx

    out, report = converted
    section = report["targets"]["tensorrt"]
    text = (out / section["calibration_cache"]["path"]).read_text()
    lines = text.splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2" == section["calibration_cache"]["header"]
    header, scales = qdq.parse_calibration_cache(text)
    source = onnx.load(str(out.parent / "cnn.onnx"))
    observed = qdq.activation_names(source)
    assert list(scales) == observed and len(lines) == len(observed) + 1 == section["calibration_cache"]["tensors"] + 1
    assert all(s > 0 for s in scales.values())
    assert 200 / 127 <= scales["x"] <= 255 / 127  # the raw 0..255 input: its observed range
    model = onnx.load(str(out / section["artifact"]["path"]))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):  # the same scales in both files
        assert float(inits[node.input[1]]) == np.float32(scales[node.input[0]])


def test_onnxruntime_qdq_matches_float_and_tflite_int8(converted: tuple[Path, dict[str, Any]]) -> None:
    _, report = converted
    acc = report["targets"]["tensorrt"]["accuracy"]
    assert acc["where"] == "onnxruntime-qdq" and acc["metric"] == "top1" and acc["samples"] == 300
    assert acc["float"] >= 0.9, acc
    assert acc["float"] - acc["int8"] <= 0.01, acc
    assert acc["agreement_vs_tflite_int8"] >= 0.98, acc


def _tensorrt_accuracy(report: dict[str, Any], route: str) -> dict[str, Any]:
    section = report["targets"]["tensorrt"]
    assert section["status"] == "built" and section["compatible"] is True, section
    assert section["onnx"]["route"] == route and section["onnx"]["opset"] == 17
    acc: dict[str, Any] = section["accuracy"]
    assert acc["where"] == "onnxruntime-qdq" and acc["metric"] == "top1"
    return acc


@pytest.mark.parametrize(
    "model",
    [
        "tiny.keras",
        pytest.param("tiny.h5", marks=pytest.mark.full),
        pytest.param("tiny_savedmodel", marks=pytest.mark.full),
        pytest.param("tiny.tflite", marks=pytest.mark.full),
    ],
)
def test_tf_sources_reach_onnx_through_tf2onnx(
    model: str, tiny_model_dir: Path, tmp_path: Path, write_recipe: Callable[..., Path]
) -> None:
    """Measured (tf2onnx 1.17.0, onnxruntime 1.32.0): 100 samples, float, Q/DQ and TFLite int8 all 100 %."""
    _require(("onnx", "onnxruntime", "tf2onnx"), "EDGECONV_REQUIRE_ONNX")
    recipe = tiny_recipe(tiny_model_dir, model, targets=["host", "tensorrt"])
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["convert", "--recipe", str(write_recipe(recipe)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    acc = _tensorrt_accuracy(report, "tflite")
    section = report["targets"]["tensorrt"]
    assert section["onnx"]["made_by"].startswith("tf2onnx 1.17.")
    assert section["quantization"]["quantized_weights"] == 3  # conv, depthwise conv, dense
    assert section["quantization"]["activations_without_range"] == []
    assert acc["samples"] == 100 and acc["float"] >= 0.95, acc
    assert acc["float"] - acc["int8"] <= 0.01 and acc["agreement_vs_tflite_int8"] >= 0.98, acc
    assert (out / "firmware" / "tensorrt" / "model_qdq.onnx").stat().st_size == section["artifact"]["bytes"]


def test_missing_tf2onnx_is_exit_2_before_any_work(
    tiny_model_dir: Path, tmp_path: Path, write_recipe: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An install without tf2onnx (a test double of its absence: find_spec answers None for it alone)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    recipe = tiny_recipe(tiny_model_dir, targets=["host", "jetson-orin-nano"])
    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["convert", "--recipe", str(write_recipe(recipe)), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "targets: jetson-orin-nano (TensorRT) makes its Q/DQ ONNX model from tiny.keras through tf2onnx" in (
        result.output
    )
    assert 'pip install "edgeconv[tensorrt]"' in result.output
    assert not out.exists()


def test_matrix_puts_tensorrt_targets_in_their_own_group(
    tiny_model_dir: Path, write_recipe: Callable[..., Path]
) -> None:
    from converter.reports.matrix import plan

    path = write_recipe(tiny_recipe(tiny_model_dir, targets=["host", "jetson-orin-nano", "tensorrt"]))
    jobs = {j.group: j for j in plan([path])}
    assert sorted(jobs) == ["litert", "tensorrt"]
    job = jobs["tensorrt"]
    assert job.targets == "jetson-orin-nano, tensorrt" and job.extras == "convert,tensorrt" and job.setup == ""


def _real_report(recipe: Path, overrides: list[str], tmp_path: Path) -> dict[str, Any]:
    from converter.pipeline import convert
    from converter.recipe import load_recipe

    return convert(load_recipe(recipe, [*overrides, "targets=[host, tensorrt]"]), tmp_path / "out").report


def _meets_aims(acc: dict[str, Any]) -> None:
    """This target's aims: Q/DQ top-1 within 1 point of float, >= 98 % top-1 agreement with TFLite int8."""
    assert acc["float"] - acc["int8"] <= 0.01 + 1e-9 and acc["agreement_vs_tflite_int8"] >= 0.98 - 1e-9, acc


def _fp16_layers(report: dict[str, Any]) -> list[str]:
    layers: list[dict[str, Any]] = report["targets"]["tensorrt"]["quantization"]["fp16_layers"]
    return [layer["op"] for layer in layers]


@pytest.mark.full
def test_demo_mobilenet_keras(tmp_path: Path) -> None:
    """The recipe as shipped (minmax: mse thresholds on TensorRT): float 98.61 %, Q/DQ 97.78 % (drop 0.83),
    agreement with TFLite int8 99.17 %; the calibration samples agree 99.0 % with float, so all layers int8."""
    _require(("onnx", "onnxruntime", "tf2onnx"), "EDGECONV_REQUIRE_ONNX")
    root = Path(__file__).resolve().parents[2]
    report = _real_report(root / "recipes/mobilenet.yaml", [], tmp_path)
    acc = _tensorrt_accuracy(report, "tflite")
    assert acc["samples"] == 360 and acc["float"] == pytest.approx(0.9861, abs=1e-4)
    assert acc["int8"] == pytest.approx(0.9778, abs=1e-4), acc
    assert acc["agreement_vs_tflite_int8"] == pytest.approx(0.9917, abs=1e-4), acc
    assert _fp16_layers(report) == []
    _meets_aims(acc)


@pytest.mark.full
def test_pytorch_demo_pt2(tmp_path: Path) -> None:
    """Measured: float, Q/DQ and TFLite int8 98.89 %, 100 % agreement."""
    _require(("torch", "onnx"), "EDGECONV_REQUIRE_TORCH")
    _require(("onnx", "onnxruntime"), "EDGECONV_REQUIRE_ONNX")
    root = Path(__file__).resolve().parents[2]
    acc = _tensorrt_accuracy(_real_report(root / "recipes/digits_cnn_pt2.yaml", [], tmp_path), "pt2")
    assert acc["samples"] == 360 and acc["float"] == acc["int8"] == pytest.approx(0.9889, abs=1e-4)
    assert acc["agreement_vs_tflite_int8"] == 1.0, acc
    _meets_aims(acc)


def test_cache_header_and_hex_scales() -> None:
    assert qdq.cache_header("10.3.0") == "TRT-100300-EntropyCalibration2"
    assert qdq.cache_header("8.2.1") == "TRT-8201-EntropyCalibration2"
    text = qdq.calibration_cache("TRT-8201-EntropyCalibration2", {"input": 1.0, "zero": 0.0})
    assert text == (
        "TRT-8201-EntropyCalibration2\n"
        f"input: {struct.unpack('>I', struct.pack('>f', 1 / 127))[0]:08x}\n"
        "zero: 3c010204\n"  # a tensor that never left 0 gets amax 1: scale 1/127
    )
    assert qdq.parse_calibration_cache(text)[1]["input"] == pytest.approx(1 / 127)


def _realdata_report(name: str, tmp_path: Path) -> dict[str, Any]:
    from converter.pipeline import convert
    from converter.recipe import load_recipe
    from tests.conftest import REALDATA
    from tools import realdata

    if not REALDATA.is_dir():
        pytest.skip(f"real models not found at {REALDATA}")
    _require(("onnx", "onnxruntime", "tf2onnx"), "EDGECONV_REQUIRE_ONNX")
    recipe = load_recipe(realdata.recipe_path(name), [*realdata.overrides(name), "targets=[host, tensorrt]"])
    return convert(recipe, tmp_path / "out").report


@pytest.mark.full
@pytest.mark.realdata
def test_resnet8_h5_through_tf2onnx(tmp_path: Path) -> None:
    """MLPerf Tiny ResNet-8 (.h5), the recipe's minmax: float 85.5 %, Q/DQ 87.0 %, TFLite int8 86.0 %, agreement
    with TFLite int8 98.5 %. All int8, the calibration samples agree 95.6 % with float: the dense layer and the
    last residual Add are left fp16 (97.0 % then); all int8 gave 85.5 % and 97.5 % agreement."""
    report = _realdata_report("resnet8", tmp_path)
    acc = _tensorrt_accuracy(report, "tflite")
    assert acc["samples"] == 200 and acc["float"] == pytest.approx(0.855, abs=1e-4)
    assert acc["int8"] == pytest.approx(0.87, abs=1e-4), acc
    assert acc["agreement_vs_tflite_int8"] == pytest.approx(0.985, abs=1e-4), acc
    assert _fp16_layers(report) == ["MatMul", "Add"]
    _meets_aims(acc)


@pytest.mark.full
@pytest.mark.realdata
def test_kws_savedmodel_through_tf2onnx(tmp_path: Path) -> None:
    """MLPerf Tiny DS-CNN (SavedModel), the recipe's minmax: float 91.00 %, Q/DQ 90.86 % (drop 0.14), TFLite
    int8 91.43 %, agreement with TFLite int8 98.00 % (686 of 700). All int8, the calibration samples agree 98.0 %
    with float: the first convolution (the MFCC input, about [-123, 26]) is left fp16 (99.0 % then)."""
    report = _realdata_report("kws", tmp_path)
    acc = _tensorrt_accuracy(report, "tflite")
    assert acc["samples"] == 700 and acc["float"] == pytest.approx(0.91, abs=1e-4)
    assert acc["int8"] == pytest.approx(0.9086, abs=1e-4), acc
    assert acc["agreement_vs_tflite_int8"] == pytest.approx(0.98, abs=1e-4), acc
    assert _fp16_layers(report) == ["Conv"]
    _meets_aims(acc)
