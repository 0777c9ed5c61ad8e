"""CI gates: budgets checked against what a report measured, optionally against a baseline.

Pure functions of report dictionaries, so ``convert`` and ``check`` evaluate the same way.
A gate whose value was not measured is ``skipped`` with the reason -- never passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .budgets import UNITS, Limit, parse_limit
from .errors import UserInputError

MODEL_LEVEL = ("model_bytes", "accuracy_drop", "min_accuracy", "min_agreement")
TARGET_LEVEL = ("flash_bytes", "arena_bytes", "latency_p50_ms", "latency_p90_ms")
LOWER_BOUNDS = ("min_accuracy", "min_agreement")
ALL_TARGETS = "*"


@dataclass(frozen=True)
class Gate:
    """One budget checked: ``status`` is passed, failed or skipped."""

    name: str
    target: str
    limit: float | None
    value: float | None
    unit: str
    passed: bool | None
    status: str
    budget: str
    source: str
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _accuracy(report: dict[str, Any], target: str) -> dict[str, Any] | None:
    """The model-level (host) accuracy for "*", else only what was measured on that target."""
    acc = (
        report.get("accuracy")
        if target == ALL_TARGETS
        else (report.get("targets", {}).get(target) or {}).get("accuracy")
    )
    return dict(acc) if acc else None


def value_of(report: dict[str, Any], name: str, target: str) -> float | None:
    """The measured figure a budget limits, or None when it was not measured."""
    getters: dict[str, Callable[[], Any]] = {
        "model_bytes": lambda: report["artifacts"]["int8"]["bytes"],
        "flash_bytes": lambda: report["targets"][target].get("flash_bytes"),
        "arena_bytes": lambda: report["targets"][target].get("arena_bytes"),
        "latency_p50_ms": lambda: report["latency"][target]["int8"]["p50_ms"],
        "latency_p90_ms": lambda: report["latency"][target]["int8"]["p90_ms"],
        "accuracy_drop": lambda: (_accuracy(report, target) or {}).get("drop"),
        "min_accuracy": lambda: (_accuracy(report, target) or {}).get("int8"),
        "min_agreement": lambda: (_accuracy(report, target) or {}).get("agreement"),
    }
    try:
        value = getters[name]()
    except (KeyError, TypeError):
        return None
    return float(value) if value is not None else None


def budget_rows(report: dict[str, Any]) -> list[tuple[str, str, float | str, str]]:
    """(budget, target, raw limit, source) for every budget that applies; the recipe wins over devices."""
    budgets = report.get("budgets") or {}
    recipe = budgets.get("recipe") or {}
    rows: list[tuple[str, str, float | str, str]] = []
    for name in MODEL_LEVEL:
        if name in recipe:
            rows.append((name, ALL_TARGETS, recipe[name], "recipe"))
    for target, levels in (budgets.get("targets") or {}).items():
        for name in (*TARGET_LEVEL, *MODEL_LEVEL):
            own, device = (levels.get("recipe") or {}), (levels.get("device") or {})
            if name in own:
                rows.append((name, target, own[name], "recipe target"))
            elif name in TARGET_LEVEL and name in recipe:
                rows.append((name, target, recipe[name], "recipe"))
            elif name in device and name not in recipe:
                rows.append((name, target, device[name], "device profile"))
    return rows


def _skip(name: str, target: str, unit: str, budget: str, source: str, reason: str) -> Gate:
    return Gate(name, target, None, None, unit, None, "skipped", budget, source, reason)


def evaluate(report: dict[str, Any], baseline: dict[str, Any] | None = None) -> list[Gate]:
    """Every applicable budget as a gate."""
    gates = []
    for name, target, raw, source in budget_rows(report):
        try:
            unit = UNITS[name]
            limit: Limit = parse_limit(name, raw)
        except (KeyError, ValueError) as e:
            raise UserInputError(f"budget {name} for target {target}: {e}; fix the recipe's budgets") from e
        budget = raw if isinstance(raw, str) else limit.describe(unit)
        value = value_of(report, name, target)
        if value is None:
            t = report.get("targets", {}).get(target) or {} if target != ALL_TARGETS else {}
            why = "; ".join(t.get("problems") or []) if name in ("arena_bytes", "flash_bytes") else ""
            why = why or t.get("reason") or f"{name} was not measured for {target}"
            gates.append(_skip(name, target, unit, budget, source, why))
            continue
        bound = limit.value
        if limit.relative:
            base = value_of(baseline, name, target) if baseline else None
            if base is None:
                reason = "relative budget needs a baseline (--baseline)" if not baseline else "not in the baseline"
                gates.append(_skip(name, target, unit, budget, source, reason))
                continue
            bound = base * (1 + limit.value / 100)
        ok = value >= bound if name in LOWER_BOUNDS else value <= bound
        gates.append(Gate(name, target, bound, value, unit, ok, "passed" if ok else "failed", budget, source))
    # A target the model cannot run on fails the build even without budgets.
    for target, t in (report.get("targets") or {}).items():
        if t.get("compatible") is None:
            continue
        ok = bool(t["compatible"])
        problems: str | None = None if ok else "; ".join(t.get("problems") or []) or "incompatible"
        gates.append(
            Gate(
                "compatible",
                target,
                None,
                None,
                "check",
                ok,
                "passed" if ok else "failed",
                "runs on the target",
                "target check",
                problems,
            )
        )
    # A device that was to be measured but could not be reached fails the build: no figure is no pass.
    for target, t in (report.get("targets") or {}).items():
        if t.get("measure_error"):
            gates.append(
                Gate(
                    "measured",
                    target,
                    None,
                    None,
                    "check",
                    False,
                    "failed",
                    "measured on the device",
                    "target check",
                    t["measure_error"],
                )
            )
    return gates


def load_baseline(path: str) -> dict[str, Any]:
    """A previous report.json to compare against; anything else is a usage error."""
    import json
    from pathlib import Path

    from .report import SCHEMA_VERSION

    file = Path(path)
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UserInputError(f"--baseline {path}: cannot read a JSON report: {e}") from e
    if not isinstance(doc, dict) or "schema_version" not in doc or "artifacts" not in doc:
        raise UserInputError(f"--baseline {path}: not an edgeconv report.json (no schema_version/artifacts)")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise UserInputError(
            f"--baseline {path}: schema_version {doc['schema_version']} cannot be compared with {SCHEMA_VERSION}"
        )
    return doc


DELTA_FIGURES = (
    ("int8 model bytes", lambda r, t: value_of(r, "model_bytes", t), ALL_TARGETS),
    ("float top-1", lambda r, t: (r.get("accuracy") or {}).get("float"), ALL_TARGETS),
    ("int8 top-1", lambda r, t: value_of(r, "min_accuracy", t), ALL_TARGETS),
    ("agreement", lambda r, t: value_of(r, "min_agreement", t), ALL_TARGETS),
)


def deltas(report: dict[str, Any], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """Every comparable figure: baseline, current, absolute and relative change."""
    rows = []
    figures: list[tuple[str, Callable[[dict[str, Any], str], Any], str]] = list(DELTA_FIGURES)
    for target in report.get("targets", {}):
        figures.append((f"{target} int8 p50 ms", lambda r, t: value_of(r, "latency_p50_ms", t), target))
        figures.append((f"{target} arena bytes", lambda r, t: value_of(r, "arena_bytes", t), target))
    for label, get, target in figures:
        now, before = get(report, target), get(baseline, target)
        if now is None and before is None:
            continue
        change = now - before if now is not None and before is not None else None
        pct = 100 * change / before if change is not None and before else None
        rows.append({"figure": label, "baseline": before, "current": now, "delta": change, "delta_pct": pct})
    return rows
