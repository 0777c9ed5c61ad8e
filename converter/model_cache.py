"""Cache of float reference models, keyed by the source model's bytes.

Converting a Keras/SavedModel source to the float .tflite reference costs seconds
(TensorFlow tracing and conversion); re-running a recipe with only a different method
or target then pays nothing but a hash of the source files. Entries live in the shared
store (``converter.cache``), which verifies them and rebuilds any that do not verify.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from converter import __version__
from converter.cache import Store

STORE = Store("float", ".tflite", "float model")


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


def load(key: str) -> tuple[bytes, dict[str, str]] | None:
    """The cached float model and its metadata (``sha256``, ``format``, ``loader``), or None."""
    entry = STORE.get(key)
    if entry is None:
        return None
    content, meta = entry
    missing = [k for k in META_KEYS if not isinstance(meta.get(k), str)]
    if missing:
        STORE.drop(key, f"is corrupt (no text for {', '.join(missing)})")
        return None
    return content, {k: meta[k] for k in META_KEYS}


def save(key: str, content: bytes, format: str, loader: str) -> None:
    """Store a float model with the format it came from and the loader that made it."""
    STORE.put(key, content, format=format, loader=loader)
