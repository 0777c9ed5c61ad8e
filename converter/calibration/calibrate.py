"""Calibration: statistics (cached) → a range per activation tensor → a per-tensor record.

Two phases, as in NNCF: ``collect`` observes the float model once; ``choose_ranges``
applies the recipe's methods and rules to those statistics, so changing the method only
reruns the second phase (and, with the cache, not even the model).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.calibration import calib_cache
from converter.calibration.ranges import RangeChoice, choose
from converter.calibration.stats import BINS, CalibrationStats, TensorStats, collect
from converter.errors import CalibrationError
from converter.quantization.arithmetic import asymmetric, levels_used
from converter.quantization.lstm_intermediates import lstm_ranges
from converter.recipe import CalibrationSpec

log = logging.getLogger(__name__)

# Ops whose int8 output parameters TFLite's kernels fix (1/256 with -128 for [0, 1];
# 1/128 with 0 for [-1, 1]), whatever is calibrated: report the range that applies.
FIXED_OUTPUT_RANGES = {"SOFTMAX": (0.0, 1.0), "LOGISTIC": (0.0, 1.0), "TANH": (-1.0, 1.0)}


@dataclass(frozen=True)
class TensorRecord:
    """Report row for one tensor: what was seen, what was chosen, what it costs."""

    stats: TensorStats
    choice: RangeChoice
    clipped_fraction: float
    levels_used: int
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.stats.name,
            "index": self.stats.index,
            "method": self.choice.method,
            "observed": [self.stats.min, self.stats.max] if self.stats.written else None,
            "range": [self.choice.lo, self.choice.hi],
            "threshold": self.choice.threshold,
            "clipped_fraction": self.clipped_fraction,
            "levels_used": self.levels_used,
            "utilisation": self.levels_used / 256,
            "note": self.note,
        }


@dataclass(frozen=True)
class Calibration:
    """The outcome of calibration: ranges by tensor index, records, and provenance."""

    records: tuple[TensorRecord, ...]
    samples: int
    batch: int
    cache_hit: bool | None
    cache_key: str
    seconds: float
    # (tensor index, (min, max)) of fused LSTMs' intermediates and states, from TensorFlow's calibrator
    lstm: tuple[tuple[int, tuple[float, float]], ...] = ()

    def ranges(self) -> dict[int, tuple[float, float]]:
        return {**dict(self.lstm), **ranges_of(self.records)}

    def warnings(self) -> list[str]:
        return [f"{r.stats.name}: {r.note}" for r in self.records if r.note]


def ranges_of(records: Iterable[TensorRecord]) -> dict[int, tuple[float, float]]:
    """Tensor index -> chosen (lo, hi), the form the quantizer takes."""
    return {r.stats.index: (r.choice.lo, r.choice.hi) for r in records}


def gather_stats(
    model: bytes, x: np.ndarray, spec: CalibrationSpec, preprocessing: dict[str, Any], seed: int = 0
) -> tuple[CalibrationStats, bool | None, str]:
    """Statistics from the cache when present, else by running the model (then cached)."""
    settings = {"seed": seed, "batch": 8, "threads": os.cpu_count()}
    key = calib_cache.cache_key(model, x, preprocessing, settings)
    if spec.cache:
        cached = calib_cache.load(key)
        if cached is not None:
            return cached, True, key
    stats = collect(model, x, batch=8, seed=seed)
    if spec.cache:
        calib_cache.save(key, stats)  # a cache that cannot be written is a warning, never a failed run
    return stats, (False if spec.cache else None), key


def method_for(name: str, spec: CalibrationSpec) -> tuple[str, float, bool]:
    """(method, percentile, set by a rule) for a tensor; the last matching rule wins."""
    method, pct, by_rule = spec.method, spec.percentile, False
    for rule in spec.rules:
        if fnmatch.fnmatchcase(name, rule.tensors):
            method, by_rule = rule.method, True
            pct = rule.percentile if rule.percentile is not None else spec.percentile
    return method, pct, by_rule


def _record(s: TensorStats, choice: RangeChoice, note: str | None = None) -> TensorRecord:
    lo, hi = choice.lo, choice.hi
    total = s.hist.sum()
    if total == 0 or s.half_range == 0:
        return TensorRecord(s, choice, 0.0, 1, note)
    edges = np.linspace(-s.half_range, s.half_range, BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    # Only a side the range actually cuts can clip (bin centres would blur the exact extremes).
    outside = ((centres < lo) & (lo > s.min)) | ((centres > hi) & (hi < s.max))
    clipped = float(s.hist[outside].sum() / total)
    occupied = centres[s.hist > 0]
    levels = levels_used(np.clip(occupied, lo, hi), asymmetric(lo, hi))
    return TensorRecord(s, choice, clipped, levels, note)


def _input_choice(s: TensorStats, spec: CalibrationSpec, contract: tuple[float, float] | None) -> RangeChoice:
    if isinstance(spec.input_range, tuple):
        return RangeChoice(*spec.input_range, "recipe")
    if spec.input_range == "auto" and contract is not None:
        return RangeChoice(min(contract), max(contract), "contract")
    return RangeChoice(s.min, s.max, "minmax")


def choose_ranges(
    stats: CalibrationStats, spec: CalibrationSpec, contract: tuple[float, float] | None = None
) -> list[TensorRecord]:
    """A range for every observed tensor, by the recipe's method and rules.

    The model input keeps the preprocessing contract's range (``contract``, for 8-bit
    data) or its observed range, unless a rule names it or ``input_range`` is given:
    clipping the input would throw away information before the first layer.
    """
    records = []
    for s in stats.tensors:
        if s.nonfinite:
            raise CalibrationError(
                f"tensor '{s.name}' took {s.nonfinite} NaN/Inf values on the calibration data; "
                "the float model itself overflows or divides by zero on these samples"
            )
        if not s.written:
            unwritten = "never written during calibration; range set to [0, 1] (zero exact)"
            log.warning("calibration: tensor '%s' was %s", s.name, unwritten)
            records.append(_record(s, RangeChoice(0.0, 1.0, "default"), unwritten))
            continue
        method, pct, by_rule = method_for(s.name, spec)
        if s.op in FIXED_OUTPUT_RANGES:
            choice = RangeChoice(*FIXED_OUTPUT_RANGES[s.op], "fixed")
        elif (s.index == stats.input_index or not s.op) and not by_rule:  # no writing op: a model input
            choice = _input_choice(s, spec, contract)
        else:
            choice = choose(s, method, pct)
        note: str | None = None
        if choice.hi - choice.lo <= 0 and choice.lo == 0:
            seen = f"constant {s.min:g} during calibration" if s.min == s.max else f"{choice.method} chose [0, 0]"
            note = f"{seen}; range set to [0, 1] (zero exact)"
            log.warning("calibration: tensor '%s' was %s", s.name, note)
            choice = RangeChoice(0.0, 1.0, "default")
        elif s.min == s.max:
            note = f"constant {s.min:g} during calibration; range [{min(s.min, 0):g}, {max(s.max, 0):g}]"
            log.warning("calibration: tensor '%s' was %s", s.name, note)
        records.append(_record(s, choice, note))
    return records


def calibrate(
    model: bytes,
    x: np.ndarray,
    spec: CalibrationSpec,
    preprocessing: dict[str, Any],
    contract: tuple[float, float] | None = None,
) -> Calibration:
    """Statistics (cached) and ranges for every activation of ``model`` over samples ``x``."""
    start = time.perf_counter()
    stats, hit, key = gather_stats(model, x, spec, preprocessing)
    records = choose_ranges(stats, spec, contract)
    lstm = tuple(sorted(lstm_ranges(model, x).items()))
    return Calibration(tuple(records), stats.samples, stats.batch, hit, key, time.perf_counter() - start, lstm)
