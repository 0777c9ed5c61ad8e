"""Cache of host-side results (evaluation accuracy, per-layer errors), keyed by everything they depend on.

Running the float and int8 models over the evaluation data is a pure function of the two models' bytes,
the samples, the labels, the settings and the runtime's versions: a re-run of an unchanged recipe takes
the figure from here instead of computing it again (seconds on MobileNetV2-224). Host latency is a
measurement of a machine, not a function of its inputs: it is kept per machine by ``boards.latency_cache``.
Entries are JSON in the shared store
(``converter.cache``); one that does not verify or decode is computed again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

import numpy as np

from converter import __version__
from converter.cache import Store, digest

VERSION = "results-v2"  # v2: per-layer errors say what their int8 ranges clip
STORE = Store("results", ".result", "result")
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
    return digest([VERSION, kind, _runtime(), settings], *parts)


def cached(
    kind: str, entry: str | None, compute: Callable[[], T], encode: Callable[[T], Any], decode: Callable[[Any], T]
) -> T:
    """``compute()``, or its stored result when ``entry`` (a ``key``) was computed before; None: no caching."""
    if entry is None:
        return compute()
    found = STORE.get_as(entry, lambda content: decode(json.loads(content)))
    if found is not None:
        return found
    value = compute()
    STORE.put(entry, json.dumps(encode(value)).encode())
    return value
