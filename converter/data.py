"""Calibration and evaluation data: .npz / .npy arrays and image folders, chosen reproducibly.

A single-input model takes an .npz (``x``, optional ``y``; ``x`` may also be keyed by the input's
name), an .npy or an image folder. A model with several inputs takes an .npz with one array per
input keyed by the input's name (``ModelInput.name``; the input tensor's name works too) and an
optional ``y``; its samples are packed into one structured array (``runtime.model.pack_inputs``),
so a sample's inputs stay together through selection and slicing. The recipe's ``input.layout`` and
``input.reshape`` bring each array to its input's shape (``arrange``, ``arrange_inputs``).

Data files come from strangers too: numpy's own errors are replaced by ours (never its
advice to load pickles "unsafely": ``allow_pickle`` stays False), each array's header is
read before its data so object, complex, string and structured arrays are refused by name,
and a truncated or mislabelled file says so.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import DataError, RecipeError
from .runtime.model import TFLiteModel, pack_inputs, signature_names
from .runtime.preprocess import Preprocess, resize_bilinear

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

    def describe(self) -> str:
        return f"{self.name} {['N', *self.shape[1:]]}".replace("'", "")


def model_inputs(model: TFLiteModel) -> tuple[ModelInput, ...]:
    """Every input of a (float) model in its order, named as a data file keys it (see ``ModelInput``)."""
    keys = signature_names(model.interpreter)
    return tuple(ModelInput(keys.get(i.index, i.name), i.name, i.shape, i.dtype) for i in model.inputs)


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
    arrays, y_all = _read_npz_inputs(path, inputs, where, layout)
    counts = {name: len(a) for name, a in arrays.items()}
    if y_all is not None:
        counts["y"] = len(y_all)
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise DataError(
            f"{where}.path: {path}: the arrays hold different numbers of samples ({listed}); every input "
            "(and y) needs one row per sample, in the same order"
        )
    n = len(next(iter(arrays.values())))
    if n == 0:
        raise DataError(f"{where}.path: {path}: the dataset is empty; it needs at least one sample")
    idx = select(n, samples, seed)
    y = _labels(np.asarray(y_all), n, where, path)[idx] if y_all is not None else None
    if samples is not None and samples > n:
        log.warning("%s: asked for %d samples, %s has only %d; using all", where, samples, path, n)
    eight_bit = all(a.dtype == np.uint8 for a in arrays.values())
    picked = {i.tensor: np.asarray(arrays[i.name][idx]) for i in inputs}
    return Dataset(x=pack_inputs(picked), y=y, source=path, available=n, eight_bit=eight_bit)


def _read_npz_inputs(
    path: Path, inputs: tuple[ModelInput, ...], where: str, layout: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The .npz arrays of every input (by ``ModelInput.name``) and ``y``, headers checked before any data."""
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
            for key in [*keys.values(), *([labels] if labels else [])]:
                with archive.open(members[key]) as f:
                    _, dtype = _read_header(f, where, path, key)
                problem = _dtype_problem(dtype, f"array '{key}'" if key != "y" else "labels 'y'")
                if problem:
                    raise DataError(f"{where}.path: {path}: {problem}")
            extra = sorted(set(members) - set(keys.values()) - {labels})
            if extra:
                log.warning("%s: %s: arrays %s are not model inputs; ignored", where, path, ", ".join(extra))
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[key] for name, key in keys.items()}
            y_all = npz[labels] if labels else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError, NotImplementedError) as e:
        raise _read_failed(e, where, path, ".npz") from e
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.ndim < 1:
            raise DataError(f"{where}.path: {path}: array '{keys[name]}' is not an array of samples; {layout}")
    return arrays, y_all


def prepare_inputs(ds: Dataset, inputs: tuple[ModelInput, ...], where: str) -> np.ndarray:
    """Packed float32 samples for a model with several inputs, each array checked against its input.

    No preprocessing contract applies (it is defined for one input): each array reaches the model as
    float32, as ``arrange_inputs`` left it, but for a missing channel axis of size 1.
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
        try:
            a = np.asarray(a, dtype=np.float32)
        except MemoryError as e:
            raise DataError(f"{where}: {ds.source}: {len(a)} samples do not fit in memory; use fewer samples") from e
        _refuse_non_finite(a, f"{where}: {ds.source}: array '{i.name}'")
        out[i.tensor] = a
    return pack_inputs(out)


def _labels(y: np.ndarray, n: int, where: str, path: Path) -> np.ndarray:
    problem = _dtype_problem(y.dtype, "labels 'y'")
    if problem:
        raise DataError(f"{where}.path: {path}: {problem}")
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot labels
        y = np.argmax(y, axis=1)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}.path: {path}: labels 'y' have shape {y.shape}; expected [{n}] class indices")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)) or np.any(np.abs(y) >= 2**31):
            raise DataError(f"{where}.path: {path}: labels 'y' must be integer class indices")
    elif y.dtype.kind == "u" and y.size and int(y.max()) >= 2**63:
        raise DataError(f"{where}.path: {path}: labels 'y' must be integer class indices, got {int(y.max())}")
    return y.astype(np.int64)


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_NPZ_HELP = "an .npz is a zip of .npy arrays as numpy.savez writes it (x: samples, optional y: labels)"


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


def _check_array(x: np.ndarray, where: str, path: Path) -> None:
    problem = _dtype_problem(x.dtype, "samples")
    if problem:
        raise DataError(f"{where}.path: {path}: {problem}")
    if x.ndim < 2:
        raise DataError(
            f"{where}.path: {path}: samples have shape {x.shape}; expected [N, ...] with one sample per row"
        )


def _magic(path: Path, where: str) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(6)
    except OSError as e:
        raise DataError(f"{where}.path: {path}: cannot read it: {e.strerror or e}") from e


def _read_header(f: IO[bytes], where: str, path: Path, member: str = "") -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype from an .npy header, without reading (or unpickling) the data."""
    name = f"{path}" + (f" (array '{member}')" if member else "")
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise DataError(f"{where}.path: {name}: not a readable .npy array (its header is damaged)") from e
    return tuple(shape), dtype


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
    return DataError(f"{where}.path: {path}: cannot read {kind}: {text}")


def _load_npz(path: Path, where: str, samples: int | None, seed: int, names: tuple[str, ...] = ()) -> Dataset:
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
            for key in (x_key, "y"):
                if key not in members:
                    continue
                with archive.open(members[key]) as f:
                    _, dtype = _read_header(f, where, path, key)
                problem = _dtype_problem(dtype, "labels 'y'" if key == "y" else "samples")
                if problem:
                    raise DataError(f"{where}.path: {path}: {problem}")
        with np.load(path, allow_pickle=False) as npz:
            x_all = npz[x_key]
            y_all = npz["y"] if "y" in members else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, MemoryError, NotImplementedError) as e:
        raise _read_failed(e, where, path, ".npz") from e
    if not isinstance(x_all, np.ndarray) or (y_all is not None and not isinstance(y_all, np.ndarray)):
        raise DataError(f"{where}.path: {path}: 'x' or 'y' in the .npz is not an .npy array; {_NPZ_HELP}")
    _check_array(x_all, where, path)
    idx = select(len(x_all), samples, seed)
    y = _labels(np.asarray(y_all), len(x_all), where, path)[idx] if y_all is not None else None
    return Dataset(x=np.asarray(x_all[idx]), y=y, source=path, available=len(x_all), eight_bit=x_all.dtype == np.uint8)


def _load_npy(path: Path, where: str, samples: int | None, seed: int) -> Dataset:
    if _magic(path, where) != _NPY_MAGIC:
        raise DataError(f"{where}.path: {path}: cannot read .npy: it has no numpy header; save arrays with numpy.save")
    with path.open("rb") as f:
        _, dtype = _read_header(f, where, path)
    problem = _dtype_problem(dtype, "samples")
    if problem:
        raise DataError(f"{where}.path: {path}: {problem}")
    try:
        x_all = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise _read_failed(e, where, path, ".npy") from e
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
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as e:
        raise DataError(f"{where}.path: {file}: cannot decode image: {e}") from e
    return arr[..., None] if arr.ndim == 2 else arr


def prepare(ds: Dataset, preprocess: Preprocess, input_shape: tuple[int, ...], where: str) -> np.ndarray:
    """Preprocess ``ds`` and check it fits a model input of ``input_shape`` ([1, ...]) and is finite."""
    x = ds.x
    want = tuple(input_shape[1:])
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
        out = preprocess(x)
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
    _refuse_non_finite(out, f"{where}: {ds.source}")
    return out


def check_preprocess(preprocess: Preprocess, inputs: tuple[ModelInput, ...], where: str) -> None:
    """The recipe's ``input`` resize/scale/offset are for one input: with several, they must be left at their defaults.

    Which input a resize or scale would mean is ambiguous, and applying it to every input would scale
    feature vectors like pixels; so samples for several inputs are stored as the model takes them.
    """
    if len(inputs) > 1 and preprocess != Preprocess():
        raise RecipeError(
            f"{where}: input: resize/scale/offset apply to single-input models, and this model has {len(inputs)} "
            f"inputs ({', '.join(i.describe() for i in inputs)}); remove the recipe's input section's resize, "
            "scale and offset and store each input's array in the .npz already preprocessed, as the model takes it "
            "(it is fed as float32; input.layout and input.reshape do apply, to each input)"
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
    return prepare(ds, preprocess, shape, where), ds


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


def _refuse_non_finite(a: np.ndarray, what: str) -> None:
    """A ``DataError`` naming how many NaN/Inf values there are, in how many samples, and the first."""
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise DataError(
            f"{what}: {bad.sum()} NaN/Inf values in {len(rows)} samples (first: sample {int(rows[0])}); "
            "remove or repair them"
        )
