"""``edgeconv deploy``: a converted recipe's models measured on a device, recorded in its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .artifacts import sha256_of, update_outputs
from .ci_outputs import finalize, images_in
from .data import check_preprocess, model_inputs, read_samples
from .devices import load_device
from .errors import OutputError, UserInputError
from .gates import read_report
from .measure import measure_target, merge_measured
from .recipe import Recipe, TargetSpec
from .report import FLOAT_NAME, INT8_NAME, REPORT_NAME, dumps
from .runtime.model import TFLiteModel
from .targets.rknn import ARTIFACT


def _device_name(recipe: Recipe, device: str | None) -> str:
    if device:
        return device
    for spec in recipe.target_specs():
        if load_device(spec.device).kind == "ssh":
            return spec.device
    raise UserInputError("name the device profile with --device (the recipe has no SSH target)")


def _spec(recipe: Recipe, name: str, cli: TargetSpec) -> TargetSpec:
    """How to reach the device: the recipe's target of that name, each field overridden by the command line."""
    own = next((s for s in recipe.target_specs() if s.device == name), None) or TargetSpec(name)
    spec = TargetSpec(
        name,
        cli.host or own.host,
        cli.port or own.port,
        cli.identity or own.identity,
        cli.known_hosts or own.known_hosts,
        cli.ssh_options or own.ssh_options,
        cli.python or own.python,
    )
    if not spec.host:
        raise UserInputError(
            f"no host for {name}: give --host user@device, or set host: in the recipe's target {name} "
            f"({recipe.source}: targets)"
        )
    return spec


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
    keep: bool = False,
) -> tuple[str, dict[str, Any], dict[str, Any] | None, Path, bool]:
    """Run the recipe's models on ``host``, record the result and re-check the gates.

    Returns (device, latency, accuracy, report path, whether every gate passed).
    """
    out = out_dir or Path("build") / recipe.name
    report_path = out / REPORT_NAME
    if not report_path.is_file():
        raise OutputError(f"{out}: no report.json; run edgeconv convert --recipe {recipe.source} first")
    read = sha256_of(report_path)  # the run measured here; checked again before its result is written
    report = read_report(report_path, str(report_path))  # a malformed report is exit 2 naming the key
    if report["recipe"]["name"] != recipe.name:
        raise OutputError(f"{report_path}: belongs to recipe '{report['recipe']['name']}', not '{recipe.name}'")
    name = _device_name(recipe, device)
    profile = load_device(name)
    if profile.kind != "ssh":
        raise UserInputError(f"--device {name} is a {profile.kind} device, not one reached over SSH")
    spec = _spec(recipe, name, TargetSpec(name, host, port, identity, known_hosts, ssh_options, python))
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
    prep = recipe.preprocess()
    models = {"float": out / FLOAT_NAME, "int8": out / INT8_NAME}
    compiled = out / "firmware" / name / ARTIFACT
    if profile.runtime == "rknn":
        if not compiled.is_file():
            raise OutputError(
                f"{out}: no firmware/{name}/{ARTIFACT}; add {name} to the recipe's targets and run "
                f"edgeconv convert --recipe {recipe.source} first (it builds the .rknn with rknn-toolkit2)"
            )
        models["rknn"] = compiled
    result = measure_target(spec, profile, recipe.benchmark, models, eval_data, prep, keep=keep)
    if result.latency is None:
        raise UserInputError(f"{name}: {result.reason}")
    report.setdefault("latency", {})[name] = result.latency
    targets = report.setdefault("targets", {})
    target = merge_measured(targets.get(name) or {}, {**result.extra, "accuracy": result.accuracy})
    target.update(
        {
            "runtime": profile.runtime,
            "kind": profile.kind,
            "delegate": profile.delegate,
            "threads": profile.threads,
            "measured": True,
            "reason": None,
        }
    )
    targets[name] = target
    files = finalize(report, images_in(out, report))
    # Minutes after reading it: if a convert (or analyze, check) rewrote the folder meanwhile, this
    # measurement belongs to models that are gone, and writing the old report back would mix two runs.
    update_outputs(
        out,
        {**files, REPORT_NAME: dumps(report)},
        where=str(report_path),
        fix=f"make {out} writable, then run edgeconv deploy again",
        again=f"the measurement was not recorded; run edgeconv deploy --recipe {recipe.source} again",
        based_on={REPORT_NAME: read},
    )
    return name, result.latency, result.accuracy, report_path, report["passed"] is not False
