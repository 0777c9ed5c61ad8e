"""Budgets a model must fit: declared by device profiles (defaults) and, later, recipes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Budgets:
    """Limits; a null limit is not checked."""

    model_bytes: int | None = field(default=None, metadata={"doc": "Max int8 model size in bytes", "min": 1})
    flash_bytes: int | None = field(default=None, metadata={"doc": "Max flash use (model + runtime)", "min": 1})
    arena_bytes: int | None = field(default=None, metadata={"doc": "Max tensor arena (RAM) in bytes", "min": 1})
    latency_p50_ms: float | None = field(default=None, metadata={"doc": "Max median latency in ms", "min": 0})
    latency_p90_ms: float | None = field(default=None, metadata={"doc": "Max 90th percentile latency", "min": 0})
    accuracy_drop: float | None = field(default=None, metadata={"doc": "Max float-int8 top-1 drop", "min": 0})
    min_accuracy: float | None = field(default=None, metadata={"doc": "Min int8 top-1", "min": 0, "max": 1})
    min_agreement: float | None = field(default=None, metadata={"doc": "Min float/int8 agreement", "min": 0, "max": 1})
