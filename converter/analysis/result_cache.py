"""Cache of host-side results (evaluation accuracy, per-layer errors), keyed by everything they depend on.

Running the float and int8 models over the evaluation data is a pure function of the two models' bytes,
the samples, the labels, the settings and the runtime's versions: a re-run of an unchanged recipe takes
the figure from here instead of computing it again (seconds on MobileNetV2-224). Host latency is never
cached: it is a measurement of the machine as it is now. Entries are JSON written atomically; one that
does not parse is a miss and is computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

import numpy as np

from converter import __version__
from converter.artifacts import write_atomic
from converter.calibration.calib_cache import cache_dir

log = logging.getLogger(__name__)
VERSION = "results-v1"
COUNTS = {"hits": 0, "misses": 0}  # this run's lookups (the pipeline resets them), for report.json's "cache"
T = TypeVar("T")


def _runtime() -> list[str]:
    out = [__version__, np.__version__]
    for package in ("ai-edge-litert", "tflite-runtime", "tensorflow"):
        try:
            out.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
        break
    return out


def key(kind: str, settings: dict[str, Any], *parts: bytes | np.ndarray | None) -> str:
    """sha256 over the kind, the settings, the versions and every part's bytes (arrays with dtype and shape)."""
    h = hashlib.sha256(json.dumps([VERSION, kind, _runtime(), settings], sort_keys=True, default=str).encode())
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


def cached(
    kind: str, entry: str | None, compute: Callable[[], T], encode: Callable[[T], Any], decode: Callable[[Any], T]
) -> T:
    """``compute()``, or its stored result when ``entry`` (a ``key``) was computed before; None: no caching."""
    if entry is None:
        return compute()
    path = cache_dir() / "results" / kind / f"{entry}.json"
    if path.is_file():
        try:
            value = decode(json.loads(path.read_text(encoding="utf-8")))
            COUNTS["hits"] += 1
            return value
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("warning: result cache entry %s is unreadable (%s); computing it again", path, e)
    COUNTS["misses"] += 1
    value = compute()
    try:
        write_atomic(path, json.dumps(encode(value)).encode())
    except OSError as e:
        log.warning("could not write the result cache in %s: %s", path.parent, e)
    return value
