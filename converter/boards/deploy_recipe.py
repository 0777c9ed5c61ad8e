"""``edgeconv deploy``: a converted recipe's models measured on a device (or a fleet), recorded in its report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.artifacts import sha256_of, update_outputs
from converter.boards.fleet import MEASURED, UNREACHABLE, Board, BoardOutcome, run_fleet, unreachable_verdict
from converter.boards.measure import TargetResult, measure_target, merge_measured
from converter.calibration.data import check_preprocess, model_inputs, read_samples
from converter.devices import DeviceProfile, load_device
from converter.errors import OutputError, UserInputError
from converter.recipe import Recipe, TargetSpec
from converter.reports.ci_outputs import finalize, images_in
from converter.reports.gates import read_report
from converter.reports.report import FLOAT_NAME, INT8_NAME, REPORT_NAME, dumps
from converter.runtime.model import TFLiteModel
from converter.runtime.preprocess import Preprocess
from converter.targets.rknn import ARTIFACT


def _device_name(recipe: Recipe, device: str | None) -> str:
    if device:
        return device
    for spec in recipe.target_specs():
        if load_device(spec.device).kind == "ssh":
            return spec.device
    raise UserInputError("name the device profile with --device (the recipe has no SSH target)")


def _own(recipe: Recipe, device: str) -> TargetSpec | None:
    return next((s for s in recipe.target_specs() if s.device == device), None)


def _spec(recipe: Recipe, name: str, cli: TargetSpec) -> TargetSpec:
    """How to reach the device: the recipe's target of that name, each field overridden by the command line."""
    own = _own(recipe, name) or TargetSpec(name)
    spec = TargetSpec(
        name,
        cli.host or own.host,
        cli.port or own.port,
        cli.identity or own.identity,
        cli.known_hosts or own.known_hosts,
        cli.ssh_options or own.ssh_options,
        cli.python or own.python,
        cli.timeout_s or own.timeout_s,
    )
    if not spec.host:
        raise UserInputError(
            f"no host for {name}: give --host user@device, or set host: in the recipe's target {name} "
            f"({recipe.source}: targets)"
        )
    return spec


@dataclass
class _Folder:
    """A converted recipe's folder as deploy reads it: the report (and its hash, to detect a concurrent rewrite)."""

    out: Path
    report_path: Path
    read: str | None
    report: dict[str, Any]
    eval_data: tuple[np.ndarray, np.ndarray | None] | None
    prep: Preprocess


def _open(recipe: Recipe, out_dir: Path | None) -> _Folder:
    out = out_dir or Path("build") / recipe.name
    report_path = out / REPORT_NAME
    if not report_path.is_file():
        raise OutputError(f"{out}: no report.json; run edgeconv convert --recipe {recipe.source} first")
    read = sha256_of(report_path)  # the run measured here; checked again before its result is written
    report = read_report(report_path, str(report_path))  # a malformed report is exit 2 naming the key
    if report["recipe"]["name"] != recipe.name:
        raise OutputError(f"{report_path}: belongs to recipe '{report['recipe']['name']}', not '{recipe.name}'")
    eval_data = None
    if recipe.data.evaluation:
        inputs = model_inputs(TFLiteModel(model_path=str(out / FLOAT_NAME)))
        src = recipe.data.evaluation
        check_preprocess(recipe.preprocess(), inputs, str(recipe.source))
        _, ds = read_samples(
            src.path, inputs, recipe.preprocess(), where=f"{recipe.source}: data.evaluation", samples=src.samples,
            seed=src.seed, layout=recipe.input.layout, reshape=recipe.input.reshape,
        )  # fmt: skip
        eval_data = (ds.x, ds.y)  # raw: the runtime on the device preprocesses
    return _Folder(out, report_path, read, report, eval_data, recipe.preprocess())


def _models(recipe: Recipe, out: Path, device: str, profile: DeviceProfile) -> dict[str, Path]:
    models = {"float": out / FLOAT_NAME, "int8": out / INT8_NAME}
    compiled = out / "firmware" / device / ARTIFACT
    if profile.runtime == "rknn":
        if not compiled.is_file():
            raise OutputError(
                f"{out}: no firmware/{device}/{ARTIFACT}; add {device} to the recipe's targets and run "
                f"edgeconv convert --recipe {recipe.source} first (it builds the .rknn with rknn-toolkit2)"
            )
        models["rknn"] = compiled
    if profile.runtime == "tensorrt":
        qdq = out / "firmware" / device / "model_qdq.onnx"
        if not qdq.is_file():
            raise OutputError(
                f"{out}: no firmware/{device}/model_qdq.onnx; add {device} to the recipe's targets and run "
                f"edgeconv convert --recipe {recipe.source} first (it writes the Q/DQ ONNX model trtexec builds)"
            )
        models["qdq"] = qdq
    return models


def _budgets(report: dict[str, Any], recipe: Recipe, target: str, profile: DeviceProfile) -> None:
    """Gates for a target the recipe does not list: its device profile's budgets (and the recipe target's, if any)."""
    budgets = report.get("budgets") or {}
    report["budgets"] = budgets
    targets = budgets.get("targets") or {}
    budgets["targets"] = targets
    if target not in targets:
        own = _own(recipe, profile.name)
        targets[target] = {"recipe": own.budgets.items() if own else {}, "device": profile.budgets.items()}


def _profile_fields(profile: DeviceProfile) -> dict[str, Any]:
    return {"runtime": profile.runtime, "kind": profile.kind, "delegate": profile.delegate, "threads": profile.threads}


def _record(report: dict[str, Any], name: str, profile: DeviceProfile, result: TargetResult, board: bool) -> None:
    report.setdefault("latency", {})[name] = result.latency
    targets = report.setdefault("targets", {})
    measured = {**result.extra, "accuracy": result.accuracy}
    if profile.runtime == "tensorrt" and result.accuracy is None:
        del measured["accuracy"]  # trtexec measures no accuracy: the onnxruntime Q/DQ figures stay, labelled so
    target = merge_measured(targets.get(name) or {}, measured)
    target.update({**_profile_fields(profile), "measured": True, "reason": None})
    target.pop("measure_error", None)
    target.pop("unreachable", None)
    if board:
        target["device"] = profile.name
    targets[name] = target


def _write(folder: _Folder, recipe: Recipe) -> None:
    files = finalize(folder.report, images_in(folder.out, folder.report))
    # Minutes after reading it: if a convert (or analyze, check) rewrote the folder meanwhile, this
    # measurement belongs to models that are gone, and writing the old report back would mix two runs.
    update_outputs(
        folder.out,
        {**files, REPORT_NAME: dumps(folder.report)},
        where=str(folder.report_path),
        fix=f"make {folder.out} writable, then run edgeconv deploy again",
        again=f"the measurement was not recorded; run edgeconv deploy --recipe {recipe.source} again",
        based_on={REPORT_NAME: folder.read},
    )


def deploy_recipe(
    recipe: Recipe,
    out_dir: Path | None,
    host: str | None,
    device: str | None,
    *,
    port: int | None = None,
    identity: Path | None = None,
    known_hosts: Path | None = None,
    ssh_options: tuple[str, ...] = (),
    python: str | None = None,
    timeout_s: float | None = None,
    insecure_options: tuple[str, ...] = (),
    keep: bool = False,
    trtexec: str | None = None,
) -> tuple[str, dict[str, Any], dict[str, Any] | None, Path, bool]:
    """Run the recipe's models on ``host``, record the result and re-check the gates.

    ``insecure_options`` weaken host-key checking (the CLI allowed them with --insecure-host-key);
    ``trtexec`` replaces a TensorRT profile's ``tensorrt.trtexec`` (the program the board runs).
    Returns (device, latency, accuracy, report path, whether every gate passed).
    """
    folder = _open(recipe, out_dir)
    name = _device_name(recipe, device)
    profile = load_device(name)
    if profile.kind != "ssh":
        raise UserInputError(f"--device {name} is a {profile.kind} device, not one reached over SSH")
    spec = _spec(recipe, name, TargetSpec(name, host, port, identity, known_hosts, ssh_options, python, timeout_s))
    models = _models(recipe, folder.out, name, profile)
    result = measure_target(
        spec, profile, recipe.benchmark, models, folder.eval_data, folder.prep, keep=keep,
        insecure_options=insecure_options, trtexec=trtexec,
    )  # fmt: skip
    if result.latency is None:
        raise UserInputError(f"{name}: {result.reason}")
    _budgets(folder.report, recipe, name, profile)
    _record(folder.report, name, profile, result, board=False)
    _write(folder, recipe)
    return name, result.latency, result.accuracy, folder.report_path, folder.report["passed"] is not False


@dataclass(frozen=True)
class FleetDeploy:
    """A fleet deploy: each board's outcome, and for the unmeasured ones whether that fails the run and why."""

    outcomes: list[BoardOutcome[TargetResult]]
    verdicts: dict[str, tuple[bool, str]]
    report_path: Path
    passed: bool


def deploy_fleet(
    recipe: Recipe,
    out_dir: Path | None,
    boards: tuple[Board, ...],
    *,
    jobs: int,
    ssh_options: tuple[str, ...] = (),
    timeout_s: float | None = None,
    insecure_options: tuple[str, ...] = (),
    keep: bool = False,
) -> FleetDeploy:
    """Measure the recipe's models on every board at once and write all figures into report.json in one update.

    Each board is a target named by the board (``latency.<board>``, ``targets.<board>``) with its profile's
    budgets; an unmeasured board is marked, and fails the run only when a budget of the recipe needs it.
    """
    folder = _open(recipe, out_dir)
    profiles = {b.name: load_device(b.device) for b in boards}
    models = {b.name: _models(recipe, folder.out, b.device, profiles[b.name]) for b in boards}

    def measure(board: Board) -> TargetResult:
        profile = profiles[board.name]
        result = measure_target(
            board.spec(ssh_options, timeout_s), profile, recipe.benchmark, models[board.name], folder.eval_data,
            folder.prep, keep=keep, board=board.name, insecure_options=insecure_options,
        )  # fmt: skip
        if result.latency is None:
            raise UserInputError(f"{board.name}: {result.reason}")
        return result

    outcomes = run_fleet(boards, measure, jobs)
    report = folder.report
    verdicts: dict[str, tuple[bool, str]] = {}
    for outcome in outcomes:
        board, profile = outcome.board, profiles[outcome.board.name]
        _budgets(report, recipe, board.name, profile)
        if outcome.status == MEASURED and outcome.value is not None:
            _record(report, board.name, profile, outcome.value, board=True)
            continue
        fails, why = unreachable_verdict(report, board.name)
        verdicts[board.name] = (fails, why)
        report.setdefault("latency", {})[board.name] = None
        mark: dict[str, Any] = {
            **_profile_fields(profile),
            "device": board.device,
            "measured": False,
            "unreachable": outcome.status == UNREACHABLE,
            "reason": f"{outcome.status}: {outcome.reason}",
            "accuracy": None,
        }
        if fails:  # evaluate() turns this into a failed "measured" gate
            mark["measure_error"] = f"{outcome.status}: {outcome.reason}; {why}"
        report.setdefault("targets", {})[board.name] = mark
    _write(folder, recipe)
    return FleetDeploy(outcomes, verdicts, folder.report_path, report["passed"] is not False)
