"""Calibration and evaluation data: .npz / .npy arrays and image folders, chosen reproducibly.

A single-input model takes an .npz (``x``, optional ``y``; ``x`` may also be keyed by the input's
name), an .npy or an image folder. A model with several inputs takes an .npz with one array per
input keyed by the input's name (``ModelInput.name``; the input tensor's name works too) and an
optional ``y``; its samples are packed into one structured array (``runtime.model.pack_inputs``),
so a sample's inputs stay together through selection and slicing. The recipe's ``input.layout`` and
``input.reshape`` bring each array to its input's shape (``arrange``, ``arrange_inputs``).

Integer model inputs (token ids, attention masks, indices: ``ModelInput.integer``) take integer data
as integers: each value is checked to fit the input's dtype and cast to it, never scaled, resized or
quantized (``integer_samples``). Float data for such an input is refused: a float token id almost
always means the ids went through preprocessing meant for pixels. The recipe's ``input.resize``,
``input.scale`` and ``input.offset`` change values, so a recipe that sets them for a model whose
input is integer is refused (``check_preprocess``); ``input.layout`` and ``input.reshape`` only move
values, and apply to integer inputs as to float ones. Float inputs are fed as float32, as before.

Data files come from strangers too: numpy's own errors are replaced by ours (never its
advice to load pickles "unsafely": ``allow_pickle`` stays False), each array's header is
read before its data so object, complex, string and structured arrays are refused by name,
and a truncated or mislabelled file says so.

Memory is bounded by what the recipe asks for, not by what a file claims: an .npz member is
streamed and only the chosen rows are kept (a few megabytes of zip can inflate to gigabytes), an
image's size is read from its header before it is decoded, and a selection that cannot fit in
this machine's memory is refused before anything is allocated.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from converter.errors import DataError, RecipeError
from converter.runtime.model import TFLiteModel, pack_inputs, signature_names
from converter.runtime.preprocess import Preprocess, resize_bilinear

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class ModelInput:
    """One input of the float model: the name a data file keys it by, its tensor's name, shape and dtype.

    ``name`` is the model's signature name for the input when it has one (a SavedModel's or the stock
    converter's float .tflite: ``image`` for the tensor ``serving_default_image:0``), else the tensor's
    name (edgeconv's own Keras conversion names each tensor as the Keras input).
    """

    name: str
    tensor: str
    shape: tuple[int, ...]
    dtype: str
    quantized: bool = False  # the tensor has a scale: its data are real numbers, quantized on the way in

    @property
    def integer(self) -> bool:
        """The input takes integers as they are (ids, masks, indices): an integer or bool tensor without a scale.

        A quantized integer input (int8 with a scale) takes real values, which ``runtime.model.quantize``
        maps onto its grid; only an input without a scale means its integers literally.
        """
        return np.dtype(self.dtype).kind in "biu" and not self.quantized

    def describe(self) -> str:
        shown = f"{self.name} {['N', *self.shape[1:]]}".replace("'", "")
        return f"{shown} {self.dtype}" if self.integer else shown  # float inputs keep their old description


def model_inputs(model: TFLiteModel) -> tuple[ModelInput, ...]:
    """Every input of a (float) model in its order, named as a data file keys it (see ``ModelInput``)."""
    keys = signature_names(model.interpreter)
    return tuple(
        ModelInput(keys.get(i.index, i.name), i.name, i.shape, i.dtype, i.scale is not None) for i in model.inputs
    )


@dataclass(frozen=True)
class Dataset:
    """Raw samples (before preprocessing), optional integer labels, and where they came from."""

    x: np.ndarray
    y: np.ndarray | None
    source: Path
    available: int
    classes: tuple[str, ...] | None = None
    eight_bit: bool = False  # images or uint8 arrays: values 0..255 before preprocessing
    # How samples were brought to the model's shape (input.reshape, input.layout); per input name for several.
    arranged: str | dict[str, str | None] | None = None
    # Each sample's row in its data file, so an error names the row a user can find (not its place in
    # the random subset); None where rows mean nothing (image folders) or are unknown.
    rows: np.ndarray | None = None
    key: str | None = None  # the .npz array the samples came from ("x", or the input's name)

    def __len__(self) -> int:
        return len(self.x)


def select(n: int, samples: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of ``samples`` out of ``n`` (sorted); all when None."""
    if samples is None or samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))


# A recipe without evaluation data still gets int8 measured against float: on a fifth of its calibration
# samples, held out of calibration (``split_calibration``). At least MIN_HELD_OUT (fewer give no figure worth
# reading), at most MAX_HELD_OUT (enough for a stable SQNR; more would only starve calibration), and
# calibration keeps at least MIN_CALIBRATION: with fewer samples than that, nothing is held out.
HOLDOUT_FRACTION = 0.2
MIN_HELD_OUT = 8
MAX_HELD_OUT = 200
MIN_CALIBRATION = 32
_HOLDOUT_STREAM = 0x686F6C64  # "hold": the held-out draw's own random stream, apart from ``select``'s


@dataclass(frozen=True)
class Split:
    """Calibration samples (preprocessed ``x`` and the raw ``ds``) and those held out of them (None: none)."""

    x: np.ndarray
    ds: Dataset
    held_x: np.ndarray | None
    held_ds: Dataset | None
    selected: int  # calibration samples selected before the split
    reason: str  # what was done and why, for the log and report.json
    short: bool = False  # a hold-out was wanted, but there were too few samples to spare (a warning)

    @property
    def held_out(self) -> int:
        return 0 if self.held_x is None else len(self.held_x)

    def to_json(self) -> dict[str, Any]:
        return {"held_out": self.held_out, "selected": self.selected, "reason": self.reason}


def holdout_positions(n: int, seed: int) -> np.ndarray | None:
    """Positions (sorted) among ``n`` selected calibration samples to hold out; None when too few to spare.

    A seeded random fifth rather than the last fifth: image folders (and many arrays) are sorted by class,
    and their last rows would be classes calibration then never sees. The draw has its own stream of the
    calibration ``seed``, so the selection itself (``select``) is what it always was.
    """
    count = min(MAX_HELD_OUT, max(MIN_HELD_OUT, int(n * HOLDOUT_FRACTION)))
    if n - count < MIN_CALIBRATION:
        return None
    return np.sort(np.random.default_rng([seed, _HOLDOUT_STREAM]).choice(n, size=count, replace=False))


def subset(ds: Dataset, positions: np.ndarray) -> Dataset:
    """The samples of ``ds`` at ``positions``, with their labels and rows in the file."""
    return dataclasses.replace(
        ds,
        x=ds.x[positions],
        y=None if ds.y is None else ds.y[positions],
        rows=None if ds.rows is None else ds.rows[positions],
    )


def align_classes(calibration: Dataset, evaluation: Dataset, where: str) -> tuple[np.ndarray | None, str | None]:
    """The evaluation labels numbered as the calibration folder's classes, and what was done, in words.

    An image folder's labels are its sorted sub-folders' positions: an evaluation folder without one class of the
    calibration folder would number every later class one lower, and top-1 would be measured against the wrong
    classes (a 95 % model scored 29 %). Where both folders name classes, the evaluation's are matched by name to
    the calibration's (the model's classes, which calibration data covers); where the calibration folder lacks
    some of them, each folder keeps its own numbering and a warning says so.
    """
    cal, ev = calibration.classes, evaluation.classes
    if cal is None or ev is None or evaluation.y is None or cal == ev:
        return evaluation.y, None
    unknown = [c for c in ev if c not in cal]
    if unknown:
        return evaluation.y, (
            f"warning: {where}: the evaluation folder has classes the calibration folder does not "
            f"({', '.join(unknown[:5])}{', ...' if len(unknown) > 5 else ''}): each folder's labels are its own "
            "sorted sub-folders' positions, which differ; give both folders the same class sub-folders"
        )
    absent = [c for c in cal if c not in ev]
    index = np.array([cal.index(c) for c in ev], dtype=np.int64)
    return index[evaluation.y], (
        f"{where}: the evaluation folder has {len(ev)} of the calibration folder's {len(cal)} classes (no "
        f"{', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}): its labels are numbered by class name as "
        "the calibration folder's"
    )


# Calibration and evaluation inputs whose spans differ by this factor are data of two kinds (0-255 and 0-1).
SCALE_MISMATCH = 8.0


def range_mismatch(calibration: np.ndarray, evaluation: np.ndarray, where: str) -> str | None:
    """A warning when the evaluation inputs are not on the calibration inputs' scale, else None.

    int8 ranges come from the calibration data; evaluation data preprocessed another way (0-1 against 0-255,
    centred against not) is clipped or squeezed into a few steps by them, and the accuracy that follows blames
    the model. Float inputs only (token ids and indices have no scale); compared after preprocessing, as the
    model sees them, per input for several.
    """
    for name in calibration.dtype.names or (None,):
        cal = calibration[name] if name else calibration
        ev = evaluation[name] if name else evaluation
        if not (np.issubdtype(cal.dtype, np.floating) and np.issubdtype(ev.dtype, np.floating)) or not cal.size:
            continue
        if not ev.size:
            continue
        cal_lo, cal_hi, ev_lo, ev_hi = float(cal.min()), float(cal.max()), float(ev.min()), float(ev.max())
        cal_span, ev_span = cal_hi - cal_lo, ev_hi - ev_lo
        if not (cal_span > 0 and ev_span > 0 and np.isfinite(cal_span) and np.isfinite(ev_span)):
            continue
        overlap = min(cal_hi, ev_hi) - max(cal_lo, ev_lo)
        if max(cal_span, ev_span) / min(cal_span, ev_span) < SCALE_MISMATCH and overlap >= 0.5 * min(cal_span, ev_span):
            continue
        which = f" of input '{name}'" if name else ""
        return (
            f"{where}: the evaluation values{which} span [{ev_lo:.4g}, {ev_hi:.4g}] and the calibration values "
            f"[{cal_lo:.4g}, {cal_hi:.4g}] (after the recipe's preprocessing): int8 ranges come from the calibration "
            "data, so evaluation data of another scale or offset is measured outside them. Give both sets in the "
            "same form (e.g. both 0-255 or both 0-1), preprocessed as the model was trained"
        )
    return None


def split_calibration(x: np.ndarray, ds: Dataset, seed: int, *, evaluation: bool, holdout: bool) -> Split:
    """The calibration samples, and those held out of them (``holdout_positions``) for a recipe without evaluation
    data that keeps ``data.holdout`` on. With evaluation data calibration takes every sample, as it always did.

    ``x``: the preprocessed samples, ``ds`` the dataset they came from (same order); ``seed``: data.calibration's.
    """
    n = len(x)
    if evaluation:
        why = f"data.evaluation is given: int8 is measured on it, and calibration uses all {n} samples"
        return Split(x, ds, None, None, n, why)
    if not holdout:
        why = f"data.holdout is false: calibration uses all {n} samples, and int8 is not measured against float"
        return Split(x, ds, None, None, n, why)
    held = holdout_positions(n, seed)
    if held is None:
        why = (
            f"only {n} calibration samples: holding out {MIN_HELD_OUT} would leave fewer than {MIN_CALIBRATION} to "
            "calibrate with, so none are held out and int8 is not measured against float; give data.evaluation, or "
            f"at least {MIN_CALIBRATION + MIN_HELD_OUT} calibration samples"
        )
        return Split(x, ds, None, None, n, why, short=True)
    keep = np.setdiff1d(np.arange(n), held)
    reason = (
        f"{len(held)} of the {n} calibration samples (a random choice seeded by data.calibration.seed) are held "
        f"out to measure int8 against float, as the recipe has no data.evaluation; calibration uses the other "
        f"{len(keep)}"
    )
    return Split(x[keep], subset(ds, keep), x[held], subset(ds, held), n, reason)


def load_dataset(
    path: Path,
    *,
    where: str,
    samples: int | None = None,
    seed: int = 0,
    channels: int | None = None,
    image_size: tuple[int, int] | None = None,
    input_names: tuple[str, ...] = (),
) -> Dataset:
    """Read a dataset; ``where`` ("recipe.yaml: data.calibration") prefixes every error.

    ``channels`` picks grayscale (1) or RGB (3) decoding for image folders;
    ``image_size`` lets folders of mixed-size images be resized on decode;
    ``input_names``: names the model input has, accepted in an .npz instead of ``x``.
    """
    if not path.exists():
        raise DataError(
            f"{where}.path: not found: {path}; check the path (relative paths start at the recipe's folder)"
        )
    if path.is_dir():
        ds = _load_folder(path, where, samples, seed, channels, image_size)
    elif path.suffix == ".npz":
        ds = _load_npz(path, where, samples, seed, input_names)
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


def load_inputs(
    path: Path, inputs: tuple[ModelInput, ...], *, where: str, samples: int | None = None, seed: int = 0
) -> Dataset:
    """Samples of a model with several ``inputs``: an .npz with one array per input, keyed by input name.

    The arrays must hold the same number of samples; ``y`` (labels) is optional. ``x`` of the
    returned dataset is packed (one field per input, named by its tensor, in the model's order).
    """
    expected = ", ".join(i.describe() for i in inputs)
    layout = (
        f"the model has {len(inputs)} inputs ({expected}), so the data is an .npz with one array per input, "
        "keyed by the input's name (optional y: labels), e.g. numpy.savez(path, "
        + ", ".join(f"{i.name}=..." for i in inputs[:2])
        + ", y=labels)"
    )
    if not path.exists():
        raise DataError(
            f"{where}.path: not found: {path}; check the path (relative paths start at the recipe's folder)"
        )
    if path.is_dir() or path.suffix != ".npz":
        kind = "an image folder" if path.is_dir() else f"a {path.suffix or 'extensionless'} file"
        raise DataError(f"{where}.path: {path}: is {kind}, which feeds a single-input model only; {layout}")
    return _read_npz_inputs(path, inputs, where, layout, samples, seed)


def _read_npz_inputs(
    path: Path, inputs: tuple[ModelInput, ...], where: str, layout: str, samples: int | None, seed: int
) -> Dataset:
    """The chosen rows of every input's array (by ``ModelInput.name``) and of ``y``, headers checked first.

    Every header is read (and checked against its member's size) before any data, the arrays' row
    counts are compared from them, and only then are the chosen rows streamed (``_member_rows``).
    """
    if _magic(path, where)[:4] not in _ZIP_MAGIC:
        raise DataError(f"{where}.path: {path}: cannot read .npz: it is not a zip archive; {_NPZ_HELP}")
    names = {i.name for i in inputs} | {i.tensor for i in inputs}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n.removesuffix(".npy"): n for n in archive.namelist()}
            keys: dict[str, str] = {}
            for i in inputs:
                key = i.name if i.name in members else i.tensor if i.tensor in members else None
                if key is None:
                    raise DataError(
                        f"{where}.path: {path}: no array '{i.name}' for the model input '{i.name}'; it has: "
                        f"{', '.join(members) or 'nothing'}; {layout}"
                    )
                keys[i.name] = key
            labels = "y" if "y" in members and "y" not in names else None
            heads: dict[str, _Header] = {}
            for key in [*keys.values(), *([labels] if labels else [])]:
                heads[key] = _member_header(archive, members[key], where, path, key)
                problem = _dtype_problem(heads[key].dtype, f"array '{key}'" if key != "y" else "labels 'y'")
                if problem:
                    raise DataError(f"{where}.path: {path}: {problem}")
            extra = sorted(set(members) - set(keys.values()) - {labels})
            if extra:
                log.warning("%s: %s: arrays %s are not model inputs; ignored", where, path, ", ".join(extra))
            for key in keys.values():
                if not heads[key].shape:
                    raise DataError(f"{where}.path: {path}: array '{key}' is not an array of samples; {layout}")
            counts = {name: heads[key].shape[0] for name, key in keys.items()}
            if labels and heads[labels].shape:
                counts["y"] = heads[labels].shape[0]
            if len(set(counts.values())) > 1:
                listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
                raise DataError(
                    f"{where}.path: {path}: the arrays hold different numbers of samples ({listed}); every input "
                    "(and y) needs one row per sample, in the same order"
                )
            n = counts[inputs[0].name]
            if n == 0:
                raise DataError(f"{where}.path: {path}: the dataset is empty; it needs at least one sample")
            if labels:
                _check_label_shape(heads[labels].shape, n, where, path)
            used = [heads[key] for key in [*keys.values(), *([labels] if labels else [])]]
            _check_fits(n, samples, sum(h.row_bytes for h in used), where, path)
            idx = select(n, samples, seed)
            y = _labels(_member_rows(archive, members[labels], heads[labels], idx), where, path) if labels else None
            picked = {i.tensor: _member_rows(archive, members[keys[i.name]], heads[keys[i.name]], idx) for i in inputs}
    except _READ_ERRORS as e:
        raise _read_failed(e, where, path, ".npz") from e
    if samples is not None and samples > n:
        log.warning("%s: asked for %d samples, %s has only %d; using all", where, samples, path, n)
    # 8-bit data (the preprocessing contract's 0..255) is a property of the float inputs' arrays: ids stored
    # as uint8 say nothing about pixels, and an integer input takes no contract range.
    floats = [keys[i.name] for i in inputs if not i.integer]
    eight_bit = bool(floats) and all(heads[key].dtype == np.uint8 for key in floats)
    return Dataset(x=pack_inputs(picked), y=y, source=path, available=n, eight_bit=eight_bit, rows=idx)


def prepare_inputs(ds: Dataset, inputs: tuple[ModelInput, ...], where: str) -> np.ndarray:
    """Packed samples for a model with several inputs, each array checked against its input.

    No preprocessing contract applies (it is defined for one input): each float input's array reaches
    the model as float32, as ``arrange_inputs`` left it, but for a missing channel axis of size 1; an
    integer input's array (``ModelInput.integer``) keeps its values, cast to the input's dtype after a
    range check (``integer_samples``), so ids beside an image are never turned into floats.
    """
    out: dict[str, np.ndarray] = {}
    for i in inputs:
        a = ds.x[i.tensor]
        if a.ndim == len(i.shape) - 1 and i.shape[-1] == 1:
            a = a[..., None]
        if tuple(a.shape[1:]) != tuple(i.shape[1:]):
            same_count = math.prod(a.shape[1:]) == math.prod(i.shape[1:])
            raise DataError(
                f"{where}.path: {ds.source}: array '{i.name}' has samples of shape {list(a.shape[1:])} but the model "
                f"input '{i.name}' expects {list(i.shape[1:])} (inputs: {', '.join(j.describe() for j in inputs)}); "
                "store each input's samples as [N, ...] in the input's shape"
                + (f", or set input.reshape.{i.name}: {list(i.shape[1:])} in the recipe" if same_count else "")
            )
        if i.integer:
            out[i.tensor] = integer_samples(a, i, ds, where, i.name)
            continue
        try:
            a = np.asarray(a, dtype=np.float32)
        except MemoryError as e:
            raise DataError(f"{where}: {ds.source}: {len(a)} samples do not fit in memory; use fewer samples") from e
        _refuse_non_finite(
            a, f"{where}: {ds.source}", array=f"array '{i.name}'", rows=ds.rows, raw=ds.x[i.tensor], source=ds.source
        )
        out[i.tensor] = a
    return pack_inputs(out)


def _check_label_shape(shape: tuple[int, ...], n: int, where: str, path: Path) -> None:
    """Labels ``y`` are [n] class indices or [n, classes] one-hot rows; checked on the header, before any data."""
    one_hot = len(shape) == 2 and shape[1] > 1
    if len(shape) not in (1, 2) or shape[0] != n or (len(shape) == 2 and not one_hot):
        shown = shape[:1] if one_hot else shape  # a one-hot array is named by its shape after argmax
        raise DataError(f"{where}.path: {path}: labels 'y' have shape {shown}; expected [{n}] class indices")


def _labels(y: np.ndarray, where: str, path: Path) -> np.ndarray:
    """Integer class indices from the chosen rows of ``y`` (its shape already checked: ``_check_label_shape``).

    Only the chosen rows are read, so only their values are checked: a bad label in a row the seed did
    not pick is never loaded.
    """
    problem = _dtype_problem(y.dtype, "labels 'y'")
    if problem:
        raise DataError(f"{where}.path: {path}: {problem}")
    if y.ndim == 2:  # one-hot labels
        y = np.argmax(y, axis=1)
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)) or np.any(np.abs(y) >= 2**31):
            raise DataError(f"{where}.path: {path}: labels 'y' must be integer class indices")
    elif y.dtype.kind == "u" and y.size and int(y.max()) >= 2**63:
        raise DataError(f"{where}.path: {path}: labels 'y' must be integer class indices, got {int(y.max())}")
    return y.astype(np.int64)


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPZ_HELP = "an .npz is a zip of .npy arrays as numpy.savez writes it (x: samples, optional y: labels)"
# What reading an archive or array can raise that means the file is bad (never our own DataError).
_READ_ERRORS = (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError, NotImplementedError, zlib.error)
# Bytes read from a data file at a time: all that a file can make edgeconv hold beyond the rows it chose.
_CHUNK = 1 << 22
# The largest image decoded, per side: recipe.MAX_RESIZE, the largest size input.resize brings images to
# (a larger image is no edge model's input, and one decoded 8192x8192 RGB image is already 200 MB).
_MAX_IMAGE_SIDE = 8192


@dataclass(frozen=True)
class _Header:
    """What an .npy header claims: read before any data, so the data is never trusted for its size."""

    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype[Any]
    offset: int  # bytes of magic and header before the data

    @property
    def row_bytes(self) -> int:
        """Bytes of one sample (one row along the first axis)."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _dtype_problem(dtype: np.dtype[Any], what: str) -> str | None:
    """Why an array of ``dtype`` cannot be ``what`` (samples or labels), or None."""
    if dtype.hasobject:
        return (
            f"{what} are Python objects (dtype object), which edgeconv never loads: unpickling them can run code; "
            "save a numeric array instead"
        )
    if dtype.kind == "c":
        return (
            f"{what} are complex numbers (dtype {dtype}); edgeconv takes real numbers only "
            "(the imaginary part would be dropped); save the part you mean"
        )
    if dtype.kind not in "biuf":
        return f"{what} must be numeric, got dtype {dtype}"
    return None


def _check_samples(shape: tuple[int, ...], where: str, path: Path) -> None:
    """Samples are [N, ...], one sample per row; checked on the header, before any data."""
    if len(shape) < 2:
        raise DataError(f"{where}.path: {path}: samples have shape {shape}; expected [N, ...] with one sample per row")


def _memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_fits(n: int, samples: int | None, row_bytes: int, where: str, path: Path) -> None:
    """Refuse, before allocating anything, a selection that cannot fit in this machine's memory.

    A header can claim any number of rows (an .npz of a few megabytes inflates to terabytes), so the
    rows chosen (``samples`` of ``n``, all when None) are sized from it first. ``select``'s indices count
    too: it draws from a permutation of all ``n`` rows when more than a fiftieth of them are chosen.
    """
    memory = _memory_bytes()
    k = n if samples is None else min(samples, n)
    need = k * row_bytes + 8 * (n if 50 * k > n else k)
    if memory is not None and need > memory:
        key = where.rsplit(": ", 1)[-1]
        raise DataError(
            f"{where}.path: {path}: the {k:,} samples chosen take {_size(need)} ({row_bytes:,} bytes each), "
            f"more than this machine's {_size(memory)} of memory; set {key}.samples to fewer"
        )


def _size(count: int) -> str:
    """Bytes for a message: 1.5 GiB, 12.0 MiB, 640 bytes."""
    if count >= 2**30:
        return f"{count / 2**30:,.1f} GiB"
    return f"{count / 2**20:,.1f} MiB" if count >= 2**20 else f"{count:,} bytes"


def _magic(path: Path, where: str) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(6)
    except OSError as e:
        raise DataError(f"{where}.path: {path}: cannot read it: {e.strerror or e}") from e


def _read_header(f: IO[bytes], where: str, path: Path, member: str = "") -> _Header:
    """Shape, order and dtype from an .npy header, without reading (or unpickling) the data."""
    name = f"{path}" + (f" (array '{member}')" if member else "")
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise DataError(f"{where}.path: {name}: not a readable .npy array (its header is damaged)") from e
    if any(d >= 2**62 for d in shape):  # no array has such an axis: numpy could not even index it
        raise DataError(f"{where}.path: {name}: not a readable .npy array (its header claims shape {list(shape)})")
    return _Header(tuple(shape), bool(fortran), dtype, f.tell())


def _member_header(archive: zipfile.ZipFile, member: str, where: str, path: Path, key: str) -> _Header:
    """The .npy header of an .npz member, checked against the size the archive declares for the member."""
    info = archive.getinfo(member)
    with archive.open(info) as f:
        head = _read_header(f, where, path, key)
    if head.offset + head.nbytes > info.file_size:
        what = "labels 'y'" if key == "y" else f"array '{key}'"
        raise DataError(
            f"{where}.path: {path}: {what} (member {member}) claims {list(head.shape)} values of {head.dtype} "
            f"({head.nbytes:,} bytes) but the member holds {max(0, info.file_size - head.offset):,} bytes of data; "
            "the file is damaged or was not written by numpy: save the arrays again with numpy.savez"
        )
    return head


def _member_rows(archive: zipfile.ZipFile, member: str, head: _Header, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of an .npz member, streamed: the member is inflated once, in order, and not kept."""
    info = archive.getinfo(member)
    with archive.open(info) as f:
        _skip(f, head.offset, stored=False)
        return _read_rows(f, head, idx, stored=info.compress_type == zipfile.ZIP_STORED)


def _read_rows(f: IO[bytes], head: _Header, idx: np.ndarray, *, stored: bool = False) -> np.ndarray:
    """Rows ``idx`` (sorted, unique) of the array whose data ``f`` is positioned at, in one forward pass.

    Only the chosen rows are kept, and at most ``_CHUNK`` bytes besides: a member that inflates to
    gigabytes costs the time to inflate it, not the memory. The result is C-ordered and holds the same
    values, dtype and order as ``np.load(...)[key][idx]`` (a seed picks the same samples as ever); a
    Fortran-ordered array (as ``DataFrame.values`` often is) holds one value of every row in each run of
    ``shape[0]`` values, so all of it is read, picking the chosen rows' values from each run.
    ``stored``: an uncompressed member, skipped by seeking.
    """
    k = len(idx)
    if k == 0 or head.row_bytes == 0:
        return np.empty((k, *head.shape[1:]), dtype=head.dtype)
    if not head.fortran or len(head.shape) == 1:
        out = np.empty((k, *head.shape[1:]), dtype=head.dtype)
        _pick(f, head.row_bytes, idx, out.reshape(-1).view(np.uint8), stored)
        return out
    runs = math.prod(head.shape[1:])
    columns = np.empty((runs, k), dtype=head.dtype)  # columns[c]: value c (in Fortran order) of each chosen row
    _pick_runs(f, runs, head.shape[0], head.dtype.itemsize, idx, columns.reshape(-1).view(np.uint8), stored)
    return np.ascontiguousarray(columns.reshape(*head.shape[:0:-1], k).transpose())


def _pick(f: IO[bytes], unit: int, idx: np.ndarray, out: np.ndarray, stored: bool) -> None:
    """From a stream of ``unit``-byte records, the records ``idx`` (sorted) into ``out``; stops after the last."""
    k = len(idx)
    if unit >= _CHUNK:  # large records: one at a time, a chosen one straight into its place
        pos = 0
        for j, row in enumerate(idx.tolist()):
            _skip(f, (row - pos) * unit, stored)
            _read_exact(f, out[j * unit : (j + 1) * unit])
            pos = row + 1
        return
    per = _CHUNK // unit
    buf = np.empty(per * unit, dtype=np.uint8)
    dst = out.reshape(k, unit)
    pos = j = 0
    last = int(idx[-1])
    while j < k:  # a block of records from the next chosen one; the chosen ones in it are kept
        first = int(idx[j])
        _skip(f, (first - pos) * unit, stored)
        count = min(per, last + 1 - first)
        _read_exact(f, buf[: count * unit])
        end = j + int(np.searchsorted(idx[j:], first + count))
        dst[j:end] = buf[: count * unit].reshape(count, unit)[idx[j:end] - first]
        pos, j = first + count, end


def _pick_runs(
    f: IO[bytes], runs: int, length: int, itemsize: int, idx: np.ndarray, out: np.ndarray, stored: bool
) -> None:
    """From ``runs`` runs of ``length`` values (a Fortran-ordered array's data), the values ``idx`` of each run."""
    k = len(idx)
    run_bytes = length * itemsize
    if run_bytes <= _CHUNK:  # short runs: as many whole runs at a time as fit in a chunk
        per = _CHUNK // run_bytes
        buf = np.empty(per * run_bytes, dtype=np.uint8)
        dst = out.reshape(runs, k * itemsize)
        for first in range(0, runs, per):
            count = min(per, runs - first)
            _read_exact(f, buf[: count * run_bytes])
            block = buf[: count * run_bytes].reshape(count, length, itemsize)
            dst[first : first + count] = block[:, idx].reshape(count, k * itemsize)
        return
    tail = (length - int(idx[-1]) - 1) * itemsize  # after the last chosen value of a run
    for run in range(runs):
        _pick(f, itemsize, idx, out[run * k * itemsize : (run + 1) * k * itemsize], stored)
        if run + 1 < runs:
            _skip(f, tail, stored)


def _read_exact(f: IO[bytes], out: np.ndarray) -> None:
    """Fill ``out`` (bytes) from ``f``, ``_CHUNK`` bytes at a time; ``EOFError`` if the data ends first."""
    done = 0
    while done < len(out):
        data = f.read(min(_CHUNK, len(out) - done))
        if not data:
            raise EOFError("the data ends before its header says")
        out[done : done + len(data)] = np.frombuffer(data, dtype=np.uint8)
        done += len(data)


def _skip(f: IO[bytes], count: int, stored: bool) -> None:
    """Pass ``count`` bytes of ``f``: by seeking where the bytes are stored as is, else read and dropped."""
    if count <= 0:
        return
    if stored and f.seekable():
        f.seek(count, os.SEEK_CUR)  # a short member is noticed by the next read
        return
    while count:
        data = f.read(min(_CHUNK, count))
        if not data:
            raise EOFError("the data ends before its header says")
        count -= len(data)


def _read_failed(e: BaseException, where: str, path: Path, kind: str) -> DataError:
    """Our message for a read numpy could not finish (never numpy's advice to load pickles)."""
    if isinstance(e, MemoryError):
        return DataError(
            f"{where}.path: {path}: too large to load into memory; use a smaller file or an .npy (read lazily, "
            "only the chosen samples)"
        )
    text = str(e)
    if "pickle" in text or "allow_pickle" in text:
        text = "it holds pickled Python objects, which edgeconv never loads (unpickling can run code)"
    elif "mmap length" in text or isinstance(e, EOFError):
        text = "the file is shorter than its header says (truncated?)"
    elif isinstance(e, zlib.error):
        text = f"the archive is damaged ({e}); save the arrays again with numpy.savez"
    return DataError(f"{where}.path: {path}: cannot read {kind}: {text}")


def _load_npz(path: Path, where: str, samples: int | None, seed: int, names: tuple[str, ...] = ()) -> Dataset:
    """``x`` (or the input's name) and ``y`` of an .npz: headers checked, then only the chosen rows read."""
    if _magic(path, where)[:4] not in _ZIP_MAGIC:
        raise DataError(f"{where}.path: {path}: cannot read .npz: it is not a zip archive; {_NPZ_HELP}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n.removesuffix(".npy"): n for n in archive.namelist()}
            x_key = next((k for k in ("x", *names) if k in members), None)
            if x_key is None:
                also = f" or '{names[0]}' (the model input's name)" if names else ""
                raise DataError(
                    f"{where}.path: {path}: no array 'x'{also} in the .npz (it has: {', '.join(members) or 'nothing'})"
                )
            heads: dict[str, _Header] = {}
            for key in (x_key, "y"):
                if key not in members:
                    continue
                heads[key] = _member_header(archive, members[key], where, path, key)
                problem = _dtype_problem(heads[key].dtype, "labels 'y'" if key == "y" else "samples")
                if problem:
                    raise DataError(f"{where}.path: {path}: {problem}")
            x_head, y_head = heads[x_key], heads.get("y")
            _check_samples(x_head.shape, where, path)
            n = x_head.shape[0]
            if y_head is not None:
                _check_label_shape(y_head.shape, n, where, path)
            _check_fits(n, samples, x_head.row_bytes + (y_head.row_bytes if y_head else 0), where, path)
            idx = select(n, samples, seed)
            y = _labels(_member_rows(archive, members["y"], y_head, idx), where, path) if y_head else None
            x = _member_rows(archive, members[x_key], x_head, idx)
    except _READ_ERRORS as e:
        raise _read_failed(e, where, path, ".npz") from e
    return Dataset(x=x, y=y, source=path, available=n, eight_bit=x_head.dtype == np.uint8, rows=idx, key=x_key)


def _load_npy(path: Path, where: str, samples: int | None, seed: int) -> Dataset:
    """An .npy, memory-mapped: only the chosen rows are read."""
    if _magic(path, where) != _NPY_MAGIC:
        raise DataError(f"{where}.path: {path}: cannot read .npy: it has no numpy header; save arrays with numpy.save")
    with path.open("rb") as f:
        head = _read_header(f, where, path)
    problem = _dtype_problem(head.dtype, "samples")
    if problem:
        raise DataError(f"{where}.path: {path}: {problem}")
    _check_samples(head.shape, where, path)
    try:
        x_all = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise _read_failed(e, where, path, ".npy") from e
    _check_fits(head.shape[0], samples, head.row_bytes, where, path)
    idx = select(len(x_all), samples, seed)
    return Dataset(
        x=np.asarray(x_all[idx]),
        y=None,
        source=path,
        available=len(x_all),
        eight_bit=x_all.dtype == np.uint8,
        rows=idx,
    )


def _load_folder(
    path: Path,
    where: str,
    samples: int | None,
    seed: int,
    channels: int | None,
    image_size: tuple[int, int] | None,
) -> Dataset:
    """The chosen images of a folder (class sub-folders give labels), sized from their headers first.

    Every chosen image's size is read before any is decoded: one too large is refused, mixed sizes
    without ``input.resize`` are refused, and the batch is checked to fit in memory. Images of mixed
    sizes are resized one by one as decoded, so only one full-size image is held at a time.
    """
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
    depth = 1 if channels == 1 else 3
    shapes = [(h, w, depth) for w, h in (_image_size(files[i], where) for i in idx)]
    if len(set(shapes)) > 1 and image_size is None:
        j = next(k for k, s in enumerate(shapes) if s != shapes[0])  # the first image of another size
        a, b = files[idx[0]].relative_to(path), files[idx[j]].relative_to(path)
        raise DataError(
            f"{where}.path: {path}: images differ in size ({', '.join(str(s) for s in sorted(set(shapes)))}: "
            f"{a} is {shapes[0][0]}x{shapes[0][1]}, {b} is {shapes[j][0]}x{shapes[j][1]}, height x width); "
            "set input.resize so they can be brought to one size"
        )
    resize_to = image_size if len(set(shapes)) > 1 else None
    shape, dtype = ((*resize_to, depth), np.float32) if resize_to else (shapes[0], np.uint8)
    _check_fits(len(idx), None, math.prod(shape) * np.dtype(dtype).itemsize, where, path)
    x = np.empty((len(idx), *shape), dtype=dtype)
    for j, i in enumerate(idx):
        image = _decode(files[i], channels, where)
        if image.shape != shapes[j]:
            raise DataError(
                f"{where}.path: {files[i]}: decoded to {list(image.shape)} but its header says {list(shapes[j])}; "
                "the image is damaged: save it again"
            )
        x[j] = resize_bilinear(image[None].astype(np.float32), resize_to)[0] if resize_to else image
    y = np.asarray([labels[i] for i in idx], dtype=np.int64) if classes else None
    return Dataset(x=x, y=y, source=path, available=len(files), classes=classes, eight_bit=True)


def _pixel_limit() -> tuple[int, str]:
    """The most pixels an image may have, and what sets it: ours, or Pillow's ``MAX_IMAGE_PIXELS`` if lower."""
    from PIL import Image

    ours = _MAX_IMAGE_SIDE**2
    theirs = Image.MAX_IMAGE_PIXELS
    if theirs is not None and theirs < ours:
        return int(theirs), "PIL.Image.MAX_IMAGE_PIXELS"
    return ours, f"{_MAX_IMAGE_SIDE}x{_MAX_IMAGE_SIDE}, the largest image input.resize takes"


def _image_size(file: Path, where: str) -> tuple[int, int]:
    """(width, height) from an image's header, refused if larger than ``_pixel_limit``; nothing is decoded.

    Pillow's own decompression-bomb warning is silenced here because this check, at a limit no higher
    than Pillow's, refuses those images with our message; its error (at twice its limit) is ours too.
    """
    from PIL import Image, UnidentifiedImageError

    limit, why = _pixel_limit()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                width, height = im.size
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(file, where, int(found.group(1)) if found else None, None, limit, why) from e
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{where}.path: {file}: cannot decode image: {e}") from e
    if width * height > limit:
        raise _too_large(file, where, width * height, (width, height), limit, why)
    return width, height


def _too_large(
    file: Path, where: str, pixels: int | None, size: tuple[int, int] | None, limit: int, why: str
) -> DataError:
    count = f"Image size ({pixels} pixels)" if pixels is not None else "Image size"
    dims = f"; it is {size[0]}x{size[1]}" if size else ""
    return DataError(
        f"{where}.path: {file}: cannot decode image: {count} exceeds the limit of {limit} pixels ({why}){dims}; "
        "scale it down to about the model's input size, or remove it from the folder"
    )


def _decode(file: Path, channels: int | None, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(file) as im:
            if im.mode.startswith("I"):  # 16-bit grayscale (PNG, TIFF): PIL's convert would clip it at 255
                arr = _sixteen_to_eight(np.asarray(im), file, where)
                if mode == "RGB":
                    arr = np.repeat(arr[..., None], 3, axis=-1)
            else:
                arr = np.asarray(im.convert(mode))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as e:
        raise DataError(f"{where}.path: {file}: cannot decode image: {e}") from e
    return arr[..., None] if arr.ndim == 2 else arr


def _sixteen_to_eight(values: np.ndarray, file: Path, where: str) -> np.ndarray:
    """A 16-bit grayscale image as the 8-bit image of the same picture (v / 257: 65535 -> 255), which the
    recipe's preprocessing and the other images of a folder are on."""
    if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
        raise DataError(
            f"{where}.path: {file}: a 32-bit integer image (values {int(values.min())} to {int(values.max())}); "
            "image folders take 8- and 16-bit images: store these samples as an .npy/.npz array instead"
        )
    return np.rint(values.astype(np.float64) / 257.0).astype(np.uint8)


def prepare(
    ds: Dataset,
    preprocess: Preprocess,
    input_shape: tuple[int, ...],
    where: str,
    *,
    model_input: ModelInput | None = None,
) -> np.ndarray:
    """Preprocess ``ds`` and check it fits a model input of ``input_shape`` ([1, ...]) and is finite.

    ``model_input``: the input the samples are for; an integer one (``ModelInput.integer``) takes the
    samples as integers (``integer_samples``) and no preprocessing, which must then be the default
    (``check_preprocess`` refuses the recipe before any data is read). Without it the input is float.
    """
    x = ds.x
    want = tuple(input_shape[1:])
    if model_input is not None and model_input.integer:
        check_preprocess(preprocess, (model_input,), where.split(": ", 1)[0])
        if x.ndim == len(input_shape) - 1 and input_shape[-1] == 1:
            x = x[..., None]
        if tuple(x.shape[1:]) != want:
            raise DataError(
                f"{where}: {ds.source}: samples have shape {list(x.shape[1:])} but the model input "
                f"'{model_input.name}' expects {list(want)}; store the samples as [N, {', '.join(map(str, want))}] "
                "or set input.reshape in the recipe"
            )
        return integer_samples(x, model_input, ds, where, ds.key)
    if preprocess.resize is not None and len(input_shape) == 4 and tuple(input_shape[1:3]) != preprocess.resize:
        # Checked before resizing: a wrong size would only fail after allocating every resized sample.
        raise DataError(
            f"{where}: input.resize is {list(preprocess.resize)} but the model takes {input_shape[1]}x{input_shape[2]} "
            f"images; set input.resize: [{input_shape[1]}, {input_shape[2]}]"
        )
    # A grayscale array without a channel axis ([N, H, W]) for a [1, H, W, 1] input.
    if x.ndim == len(input_shape) - 1 and input_shape[-1] == 1:
        x = x[..., None]
    try:
        out = _preprocess_in_chunks(preprocess, x)
    except ValueError as e:
        raise DataError(f"{where}: {ds.source}: preprocessing failed: {e}") from e
    except MemoryError as e:
        raise DataError(
            f"{where}: {ds.source}: {len(x)} samples of shape {list(want)} do not fit in memory; use fewer samples"
        ) from e
    if tuple(out.shape[1:]) != want:
        hint = "set input.resize" if out.ndim == len(input_shape) else "check the sample layout"
        raise DataError(
            f"{where}: {ds.source}: samples have shape {list(out.shape[1:])} after preprocessing but the model "
            f"expects {list(want)}; {hint} or use data made for this model"
        )
    _refuse_non_finite(out, f"{where}: {ds.source}", array=ds.key, rows=ds.rows, raw=x, source=ds.source)
    return out


def _preprocess_in_chunks(preprocess: Preprocess, x: np.ndarray) -> np.ndarray:
    """``preprocess(x)``, a few megabytes of samples at a time.

    At once, the contract converts every full-size sample to float32 (four bytes a value, and resize's
    intermediates besides) before resize shrinks them; in chunks, only the output is held in full. Each
    sample is preprocessed on its own either way, so the values are the same.
    """
    per = max(1, _CHUNK * 4 // max(1, math.prod(x.shape[1:]) * 4))
    if len(x) <= per:
        return preprocess(x)
    first = preprocess(x[:per])
    if np.may_share_memory(first, x):  # the contract changed nothing (float32 as is): nothing to bound
        return preprocess(x)
    out = np.empty((len(x), *first.shape[1:]), dtype=first.dtype)
    out[:per] = first
    for start in range(per, len(x), per):
        out[start : start + per] = preprocess(x[start : start + per])
    return out


def check_preprocess(preprocess: Preprocess, inputs: tuple[ModelInput, ...], where: str) -> None:
    """The recipe's ``input`` resize/scale/offset are for one input: with several, they must be left at their defaults.

    Which input a resize or scale would mean is ambiguous, and applying it to every input would scale
    feature vectors like pixels; so samples for several inputs are stored as the model takes them.

    A single integer input (``ModelInput.integer``: token ids, indices) refuses them too: scaling or
    resizing ids makes other ids (or fractions), never what the model was trained on. Refusing, rather
    than silently skipping them, is the rule because a recipe that sets them was written for another model
    or misunderstands this one, and either way its author should know.
    """
    if len(inputs) == 1 and inputs[0].integer and preprocess != Preprocess():
        i = inputs[0]
        keys = [
            key
            for key, changed in (
                ("resize", preprocess.resize is not None),
                ("scale", preprocess.scale != 1.0),
                ("offset", preprocess.offset != 0.0),
            )
            if changed
        ]
        raise RecipeError(
            f"{where}: input: {', '.join('input.' + k for k in keys)} change the values fed to the model, and its "
            f"input '{i.name}' takes {i.dtype} values (token ids, indices or masks) that reach it as stored; "
            f"remove {' and '.join('input.' + k for k in keys)} from the recipe and store the integers as the model "
            "takes them (input.layout and input.reshape do apply: they only move values)"
        )
    if len(inputs) > 1 and preprocess != Preprocess():
        raise RecipeError(
            f"{where}: input: resize/scale/offset apply to single-input models, and this model has {len(inputs)} "
            f"inputs ({', '.join(i.describe() for i in inputs)}); remove the recipe's input section's resize, "
            "scale and offset and store each input's array in the .npz already preprocessed, as the model takes it "
            "(a float input is fed as float32, an integer one as its integers; input.layout and input.reshape do "
            "apply, to each input)"
        )


Reshape = tuple[int, ...] | Mapping[str, tuple[int, ...]] | None  # the recipe's input.reshape


def reshapes(inputs: tuple[ModelInput, ...], reshape: Reshape, recipe: str) -> dict[str, tuple[int, ...]]:
    """The recipe's ``input.reshape`` per input name (``ModelInput.name``); ``recipe`` prefixes every error.

    A list is one sample's shape for a single-input model; a mapping names the inputs it reshapes (by the
    name a data file keys them by, or the tensor's name), for any number of inputs.
    """
    listed = ", ".join(i.describe() for i in inputs)
    if reshape is None:
        return {}
    if not isinstance(reshape, Mapping):
        if len(inputs) == 1:
            return {inputs[0].name: tuple(reshape)}
        raise RecipeError(
            f"{recipe}: input.reshape: a list is one sample's shape for a single-input model, and this model has "
            f"{len(inputs)} inputs ({listed}); give a mapping of input name to shape for the inputs whose data is "
            f"stored in another shape, e.g. input.reshape: {{{inputs[-1].name}: {list(inputs[-1].shape[1:])}}}"
        )
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in reshape.items():
        found = next((i for i in inputs if key in (i.name, i.tensor)), None)
        if found is None:
            raise RecipeError(
                f"{recipe}: input.reshape.{key}: the model has no input named '{key}'; its inputs are {listed} "
                f"(report.json lists them under model.inputs); key each shape by one of "
                f"{', '.join(repr(i.name) for i in inputs)}"
            )
        if found.name in out:
            raise RecipeError(
                f"{recipe}: input.reshape.{key}: the input '{found.name}' is named twice (by its name and its "
                "tensor's name); keep one"
            )
        out[found.name] = tuple(shape)
    return out


def read_samples(
    path: Path,
    inputs: tuple[ModelInput, ...],
    preprocess: Preprocess,
    *,
    where: str,
    samples: int | None = None,
    seed: int = 0,
    layout: str = "nhwc",
    reshape: Reshape = None,
) -> tuple[np.ndarray, Dataset]:
    """Preprocessed samples for the model's ``inputs`` (packed for several) and the raw dataset they came from.

    ``layout`` and ``reshape`` are the recipe's ``input.layout`` / ``input.reshape``: the returned raw dataset
    already has the model's sample shape (``arrange``, per input for several), so a device that preprocesses
    it sees the same. ``where`` is ``"<recipe>: data.<kind>"``.
    """
    shapes = reshapes(inputs, reshape, where.split(": ", 1)[0])
    if len(inputs) > 1:
        ds = load_inputs(path, inputs, where=where, samples=samples, seed=seed)
        ds = arrange_inputs(ds, inputs, layout, shapes, where)
        return prepare_inputs(ds, inputs, where), ds
    shape = inputs[0].shape
    channel_axis = 1 if layout == "nchw" else -1
    ds = load_dataset(
        path,
        where=where,
        samples=samples,
        seed=seed,
        channels=shape[channel_axis] if len(shape) == 4 else None,
        image_size=preprocess.resize,
        input_names=tuple(dict.fromkeys((inputs[0].name, inputs[0].tensor))),
    )
    ds = arrange(ds, shape, layout, shapes.get(inputs[0].name), where)
    return prepare(ds, preprocess, shape, where, model_input=inputs[0]), ds


def arrange_inputs(
    ds: Dataset, inputs: tuple[ModelInput, ...], layout: str, shapes: Mapping[str, tuple[int, ...]], where: str
) -> Dataset:
    """``arrange`` for each input of a packed dataset: its ``input.reshape`` entry, then the image layout.

    ``arranged`` becomes a mapping of input name to what was done to its array (None: taken as stored),
    or stays None when nothing was done to any.
    """
    arrays: dict[str, np.ndarray] = {}
    notes: dict[str, str | None] = {}
    for i in inputs:
        one = dataclasses.replace(ds, x=ds.x[i.tensor], arranged=None)
        done = arrange(one, i.shape, layout, shapes.get(i.name), where, name=i.name)
        arrays[i.tensor] = done.x
        notes[i.name] = done.arranged if isinstance(done.arranged, str) else None
    if not any(notes.values()):
        return ds
    return dataclasses.replace(ds, x=pack_inputs(arrays), arranged=notes)


def arrange(
    ds: Dataset,
    shape: tuple[int, ...],
    layout: str,
    reshape: tuple[int, ...] | None,
    where: str,
    *,
    name: str | None = None,
) -> Dataset:
    """Samples brought to the model input's ``shape``: ``input.reshape`` first, then the image layout.

    4-D (image) samples stored in the other layout than the model's (``input.layout``) are transposed:
    PyTorch data is usually [N, C, H, W], image folders and TensorFlow data [N, H, W, C]. Which layout the
    data has is read from its shape, which matches the model's in one order only (a square image whose
    side equals its channel count would match both, and is taken as stored in the model's layout).
    ``name`` is the input's name when the model has several (``ds.x`` is then that input's array).
    """
    x, notes = ds.x, []
    if reshape is not None:
        have, want_values = int(np.prod(x.shape[1:])), math.prod(reshape)
        if have != want_values:
            what = f"array '{name}': samples" if name else "samples"
            key = f"input.reshape.{name}" if name else "input.reshape"
            raise DataError(
                f"{where}: {ds.source}: {what} of shape {list(x.shape[1:])} ({have} values) cannot take the "
                f"recipe's {key} {list(reshape)} ({want_values} values); set {key} to the model's sample "
                f"shape {list(shape[1:])} or another shape of {have} values"
            )
        if tuple(x.shape[1:]) != tuple(reshape):  # data already in that shape: nothing to say
            x = x.reshape(len(x), *reshape)
            notes.append(f"reshaped from {list(ds.x.shape[1:])} to {list(reshape)} (input.reshape)")
    if len(shape) == 4:
        want = tuple(shape[1:])
        channel_axis = 1 if layout == "nchw" else 3
        if x.ndim == 3 and shape[channel_axis] == 1:  # grayscale without a channel axis
            x = np.expand_dims(x, channel_axis)
        other = "nchw" if layout == "nhwc" else "nhwc"
        stored_other = (want[2], want[0], want[1]) if layout == "nhwc" else (want[1], want[2], want[0])
        if x.ndim == 4 and tuple(x.shape[1:]) != want and tuple(x.shape[1:]) == stored_other:
            x = np.ascontiguousarray(x.transpose((0, 2, 3, 1) if layout == "nhwc" else (0, 3, 1, 2)))
            notes.append(f"stored {other}, transposed to the model's {layout} (input.layout)")
        elif x.ndim == 4:
            notes.append(f"stored {layout}, as the model takes it (input.layout)")
    if x is ds.x and not notes:
        return ds
    return dataclasses.replace(ds, x=x, arranged="; ".join(notes) or None)


def integer_samples(a: np.ndarray, i: ModelInput, ds: Dataset, where: str, key: str | None) -> np.ndarray:
    """Samples for the integer model input ``i``: integers, checked to fit its dtype, cast to it; nothing else.

    Float data is refused even when every value is a whole number: a float token id is almost always a
    preprocessing mistake (ids normalized like pixels, a mask averaged), and a float array of whole
    numbers costs the user one ``astype`` to store as what it is. Bool data feeds integer inputs as 0/1.
    A value outside the dtype's range is refused by its row in the file (``Dataset.rows``), never
    wrapped around as a cast would: an id of 2**40 for an int32 input would silently become another id.
    ``key``: the .npz array the samples came from (None: an .npy or a folder), named in messages.
    """
    target = np.dtype(i.dtype)
    what = f"{where}.path: {ds.source}: " + (f"array '{key}'" if key else "samples")
    if a.dtype.kind not in "biu":
        whole = a.dtype.kind == "f" and bool(np.all(np.isfinite(a))) and bool(np.all(a == np.round(a)))
        why = (
            "its values are whole numbers, so .astype(numpy.int64) keeps them; storing them as floats is still "
            "refused because a float id usually means the ids went through preprocessing"
            if whole
            else "fractional values mean the ids went through preprocessing meant for float data (normalization, "
            "scaling): take the ids from before it"
        )
        raise DataError(
            f"{what}: holds {a.dtype} values but the model input '{i.name}' ({i.describe()}) takes integers "
            f"(token ids, indices or masks), fed to it as they are; store them as integers, e.g. "
            f"numpy.savez(path, {key or 'x'}=ids.astype(numpy.int64)); {why}"
        )
    lo, hi = (0, 1) if target.kind == "b" else (int(np.iinfo(target).min), int(np.iinfo(target).max))
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        flat = a.reshape(len(a), -1)
        bad = (flat < lo) | (flat > hi)
        samples = np.flatnonzero(bad.any(axis=1))
        first = int(samples[0])
        value = int(flat[first][bad[first]][0])
        named = [int(ds.rows[j]) if ds.rows is not None else int(j) for j in samples[:5]]
        unit = "row" if ds.rows is not None else "sample"
        listed = ", ".join(map(str, named)) + (", ..." if len(samples) > 5 else "")
        raise DataError(
            f"{what}: {int(bad.sum())} values in {len(samples)} samples do not fit the model input '{i.name}', which "
            f"takes {target} ({lo}..{hi}): {unit} {named[0]}"
            + (f" of {ds.source.name}" if ds.rows is not None else "")
            + f" holds {value} ({unit}s {listed} of the {len(a)} read); no id or index of this model is that large or "
            "small: repair or remove those rows"
        )
    return a.astype(target, copy=False)


def _refuse_non_finite(
    a: np.ndarray,
    what: str,
    *,
    array: str | None = None,
    rows: np.ndarray | None = None,
    raw: np.ndarray | None = None,
    source: Path | None = None,
) -> None:
    """A ``DataError`` naming the first NaN/Inf sample by its row in the file, and how many there are.

    ``a``: the samples as the model gets them; ``rows``: each one's row in ``source`` (``Dataset.rows``),
    so the row named is one the user can find, not a place in the seed's random subset; ``raw``: the
    samples as read, to tell a NaN or Inf stored in the file from a value float32 cannot hold; ``array``:
    the .npz array ("x", or "array 'name'" for one input of several). Without ``rows`` the samples are
    named by their place in ``a``.
    """
    bad = ~np.isfinite(a)
    if not bad.any():
        return
    samples = np.flatnonzero(bad.reshape(len(a), -1).any(axis=1))
    first = int(samples[0])
    what = f"{what}: {array}" if array and array.startswith("array ") else what  # one input of several
    if rows is None or source is None:
        raise DataError(
            f"{what}: {bad.sum()} NaN/Inf values in {len(samples)} samples (first: sample {first}); "
            "remove or repair them"
        )
    row = int(rows[first])
    value = float(a[first][bad[first]].flat[0])
    kind = "NaN" if math.isnan(value) else "Inf" if value > 0 else "-Inf"
    stored = raw is None or (raw.dtype.kind == "f" and not np.all(np.isfinite(raw[first])))
    holds = kind if stored else f"a value that is {kind} as float32 after preprocessing"
    name = f"{array} row" if array and not array.startswith("array ") else "row"
    listed = ", ".join(str(int(rows[i])) for i in samples[:5]) + (", ..." if len(samples) > 5 else "")
    raise DataError(
        f"{what}: {bad.sum()} NaN/Inf values in {len(samples)} samples (first: sample {row}): {name} {row} of "
        f"{source.name} holds {holds} (samples are named by their row in the file; rows {listed} of the "
        f"{len(a)} read); remove or repair those rows"
    )
