"""Samples for models with several inputs: the .npz layout, packed samples, and per-output metrics (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converter.calibration.data import ModelInput, check_preprocess, load_inputs, read_samples, select
from converter.errors import DataError, RecipeError
from converter.runtime.accuracy import MetricError, compare, pick_metric
from converter.runtime.model import TensorInfo, input_arrays, pack_inputs
from converter.runtime.preprocess import Preprocess

W = "r.yaml: data.calibration"
# As a SavedModel's float .tflite names them: signature name and tensor name differ.
INPUTS = (
    ModelInput("features", "serving_default_features:0", (1, 3), "float32"),
    ModelInput("image", "serving_default_image:0", (1, 4, 4, 1), "float32"),
)


def _info(name: str, index: int, shape: tuple[int, ...]) -> TensorInfo:
    return TensorInfo(name, index, shape, "float32", None, None)


def _arrays(n: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(n, 3)).astype(np.float32),
        rng.uniform(size=(n, 4, 4)).astype(np.float32),
        np.arange(n) % 2,
    )


def test_packed_samples_keep_inputs_together_and_split_by_name() -> None:
    a, b = np.arange(12.0).reshape(6, 2), np.arange(6.0).reshape(6, 1) * 10
    x = pack_inputs({"a": a, "b": b})
    assert len(x) == 6 and x.dtype.names == ("a", "b")
    rows = x[[1, 4]]
    infos = [_info("b", 7, (1, 1)), _info("a", 3, (1, 2))]  # another order: matched by name
    got_b, got_a = input_arrays(rows, infos)
    np.testing.assert_array_equal(got_a, a[[1, 4]])
    np.testing.assert_array_equal(got_b, b[[1, 4]])
    assert got_a.flags["C_CONTIGUOUS"]
    # Names that do not match (a quantized model's renamed input): by position.
    first, second = input_arrays(rows, [_info("q0", 0, (1, 2)), _info("q1", 1, (1, 1))])
    np.testing.assert_array_equal(first, a[[1, 4]])
    np.testing.assert_array_equal(second, b[[1, 4]])
    plain = np.zeros((2, 3))
    assert input_arrays(plain, [_info("x", 0, (1, 3))])[0] is plain
    with pytest.raises(ValueError, match="the model has 2 inputs but the samples are one array of shape"):
        input_arrays(plain, infos)


def test_npz_keyed_by_input_name_selects_the_same_rows_of_every_array(tmp_path: Path) -> None:
    features, image, y = _arrays()
    path = tmp_path / "d.npz"
    np.savez(path, image=image, features=features, y=y, notes=np.zeros(10))
    ds = load_inputs(path, INPUTS, where=W, samples=4, seed=2)
    idx = select(10, 4, 2)
    assert ds.x.dtype.names == ("serving_default_features:0", "serving_default_image:0")
    np.testing.assert_array_equal(ds.x["serving_default_image:0"], image[idx])
    np.testing.assert_array_equal(ds.x["serving_default_features:0"], features[idx])
    np.testing.assert_array_equal(ds.y, y[idx])
    assert ds.available == 10 and not ds.eight_bit
    x, raw = read_samples(path, INPUTS, Preprocess(), where=W, samples=4, seed=2)
    assert raw.x.shape == (4,)
    assert x["serving_default_image:0"].shape == (4, 4, 4, 1)  # the missing channel axis added
    assert x["serving_default_image:0"].dtype == np.float32


def test_tensor_names_work_as_keys_too(tmp_path: Path) -> None:
    features, image, _ = _arrays()
    path = tmp_path / "d.npz"
    np.savez(path, **{"serving_default_features:0": features, "image": image})  # type: ignore[arg-type]
    ds = load_inputs(path, INPUTS, where=W)
    np.testing.assert_array_equal(ds.x["serving_default_features:0"], features)


def test_mismatched_npz_errors_name_file_key_and_expected_layout(tmp_path: Path) -> None:
    features, image, y = _arrays()
    path = tmp_path / "d.npz"
    layout = (
        "the model has 2 inputs (features [N, 3], image [N, 4, 4, 1]), so the data is an .npz with one array per "
        "input, keyed by the input's name (optional y: labels), e.g. numpy.savez(path, features=..., image=..., "
        "y=labels)"
    )
    np.savez(path, x=image, features=features)
    with pytest.raises(DataError) as e:
        load_inputs(path, INPUTS, where=W)
    assert str(e.value) == (
        f"{W}.path: {path}: no array 'image' for the model input 'image'; it has: x, features; {layout}"
    )
    np.savez(path, image=image, features=features[:7], y=y)
    with pytest.raises(DataError) as e:
        load_inputs(path, INPUTS, where=W)
    assert str(e.value) == (
        f"{W}.path: {path}: the arrays hold different numbers of samples (features: 7, image: 10, y: 10); every "
        "input (and y) needs one row per sample, in the same order"
    )
    np.savez(path, image=image[:, :3], features=features)
    ds = load_inputs(path, INPUTS, where=W)
    with pytest.raises(DataError) as e:
        read_samples(path, INPUTS, Preprocess(), where=W)
    assert str(e.value) == (
        f"{W}.path: {ds.source}: array 'image' has samples of shape [3, 4, 1] but the model input 'image' expects "
        "[4, 4, 1] (inputs: features [N, 3], image [N, 4, 4, 1]); store each input's samples as [N, ...] in the "
        "input's shape"
    )
    folder = tmp_path / "images"
    folder.mkdir()
    with pytest.raises(DataError) as e:
        load_inputs(folder, INPUTS, where=W)
    assert str(e.value) == f"{W}.path: {folder}: is an image folder, which feeds a single-input model only; {layout}"


def test_non_finite_values_name_the_array(tmp_path: Path) -> None:
    features, image, _ = _arrays()
    features[3, 1] = np.nan
    path = tmp_path / "d.npz"
    np.savez(path, image=image, features=features)
    with pytest.raises(DataError, match=r"array 'features': 1 NaN/Inf values in 1 samples \(first: sample 3\)"):
        read_samples(path, INPUTS, Preprocess(), where=W)


def test_single_input_npz_may_key_x_by_the_input_name(tmp_path: Path) -> None:
    image = np.ones((5, 4, 4, 1), np.float32)
    np.savez(tmp_path / "d.npz", image=image)
    x, _ = read_samples(tmp_path / "d.npz", INPUTS[1:], Preprocess(), where=W)
    np.testing.assert_array_equal(x, image)
    assert x.dtype.names is None


def test_preprocessing_is_refused_for_several_inputs() -> None:
    check_preprocess(Preprocess(scale=0.5), INPUTS[:1], "r.yaml")  # one input: the contract applies
    check_preprocess(Preprocess(), INPUTS, "r.yaml")
    with pytest.raises(RecipeError) as e:
        check_preprocess(Preprocess(scale=0.5), INPUTS, "r.yaml")
    assert str(e.value).startswith(
        "r.yaml: input: resize/scale/offset apply to single-input models, and this model has 2 inputs "
        "(features [N, 3], image [N, 4, 4, 1]); remove the recipe's input section"
    )


def test_top1_scores_the_class_output_wherever_it_is_and_mse_the_worst_output() -> None:
    rng = np.random.default_rng(1)
    value = rng.normal(size=(50, 1))
    scores = rng.normal(size=(50, 4))
    labels = np.argmax(scores, axis=1)
    noisy_value = value + 0.1
    noisy_scores = scores + rng.normal(scale=0.01, size=scores.shape)
    acc = compare([value, scores], [noisy_value, noisy_scores], labels, names=["value", "classes"])
    assert (acc.metric, acc.output, acc.float) == ("top1", "classes", 1.0)
    assert acc.agreement == acc.outputs[1]["agreement"]
    assert "agreement" not in acc.outputs[0] and acc.outputs[1]["float_top1"] == 1.0
    mse = compare([value, scores], [noisy_value, noisy_scores], None, names=["value", "classes"])
    assert mse.metric == "mse" and mse.output == "value"  # the worse of the two
    assert mse.int8 == pytest.approx(0.01 / np.mean(value**2))
    assert mse.agreement == acc.agreement  # still the class output's
    with pytest.raises(MetricError, match=r"output shapes \[1\], \[1\]; top-1 needs"):
        pick_metric("top1", [value, value], None, labels)
