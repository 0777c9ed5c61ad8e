"""Cache of quantized models, keyed by the float model's bytes, the ranges written into it and the settings.

TensorFlow's quantizer is the one step of a re-run that needs TensorFlow (seconds to import, hundreds of
MB): with the same float model, ranges and settings it writes the same bytes, so a re-run of an unchanged
recipe takes them from here and never imports it. The key holds the TensorFlow and edgeconv versions, so an
upgrade quantizes again. Entries live in the shared store (``converter.cache``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from converter import __version__
from converter.cache import Store, digest
from converter.model_cache import tf_version

VERSION = "quantized-v1"
STORE = Store("quantized", ".tflite", "quantized model")


def key(kind: str, float_tflite: bytes, settings: dict[str, Any], samples: np.ndarray | None = None) -> str:
    """sha256 over everything the quantized bytes depend on (ranges go in ``settings`` as exact floats).

    The stock calibrate-and-quantize route reads the samples itself, so they are part of its key.
    """
    return digest([VERSION, __version__, tf_version(), kind, settings], float_tflite, samples)


def ranges_setting(ranges: dict[int, tuple[float, float]]) -> list[list[Any]]:
    """Ranges as exact JSON (hex floats: a last-bit change is a different model)."""
    return [[int(i), float(lo).hex(), float(hi).hex()] for i, (lo, hi) in sorted(ranges.items())]


def load(entry: str) -> bytes | None:
    found = STORE.get(entry)
    return found[0] if found else None


def save(entry: str, content: bytes) -> None:
    STORE.put(entry, content)
