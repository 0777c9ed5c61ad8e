"""Integer model inputs (token ids, masks, indices) in the data layer and the runtime: numpy only, no model.

An integer input takes integer data cast to its dtype after a range check; float data, values that do not fit
and preprocessing that would change ids are refused by name (input, file, row). The end-to-end conversions are
``tests/integration/test_integer_inputs.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from converter.calibration.data import ModelInput, check_preprocess, read_samples
from converter.errors import DataError, RecipeError
from converter.runtime.accuracy import is_reconstruction
from converter.runtime.cli import RuntimeInputError, _packed_samples, _samples
from converter.runtime.model import TensorInfo, quantize
from converter.runtime.preprocess import Preprocess

W = "r.yaml: data.calibration"
IDS = ModelInput("ids", "serving_default_ids", (1, 12), "int32")
FEATURES = ModelInput("features", "serving_default_features", (1, 8), "float32")
INDEX = ModelInput("idx", "serving_default_idx", (1,), "int32")


def _ids(n: int = 40) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 50, (n, 12)).astype(np.int64)


def test_integer_input_takes_the_ids_as_integers_of_its_dtype(tmp_path: Path) -> None:
    ids = _ids()
    np.savez(tmp_path / "d.npz", x=ids)
    x, ds = read_samples(tmp_path / "d.npz", (IDS,), Preprocess(), where=W, samples=10, seed=3)
    assert x.dtype == np.int32  # before: float32 whatever the model took
    np.testing.assert_array_equal(x, ids[ds.rows])
    assert ds.x.dtype == np.int64  # the raw samples (for a device) stay as stored


def test_float_ids_are_refused_naming_the_input_even_when_whole(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=_ids().astype(np.float32))
    with pytest.raises(DataError) as e:
        read_samples(tmp_path / "d.npz", (IDS,), Preprocess(), where=W)
    text = str(e.value)
    assert text.startswith(f"{W}.path: {tmp_path / 'd.npz'}: array 'x': holds float32 values")
    assert "model input 'ids'" in text and "store them as integers" in text and "whole numbers" in text
    np.savez(tmp_path / "d.npz", x=_ids().astype(np.float32) / 50)
    with pytest.raises(DataError, match="fractional values mean the ids went through preprocessing"):
        read_samples(tmp_path / "d.npz", (IDS,), Preprocess(), where=W)


def test_an_id_that_does_not_fit_the_dtype_is_refused_by_its_row(tmp_path: Path) -> None:
    ids = _ids()
    ids[17, 4] = 2**40  # would wrap to another id as int32
    ids[31, 0] = -(2**35)
    np.savez(tmp_path / "d.npz", x=ids)
    with pytest.raises(DataError) as e:
        read_samples(tmp_path / "d.npz", (IDS,), Preprocess(), where=W)
    text = str(e.value)
    assert "model input 'ids', which takes int32 (-2147483648..2147483647)" in text
    assert f"row 17 of d.npz holds {2**40}" in text and "rows 17, 31 of the 40 read" in text
    # Rows are the file's, not places in the seed's subset.
    with pytest.raises(DataError, match=r"row 31 of d.npz holds -34359738368 \(rows 31 of the 5 read\)"):
        read_samples(tmp_path / "d.npz", (IDS,), Preprocess(), where=W, samples=5, seed=_seed_picking(31, 40, 5))


def _seed_picking(row: int, n: int, k: int) -> int:
    """A seed whose subset of ``k`` out of ``n`` holds ``row`` but not row 17."""
    from converter.calibration.data import select

    return next(s for s in range(1000) if row in select(n, k, s) and 17 not in select(n, k, s))


def test_uint64_and_bool_data_are_checked_against_the_range() -> None:
    info = TensorInfo("ids", 0, (1, 2), "int32", None, None)
    assert quantize(np.array([[True, False]]), info).tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="takes int32"):
        quantize(np.array([[2**64 - 1, 0]], dtype=np.uint64), info)
    mask = TensorInfo("mask", 0, (1, 2), "bool", None, None)
    assert quantize(np.array([[1, 0]]), mask).dtype == np.bool_
    with pytest.raises(ValueError, match="takes bool"):
        quantize(np.array([[2, 0]]), mask)
    int64 = TensorInfo("ids", 0, (1, 1), "int64", None, None)
    assert quantize(np.array([[2**63 - 1]], dtype=np.uint64), int64).tolist() == [[2**63 - 1]]


def test_runtime_quantize_casts_integer_inputs_without_scale_and_refuses_what_would_change() -> None:
    info = TensorInfo("ids", 0, (1, 3), "int32", None, None)
    got = quantize(np.array([[1, 2, 49]], dtype=np.int64), info)
    assert got.dtype == np.int32 and got.tolist() == [[1, 2, 49]]
    assert quantize(np.zeros((1, 3), np.float32), info).dtype == np.int32  # zeros for latency: fine
    with pytest.raises(ValueError, match="not whole"):
        quantize(np.array([[0.5, 1, 2]]), info)
    with pytest.raises(ValueError, match="got values from 0 to 1099511627776"):
        quantize(np.array([[0, 2**40, 1]]), info)
    # A quantized int8 input still quantizes real values (unchanged).
    assert quantize(np.array([1.0]), TensorInfo("x", 0, (1,), "int8", 0.5, 0)).tolist() == [2]


def test_two_inputs_keep_the_float_one_float32_and_the_index_integer(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(12, 8)).astype(np.float64)
    idx = rng.integers(0, 10, 12).astype(np.uint8)
    np.savez(tmp_path / "d.npz", features=features, idx=idx, y=np.arange(12) % 3)
    x, ds = read_samples(tmp_path / "d.npz", (FEATURES, INDEX), Preprocess(), where=W)
    assert x.dtype["serving_default_features"].base == np.float32 and x.dtype["serving_default_idx"] == np.int32
    np.testing.assert_array_equal(x["serving_default_idx"], idx)
    assert ds.eight_bit is False  # uint8 ids say nothing about the float input's contract range
    np.savez(tmp_path / "d.npz", features=features, idx=idx.astype(np.float32))
    with pytest.raises(
        DataError, match=r"array 'idx': holds float32 values but the model input 'idx' \(idx \[N\] int32"
    ):
        read_samples(tmp_path / "d.npz", (FEATURES, INDEX), Preprocess(), where=W)


def test_preprocessing_that_changes_ids_is_refused_layout_and_reshape_are_not(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as e:
        check_preprocess(Preprocess(scale=1 / 255), (IDS,), "r.yaml")
    assert "input.scale change the values fed to the model" in str(e.value) and "'ids' takes int32" in str(e.value)
    with pytest.raises(RecipeError, match=r"input.resize, input.offset"):
        check_preprocess(Preprocess(resize=(4, 3), offset=1.0), (IDS,), "r.yaml")
    check_preprocess(Preprocess(), (IDS,), "r.yaml")
    check_preprocess(Preprocess(scale=2.0), (FEATURES,), "r.yaml")  # float inputs: as before
    ids = _ids(6).reshape(6, 3, 4)  # stored [3, 4]: input.reshape moves values, so it applies
    np.savez(tmp_path / "d.npz", x=ids)
    x, ds = read_samples(tmp_path / "d.npz", (IDS,), Preprocess(), where=W, reshape=(12,))
    np.testing.assert_array_equal(x, ids.reshape(6, 12))
    assert ds.arranged == "reshaped from [3, 4] to [12] (input.reshape)"


def test_a_classifier_over_as_many_classes_as_ids_is_not_a_reconstruction() -> None:
    ids = np.zeros((5, 12), np.int32)
    assert not is_reconstruction(np.zeros((5, 12), np.float32), ids)
    assert is_reconstruction(np.zeros((5, 12), np.float32), ids.astype(np.float32))


def _args(data: Path) -> argparse.Namespace:
    return argparse.Namespace(data=data, resize=None, scale=1.0, offset=0.0)


class _Model:
    """What the runtime's sample readers look at: inputs and an interpreter for signature names."""

    def __init__(self, inputs: list[TensorInfo]) -> None:
        self.inputs = inputs
        self.interpreter = None


def test_device_runtime_feeds_integers_and_refuses_float_ids_or_preprocessing(tmp_path: Path) -> None:
    info = TensorInfo("serving_default_ids", 0, (1, 12), "int32", None, None)
    ids = _ids(7)
    np.savez(tmp_path / "e.npz", x=ids, y=np.arange(7))
    x, y = _samples(_args(tmp_path / "e.npz"), info)
    assert x.dtype == np.int32 and np.array_equal(x, ids) and y is not None
    scaled = argparse.Namespace(data=tmp_path / "e.npz", resize=None, scale=0.5, offset=0.0)
    with pytest.raises(RuntimeInputError, match="leave them out"):
        _samples(scaled, info)
    np.savez(tmp_path / "f.npz", x=ids.astype(np.float32))
    with pytest.raises(RuntimeInputError, match="takes int32 integers .* but the samples are float32"):
        _samples(_args(tmp_path / "f.npz"), info)
    # Two inputs: the features as float32, the index as its integers.
    infos = [
        TensorInfo("serving_default_features", 0, (1, 8), "int8", 0.02, 3),
        TensorInfo("serving_default_idx", 1, (1,), "int32", None, None),
    ]
    np.savez(
        tmp_path / "two.npz",
        serving_default_features=np.ones((7, 8)),
        serving_default_idx=np.arange(7, dtype=np.int64),
    )
    packed, _ = _packed_samples(_args(tmp_path / "two.npz"), _Model(infos))
    assert packed.dtype["serving_default_features"].base == np.float32
    assert packed.dtype["serving_default_idx"] == np.int32
