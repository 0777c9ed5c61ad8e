"""input.layout and input.reshape: recipe validation (file and key path, exit 2) and how samples are arranged."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter.calibration.data import Dataset, arrange, read_samples
from converter.errors import DataError, ModelLoadError, RecipeError
from converter.recipe import load_recipe
from converter.runtime.preprocess import Preprocess
from converter.sources.load import SOURCES, detect_format

ROOT = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, **input_spec: Any) -> dict[str, Any]:
    np.save(tmp_path / "cal.npy", np.zeros((2, 4), np.float32))
    (tmp_path / "m.tflite").write_bytes(b"x")
    return {"version": 1, "name": "r", "model": "m.tflite", "data": {"calibration": {"path": "cal.npy"}},
            "input": input_spec}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"layout": "nhcw"},
            "recipe.yaml: input.layout: expected one of nhwc, nchw; got str 'nhcw' (did you mean 'nhwc'?)",
        ),
        (
            {"reshape": [28, 0]},
            "recipe.yaml: input: reshape: one sample's shape as a list of positive sizes, e.g. [784]; got [28, 0]",
        ),
        (
            {"reshape": []},
            "recipe.yaml: input: reshape: one sample's shape as a list of positive sizes, e.g. [784]; got []",
        ),
        ({"reshape": "784"}, "recipe.yaml: input.reshape: expected a list or a mapping, got str '784'"),
        ({"reshape": [28.5]}, "recipe.yaml: input.reshape[0]: expected an integer, got float 28.5"),
        ({"layout": "nchw", "resize": [8, 8]}, "recipe.yaml: input: resize: works on channel-last images"),
    ],
)
def test_recipe_errors_name_file_and_key(
    spec: dict[str, Any], message: str, tmp_path: Path, write_recipe: Callable[..., Path]
) -> None:
    path = write_recipe(_recipe(tmp_path, **spec))
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value).startswith(message.replace("recipe.yaml", str(path), 1)), str(caught.value)


def test_valid_keys_load(tmp_path: Path, write_recipe: Callable[..., Path]) -> None:
    recipe = load_recipe(write_recipe(_recipe(tmp_path, layout="nchw", reshape=[1, 28, 28])))
    assert recipe.input.layout == "nchw" and recipe.input.reshape == (1, 28, 28)
    assert load_recipe(write_recipe(_recipe(tmp_path))).input.layout == "nhwc"  # the default: channel-last


def test_cli_validate_exit_2(tmp_path: Path, write_recipe: Callable[..., Path]) -> None:
    path = write_recipe(_recipe(tmp_path, layout="NHWC"))
    done = subprocess.run(
        [sys.executable, "-m", "converter", "validate", "--recipe", str(path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"{path}: input.layout: expected one of nhwc, nchw; got str 'NHWC'" in done.stderr


def _ds(x: np.ndarray) -> Dataset:
    return Dataset(x=x, y=None, source=Path("d.npy"), available=len(x))


def test_nchw_data_is_transposed_for_a_channel_last_model() -> None:
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # N, C=3, H=4, W=5
    out = arrange(_ds(x), (1, 4, 5, 3), "nhwc", None, "r.yaml: data.calibration")
    assert out.x.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(out.x[1, 2, 3], x[1, :, 2, 3])
    assert out.arranged == "stored nchw, transposed to the model's nhwc (input.layout)"


def test_nhwc_data_is_transposed_for_a_channel_first_model() -> None:
    x = np.random.default_rng(0).random((2, 4, 5, 3)).astype(np.float32)
    out = arrange(_ds(x), (1, 3, 4, 5), "nchw", None, "r.yaml: data.calibration")
    assert out.x.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(out.x[0, :, 1, 2], x[0, 1, 2])
    assert out.arranged == "stored nhwc, transposed to the model's nchw (input.layout)"


def test_data_in_the_model_layout_and_grayscale_without_channel_axis() -> None:
    same = arrange(_ds(np.zeros((2, 4, 5, 3))), (1, 4, 5, 3), "nhwc", None, "w")
    assert same.x.shape == (2, 4, 5, 3) and same.arranged == "stored nhwc, as the model takes it (input.layout)"
    assert arrange(_ds(np.zeros((2, 8, 8))), (1, 1, 8, 8), "nchw", None, "w").x.shape == (2, 1, 8, 8)
    assert arrange(_ds(np.zeros((2, 8, 8))), (1, 8, 8, 1), "nhwc", None, "w").x.shape == (2, 8, 8, 1)


def test_reshape_28x28_images_for_a_784_input_model(tmp_path: Path) -> None:
    from converter.calibration.data import ModelInput

    images = np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "digits.npy", images)
    model = (ModelInput("input", "input", (1, 784), "float32"),)
    x, ds = read_samples(tmp_path / "digits.npy", model, Preprocess(scale=1 / 255), where="r.yaml: data.calibration",
                         reshape=(784,))  # fmt: skip
    assert x.shape == (5, 784) and ds.x.shape == (5, 784)  # the raw data a device gets has the model's shape too
    np.testing.assert_allclose(x[3], images[3].reshape(-1) / 255, rtol=1e-6)
    assert ds.arranged == "reshaped from [28, 28] to [784] (input.reshape)"
    with pytest.raises(DataError) as caught:
        read_samples(tmp_path / "digits.npy", model, Preprocess(), where="r.yaml: data.calibration", reshape=(700,))
    assert str(caught.value) == (
        f"r.yaml: data.calibration: {tmp_path / 'digits.npy'}: samples of shape [28, 28] (784 values) cannot take the "
        "recipe's input.reshape [700] (700 values); set input.reshape to the model's sample shape [784] or another "
        "shape of 784 values"
    )


def test_source_table_and_refused_pickles(tmp_path: Path) -> None:
    assert [k.format for k in SOURCES] == ["keras", "h5", "saved_model", "tflite", "torch", "onnx"]
    (tmp_path / "m.xyz").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"unsupported file type '.xyz'; use .keras, .h5, a SavedModel folder, "
                       r"a float .tflite, a torch.export archive \(.pt2\) or .onnx"):  # fmt: skip
        detect_format(tmp_path / "m.xyz")
    (tmp_path / "m.pth").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="loading it .* unpickles Python objects, which can run any code"):
        detect_format(tmp_path / "m.pth")
