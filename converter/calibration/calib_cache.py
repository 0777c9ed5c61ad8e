"""Cache of calibration statistics, keyed by everything they depend on.

The key covers the float model's bytes, the preprocessed calibration samples, the
preprocessing parameters, the statistics format and settings, and the tool version.
Changing only the range method then reuses the statistics without running the model.
Entries are .npz files in the shared store (``converter.cache``): one that fails to
verify or to read is reported, deleted and rebuilt -- never trusted.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from converter import __version__
from converter.cache import Store, digest
from converter.calibration.stats import BINS, STATS_VERSION, SUBSAMPLE, CalibrationStats, TensorStats
from converter.provenance import tool_info

STORE = Store("statistics", ".npz", "calibration")


def cache_key(model: bytes, samples: np.ndarray, preprocessing: dict[str, Any], settings: dict[str, Any]) -> str:
    """sha256 over everything the statistics depend on."""
    header = {
        "tool": __version__,
        "interpreter": tool_info()["interpreter"],
        "stats_version": STATS_VERSION,
        "bins": BINS,
        "subsample": SUBSAMPLE,
        "preprocessing": preprocessing,
        "settings": settings,
    }
    return digest(header, model, samples)


def encode(stats: CalibrationStats) -> bytes:
    """The statistics as .npz bytes: a JSON record per tensor and one histogram array (no pickles)."""
    meta = json.dumps(
        {
            "samples": stats.samples,
            "batch": stats.batch,
            "input_index": stats.input_index,
            "tensors": [
                {
                    "index": t.index,
                    "name": t.name,
                    "shape": list(t.shape),
                    "op": t.op,
                    "min": t.min,
                    "max": t.max,
                    "count": t.count,
                    "nonfinite": t.nonfinite,
                    "half_range": t.half_range,
                }
                for t in stats.tensors
            ],
        }
    ).encode()
    hist = np.stack([t.hist for t in stats.tensors]) if stats.tensors else np.zeros((0, BINS), np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(meta, dtype=np.uint8), hist=hist)
    return buffer.getvalue()


def decode(content: bytes) -> CalibrationStats:
    """``encode``'s inverse; ValueError (or KeyError, TypeError) when the bytes are not such a record."""
    with np.load(io.BytesIO(content), allow_pickle=False) as npz:
        meta = json.loads(npz["meta"].tobytes())
        hist = npz["hist"]
    if hist.shape != (len(meta["tensors"]), BINS):
        raise ValueError(f"histogram shape {hist.shape}")
    tensors = tuple(
        TensorStats(
            t["index"],
            t["name"],
            tuple(t["shape"]),
            t["op"],
            float(t["min"]),
            float(t["max"]),
            int(t["count"]),
            int(t["nonfinite"]),
            float(t["half_range"]),
            hist[i].astype(np.int64),
        )
        for i, t in enumerate(meta["tensors"])
    )
    return CalibrationStats(tensors, int(meta["samples"]), int(meta["batch"]), int(meta["input_index"]))


def save(key: str, stats: CalibrationStats) -> None:
    STORE.put(key, encode(stats))


def load(key: str) -> CalibrationStats | None:
    """The stored statistics for ``key``; None when absent or untrustworthy (such an entry is removed)."""
    return STORE.get_as(key, decode)
