# mypy: disable-error-code="no-untyped-call,no-any-return,union-attr"
# (torch's own annotations, not ours: untyped backward(), Any-returning modules, Optional buffers)
"""PyTorch sources end to end: models defined here, exported with torch.export.save, converted full-integer.

Real torch, real litert-torch, the real pipeline. Skipped (with the install command) without the torch
extra, unless EDGECONV_REQUIRE_TORCH=1, which makes a missing extra a failure (CI sets it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from converter.reports.report import FLOAT_NAME, INT8_NAME
from converter.runtime.model import TFLiteModel

MISSING = [m for m in ("torch", "litert_torch") if importlib.util.find_spec(m) is None]
if MISSING and os.environ.get("EDGECONV_REQUIRE_TORCH") != "1":
    pytest.skip(
        f"{', '.join(MISSING)} not installed: pip install -e '.[convert,test,torch]' (CPU torch: see the README)",
        allow_module_level=True,
    )
if MISSING:
    raise ImportError(f"EDGECONV_REQUIRE_TORCH=1 but {', '.join(MISSING)} cannot be imported")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from tools.torch_models import (  # noqa: E402, F401 - after the skip; re-exported for the other PyTorch tests
    Encoder,
    InvertedResidual,
    LSTMClassifier,
    SmallCNN,
)
from tools.torch_models import case as _case  # noqa: E402
from tools.torch_models import digits as _digits  # noqa: E402
from tools.torch_models import train as _train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIGURES: dict[str, dict[str, Any]] = {}


def _export(model: nn.Module, example: np.ndarray, path: Path) -> Path:
    exported = torch.export.export(model.eval(), (torch.from_numpy(example),))
    torch.export.save(exported, str(path))
    return path


def _convert_cli(
    tmp_path: Path, recipe: dict[str, Any], extra_env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "converter", "convert", "--recipe", str(path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    return done, tmp_path / "out"


def _recipe(model: Path, cal: Path, ev: Path, **input_spec: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "version": 1,
        "name": model.stem,
        "model": str(model),
        "data": {"calibration": {"path": str(cal)}, "evaluation": {"path": str(ev), "metric": "top1"}},
        "benchmark": {"enabled": False},
        "analysis": {"samples": 0},
        "tuning": {"enabled": False},
    }
    if input_spec:
        recipe["input"] = input_spec
    return recipe


def _float_ops(path: Path) -> list[str]:
    """Ops of the int8 model that read or write a float tensor (none in a full-integer model)."""
    interp = TFLiteModel(model_path=str(path), delegate="none").interpreter
    details = interp.get_tensor_details()
    kind = {d["index"]: np.dtype(d["dtype"]).name for d in details}
    out = []
    for op in interp._get_ops_details():  # noqa: SLF001
        tensors = [*op["inputs"], *op["outputs"]]
        if any(kind.get(int(t)) == "float32" for t in tensors if int(t) >= 0):
            out.append(op["op_name"])
    return out


MCU = "stm32h7"  # Cortex-M7, TFLite Micro + CMSIS-NN
DEAD_PROXY = "http://127.0.0.1:9"  # onnx2tf must never download anything


def _onnx_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment an ONNX conversion runs in: conftest's ``onnx_venv`` (made on first use; without it the
    case skips, or fails where EDGECONV_REQUIRE_ONNX=1), downloads impossible."""
    venv: Path = request.getfixturevalue("onnx_venv")
    proxies = dict.fromkeys(("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"), DEAD_PROXY)
    return {"EDGECONV_ONNX_VENV": str(venv), **proxies}


def _export_onnx(model: nn.Module, example: np.ndarray, path: Path) -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.from_numpy(example),), str(path), opset_version=17, dynamo=False)
    return path


@pytest.mark.parametrize("route", ["pt2", pytest.param("onnx", marks=pytest.mark.full)])
@pytest.mark.parametrize(
    "name", ["cnn", *(pytest.param(n, marks=pytest.mark.full) for n in ("mobilenet_block", "lstm", "transformer"))]
)
def test_pytorch_model_converts_full_integer_for_host_and_mcu(
    name: str, route: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Each test model from .pt2 (litert-torch) and from ONNX (onnx2tf): full-integer, near PyTorch, on TFLM."""
    env = _onnx_env(request) if route == "onnx" else {}
    model, cal_x, eval_x, eval_y, example = _case(name)
    if route == "pt2":
        source = _export(model, example, tmp_path / f"{name}.pt2")
    else:
        source = _export_onnx(model, example, tmp_path / f"{name}.onnx")
    np.save(tmp_path / "cal.npy", cal_x)
    np.savez(tmp_path / "eval.npz", x=eval_x, y=eval_y)
    recipe = {**_recipe(source, tmp_path / "cal.npy", tmp_path / "eval.npz"), "targets": ["host", MCU]}
    start = time.perf_counter()
    done, out = _convert_cli(tmp_path, recipe, env)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    images = eval_x.ndim == 4
    assert report["model"]["format"] == ("torch" if route == "pt2" else "onnx")
    assert report["model"]["layout"] == ("nhwc" if images else None)
    if route == "pt2":
        assert "keep_stablehlo_constant removed" in report["model"]["loader"]
    reference = "the exported program" if route == "pt2" else "onnxruntime"
    checked = re.search(
        rf"float model checked against {reference} on 4 random inputs: worst output '[^']+' at (\S+) dB",
        report["model"]["loader"],
    )
    assert checked and float(checked.group(1)) > 80, report["model"]["loader"]  # measured above 100 dB
    # The float reference matches PyTorch, fed the channel-last data edgeconv made from the NCHW arrays.
    with torch.no_grad():
        want = model(torch.from_numpy(eval_x)).numpy()
    feed = eval_x.transpose(0, 2, 3, 1) if images else eval_x
    if images:
        assert (
            report["model"]["data_arranged"]["evaluation"]
            == "stored nchw, transposed to the model's nhwc (input.layout)"
        )
        assert TFLiteModel(model_path=str(out / FLOAT_NAME)).inputs[0].shape == (1, *feed.shape[1:])
    got = TFLiteModel(model_path=str(out / FLOAT_NAME)).predict(np.ascontiguousarray(feed))[0]
    diff = float(np.max(np.abs(got - want)))
    assert diff < 1e-4, diff
    # Full integer: no op touches a float tensor (the trap: conv/dense left float between (DE)QUANTIZE).
    assert _float_ops(out / INT8_NAME) == []
    # The int8 model against PyTorch itself. Measured: cosine 0.99964-0.99998, SQNR 31.3-43.4 dB; litert-torch's
    # own PT2E int8 gives 31.6-44.4 dB but leaves float ops in the LSTM, transformer and MobileNetV2 block
    # (tools/bench_torch_onnx.py); the bound is ours minus a margin.
    int8 = TFLiteModel(model_path=str(out / INT8_NAME)).predict(np.ascontiguousarray(feed))[0].astype(np.float64)
    cosine = float(np.sum(int8 * want) / (np.linalg.norm(int8) * np.linalg.norm(want)))
    sqnr = float(10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want - int8) ** 2)))
    assert cosine >= 0.999 and sqnr >= 29.0, (cosine, sqnr)
    acc = report["accuracy"]
    target = report["targets"][MCU]
    tflm = target["tflm"]
    FIGURES[f"{name} {route}"] = {
        "int8_vs_torch_cosine": cosine,
        "int8_vs_torch_sqnr_db": sqnr,
        "float_vs_torch_max_abs": diff,
        "top1_float": acc["float"],
        "top1_int8": acc["int8"],
        "agreement": acc["agreement"],
        "tflm_top1_agreement": tflm["top1_agreement"],
        "tflm_exact_match": tflm["exact_match"],
        "arena_bytes": target["arena_bytes"],
        "seconds": round(seconds, 1),
    }
    print(f"\nFIGURES {name} {route} {json.dumps(FIGURES[f'{name} {route}'])}")
    # TFLite Micro (the MCU target) has every op, agrees with LiteRT and reports its arena.
    assert target["compatible"] is True, target["problems"]
    assert tflm["loaded"] and tflm["missing_ops"] == [] and tflm["samples"] == min(100, len(eval_x))
    # Measured: 100 % top-1 agreement with LiteRT but the ONNX transformer's 99 % (its reference kernels round
    # otherwise; 85-100 % of output values equal), arenas 3.5-49 KB.
    assert tflm["top1_agreement"] >= 0.98 and target["arena_bytes"] > 0, tflm
    assert acc["metric"] == "top1" and acc["samples"] == len(eval_x)
    assert acc["float"] >= (0.7 if name != "mobilenet_block" else 0.99)  # 10 classes: chance is 0.1
    assert acc["drop"] <= 0.02, acc
    assert acc["agreement"] >= 0.95, acc


@pytest.mark.full  # a second .pt2 conversion (layout: nchw)
def test_layout_nchw_keeps_pytorch_layout_and_transposes_nhwc_data(tmp_path: Path) -> None:
    model, cal_x, eval_x, eval_y, example = _case("cnn")
    pt2 = _export(model, example, tmp_path / "cnn.pt2")
    np.save(tmp_path / "cal.npy", cal_x.transpose(0, 2, 3, 1))  # stored channel-last, as an image pipeline writes it
    np.savez(tmp_path / "eval.npz", x=eval_x.transpose(0, 2, 3, 1), y=eval_y)
    done, out = _convert_cli(tmp_path, _recipe(pt2, tmp_path / "cal.npy", tmp_path / "eval.npz", layout="nchw"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["layout"] == "nchw"
    assert report["model"]["data_arranged"] == {
        "calibration": "stored nhwc, transposed to the model's nchw (input.layout)",
        "evaluation": "stored nhwc, transposed to the model's nchw (input.layout)",
    }
    float_model = TFLiteModel(model_path=str(out / FLOAT_NAME))
    assert float_model.inputs[0].shape == (1, 1, 8, 8)
    with torch.no_grad():
        want = model(torch.from_numpy(eval_x)).numpy()
    assert float(np.max(np.abs(float_model.predict(eval_x)[0] - want))) < 1e-4
    assert _float_ops(out / INT8_NAME) == []
    assert report["accuracy"]["drop"] <= 0.02


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.full  # a second .pt2 conversion (input.reshape)
def test_reshape_feeds_8x8_images_to_a_64_input_model(tmp_path: Path) -> None:
    images, labels = _digits()
    model = _train(MLP(), images[:1200].reshape(-1, 64), labels[:1200], 60)
    pt2 = _export(model, images[:1].reshape(1, 64), tmp_path / "mlp.pt2")
    np.save(tmp_path / "cal.npy", images[:200])  # [N, 8, 8]: the images as stored, not as the model takes them
    np.savez(tmp_path / "eval.npz", x=images[1200:], y=labels[1200:])
    done, out = _convert_cli(tmp_path, _recipe(pt2, tmp_path / "cal.npy", tmp_path / "eval.npz", reshape=[64]))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["layout"] is None  # no image input
    assert report["model"]["data_arranged"]["evaluation"] == "reshaped from [8, 8] to [64] (input.reshape)"
    acc = report["accuracy"]
    assert acc["float"] >= 0.8 and acc["drop"] <= 0.02, acc
    assert _float_ops(out / INT8_NAME) == []


def test_a_dynamic_batch_export_converts_at_batch_1(tmp_path: Path) -> None:
    """``dynamic_shapes`` on the batch, exported from a batch of 8: converted for batch 1, the batch targets run.

    torch.export.save writes such a dimension as ``Symbol('s77', positive=True, integer=True)``, which the archive
    guard once refused as code; and litert-torch traced the example's batch of 8.
    """
    images, labels = _digits()
    model = _train(MLP(), images[:1200].reshape(-1, 64), labels[:1200], 60)
    batch = torch.export.Dim("batch", min=1, max=64)
    example = torch.from_numpy(images[:8].reshape(8, 64))
    exported = torch.export.export(model.eval(), (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(exported, str(tmp_path / "mlp.pt2"))
    assert "Symbol(" in _member(tmp_path / "mlp.pt2", "models/model.json")  # the form the guard must read
    np.save(tmp_path / "cal.npy", images[:200].reshape(-1, 64))
    np.savez(tmp_path / "eval.npz", x=images[1200:].reshape(-1, 64), y=labels[1200:])
    done, out = _convert_cli(tmp_path, _recipe(tmp_path / "mlp.pt2", tmp_path / "cal.npy", tmp_path / "eval.npz"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["input_shape"] == [1, 64], report["model"]
    assert "dimension 0 of 'x' exported as dynamic and converted at 1 (the batch)" in done.stderr, done.stderr[-2000:]
    acc = report["accuracy"]
    assert acc["float"] >= 0.8 and acc["drop"] <= 0.02, acc


def test_a_dynamic_length_export_is_refused_naming_the_dimension(tmp_path: Path) -> None:
    """A dynamic dimension past the batch cannot be converted for one size: exit 2 naming the input and dimension."""
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    length = torch.export.Dim("length", min=4, max=64)
    exported = torch.export.export(model, (torch.ones(1, 2, 16),), dynamic_shapes=({2: length},))
    torch.export.save(exported, str(tmp_path / "seq.pt2"))
    np.save(tmp_path / "cal.npy", np.ones((4, 2, 16), np.float32))
    recipe = _recipe(tmp_path / "seq.pt2", tmp_path / "cal.npy", tmp_path / "cal.npy")
    del recipe["data"]["evaluation"]
    done, out = _convert_cli(tmp_path, recipe)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "was exported with dimension 2 dynamic (torch.export's dynamic_shapes)" in done.stderr, done.stderr[-2000:]
    assert "without dynamic_shapes" in done.stderr
    assert not out.exists()


def _member(archive: Path, name: str) -> str:
    """One member of a .pt2 archive (under its root folder), as text."""
    import zipfile

    with zipfile.ZipFile(archive) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/" + name))).decode()


@pytest.mark.full  # a third .pt2-derived conversion
def test_litert_torch_tflite_source_goes_full_integer_too(tmp_path: Path) -> None:
    """The trap: litert-torch's metadata keep_stablehlo_constant kept CONV_2D/FULLY_CONNECTED float in int8."""
    import litert_torch

    from converter.tflite import flatbuffer_schema as tflite_schema

    model, cal_x, eval_x, eval_y, example = _case("cnn")
    nhwc = litert_torch.to_channel_last_io(model, args=[0])
    raw = litert_torch.convert(nhwc, (torch.from_numpy(example.transpose(0, 2, 3, 1).copy()),)).model_content()
    assert b"keep_stablehlo_constant" in [bytes(m.name) for m in tflite_schema.load(raw).metadata]
    (tmp_path / "cnn.tflite").write_bytes(raw)
    np.save(tmp_path / "cal.npy", cal_x)
    np.savez(tmp_path / "eval.npz", x=eval_x, y=eval_y)
    done, out = _convert_cli(tmp_path, _recipe(tmp_path / "cnn.tflite", tmp_path / "cal.npy", tmp_path / "eval.npz"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["loader"] == (
        "file; metadata keep_stablehlo_constant removed (it keeps conv/dense float); "
        "12 tensor names shortened to module paths"  # litert-torch's names, as on the .pt2 route
    )
    assert _float_ops(out / INT8_NAME) == []
    float_meta = [bytes(m.name) for m in tflite_schema.load((out / FLOAT_NAME).read_bytes()).metadata or []]
    assert b"keep_stablehlo_constant" not in float_meta


def test_the_float_check_tells_a_different_model_from_the_converted_one() -> None:
    """The torch worker's check on litert-torch's real .tflite of one layer: against the layer itself, then
    against the same layer with other weights (what a mis-converted op looks like: it runs, values wrong)."""
    import litert_torch

    from converter.sources.torch_worker import float_check

    torch.manual_seed(0)
    layer, other = nn.Linear(6, 3).eval(), nn.Linear(6, 3).eval()
    sample = (torch.zeros(1, 6),)
    edge = litert_torch.convert(layer, sample)
    same, wrong = float_check(layer, edge, sample), float_check(other, edge, sample)
    assert same["checked"] and same["samples"] == 4 and same["outputs"][0]["sqnr_db"] > 100, same
    assert wrong["checked"] and wrong["outputs"][0]["sqnr_db"] < 10, wrong
