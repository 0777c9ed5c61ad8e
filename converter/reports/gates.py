"""CI gates: budgets checked against what a report measured, optionally against a baseline.

Pure functions of report dictionaries, so ``convert`` and ``check`` evaluate the same way.
A gate whose value was not measured is ``skipped`` with the reason -- never passed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from converter.errors import UserInputError
from converter.reports.budgets import UNITS, Limit, parse_limit

MODEL_LEVEL = ("model_bytes", "accuracy_drop", "min_accuracy", "min_agreement")
TARGET_LEVEL = (
    "flash_bytes",
    "arena_bytes",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_estimate_ms",
    "sram_bytes",
    "engine_bytes",
    "npu_ops_fraction",
)
LOWER_BOUNDS = ("min_accuracy", "min_agreement", "npu_ops_fraction")
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


def _top1(report: dict[str, Any], target: str) -> dict[str, Any]:
    """The accuracy when it is top-1 (``min_accuracy`` is a top-1 fraction), else empty."""
    acc = _accuracy(report, target) or {}
    return acc if acc.get("metric") in ("top1", None) else {}


def accuracy_unit(report: dict[str, Any] | None, target: str) -> str:
    """The unit of ``accuracy_drop`` in a report: its metric's (``runtime.accuracy.UNITS``); top-1 fraction."""
    return ((_accuracy(report, target) if report else None) or {}).get("unit") or "fraction"


def _metric_mismatch(name: str, report: dict[str, Any], baseline: dict[str, Any], target: str) -> str | None:
    """Why a relative ``accuracy_drop`` cannot compare with the baseline: the two runs used other metrics."""
    if name != "accuracy_drop":
        return None
    now, before = ((_accuracy(r, target) or {}).get("metric") for r in (report, baseline))
    if before and now and before != now:
        return f"the baseline measured accuracy_drop as {before}, this run as {now}; they do not compare"
    return None


def _estimate(t: dict[str, Any]) -> Any:
    """A target's latency estimate: the NPU compiler's own when it gave one, else the profile's MAC count."""
    if t.get("latency_estimate_ms") is not None:
        return t["latency_estimate_ms"]
    return ((t.get("cost") or {}).get("latency_estimate") or {}).get("latency_ms")


def value_of(report: dict[str, Any], name: str, target: str) -> float | None:
    """The measured figure a budget limits, or None when it was not measured."""
    getters: dict[str, Callable[[], Any]] = {
        "model_bytes": lambda: report["artifacts"]["int8"]["bytes"],
        "flash_bytes": lambda: report["targets"][target].get("flash_bytes"),
        "arena_bytes": lambda: report["targets"][target].get("arena_bytes"),
        "sram_bytes": lambda: report["targets"][target].get("sram_bytes"),
        "engine_bytes": lambda: (report["targets"][target].get("gpu") or {}).get("engine_bytes"),
        "npu_ops_fraction": lambda: report["targets"][target].get("npu_ops_fraction"),
        "latency_estimate_ms": lambda: _estimate(report["targets"][target]),
        "latency_p50_ms": lambda: report["latency"][target]["int8"]["p50_ms"],
        "latency_p90_ms": lambda: report["latency"][target]["int8"]["p90_ms"],
        "accuracy_drop": lambda: (_accuracy(report, target) or {}).get("drop"),
        "min_accuracy": lambda: _top1(report, target).get("int8"),
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
            unit = accuracy_unit(report, target) if name == "accuracy_drop" else UNITS[name]
            limit: Limit = parse_limit(name, raw)
        except (KeyError, ValueError) as e:
            raise UserInputError(f"budget {name} for target {target}: {e}; fix the recipe's budgets") from e
        budget = raw if isinstance(raw, str) else limit.describe(unit)
        value = value_of(report, name, target)
        if value is None:
            t = report.get("targets", {}).get(target) or {} if target != ALL_TARGETS else {}
            fit = ("arena_bytes", "flash_bytes", "sram_bytes", "npu_ops_fraction")
            why = "; ".join(t.get("problems") or []) if name in fit else ""
            scored_by = (_accuracy(report, target) or {}).get("metric")
            if name == "min_accuracy" and scored_by not in ("top1", None):
                why = f"min_accuracy is a top-1 fraction; this model is scored by {scored_by}"
            why = why or t.get("reason") or f"{name} was not measured for {target}"
            gates.append(_skip(name, target, unit, budget, source, why))
            continue
        bound = limit.value
        if limit.relative:
            base = value_of(baseline, name, target) if baseline else None
            mismatch = _metric_mismatch(name, report, baseline, target) if baseline else None
            if mismatch:
                gates.append(_skip(name, target, unit, budget, source, mismatch))
                continue
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


_NUMBER = (int, float)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, _NUMBER) else type(value).__name__
    )


class _Shape:
    """Type checks on a report dictionary whose errors name the file and the key path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, problem: str) -> UserInputError:
        return UserInputError(
            f"{self.where}: {path}: {problem}; this is not a report.json as edgeconv writes it -- "
            "use the report.json of an edgeconv convert run (or run convert again to regenerate it)"
        )

    def need(self, node: dict[str, Any], key: str, path: str, kinds: tuple[type, ...], optional: bool = False) -> Any:
        """``node[key]`` when it has one of ``kinds`` (None allowed when ``optional``)."""
        at = f"{path}.{key}" if path else key
        if key not in node:
            if optional:
                return None
            raise self.fail(at, "missing")
        value = node[key]
        if value is None and optional:
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(_kind(k()) if k is not type(None) else "null" for k in kinds)
            raise self.fail(at, f"expected {names}, got {_kind(value)}")
        return value


def _check_budget_levels(shape: _Shape, levels: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
    for name, raw in levels.items():
        at = f"{path}.{name}"
        if name not in allowed:
            from converter.schema import suggest

            raise shape.fail(
                at, f"unknown budget '{name}'{suggest(str(name), list(allowed))}; budgets: {', '.join(allowed)}"
            )
        if isinstance(raw, bool) or not isinstance(raw, (*_NUMBER, str)):
            raise shape.fail(at, f"expected a number or a string like '600KB' or '+2%', got {_kind(raw)}")
        try:
            parse_limit(name, raw)
        except ValueError as e:
            raise shape.fail(at, str(e)) from e


def check_report(doc: Any, where: str) -> dict[str, Any]:
    """``doc`` when it is a report.json of this schema version whose gates and CI files can be computed.

    Checks the sections ``check`` and ``--baseline`` read -- versions, artifacts, budgets, targets,
    latency and accuracy -- so a hand-edited or foreign file is a usage error naming the key, never
    a ``KeyError`` deep in the renderers.
    """
    from converter.reports.report import SCHEMA_VERSION

    shape = _Shape(where)
    if not isinstance(doc, dict):
        raise UserInputError(f"{where}: not an edgeconv report.json (the top level is {_kind(doc)}, not a mapping)")
    missing = [k for k in ("schema_version", "recipe", "artifacts", "tool") if k not in doc]
    if missing:
        raise UserInputError(f"{where}: not an edgeconv report.json (missing {', '.join(missing)})")
    version = doc["schema_version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise UserInputError(
            f"{where}: schema_version {version!r} cannot be compared with {SCHEMA_VERSION}, the only version this "
            "edgeconv reads; check it with the edgeconv that wrote it, or run edgeconv convert again to rewrite it"
        )
    tool = shape.need(doc, "tool", "", (dict,))
    for key in ("version", "interpreter"):
        shape.need(tool, key, "tool", (str,))
    recipe = shape.need(doc, "recipe", "", (dict,))
    for key in ("name", "sha256"):
        shape.need(recipe, key, "recipe", (str,))
    artifacts = shape.need(doc, "artifacts", "", (dict,))
    for name in ("float", "int8"):
        art = shape.need(artifacts, name, "artifacts", (dict,))
        size = shape.need(art, "bytes", f"artifacts.{name}", (int,))
        if size <= 0:
            raise shape.fail(f"artifacts.{name}.bytes", f"expected a positive size, got {size}")
        shape.need(art, "sha256", f"artifacts.{name}", (str,))
    calibration = shape.need(doc, "calibration", "", (dict,))
    shape.need(calibration, "method", "calibration", (str,))
    shape.need(calibration, "samples", "calibration", (int,))
    picture = shape.need(calibration, "histograms", "calibration", (str,), optional=True)
    if picture is not None and (Path(picture).name != picture or picture in ("", ".", "..")):
        # check reads the picture from the report's folder and embeds it: never a path elsewhere.
        raise shape.fail("calibration.histograms", f"expected a file name beside report.json, got {picture!r}")
    for i, tensor in enumerate(shape.need(calibration, "tensors", "calibration", (list,), optional=True) or []):
        at = f"calibration.tensors[{i}]"
        if not isinstance(tensor, dict):
            raise shape.fail(at, f"expected a mapping, got {_kind(tensor)}")
        shape.need(tensor, "index", at, (int,))
        for key in ("name", "method"):
            shape.need(tensor, key, at, (str,))
        for key in ("clipped_fraction", "levels_used"):
            shape.need(tensor, key, at, _NUMBER)
        bounds = shape.need(tensor, "range", at, (list,))
        if len(bounds) != 2 or not all(isinstance(b, _NUMBER) and not isinstance(b, bool) for b in bounds):
            raise shape.fail(f"{at}.range", f"expected [lo, hi] numbers, got {bounds!r}")
    budgets = shape.need(doc, "budgets", "", (dict,), optional=True) or {}
    _check_budget_levels(
        shape,
        shape.need(budgets, "recipe", "budgets", (dict,), optional=True) or {},
        "budgets.recipe",
        MODEL_LEVEL + TARGET_LEVEL,
    )
    for target, levels in (shape.need(budgets, "targets", "budgets", (dict,), optional=True) or {}).items():
        at = f"budgets.targets.{target}"
        if not isinstance(levels, dict):
            raise shape.fail(at, f"expected a mapping with recipe and device budgets, got {_kind(levels)}")
        for level in ("recipe", "device"):
            own = shape.need(levels, level, at, (dict,), optional=True) or {}
            _check_budget_levels(shape, own, f"{at}.{level}", MODEL_LEVEL + TARGET_LEVEL)
    for target, t in (shape.need(doc, "targets", "", (dict,), optional=True) or {}).items():
        at = f"targets.{target}"
        if not isinstance(t, dict):
            raise shape.fail(at, f"expected a mapping, got {_kind(t)}")
        shape.need(t, "compatible", at, (bool,), optional=True)
        shape.need(t, "problems", at, (list,), optional=True)
        shape.need(t, "reason", at, (str,), optional=True)
        shape.need(t, "accuracy", at, (dict,), optional=True)
        for key in ("flash_bytes", "ram_bytes", "arena_bytes", "sram_bytes", "npu_ops_fraction"):
            shape.need(t, key, at, _NUMBER, optional=True)
    for target, lat in (shape.need(doc, "latency", "", (dict,), optional=True) or {}).items():
        at = f"latency.{target}"
        if lat is None:
            continue
        if not isinstance(lat, dict):
            raise shape.fail(at, f"expected a mapping or null, got {_kind(lat)}")
        shape.need(lat, "where", at, (str,))
        shape.need(lat, "machine", at, (dict,))
        for run in ("int8", "float"):
            record = shape.need(lat, run, at, (dict,), optional=run == "float")
            for key in ("p50_ms", "p90_ms", "threads"):
                if record is not None:
                    shape.need(record, key, f"{at}.{run}", _NUMBER)
    accuracy = shape.need(doc, "accuracy", "", (dict,), optional=True)
    if accuracy and accuracy.get("metric") is not None:
        shape.need(accuracy, "metric", "accuracy", (str,))
        shape.need(accuracy, "where", "accuracy", (str,))
        shape.need(accuracy, "samples", "accuracy", (int,))
        for key in ("float", "int8", "drop", "agreement"):
            shape.need(accuracy, key, "accuracy", _NUMBER, optional=key != "drop")
    quantization = shape.need(doc, "quantization", "", (dict,), optional=True) or {}
    shape.need(quantization, "per_channel", "quantization", (bool,), optional=True)
    for key in ("tuning", "analysis"):
        shape.need(doc, key, "", (dict,), optional=True)
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows (edgeconv writes null for what was not measured)")


def read_report(path: Path, where: str) -> dict[str, Any]:
    """A report.json read and checked by ``check_report``; errors start with ``where`` (option and file)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise UserInputError(f"{where}: cannot read a JSON report: {what}; give the report.json of a run") from e
    return check_report(doc, where)


def load_baseline(path: str) -> dict[str, Any]:
    """A previous report.json to compare against; anything else is a usage error."""
    return read_report(Path(path), f"--baseline {path}")


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
