"""Cache of float reference models, keyed by the source model's bytes.

Converting a Keras/SavedModel source to the float .tflite reference costs seconds
(TensorFlow tracing and conversion); re-running a recipe with only a different method
or target then pays nothing but a hash of the source files. Entries carry their sha256
and are rebuilt when they do not verify.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from converter import __version__
from converter.artifacts import write_atomic
from converter.calibration.calib_cache import cache_dir

log = logging.getLogger(__name__)


def tf_version() -> str:
    try:
        return metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        return "none"


def source_key(path: Path, custom_objects: Iterable[str]) -> str:
    """sha256 over the source model's files, the custom objects named and the converting versions."""
    # v2: entries made before SavedModels were inspected for load-time ops must not be trusted.
    # v3: entries made before recurrent layers were unrolled hold float WHILE loops.
    # v4: entries made before Keras models with several outputs kept their output names (Identity, Identity_1).
    h = hashlib.sha256(json.dumps(["float-reference-v4", __version__, tf_version(), list(custom_objects)]).encode())
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


META_KEYS = ("sha256", "format", "loader")


def _read_meta(meta_path: Path) -> dict[str, str]:
    """The entry's metadata: a JSON object with a string for each of ``META_KEYS``, or ValueError."""
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"holds {type(meta).__name__}, not an object")
    missing = [k for k in META_KEYS if not isinstance(meta.get(k), str)]
    if missing:
        raise ValueError(f"no text for {', '.join(missing)}")
    return {k: meta[k] for k in META_KEYS}


def load(key: str) -> tuple[bytes, dict[str, str]] | None:
    """The cached float model and its metadata, or None.

    A corrupt entry (unreadable or malformed metadata, a model that does not match its sha256)
    is a warning naming its files, which are deleted so the caller rebuilds them.
    """
    folder = cache_dir() / "float"
    model_path, meta_path = folder / f"{key}.tflite", folder / f"{key}.json"
    if not (model_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = _read_meta(meta_path)
        content = model_path.read_bytes()
        if hashlib.sha256(content).hexdigest() != meta["sha256"]:
            raise ValueError(f"{model_path.name} does not match the sha256 in {meta_path.name}")
        return content, meta
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning(
            "warning: float model cache entry %s is corrupt (%s); deleted it and %s, rebuilding",
            meta_path,
            e,
            model_path.name,
        )
        for stale in (model_path, meta_path):
            try:
                stale.unlink(missing_ok=True)
            except OSError as gone:
                log.warning("warning: could not delete %s: %s", stale, gone)
        return None


def save(key: str, content: bytes, format: str, loader: str) -> None:
    """Store a float model (model first, metadata last: an entry without metadata is ignored)."""
    folder = cache_dir() / "float"
    try:
        write_atomic(folder / f"{key}.tflite", content)
        meta = {"sha256": hashlib.sha256(content).hexdigest(), "format": format, "loader": loader}
        write_atomic(folder / f"{key}.json", json.dumps(meta).encode())
    except OSError as e:
        log.warning("could not write the float model cache in %s: %s", folder, e)
