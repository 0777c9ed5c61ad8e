"""Data files from strangers: refused by name with our own message, never numpy's advice."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from converter.calibration.data import load_dataset, prepare
from converter.errors import DataError
from converter.runtime.preprocess import Preprocess

WHERE = "r.yaml: data.calibration"


def _error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(path, where=WHERE)
    message = str(info.value)
    assert "allow_pickle" not in message and "unsafely" not in message
    return message.replace(str(path), "FILE")


def test_complex_samples_are_refused_not_truncated(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", x=np.ones((5, 2), np.complex64) * (1 + 2j))
    np.save(tmp_path / "c.npy", np.ones((5, 2), np.complex128))
    tail = "edgeconv takes real numbers only (the imaginary part would be dropped); save the part you mean"
    assert _error(tmp_path / "c.npz") == f"{WHERE}.path: FILE: samples are complex numbers (dtype complex64); {tail}"
    assert _error(tmp_path / "c.npy") == f"{WHERE}.path: FILE: samples are complex numbers (dtype complex128); {tail}"


def test_complex_labels_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 2), np.float32), y=np.ones(5, np.complex64))
    assert _error(tmp_path / "d.npz").startswith(f"{WHERE}.path: FILE: labels 'y' are complex numbers")


@pytest.mark.parametrize("name", ["d.npz", "d.npy"])
def test_object_arrays_are_refused_by_name(tmp_path: Path, name: str) -> None:
    x = np.array([[1, "a"]] * 5, dtype=object)
    if name.endswith(".npz"):
        np.savez(tmp_path / name, x=x)
    else:
        np.save(tmp_path / name, x, allow_pickle=True)
    assert _error(tmp_path / name) == (
        f"{WHERE}.path: FILE: samples are Python objects (dtype object), which edgeconv never loads: "
        "unpickling them can run code; save a numeric array instead"
    )


def test_object_labels_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 2), np.float32), y=np.array([1, "a", 2, 3, 4], dtype=object))
    assert _error(tmp_path / "d.npz").startswith(f"{WHERE}.path: FILE: labels 'y' are Python objects")


def test_a_pickle_named_npz_gets_our_message(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(pickle.dumps({"x": [1, 2]}))
    assert _error(tmp_path / "d.npz") == (
        f"{WHERE}.path: FILE: cannot read .npz: it is not a zip archive; an .npz is a zip of .npy arrays as "
        "numpy.savez writes it (x: samples, optional y: labels)"
    )


@pytest.mark.parametrize("content", [b"hello, not numpy\n", b"", pickle.dumps([1, 2])])
def test_a_file_that_is_not_npy(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "d.npy").write_bytes(content)
    assert _error(tmp_path / "d.npy") == (
        f"{WHERE}.path: FILE: cannot read .npy: it has no numpy header; save arrays with numpy.save"
    )


def test_damaged_and_truncated_npy(tmp_path: Path) -> None:
    (tmp_path / "h.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    assert _error(tmp_path / "h.npy") == f"{WHERE}.path: FILE: not a readable .npy array (its header is damaged)"
    np.save(tmp_path / "t.npy", np.zeros((100, 2), np.float32))
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:200])
    assert _error(tmp_path / "t.npy") == (
        f"{WHERE}.path: FILE: cannot read .npy: the file is shorter than its header says (truncated?)"
    )


def test_npz_member_that_is_not_an_array(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("x", b"raw bytes, not .npy")
    assert (
        _error(tmp_path / "d.npz")
        == f"{WHERE}.path: FILE (array 'x'): not a readable .npy array (its header is damaged)"
    )


@pytest.mark.parametrize(
    ("x", "dtype"),
    [
        (np.array([["a", "b"]] * 5), "<U1"),
        (np.zeros((5, 2), "datetime64[s]"), "datetime64[s]"),
        (np.zeros((5, 2), dtype=[("a", "f4"), ("b", "i4")]), "[('a', '<f4'), ('b', '<i4')]"),
    ],
)
def test_non_numeric_samples(tmp_path: Path, x: np.ndarray, dtype: str) -> None:
    """A guard (these were refused before too): the header check must keep naming the dtype."""
    np.savez(tmp_path / "d.npz", x=x)
    assert _error(tmp_path / "d.npz") == f"{WHERE}.path: FILE: samples must be numeric, got dtype {dtype}"


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.array(["a", "b", "c", "d", "e"]), "labels 'y' must be numeric, got dtype <U1"),
        (np.full(5, 1e300), "labels 'y' must be integer class indices"),
        (np.full(5, 2**63, np.uint64), "labels 'y' must be integer class indices, got 9223372036854775808"),
    ],
)
def test_labels_that_crashed_or_wrapped(tmp_path: Path, y: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 2), np.float32), y=y)
    assert _error(tmp_path / "d.npz") == f"{WHERE}.path: FILE: {message}"


def test_image_decompression_bomb_is_a_data_error(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")  # 400 Mpixels in a few kB
    with pytest.raises(DataError, match=r"bomb\.png: cannot decode image: Image size \(400000000 pixels\) exceeds"):
        load_dataset(folder, where=WHERE)


def test_resize_is_checked_against_the_model_before_resizing(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((1000, 4, 4, 3), np.uint8))
    ds = load_dataset(tmp_path / "d.npz", where=WHERE)
    with pytest.raises(DataError) as info:  # would allocate 1000 x 8192 x 8192 x 3 floats first
        prepare(ds, Preprocess(resize=(8192, 8192)), (1, 32, 32, 3), WHERE)
    assert str(info.value) == (
        f"{WHERE}: input.resize is [8192, 8192] but the model takes 32x32 images; set input.resize: [32, 32]"
    )
