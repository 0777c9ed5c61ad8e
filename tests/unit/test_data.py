"""Data readers, reproducible sample selection and the checks on preprocessed samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converter.calibration.data import Dataset, align_classes, load_dataset, prepare, range_mismatch, select
from converter.errors import DataError
from converter.runtime.preprocess import Preprocess

W = "r.yaml: data.calibration"


def test_select_is_seeded_sorted_and_unique() -> None:
    a = select(100, 10, seed=3)
    assert np.array_equal(a, select(100, 10, seed=3))
    assert not np.array_equal(a, select(100, 10, seed=4))
    assert len(set(a.tolist())) == 10 and np.all(np.diff(a) > 0)
    assert np.array_equal(select(5, None, 0), np.arange(5))
    assert np.array_equal(select(5, 50, 0), np.arange(5))


def test_npz_with_labels_and_subset(tmp_path: Path) -> None:
    x = np.arange(20 * 4, dtype=np.float32).reshape(20, 4)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 3)
    ds = load_dataset(tmp_path / "d.npz", where=W, samples=5, seed=1)
    idx = select(20, 5, 1)
    np.testing.assert_array_equal(ds.x, x[idx])
    np.testing.assert_array_equal(ds.y, idx % 3)
    assert ds.available == 20


def test_npz_one_hot_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.eye(3)[[2, 0, 1]])
    np.testing.assert_array_equal(load_dataset(tmp_path / "d.npz", where=W).y, [2, 0, 1])


def test_npz_without_x(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 2)))
    with pytest.raises(
        DataError, match=r"r\.yaml: data\.calibration\.path: .*no array 'x' in the \.npz \(it has: images\)"
    ):
        load_dataset(tmp_path / "d.npz", where=W)


def test_npz_bad_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match=r"labels 'y' have shape \(4,\); expected \[3\]"):
        load_dataset(tmp_path / "d.npz", where=W)


def test_corrupt_npz(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="cannot read .npz"):
        load_dataset(tmp_path / "d.npz", where=W)


def test_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.ones((6, 3), dtype=np.float32))
    ds = load_dataset(tmp_path / "d.npy", where=W, samples=2)
    assert ds.x.shape == (2, 3) and ds.y is None


def test_empty_dataset(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.zeros((0, 3), dtype=np.float32))
    with pytest.raises(DataError, match="the dataset is empty"):
        load_dataset(tmp_path / "d.npy", where=W)


def test_missing_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.calibration\.path: not found"):
        load_dataset(tmp_path / "nope.npz", where=W)
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported data file"):
        load_dataset(tmp_path / "d.csv", where=W)


def _png(path: Path, value: int, size: tuple[int, int] = (4, 3), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = (value, value // 2, 0) if mode == "RGB" else value
    Image.new(mode, size, fill).save(path)


def test_image_folder_classes_give_labels(tmp_path: Path) -> None:
    for cls, value in [("cat", 10), ("dog", 200)]:
        for i in range(3):
            _png(tmp_path / "imgs" / cls / f"{i}.png", value)
    ds = load_dataset(tmp_path / "imgs", where=W, channels=3)
    assert ds.classes == ("cat", "dog")
    assert ds.x.shape == (6, 3, 4, 3) and ds.x.dtype == np.uint8
    np.testing.assert_array_equal(ds.y, [0, 0, 0, 1, 1, 1])
    assert ds.x[0, 0, 0].tolist() == [10, 5, 0] and ds.x[5, 0, 0].tolist() == [200, 100, 0]


def test_image_folder_grayscale_and_flat(tmp_path: Path) -> None:
    for i in range(2):
        _png(tmp_path / f"{i}.png", 90)
    ds = load_dataset(tmp_path, where=W, channels=1)
    assert ds.x.shape == (2, 3, 4, 1) and ds.y is None and ds.classes is None
    assert int(ds.x[0, 0, 0, 0]) == round(0.299 * 90 + 0.587 * 45)


def test_image_folder_mixed_sizes(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 10, (4, 4))
    _png(tmp_path / "b.png", 10, (8, 8))
    with pytest.raises(DataError, match=r"images differ in size \(.*: a\.png is 4x4, b\.png is 8x8, height x width\)"):
        load_dataset(tmp_path, where=W, channels=3)
    resized = load_dataset(tmp_path, where=W, channels=3, image_size=(6, 6))
    assert resized.x.shape == (2, 6, 6, 3) and resized.x.dtype == np.float32
    assert resized.eight_bit  # still 8-bit image data: the input keeps the contract's 0..255 range


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_images_are_the_eight_bit_picture_not_clipped(tmp_path: Path, channels: int) -> None:
    """A 16-bit grayscale PNG beside 8-bit ones: read as the same picture in 8 bits (PIL's convert clipped every
    value above 255, so most of such an image read as white)."""
    picture = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    (tmp_path / "imgs").mkdir()
    Image.fromarray(picture).save(tmp_path / "imgs" / "a8.png")
    Image.fromarray(picture.astype(np.uint16) * 257).save(tmp_path / "imgs" / "b16.png")
    with Image.open(tmp_path / "imgs" / "b16.png") as im:
        assert im.mode.startswith("I")  # PIL reads it as 16-bit
    ds = load_dataset(tmp_path / "imgs", where=W, channels=channels)
    assert ds.x.dtype == np.uint8 and ds.x.shape == (2, 3, 4, channels)
    np.testing.assert_array_equal(ds.x[1], ds.x[0])
    np.testing.assert_array_equal(ds.x[1, ..., 0], picture)


def test_an_evaluation_folder_without_a_class_keeps_the_calibration_numbering(tmp_path: Path) -> None:
    """Sorted sub-folders give labels: without 'b', 'c' would be 1 instead of 2 and top-1 would be wrong."""
    for cls, value in [("a", 10), ("b", 100), ("c", 200)]:
        _png(tmp_path / "cal" / cls / "0.png", value)
        if cls != "b":
            _png(tmp_path / "ev" / cls / "0.png", value)
    cal = load_dataset(tmp_path / "cal", where=W, channels=3, samples=2, seed=0)  # a subset keeps the classes
    ev = load_dataset(tmp_path / "ev", where="r.yaml: data.evaluation", channels=3)
    assert cal.classes == ("a", "b", "c") and ev.classes == ("a", "c") and ev.y is not None
    assert ev.y.tolist() == [0, 1]
    labels, said = align_classes(cal, ev, "r.yaml: data.evaluation")
    assert labels is not None and labels.tolist() == [0, 2]
    assert said == (
        "r.yaml: data.evaluation: the evaluation folder has 2 of the calibration folder's 3 classes (no b): its "
        "labels are numbered by class name as the calibration folder's"
    )
    # A class calibration lacks: each keeps its own numbering, and a warning says the folders differ.
    _png(tmp_path / "ev" / "d" / "0.png", 50)
    ev = load_dataset(tmp_path / "ev", where="r.yaml: data.evaluation", channels=3)
    labels, said = align_classes(cal, ev, "r.yaml: data.evaluation")
    assert labels is ev.y and said is not None and said.startswith("warning: ") and "(d)" in said
    assert align_classes(cal, cal, "w") == (cal.y, None)


def test_image_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        load_dataset(tmp_path, where=W)


def test_undecodable_image(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"a\.png: cannot decode image"):
        load_dataset(tmp_path, where=W, channels=3)


def _ds(x: np.ndarray) -> Dataset:
    return Dataset(x=x, y=None, source=Path("d.npz"), available=len(x))


def test_prepare_checks_shape_with_hint() -> None:
    with pytest.raises(DataError, match=r"samples have shape \[8, 8, 1\] .* expects \[32, 32, 1\]; set input.resize"):
        prepare(_ds(np.zeros((2, 8, 8, 1))), Preprocess(), (1, 32, 32, 1), W)
    out = prepare(_ds(np.zeros((2, 8, 8, 1))), Preprocess(resize=(32, 32)), (1, 32, 32, 1), W)
    assert out.shape == (2, 32, 32, 1)


def test_prepare_adds_missing_channel_axis() -> None:
    assert prepare(_ds(np.zeros((2, 8, 8))), Preprocess(), (1, 8, 8, 1), W).shape == (2, 8, 8, 1)


def test_prepare_rejects_nan_and_inf() -> None:
    x = np.zeros((4, 3), dtype=np.float32)
    x[2, 1] = np.nan
    x[3, 0] = np.inf
    with pytest.raises(DataError, match=r"2 NaN/Inf values in 2 samples \(first: sample 2\)"):
        prepare(_ds(x), Preprocess(), (1, 3), W)


def test_range_mismatch_names_both_spans_and_the_input() -> None:
    rng = np.random.default_rng(0)
    unit = rng.random((50, 4, 4, 1)).astype(np.float32)
    message = range_mismatch(unit * 255, unit, "r.yaml: data.evaluation")
    assert message is not None and message.startswith("r.yaml: data.evaluation: the evaluation values span [")
    assert "and the calibration values [" in message and "both 0-255 or both 0-1" in message
    # Shifted, same scale: centred calibration data against uncentred evaluation data.
    assert range_mismatch(unit - 0.5, unit + 0.5, "w") is not None
    packed = np.zeros(50, dtype=[("ids", np.int32, (3,)), ("x", np.float32, (2,))])
    packed["x"] = rng.random((50, 2))
    scaled = packed.copy()
    scaled["x"] *= 100
    assert "of input 'x'" in (range_mismatch(packed, scaled, "w") or "")


def test_range_mismatch_is_quiet_for_data_of_one_kind() -> None:
    rng = np.random.default_rng(1)
    cal, ev = rng.normal(size=(200, 8)).astype(np.float32), rng.normal(size=(100, 8)).astype(np.float32)
    assert range_mismatch(cal, ev, "w") is None
    assert range_mismatch(cal, ev * 3, "w") is None  # louder, same kind: under the factor
    ids = rng.integers(0, 1000, (50, 16))
    assert range_mismatch(ids, ids * 100, "w") is None  # token ids have no scale
    assert range_mismatch(np.zeros((4, 2), np.float32), np.ones((4, 2), np.float32), "w") is None  # constant
