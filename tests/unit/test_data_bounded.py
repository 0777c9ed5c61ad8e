"""Bounded memory on calibration/evaluation data, whatever a file claims (the hostile-input audit).

An .npz member is streamed and only the chosen rows are kept, byte for byte what ``np.load(...)[key][idx]``
gave; an image's size is checked from its header before it is decoded; a NaN/Inf is named by its row in
the file, not by its place in the seed's random subset.
"""

from __future__ import annotations

import struct
import tracemalloc
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from converter.calibration import data
from converter.calibration.data import ModelInput, load_dataset, load_inputs, prepare, prepare_inputs, select
from converter.errors import DataError
from converter.runtime.preprocess import Preprocess

W = "r.yaml: data.calibration"


# --- crafted archives ---------------------------------------------------------------------------


def _npy_header(shape: tuple[int, ...], descr: str, fortran: bool = False) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue()


def _deflated_zeros(header: bytes, zeros: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``header`` and then ``zeros`` zero bytes, and its CRC-32, in a second or so.

    After a full flush deflate's output no longer depends on what came before, so the segment for 1 MiB
    of zeros is compressed once and repeated: ~1 KB of archive per MiB inflated.
    """
    block = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)]
    segment = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(zeros, block)
    parts += [segment] * whole
    parts.append(c.compress(bytes(rest)) + c.flush(zlib.Z_FINISH))
    crc = zlib.crc32(header)
    zero_block = bytes(block)
    for _ in range(whole):
        crc = zlib.crc32(zero_block, crc)
    return b"".join(parts), zlib.crc32(bytes(rest), crc)


def _zip(path: Path, members: dict[str, tuple[bytes, int, int]]) -> None:
    """A zip of already-deflated members (name: (deflated bytes, CRC-32, inflated size)), each under 4 GiB."""
    out, central = bytearray(), bytearray()
    for name, (body, crc, size) in members.items():
        raw = name.encode()
        offset = len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(body), size, len(raw), 0)
        out += raw + body
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc, len(body), size, len(raw), 0, 0, 0, 0, 0, offset
        )
        central += raw
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))


def _bomb(path: Path, rows: int) -> None:
    """An .npz of ``rows`` zero samples [8, 8, 1] uint8 and int64 labels that is ~1 KB per MiB it inflates to."""
    members = {}
    for key, shape, descr, size in [("x", (rows, 8, 8, 1), "|u1", 64), ("y", (rows,), "<i8", 8)]:
        header = _npy_header(shape, descr)
        body, crc = _deflated_zeros(header, rows * size)
        members[f"{key}.npy"] = (body, crc, len(header) + rows * size)
    _zip(path, members)


# --- finding 1: only the chosen rows are read -----------------------------------------------------


def test_a_small_npz_that_inflates_to_gigabytes_costs_only_its_chosen_rows(tmp_path: Path) -> None:
    rows = 1 << 24  # x: 1 GiB, y: 128 MiB inflated, from a 1.2 MB file
    path = tmp_path / "bomb.npz"
    _bomb(path, rows)
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()  # numpy reports its array allocations to tracemalloc
    try:
        ds = load_dataset(path, where=W, samples=50, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MiB while reading 50 rows"  # old code: > 1 GiB
    assert ds.x.shape == (50, 8, 8, 1) and ds.y is not None and len(ds.y) == 50 and ds.available == rows


def _saved(path: Path, arrays: dict[str, np.ndarray], compressed: bool) -> None:
    if compressed:
        np.savez_compressed(path, allow_pickle=False, **arrays)
    else:
        np.savez(path, allow_pickle=False, **arrays)


CASES = [
    ("u1-4d", np.arange(37 * 5 * 4 * 3, dtype=np.uint8).reshape(37, 5, 4, 3), False),
    ("f4-2d", np.linspace(-3, 3, 41 * 7, dtype=np.float32).reshape(41, 7), False),
    ("big-endian-f8", np.linspace(-1, 1, 30 * 6).reshape(30, 6).astype(">f8"), False),
    ("i2-3d", (np.arange(33 * 2 * 5) - 100).astype(np.int16).reshape(33, 2, 5), False),
    ("bool", (np.arange(29 * 3) % 3 == 0).reshape(29, 3), False),
    ("fortran-f4", np.asfortranarray(np.arange(43 * 6 * 5, dtype=np.float32).reshape(43, 6, 5)), True),
    ("fortran-u1", np.asfortranarray(np.arange(50 * 9, dtype=np.uint8).reshape(50, 9)), True),
]


@pytest.mark.parametrize("chunk", [1 << 22, 96, 7], ids=["chunk-4MiB", "chunk-96B", "chunk-7B"])
@pytest.mark.parametrize("compressed", [True, False], ids=["deflated", "stored"])
@pytest.mark.parametrize(("name", "x", "fortran"), CASES, ids=[c[0] for c in CASES])
def test_rows_are_byte_identical_to_numpys(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chunk: int,
    compressed: bool,
    name: str,
    x: np.ndarray,
    fortran: bool,
) -> None:
    """A determinism guard: every read path (blocks of rows, one large row at a time, Fortran runs) gives
    exactly the rows ``np.load`` did, in the same order, for stored and deflated members."""
    monkeypatch.setattr(data, "_CHUNK", chunk)  # small chunks take the paths large rows take
    n = len(x)
    y = (np.arange(n) * 7) % 5
    path = tmp_path / "d.npz"
    _saved(path, {"x": x, "y": np.eye(5)[y] if fortran else y}, compressed)
    with zipfile.ZipFile(path) as z, z.open("x.npy") as f:
        np.lib.format.read_magic(f)
        assert np.lib.format.read_array_header_1_0(f)[1] == fortran
    for samples, seed in [(None, 0), (1, 3), (7, 1), (n - 1, 2)]:
        ds = load_dataset(path, where=W, samples=samples, seed=seed)
        idx = select(n, samples, seed)
        with np.load(path) as npz:
            want, want_y = npz["x"][idx], npz["y"][idx]
        assert ds.x.dtype == want.dtype and ds.x.shape == want.shape
        assert ds.x.tobytes() == want.tobytes(), (samples, seed)
        assert ds.x.flags.c_contiguous
        assert ds.y is not None
        np.testing.assert_array_equal(ds.y, np.argmax(want_y, axis=1) if want_y.ndim == 2 else want_y)
        np.testing.assert_array_equal(ds.rows, idx)


@pytest.mark.parametrize("compressed", [True, False], ids=["deflated", "stored"])
def test_multi_input_rows_are_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool) -> None:
    monkeypatch.setattr(data, "_CHUNK", 64)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (60, 4, 4, 2), dtype=np.uint8)
    features = np.asfortranarray(rng.normal(size=(60, 16)).astype(np.float32))
    path = tmp_path / "d.npz"
    _saved(path, {"image": image, "features": features, "y": np.arange(60) % 4}, compressed)
    inputs = (
        ModelInput("image", "t_image", (1, 4, 4, 2), "float32"),
        ModelInput("features", "t_f", (1, 16), "float32"),
    )
    ds = load_inputs(path, inputs, where=W, samples=9, seed=5)
    idx = select(60, 9, 5)
    assert ds.x["t_image"].tobytes() == image[idx].tobytes()
    assert ds.x["t_f"].tobytes() == np.ascontiguousarray(features[idx]).tobytes()
    np.testing.assert_array_equal(ds.y, idx % 4)
    np.testing.assert_array_equal(ds.rows, idx)


def test_a_header_claiming_more_rows_than_its_member_holds(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", _npy_header((1_000_000, 8, 8, 1), "|u1") + bytes(64 * 10))
    with pytest.raises(DataError) as info:
        load_dataset(path, where=W, samples=5)
    assert str(info.value) == (
        f"{W}.path: {path}: array 'x' (member x.npy) claims [1000000, 8, 8, 1] values of uint8 (64,000,000 bytes) "
        "but the member holds 640 bytes of data; the file is damaged or was not written by numpy: save the arrays "
        "again with numpy.savez"
    )


def test_labels_claiming_more_rows_than_their_member_holds(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", _npy_header((10, 3), "<f4") + bytes(120))
        z.writestr("y.npy", _npy_header((10,), "<i8") + bytes(16))
    with pytest.raises(DataError, match=r"labels 'y' \(member y\.npy\) claims \[10\] values of int64 \(80 bytes\)"):
        load_dataset(path, where=W, samples=5)


def test_a_selection_larger_than_memory_is_refused_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((4096, 64), np.float32))
    monkeypatch.setattr(data, "_memory_bytes", lambda: 2**19)
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path / "d.npz", where=W)
    assert str(info.value) == (
        f"{W}.path: {tmp_path / 'd.npz'}: the 4,096 samples chosen take 1.0 MiB (256 bytes each), more than this "
        "machine's 524,288 bytes of memory; set data.calibration.samples to fewer"
    )
    assert load_dataset(tmp_path / "d.npz", where=W, samples=100).x.shape == (100, 64)


def test_a_damaged_deflate_stream_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    header = _npy_header((64, 256), "<f4")
    body = zlib.compressobj(6, zlib.DEFLATED, -15)
    stream = body.compress(header + np.random.default_rng(0).normal(size=(64, 256)).astype("<f4").tobytes())
    stream += body.flush()
    damaged = stream[:200] + bytes([0xFF] * 64) + stream[264:]
    _zip(path, {"x.npy": (damaged, 0, len(header) + 64 * 256 * 4)})
    with pytest.raises(DataError, match=r"d\.npz: cannot read \.npz: "):
        load_dataset(path, where=W)


# --- finding 2: image sizes from their headers, before decoding -----------------------------------


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header says ``width`` x ``height`` (8-bit RGB) with a token of data: a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
    )


def _load_quietly(folder: Path) -> tuple[str, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(DataError) as info:
            load_dataset(folder, where=W, channels=3)
    return str(info.value), list(seen)


def test_an_image_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    _png_header_only(tmp_path / "imgs" / "bomb.png", 30000, 30000)
    assert (tmp_path / "imgs" / "bomb.png").stat().st_size < 200
    message, seen = _load_quietly(tmp_path / "imgs")
    assert message.startswith(f"{W}.path: {tmp_path / 'imgs' / 'bomb.png'}: cannot decode image: ")
    assert "Image size (900000000 pixels) exceeds the limit of 67108864 pixels (8192x8192" in message
    assert not seen


@pytest.mark.parametrize("side", [9000, 12000])  # over our limit; 12000 is over Pillow's warning too
def test_an_image_over_the_limit_is_refused_with_its_size(tmp_path: Path, side: int) -> None:
    """Valid, tiny PNGs that the old code decoded (243 MB / 432 MB as RGB, Pillow warning on the larger)."""
    Image.new("1", (side, side)).save(tmp_path / "big.png")
    assert (tmp_path / "big.png").stat().st_size < 100_000
    message, seen = _load_quietly(tmp_path)
    assert message == (
        f"{W}.path: {tmp_path / 'big.png'}: cannot decode image: Image size ({side * side} pixels) exceeds the "
        f"limit of 67108864 pixels (8192x8192, the largest image input.resize takes); it is {side}x{side}; scale "
        "it down to about the model's input size, or remove it from the folder"
    )
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_lower_pillow_limit_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (12, 12)).save(tmp_path / "a.png")  # 144 pixels: Pillow would only warn
    message, seen = _load_quietly(tmp_path)
    assert (
        "Image size (144 pixels) exceeds the limit of 100 pixels (PIL.Image.MAX_IMAGE_PIXELS); it is 12x12" in message
    )
    assert not seen


def test_the_image_limit_is_the_recipes_resize_cap() -> None:
    from converter.recipe import MAX_RESIZE

    assert MAX_RESIZE == data._MAX_IMAGE_SIDE


def test_mixed_size_images_are_resized_as_before(tmp_path: Path) -> None:
    """Resized one by one as decoded now: the same float32 values as resizing the decoded batch."""
    from converter.runtime.preprocess import resize_bilinear

    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(5, 7), (9, 4), (6, 6)]]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    ds = load_dataset(tmp_path, where=W, channels=3, image_size=(6, 5))
    want = np.stack([resize_bilinear(a[None].astype(np.float32), (6, 5))[0] for a in arrays])
    assert ds.x.dtype == np.float32 and ds.x.tobytes() == want.tobytes()


def test_preprocessing_in_chunks_gives_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.random.default_rng(2).integers(0, 255, (23, 10, 12, 3), dtype=np.uint8)
    prep = Preprocess(resize=(4, 5), scale=1 / 255, offset=-0.5)
    want = prep(x)
    monkeypatch.setattr(data, "_CHUNK", 1000)  # a few samples per chunk
    ds = data.Dataset(x=x, y=None, source=Path("d.npz"), available=23)
    got = prepare(ds, prep, (1, 4, 5, 3), W)
    assert got.tobytes() == want.tobytes()
    same = np.zeros((23, 7), np.float32)  # float32 samples the contract leaves alone: no copy
    assert prepare(data.Dataset(x=same, y=None, source=Path("d.npz"), available=23), Preprocess(), (1, 7), W) is same


# --- finding 3: NaN/Inf named by the row of the file ----------------------------------------------


def test_nan_is_named_by_its_row_in_the_file(tmp_path: Path) -> None:
    idx = select(200, 20, 4)
    x = np.ones((200, 3), np.float32)
    x[idx[5], 1] = np.nan
    x[idx[9], 0] = np.inf
    np.savez(tmp_path / "data.npz", x=x)
    ds = load_dataset(tmp_path / "data.npz", where=W, samples=20, seed=4)
    with pytest.raises(DataError) as info:
        prepare(ds, Preprocess(), (1, 3), W)
    assert str(info.value) == (
        f"{W}: {tmp_path / 'data.npz'}: 2 NaN/Inf values in 2 samples (first: sample {idx[5]}): x row {idx[5]} of "
        f"data.npz holds NaN (samples are named by their row in the file; rows {idx[5]}, {idx[9]} of the 20 read); "
        "remove or repair those rows"
    )


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_inf_from_a_value_float32_cannot_hold_names_its_row(tmp_path: Path) -> None:
    x = np.ones((40, 2), np.float64)
    x[33, 1] = 1e300
    np.save(tmp_path / "d.npy", x)
    ds = load_dataset(tmp_path / "d.npy", where=W, samples=30, seed=0)
    assert 33 in select(40, 30, 0)
    with pytest.raises(DataError, match=r"row 33 of d\.npy holds a value that is Inf as float32 after preprocessing"):
        prepare(ds, Preprocess(), (1, 2), W)


def test_nan_in_one_input_of_several_names_its_row(tmp_path: Path) -> None:
    idx = select(50, 10, 0)
    features = np.zeros((50, 4), np.float32)
    features[idx[-1], 2] = -np.inf
    np.savez(tmp_path / "d.npz", image=np.zeros((50, 2, 2, 1), np.uint8), features=features)
    inputs = (ModelInput("image", "ti", (1, 2, 2, 1), "float32"), ModelInput("features", "tf", (1, 4), "float32"))
    ds = load_inputs(tmp_path / "d.npz", inputs, where=W, samples=10, seed=0)
    with pytest.raises(
        DataError,
        match=rf"array 'features': 1 NaN/Inf values in 1 samples \(first: sample "
        rf"{idx[-1]}\): row {idx[-1]} of d\.npz holds -Inf",
    ):
        prepare_inputs(ds, inputs, W)
