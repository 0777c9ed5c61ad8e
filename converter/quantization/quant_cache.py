"""Cache of quantized models, keyed by the float model's bytes, the ranges written into it and the settings.

TensorFlow's quantizer is the one step of a re-run that needs TensorFlow (seconds to import, hundreds of
MB): with the same float model, ranges and settings it writes the same bytes, so a re-run of an unchanged
recipe takes them from here and never imports it. The key holds the TensorFlow and edgeconv versions, so an
upgrade quantizes again. Entries carry their sha256 and are rebuilt when they do not verify; writes are
atomic (two processes computing the same entry is harmless).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np

from converter import __version__
from converter.artifacts import write_atomic
from converter.calibration.calib_cache import cache_dir
from converter.model_cache import tf_version

log = logging.getLogger(__name__)
VERSION = "quantized-v1"
COUNTS = {"hits": 0, "misses": 0}  # this run's lookups (the pipeline resets them), for report.json's "cache"


def key(kind: str, float_tflite: bytes, settings: dict[str, Any], samples: np.ndarray | None = None) -> str:
    """sha256 over everything the quantized bytes depend on (ranges go in ``settings`` as exact floats)."""
    h = hashlib.sha256(json.dumps([VERSION, __version__, tf_version(), kind, settings], sort_keys=True).encode())
    h.update(hashlib.sha256(float_tflite).digest())
    if samples is not None:  # the stock calibrate-and-quantize route reads the samples itself
        h.update(str(samples.dtype).encode() + str(samples.shape).encode())
        h.update(np.ascontiguousarray(samples).tobytes())
    return h.hexdigest()


def ranges_setting(ranges: dict[int, tuple[float, float]]) -> list[list[Any]]:
    """Ranges as exact JSON (hex floats: a last-bit change is a different model)."""
    return [[int(i), float(lo).hex(), float(hi).hex()] for i, (lo, hi) in sorted(ranges.items())]


def load(entry: str) -> bytes | None:
    folder = cache_dir() / "quantized"
    model_path, sum_path = folder / f"{entry}.tflite", folder / f"{entry}.sha256"
    COUNTS["misses"] += 1  # undone below on a verified hit
    if not (model_path.is_file() and sum_path.is_file()):
        return None
    try:
        content = model_path.read_bytes()
        if hashlib.sha256(content).hexdigest() != sum_path.read_text(encoding="ascii").strip():
            raise ValueError(f"{model_path.name} does not match {sum_path.name}")
        COUNTS["misses"] -= 1
        COUNTS["hits"] += 1
        return content
    except (OSError, ValueError) as e:
        log.warning("warning: quantized model cache entry %s is corrupt (%s); quantizing again", model_path, e)
        for stale in (model_path, sum_path):
            stale.unlink(missing_ok=True)
        return None


def save(entry: str, content: bytes) -> None:
    """Model first, checksum last: an entry without its checksum is ignored."""
    folder = cache_dir() / "quantized"
    try:
        write_atomic(folder / f"{entry}.tflite", content)
        write_atomic(folder / f"{entry}.sha256", hashlib.sha256(content).hexdigest().encode())
    except OSError as e:
        log.warning("could not write the quantized model cache in %s: %s", folder, e)
