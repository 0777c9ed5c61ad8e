"""Content-addressed cache of calibration statistics.

The key covers everything the statistics depend on: the float model's bytes, the
preprocessed calibration samples, the preprocessing parameters, the statistics format
and settings, and the tool version. Changing only the range method then reuses the
statistics without running the model. Every entry carries a digest of its payload; an
entry that fails to read or verify is reported, deleted and rebuilt -- never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from converter import __version__
from converter.artifacts import write_atomic
from converter.calibration.stats import BINS, STATS_VERSION, SUBSAMPLE, CalibrationStats, TensorStats
from converter.provenance import tool_info

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$EDGECONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeconv``, else ``~/.cache/edgeconv``."""
    if os.environ.get("EDGECONV_CACHE_DIR"):
        return Path(os.environ["EDGECONV_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeconv"


def cache_key(model: bytes, samples: np.ndarray, preprocessing: dict[str, Any], settings: dict[str, Any]) -> str:
    """sha256 over everything the statistics depend on."""
    h = hashlib.sha256()
    header = {
        "tool": __version__,
        "interpreter": tool_info()["interpreter"],
        "stats_version": STATS_VERSION,
        "bins": BINS,
        "subsample": SUBSAMPLE,
        "preprocessing": preprocessing,
        "settings": settings,
        "samples": [list(samples.shape), str(samples.dtype)],
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    h.update(hashlib.sha256(model).digest())
    h.update(np.ascontiguousarray(samples).tobytes())
    return h.hexdigest()


def _payload_digest(meta: bytes, hist: np.ndarray) -> str:
    return hashlib.sha256(meta + np.ascontiguousarray(hist).tobytes()).hexdigest()


def save(folder: Path, key: str, stats: CalibrationStats) -> Path:
    """Store ``stats`` under ``key`` (atomically)."""
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
    np.savez(
        buffer,
        meta=np.frombuffer(meta, dtype=np.uint8),
        hist=hist,
        digest=np.frombuffer(_payload_digest(meta, hist).encode(), dtype=np.uint8),
    )
    path = folder / f"{key}.npz"
    write_atomic(path, buffer.getvalue())
    return path


def load(folder: Path, key: str) -> CalibrationStats | None:
    """The stored statistics for ``key``; None when absent or corrupt (a corrupt entry is removed)."""
    path = folder / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta_bytes = npz["meta"].tobytes()
            hist = npz["hist"]
            digest = npz["digest"].tobytes().decode()
        if digest != _payload_digest(meta_bytes, hist):
            raise ValueError("digest mismatch")
        meta = json.loads(meta_bytes)
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
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, zipfile.BadZipFile, EOFError) as e:
        log.warning("calibration cache entry %s is corrupt (%s); rebuilding it", path, e)
        path.unlink(missing_ok=True)
        return None
