# mypy: disable-error-code="no-untyped-call,no-any-return,union-attr"
# (torch's own annotations, not ours: untyped backward(), Any-returning modules)
"""A two-input PyTorch model through both routes (.pt2 and ONNX), to the host and a TFLite Micro target.

The two-input model (an 8x8 digit image, NCHW as PyTorch stores it, and a 16-value feature vector stored as
[2, 8]) is trained here on recipes/data/digits.npz, exported with torch.export and torch.onnx.export (opset 17),
and converted full-integer by `python -m converter convert` with ``input.reshape`` as a mapping and an MCU target
(stm32h7: TFLite Micro runs the int8 model and reports its arena). The single-input models of
``tools/torch_models.py`` go to the same target from both routes in ``test_torch_source``.

Skipped without the torch extra as ``test_torch_source`` is; the ONNX route takes conftest's ``onnx_venv`` (made on
first use where ``edgeconv setup onnx`` puts it) and skips where it cannot be made, unless EDGECONV_REQUIRE_ONNX=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from converter.calibration.data import model_inputs
from converter.reports.report import FLOAT_NAME, INT8_NAME
from converter.runtime.model import TFLiteModel, pack_inputs
from tests.conftest import ROOT
from tests.integration.test_torch_source import MISSING, _float_ops
from tests.integration.test_torch_source import _recipe as _torch_recipe

assert not MISSING  # importing test_torch_source skips this module without the torch extra (or fails it in CI)
import torch  # noqa: E402
from torch import nn  # noqa: E402

MCU = "stm32h7"  # Cortex-M7, TFLite Micro + CMSIS-NN
DEAD_PROXY = "http://127.0.0.1:9"  # onnx2tf must never download anything
MIN_COSINE = 0.99
MIN_SQNR_DB = 36.0  # int8 logits against PyTorch's on 360 test digits (measured 39.6 dB, both routes)
FIGURES: dict[str, dict[str, Any]] = {}
pytestmark = pytest.mark.full  # trains a two-input model; test_multi_io and test_pytorch_demo run by default


class TwoInput(nn.Module):
    """An image branch (conv, conv) and a feature branch (dense), concatenated into a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.features = nn.Linear(16, 16)
        self.head = nn.Linear(16 * 4 * 4 + 16, 10)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c2(torch.relu(self.c1(image)))).flatten(1)
        return self.head(torch.cat([a, torch.relu(self.features(features))], dim=1))


def _inputs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Digits [N, 8, 8, 1] uint8 -> the image NCHW [N, 1, 8, 8] in 0..1 and its row and column means [N, 16]."""
    image = (x[..., 0].astype(np.float32) / 255.0)[:, None]
    return image, np.concatenate([image.mean(axis=3)[:, 0], image.mean(axis=2)[:, 0]], axis=1)


@pytest.fixture(scope="module")
def two_input(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The trained model, PyTorch's outputs on the test set, and the data files (image NCHW, features [2, 8])."""
    folder = tmp_path_factory.mktemp("two-input")
    train, test = np.load(ROOT / "recipes/data/digits.npz"), np.load(ROOT / "recipes/data/digits_test.npz")
    image, features = _inputs(train["x"])
    torch.manual_seed(0)
    model = TwoInput()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    xi, xf, y = torch.from_numpy(image), torch.from_numpy(features), torch.from_numpy(train["y"])
    for _ in range(80):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(xi, xf), y).backward()
        optimizer.step()
    model.eval()
    test_image, test_features = _inputs(test["x"])
    with torch.no_grad():
        want = model(torch.from_numpy(test_image), torch.from_numpy(test_features)).numpy()
    return {
        "folder": folder,
        "model": model,
        "example": (torch.from_numpy(image[:1]), torch.from_numpy(features[:1])),
        "image": test_image,
        "features": test_features,
        "labels": test["y"],
        "want": want,
        # Stored as a PyTorch user has them: images NCHW, the features as two rows of 8 (input.reshape makes [16]).
        "cal": (image[:300], features[:300].reshape(-1, 2, 8)),
        "eval": (test_image, test_features.reshape(-1, 2, 8)),
    }


def _env(cache: Path) -> dict[str, str]:
    """This environment (with ``$EDGECONV_ONNX_VENV`` once ``onnx_venv`` exported it), downloads impossible."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECONV_CACHE_DIR": str(cache)}
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env[name] = DEAD_PROXY
    return {k: v for k, v in env.items() if k not in ("NO_PROXY", "no_proxy")}


def _convert(folder: Path, recipe: dict[str, Any], cache: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    path = folder / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    out = folder / f"out-{recipe['name']}"
    done = subprocess.run(
        [sys.executable, "-m", "converter", "convert", "--recipe", str(path), "--out", str(out), "--force"],
        capture_output=True, text=True, env=_env(cache), cwd=folder, timeout=1200, check=False,
    )  # fmt: skip
    return done, out


def _recipe(name: str, model: Path, cal: Path, ev: Path, **input_spec: Any) -> dict[str, Any]:
    return {**_torch_recipe(model, cal, ev, **input_spec), "name": name, "targets": ["host", MCU]}


def _export_route(route: str, data: dict[str, Any]) -> tuple[Path, tuple[str, str]]:
    """The model file for ``route`` and the names its float .tflite gives the two inputs (image, features)."""
    folder = data["folder"]
    if route == "pt2":
        path = folder / "two.pt2"
        torch.export.save(torch.export.export(data["model"], data["example"]), str(path))
        return path, ("image", "features")  # forward's parameter names (edgeconv names the inputs so)
    path = folder / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            data["model"], data["example"], str(path), opset_version=17, dynamo=False,
            input_names=["image", "features"], output_names=["logits"],
        )  # fmt: skip
    return path, ("image", "features")


@pytest.fixture(scope="module", params=["pt2", "onnx"])
def converted(
    request: pytest.FixtureRequest, two_input: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One conversion per route: the two-input model, full-integer, for the host and the MCU target."""
    route: str = request.param
    if route == "onnx":
        request.getfixturevalue("onnx_venv")  # made on first use and exported; skips, or fails in CI, without it
    data = two_input
    model_path, (image, features) = _export_route(route, data)
    folder = data["folder"] / route
    folder.mkdir()
    cal_image, cal_features = data["cal"]
    ev_image, ev_features = data["eval"]
    np.savez(folder / "cal.npz", **{image: cal_image, features: cal_features})
    np.savez(folder / "eval.npz", **{image: ev_image, features: ev_features, "y": data["labels"]})
    recipe = _recipe(f"two-{route}", model_path, folder / "cal.npz", folder / "eval.npz", reshape={features: [16]})
    cache = tmp_path_factory.getbasetemp() / "calibration-cache"
    start = time.perf_counter()
    done, out = _convert(folder, recipe, cache)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    order = tuple(i.name for i in model_inputs(TFLiteModel(model_path=str(out / FLOAT_NAME))))
    return {"route": route, "names": (image, features), "out": out, "report": report, "seconds": seconds,
            "folder": folder, "recipe": recipe, "cache": cache, "order": order}  # fmt: skip


def _feed(model: TFLiteModel, names: tuple[str, str], image: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Packed samples for ``model`` by its input names (image channel-last, as the converted model takes it)."""
    by_name = {names[0]: np.ascontiguousarray(image.transpose(0, 2, 3, 1)), names[1]: features}
    return pack_inputs({i.tensor: by_name[i.name] for i in model_inputs(model)})


def _sqnr_db(want: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want - got).astype(np.float64) ** 2)))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_two_input_model_converts_full_integer_from_both_routes(
    converted: dict[str, Any], two_input: dict[str, Any]
) -> None:
    route, report, out = converted["route"], converted["report"], converted["out"]
    image, features = converted["names"]
    assert report["model"]["format"] == ("torch" if route == "pt2" else "onnx")
    assert report["model"]["layout"] == "nhwc"
    arranged = {
        image: "stored nchw, transposed to the model's nhwc (input.layout)",
        features: "reshaped from [2, 8] to [16] (input.reshape)",
    }
    assert report["model"]["data_arranged"] == {"calibration": arranged, "evaluation": arranged}
    if route == "onnx":  # matched by name: onnx2tf orders the two inputs otherwise than the ONNX graph
        assert (
            "'image' NCHW [1, 1, 8, 8] taken as NHWC [1, 8, 8, 1]; 'features' [1, 16] as in the ONNX model"
            in (report["model"]["loader"])
        )
    float_model, int8_model = (
        TFLiteModel(model_path=str(out / FLOAT_NAME)),
        TFLiteModel(model_path=str(out / INT8_NAME)),
    )
    assert {i.name: i.shape for i in model_inputs(float_model)} == {image: (1, 8, 8, 1), features: (1, 16)}
    x = _feed(float_model, converted["names"], two_input["image"], two_input["features"])
    want = two_input["want"]
    float_diff = float(np.max(np.abs(float_model.predict(x)[0] - want)))
    assert float_diff < 1e-4, float_diff
    assert _float_ops(out / INT8_NAME) == []  # full integer: no op reads or writes a float tensor
    got = int8_model.predict(x)[0]
    cosine, sqnr = _cosine(want, got), _sqnr_db(want, got)
    acc = report["accuracy"]
    assert acc["metric"] == "top1" and acc["samples"] == len(want)
    torch_top1 = float(np.mean(want.argmax(1) == two_input["labels"]))
    assert acc["float"] == pytest.approx(torch_top1, abs=1 / len(want))
    tflm = report["targets"][MCU]["tflm"]
    FIGURES[f"two-input {route}"] = {
        "float_vs_torch_max_abs": float_diff, "top1_float": acc["float"], "top1_int8": acc["int8"],
        "agreement": acc["agreement"], "int8_vs_torch_cosine": round(cosine, 5),
        "int8_vs_torch_sqnr_db": round(sqnr, 1),
        "tflm_top1_agreement": tflm["top1_agreement"], "tflm_exact_match": tflm["exact_match"],
        "arena_bytes": report["targets"][MCU]["arena_bytes"], "seconds": round(converted["seconds"], 1),
    }  # fmt: skip
    print(f"\nFIGURES two-input {route} {json.dumps(FIGURES[f'two-input {route}'])}")
    assert acc["float"] >= 0.9, acc
    assert abs(acc["float"] - acc["int8"]) <= 0.01, acc  # within 1 point of float
    assert acc["agreement"] >= 0.98, acc
    assert cosine >= MIN_COSINE and sqnr >= MIN_SQNR_DB, (cosine, sqnr)
    # TFLite Micro runs the int8 model (both inputs fed) and agrees with LiteRT.
    target = report["targets"][MCU]
    assert target["compatible"] is True, target["problems"]
    assert (
        tflm["loaded"] and tflm["missing_ops"] == [] and tflm["samples"] == min(100, len(want))
    )  # TFLM checks at most 100 samples
    assert tflm["top1_agreement"] >= 0.99 and target["arena_bytes"] > 0, tflm


def test_unknown_reshape_name_is_exit_2_naming_the_key_and_the_inputs(converted: dict[str, Any]) -> None:
    image, features = converted["names"]
    recipe = {**converted["recipe"], "name": f"bad-{converted['route']}", "input": {"reshape": {"feature": [16]}}}
    done, out = _convert(converted["folder"], recipe, converted["cache"])  # the float model comes from the cache
    assert done.returncode == 2, done.stderr[-3000:]
    path = converted["folder"] / f"{recipe['name']}.yaml"
    shapes = {image: "[N, 8, 8, 1]", features: "[N, 16]"}
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {path}: input.reshape.feature: the model has no input named 'feature'; its inputs are "
        + ", ".join(f"{n} {shapes[n]}" for n in converted["order"])
        + " (report.json lists them under model.inputs); key each shape by one of "
        + ", ".join(f"'{n}'" for n in converted["order"])
    )
    assert not out.exists()
