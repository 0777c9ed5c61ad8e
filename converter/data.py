"""Calibration and evaluation data: .npz / .npy arrays and image folders, chosen reproducibly."""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .runtime.preprocess import Preprocess, resize_bilinear

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class Dataset:
    """Raw samples (before preprocessing), optional integer labels, and where they came from."""

    x: np.ndarray
    y: np.ndarray | None
    source: Path
    available: int
    classes: tuple[str, ...] | None = None
    eight_bit: bool = False  # images or uint8 arrays: values 0..255 before preprocessing

    def __len__(self) -> int:
        return len(self.x)


def select(n: int, samples: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of ``samples`` out of ``n`` (sorted); all when None."""
    if samples is None or samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))


def load_dataset(
    path: Path,
    *,
    where: str,
    samples: int | None = None,
    seed: int = 0,
    channels: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> Dataset:
    """Read a dataset; ``where`` ("recipe.yaml: data.calibration") prefixes every error.

    ``channels`` picks grayscale (1) or RGB (3) decoding for image folders;
    ``image_size`` lets folders of mixed-size images be resized on decode.
    """
    if not path.exists():
        raise DataError(
            f"{where}.path: not found: {path}; check the path (relative paths start at the recipe's folder)"
        )
    if path.is_dir():
        ds = _load_folder(path, where, samples, seed, channels, image_size)
    elif path.suffix == ".npz":
        ds = _load_npz(path, where, samples, seed)
    elif path.suffix == ".npy":
        ds = _load_npy(path, where, samples, seed)
    else:
        raise DataError(
            f"{where}.path: {path}: unsupported data file; use .npz (x, optional y), .npy or an image folder"
        )
    if len(ds.x) == 0:
        raise DataError(f"{where}.path: {path}: the dataset is empty; it needs at least one sample")
    if samples is not None and samples > ds.available:
        log.warning("%s: asked for %d samples, %s has only %d; using all", where, samples, path, ds.available)
    return ds


def _labels(y: np.ndarray, n: int, where: str, path: Path) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot labels
        y = np.argmax(y, axis=1)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}.path: {path}: labels 'y' have shape {y.shape}; expected [{n}] class indices")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{where}.path: {path}: labels 'y' must be integer class indices")
        y = y.astype(np.int64)
    return y.astype(np.int64)


def _check_array(x: np.ndarray, where: str, path: Path) -> None:
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{where}.path: {path}: samples must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(
            f"{where}.path: {path}: samples have shape {x.shape}; expected [N, ...] with one sample per row"
        )


def _load_npz(path: Path, where: str, samples: int | None, seed: int) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.keys())
            if "x" not in keys:
                raise DataError(
                    f"{where}.path: {path}: no array 'x' in the .npz (it has: {', '.join(keys) or 'nothing'})"
                )
            x_all = npz["x"]
            y_all = npz["y"] if "y" in keys else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{where}.path: {path}: cannot read .npz: {e}") from e
    _check_array(x_all, where, path)
    idx = select(len(x_all), samples, seed)
    y = _labels(np.asarray(y_all), len(x_all), where, path)[idx] if y_all is not None else None
    return Dataset(x=np.asarray(x_all[idx]), y=y, source=path, available=len(x_all), eight_bit=x_all.dtype == np.uint8)


def _load_npy(path: Path, where: str, samples: int | None, seed: int) -> Dataset:
    try:
        x_all = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{where}.path: {path}: cannot read .npy: {e}") from e
    _check_array(x_all, where, path)
    idx = select(len(x_all), samples, seed)
    return Dataset(
        x=np.asarray(x_all[idx]), y=None, source=path, available=len(x_all), eight_bit=x_all.dtype == np.uint8
    )


def _load_folder(
    path: Path,
    where: str,
    samples: int | None,
    seed: int,
    channels: int | None,
    image_size: tuple[int, int] | None,
) -> Dataset:
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    if subdirs:
        for label, sub in enumerate(subdirs):
            found = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [label] * len(found)
        classes: tuple[str, ...] | None = tuple(p.name for p in subdirs)
    else:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        classes = None
    if not files:
        raise DataError(
            f"{where}.path: {path}: no images ({', '.join(IMAGE_SUFFIXES)}) found directly or in class sub-folders"
        )
    idx = select(len(files), samples, seed)
    images = [_decode(files[i], channels, where) for i in idx]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        if image_size is None:
            raise DataError(
                f"{where}.path: {path}: images differ in size ({', '.join(str(s) for s in sorted(shapes))}); "
                "set input.resize so they can be brought to one size"
            )
        images = [resize_bilinear(im[None].astype(np.float32), image_size)[0] for im in images]
    x = np.stack(images)
    y = np.asarray([labels[i] for i in idx], dtype=np.int64) if classes else None
    return Dataset(x=x, y=y, source=path, available=len(files), classes=classes, eight_bit=True)


def _decode(file: Path, channels: int | None, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(file) as im:
            arr = np.asarray(im.convert(mode))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{where}.path: {file}: cannot decode image: {e}") from e
    return arr[..., None] if arr.ndim == 2 else arr


def prepare(ds: Dataset, preprocess: Preprocess, input_shape: tuple[int, ...], where: str) -> np.ndarray:
    """Preprocess ``ds`` and check it fits a model input of ``input_shape`` ([1, ...]) and is finite."""
    x = ds.x
    # A grayscale array without a channel axis ([N, H, W]) for a [1, H, W, 1] input.
    if x.ndim == len(input_shape) - 1 and input_shape[-1] == 1:
        x = x[..., None]
    try:
        out = preprocess(x)
    except ValueError as e:
        raise DataError(f"{where}: {ds.source}: preprocessing failed: {e}") from e
    want = tuple(input_shape[1:])
    if tuple(out.shape[1:]) != want:
        hint = "set input.resize" if out.ndim == len(input_shape) else "check the sample layout"
        raise DataError(
            f"{where}: {ds.source}: samples have shape {list(out.shape[1:])} after preprocessing but the model "
            f"expects {list(want)}; {hint} or use data made for this model"
        )
    bad = ~np.isfinite(out)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise DataError(
            f"{where}: {ds.source}: {bad.sum()} NaN/Inf values in {len(rows)} samples "
            f"(first: sample {int(rows[0])}); remove or repair them"
        )
    return out
