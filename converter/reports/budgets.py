"""Budgets a model must fit: declared by device profiles (defaults) and recipes (which win).

A limit is a number in the budget's unit, a string with a unit (``"600KB"``, ``"5ms"``),
or a relative limit against a baseline report (``"+2%"``). Bytes: B, KB/KiB (1024), MB/MiB;
time: us, ms, s. ``model_kb`` is accepted as ``model_bytes`` in KiB.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

UNITS = {
    "model_bytes": "bytes",
    "flash_bytes": "bytes",
    "arena_bytes": "bytes",
    "latency_p50_ms": "ms",
    "latency_p90_ms": "ms",
    "latency_estimate_ms": "ms",
    "sram_bytes": "bytes",
    "engine_bytes": "bytes",
    "npu_ops_fraction": "fraction",
    "accuracy_drop": "fraction",
    "min_accuracy": "fraction",
    "min_agreement": "fraction",
}
_BYTES = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2}
_TIME = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_LIMIT = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*([A-Za-z%]*)\s*$")


@dataclass(frozen=True)
class Limit:
    """A parsed limit: absolute (in the budget's unit) or relative to a baseline (percent)."""

    value: float
    relative: bool = False

    def describe(self, unit: str) -> str:
        if self.relative:
            return f"{self.value:+g}% of baseline"
        return f"{self.value:,.0f} bytes" if unit == "bytes" else f"{self.value:g} {unit}"


def parse_limit(name: str, raw: float | str) -> Limit:
    """Parse one budget; ``ValueError`` says what is wrong and how to write it."""
    unit = UNITS[name]
    if isinstance(raw, int | float):
        if raw < 0:
            raise ValueError(f"{name}: must not be negative, got {raw}")
        return Limit(float(raw))
    m = _LIMIT.match(raw)
    if not m:
        raise ValueError(f"{name}: cannot read {raw!r}; write a number, a number with a unit, or '+N%'")
    number, suffix = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(number):
        raise ValueError(f"{name}: {raw!r} is too large a number")
    if suffix == "%":
        return Limit(number, relative=True)
    if raw.strip().startswith(("+", "-")):
        raise ValueError(f"{name}: a signed limit {raw!r} needs a '%' (relative to the baseline)")
    scale = (_BYTES if unit == "bytes" else _TIME if unit == "ms" else {"": 1.0}).get(suffix)
    if scale is None:
        allowed = {"bytes": "B, KB, KiB, MB, MiB", "ms": "us, ms, s", "fraction": "none (a fraction like 0.01)"}[unit]
        raise ValueError(f"{name}: unknown unit '{m.group(2)}' in {raw!r}; units for {unit}: {allowed}")
    return Limit(number * scale)


@dataclass(frozen=True)
class Budgets:
    """Limits; a null limit is not checked."""

    model_bytes: float | str | None = field(
        default=None, metadata={"doc": "Max int8 model size (bytes, '600KB', '+2%')"}
    )
    model_kb: float | None = field(default=None, metadata={"doc": "Max int8 model size in KiB", "min": 0})
    flash_bytes: float | str | None = field(default=None, metadata={"doc": "Max flash use (model + runtime)"})
    arena_bytes: float | str | None = field(default=None, metadata={"doc": "Max tensor arena (RAM) in bytes"})
    latency_p50_ms: float | str | None = field(default=None, metadata={"doc": "Max median latency ('5ms', '+10%')"})
    latency_p90_ms: float | str | None = field(default=None, metadata={"doc": "Max 90th percentile latency"})
    latency_estimate_ms: float | str | None = field(
        default=None,
        metadata={
            "doc": "Max estimated latency where none is measured: Vela's performance model (Ethos-U), "
            "MACs x cycles/MAC (MCU profiles); an estimate, labelled so"
        },
    )
    sram_bytes: float | str | None = field(
        default=None, metadata={"doc": "Max NPU SRAM (Vela's figure for the memory mode), bytes"}
    )
    engine_bytes: float | str | None = field(
        default=None,
        metadata={"doc": "Max TensorRT engine size, bytes: the engine trtexec built on the board (deploy over SSH)"},
    )
    npu_ops_fraction: float | None = field(
        default=None, metadata={"doc": "Min fraction of operators on the NPU (Vela's count)", "min": 0, "max": 1}
    )
    accuracy_drop: float | None = field(
        default=None,
        metadata={
            "doc": "Max loss in the evaluation metric: top-1 fraction (0.01 = 1 point), reconstruction "
            "SNR dB (sqnr) or relative MSE (mse)",
            "min": 0,
        },
    )
    min_accuracy: float | None = field(default=None, metadata={"doc": "Min int8 top-1 (0..1)", "min": 0, "max": 1})
    min_agreement: float | None = field(
        default=None, metadata={"doc": "Min float/int8 top-1 agreement", "min": 0, "max": 1}
    )

    def __post_init__(self) -> None:
        if self.model_kb is not None and self.model_bytes is not None:
            raise ValueError("give model_bytes or model_kb, not both")
        for name, raw in self.items().items():
            parse_limit(name, raw)

    def items(self) -> dict[str, float | str]:
        """Set limits by canonical name (``model_kb`` becomes ``model_bytes``)."""
        out: dict[str, float | str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "model_kb":
                out["model_bytes"] = float(value) * 1024
            else:
                out[f.name] = value
        return out
