"""One content-addressed store for everything a re-run can reuse: float references, statistics, int8 models, results.

Each kind of entry keeps its own key (what its value depends on) and its own encoding, but they share
how an entry is stored and trusted: ``<cache>/<kind>/<key><suffix>`` written first and a ``<key>.json``
sidecar holding its sha256 (and any metadata) written last, both atomically. An entry without its
sidecar is ignored; one that does not verify is a warning naming it, deleted, and built again --
never trusted. Two processes writing the same entry is harmless: they write the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from converter.artifacts import write_atomic

log = logging.getLogger(__name__)
T = TypeVar("T")


def cache_dir() -> Path:
    """``$EDGECONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeconv``, else ``~/.cache/edgeconv``."""
    if os.environ.get("EDGECONV_CACHE_DIR"):
        return Path(os.environ["EDGECONV_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeconv"


def digest(header: Any, *parts: bytes | np.ndarray | None) -> str:
    """sha256 over a JSON header and each part's bytes (arrays with their dtype and shape)."""
    h = hashlib.sha256(json.dumps(header, sort_keys=True, default=str).encode())
    for part in parts:
        if part is None:
            h.update(b"none")
        elif isinstance(part, bytes):
            h.update(hashlib.sha256(part).digest())
        else:
            array = np.ascontiguousarray(part)
            h.update(f"{array.dtype.descr}{array.shape}".encode())
            h.update(hashlib.sha256(array.tobytes()).digest())
    return h.hexdigest()


class Store:
    """One kind of entry in the cache folder, counted per run for report.json's ``cache``."""

    def __init__(self, kind: str, suffix: str, what: str) -> None:
        self.kind, self.suffix, self.what = kind, suffix, what
        self.hits = self.misses = 0

    def folder(self) -> Path:
        return cache_dir() / self.kind

    def paths(self, key: str) -> tuple[Path, Path]:
        """The entry's content file and its sidecar."""
        folder = self.folder()
        return folder / f"{key}{self.suffix}", folder / f"{key}.json"

    def get(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """The entry's bytes and its sidecar (``sha256`` and the metadata it was put with), or None."""
        content_path, meta_path = self.paths(key)
        self.misses += 1  # undone below on a verified hit
        if not (content_path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError(f"{meta_path.name} holds {type(meta).__name__}, not an object")
            if not isinstance(meta.get("sha256"), str):
                raise ValueError(f"{meta_path.name} holds no sha256")
            content = content_path.read_bytes()
            if hashlib.sha256(content).hexdigest() != meta["sha256"]:
                raise ValueError(f"{content_path.name} does not match the sha256 in {meta_path.name}")
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.drop(key, f"is corrupt ({e})")
            return None
        self.misses -= 1
        self.hits += 1
        return content, meta

    def get_as(self, key: str, decode: Callable[[bytes], T]) -> T | None:
        """The entry decoded, or None; one that verifies but does not decode is dropped like a corrupt one."""
        found = self.get(key)
        if found is None:
            return None
        try:
            return decode(found[0])
        except (ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            self.hits -= 1
            self.misses += 1
            self.drop(key, f"does not decode ({e})")
            return None

    def put(self, key: str, content: bytes, **meta: str) -> None:
        """Store ``content`` (content first, sidecar last); a cache that cannot be written is a warning."""
        content_path, meta_path = self.paths(key)
        try:
            write_atomic(content_path, content)
            write_atomic(meta_path, json.dumps({"sha256": hashlib.sha256(content).hexdigest(), **meta}).encode())
        except OSError as e:
            log.warning("warning: could not write the %s cache in %s: %s", self.what, content_path.parent, e)

    def drop(self, key: str, why: str) -> None:
        """Delete an entry that cannot be trusted, saying which and why; the caller builds it again."""
        content_path, meta_path = self.paths(key)
        log.warning("warning: %s cache entry %s %s; deleted it, building it again", self.what, content_path, why)
        for stale in (content_path, meta_path):
            try:
                stale.unlink(missing_ok=True)
            except OSError as gone:
                log.warning("warning: could not delete %s: %s", stale, gone)

    def reset_counts(self) -> None:
        self.hits = self.misses = 0

    def counts(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}
