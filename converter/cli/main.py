"""The command line: the only place that prints for users and chooses exit codes.

Exit codes: 0 ok, 1 a gate failed, 2 bad recipe/usage/input, 3 a bug or a failed step in edgeconv.
This module holds the ``edgeconv`` group and convert, validate, check and schema; bench, deploy and
analyze live in ``cli_device``; what both share lives in ``cli_common`` (imports flow one way).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from converter import __version__
from converter.cli.ci import matrix, report
from converter.cli.common import (
    EXIT_GATE,
    EXIT_OK,
    Bounded,
    baseline_option,
    debug_option,
    guarded,
    quiet_tensorflow,
    recipe_option,
    set_option,
    setup_logging,
)
from converter.cli.device import analyze, bench, deploy
from converter.cli.init import init
from converter.cli.profiles import devices
from converter.cli.setup import setup
from converter.errors import UserInputError
from converter.supervise import SupervisedGroup, run_program

if TYPE_CHECKING:
    from converter.cli.batch import JobResult
log = logging.getLogger(__name__)


def _step_summary(markdown_file: Path) -> None:
    """Append report.md to GitHub's job summary when running in GitHub Actions.

    The artifacts are published by then: a summary that cannot be written is a warning, so the
    exit code still says what the gates said.
    """
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target and markdown_file.is_file():
        try:
            with Path(target).open("a", encoding="utf-8") as f:
                f.write(markdown_file.read_text(encoding="utf-8") + "\n")
        except OSError as e:
            click.echo(
                f"warning: GITHUB_STEP_SUMMARY {target}: cannot append report.md to it ({e.strerror or e}); "
                "point the variable at a writable file or unset it",
                err=True,
            )


def gates_table(report: dict[str, Any]) -> str:
    """The gates as a compact console table."""
    from converter.reports.render import gate_line, safe_text

    gates = report.get("gates") or []
    if not gates:
        return "  gates: none (no budgets in the recipe or its device profiles)"
    failed = sum(g["status"] == "failed" for g in gates)
    skipped = sum(g["status"] == "skipped" for g in gates)
    head = f"  gates: {len(gates) - failed - skipped} passed, {failed} failed, {skipped} skipped"
    marks = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}
    # safe_text: a report read by ``check`` may carry terminal escape sequences in its names and reasons.
    return safe_text("\n".join([head, *(f"    {marks[g['status']]} {gate_line(g)}" for g in gates)]))


@click.group(cls=SupervisedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeconv")
def main() -> None:
    """edgeconv: convert a trained model to full-integer (int8) TFLite for MCUs and NPUs, driven by a recipe.

    \b
    Sources: Keras .keras, legacy Keras .h5, a TensorFlow SavedModel folder,
    a float .tflite, a PyTorch torch.export archive (.pt2) and ONNX (.onnx).

    \b
    Example:
      edgeconv init model.keras --target arduino-nano-33-ble-sense --out recipe.yaml
      edgeconv convert --recipe recipe.yaml
    """


def program() -> None:
    """The ``edgeconv`` console script and ``python -m converter``: ``main`` as a program (``run_program``)."""
    run_program(main)


@main.command()
@click.argument("recipes", nargs=-1, type=click.Path(path_type=Path))
@click.option("--recipe", "recipe_path", type=click.Path(path_type=Path, dir_okay=False), help="Recipe YAML file.")
@set_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Output folder [build/<name>]; with several recipes, the parent of their <name> folders [build].",
)
@click.option("--force", is_flag=True, help="Overwrite an output folder that holds another recipe's artifacts.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the summary.")
@click.option(
    "--allow-custom-objects",
    is_flag=True,
    help="Import the Python modules the recipe's custom_objects name (their code runs); off by default.",
)
@click.option(
    "--remeasure",
    is_flag=True,
    help="Measure host latency again instead of taking the figure this machine gave before for the same model "
    "bytes and settings (same as --set benchmark.cache=false).",
)
@click.option(
    "--jobs",
    type=Bounded(int, 1, "recipes converted at once", "e.g. --jobs 2"),
    help="Several recipes: how many convert at once, each in its own process [one per core, bounded by memory].",
)
@baseline_option
@debug_option
def convert(
    recipes: tuple[Path, ...],
    recipe_path: Path | None,
    overrides: tuple[str, ...],
    out_dir: Path | None,
    force: bool,
    as_json: bool,
    allow_custom_objects: bool,
    remeasure: bool,
    jobs: int | None,
    baseline_path: str | None,
    debug: bool,
) -> None:
    """Convert a recipe's model to full-integer TFLite, measure it and check its budgets.

    Give one recipe with --recipe, or several recipe files and folders as arguments
    (edgeconv convert recipes/*.yaml --jobs 2): each is converted in its own process into
    <out>/<name>, one table follows, and the exit code is the worst of theirs.
    """
    quiet_tensorflow()
    setup_logging(debug)
    if remeasure:  # a recipe override, so it reaches every recipe of a batch as it reaches one
        overrides = (*overrides, "benchmark.cache=false")
    paths = [*recipes, *([recipe_path] if recipe_path else [])]
    if not paths:
        raise click.UsageError(
            "give a recipe: edgeconv convert --recipe recipe.yaml (or several: convert a.yaml b.yaml)"
        )
    if len(paths) > 1 or paths[0].is_dir() or jobs is not None:
        flags = (["--force"] if force else []) + (["--allow-custom-objects"] if allow_custom_objects else [])
        sets = [f"--set={o}" for o in overrides]
        guarded(debug, lambda: convert_many(paths, out_dir, jobs, [*sets, *flags], baseline_path, as_json))
        return
    recipe_path = paths[0]

    def run() -> int:
        from converter.pipeline import convert as run_pipeline
        from converter.recipe import load_recipe
        from converter.reports.gates import load_baseline

        recipe = load_recipe(recipe_path, list(overrides))
        baseline = load_baseline(baseline_path) if baseline_path else None
        result = run_pipeline(
            recipe,
            out_dir,
            force=force,
            baseline=baseline,
            baseline_path=baseline_path,
            allow_custom_objects=allow_custom_objects,
        )
        if as_json:
            click.echo(json.dumps(result.report, indent=2))
        else:
            click.echo(summary(result.out_dir, result.report))
            click.echo(gates_table(result.report))
        _step_summary(result.out_dir / "report.md")
        return EXIT_GATE if result.report["passed"] is False else EXIT_OK

    guarded(debug, run, capture=True)


def convert_many(
    paths: list[Path], out_dir: Path | None, jobs: int | None, args: list[str], baseline: str | None, as_json: bool
) -> int:
    """Several recipes, each converted by its own ``edgeconv convert`` process (``batch``)."""
    from converter.cli.batch import Job, JobResult, default_jobs, find_recipes, plan, run_all, worst
    from converter.errors import ConverterError
    from converter.recipe import load_recipe

    if baseline:
        raise UserInputError("--baseline compares one report with one recipe's run; give it with a single --recipe")
    files = find_recipes(paths)
    sets = [a.split("=", 1)[1] for a in args if a.startswith("--set=")]
    valid, names, refused = [], [], []
    for path in files:  # read first: a broken recipe is reported at once, and the others still run
        try:
            names.append(load_recipe(path, sets).name)
            valid.append(path)
        except ConverterError as e:
            job = Job(path, path.stem, out_dir or Path("build"))
            refused.append(JobResult(job, e.exit_code, 0.0, None, f"error: {e}"))
            log.info("%-10s %6.1fs  %s (exit %d): %s", "refused", 0.0, path, e.exit_code, e)
    planned = plan(valid, names, out_dir)
    workers, why = (jobs, f"{jobs} (--jobs)") if jobs else default_jobs()
    log.info("converting %d recipes, %s at a time", len(planned), why)

    def finished(r: JobResult) -> None:
        error = f": {r.error}" if r.error else ""
        log.info("%-10s %6.1fs  %s (exit %d)%s", "done", r.seconds, r.job.name, r.code, error)

    ran = run_all(planned, min(workers, max(1, len(planned))), args, finished) if planned else []
    results = refused + ran
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        click.echo(batch_table(results))
    return worst([r.code for r in results])


def batch_table(results: list[JobResult]) -> str:
    """One row per recipe: exit code, int8 bytes, accuracy, gates, time."""
    from converter.reports.render import drop_text, fmt

    rows = [["recipe", "exit", "int8 bytes", "accuracy (int8, drop)", "gates", "time"]]
    for r in results:
        report = r.report or {}
        acc = report.get("accuracy") or {}
        if acc.get("metric") == "top1":
            accuracy = f"top-1 {fmt(acc.get('int8'), 'fraction')}, {drop_text(acc.get('drop'), acc.get('unit'))}"
        elif acc.get("metric"):
            accuracy = f"{acc['metric']} {drop_text(acc.get('drop'), acc.get('unit'))}"
        else:
            accuracy = "n/a"
        gates = report.get("gates") or []
        failed = sum(g["status"] == "failed" for g in gates)
        skipped = sum(g["status"] == "skipped" for g in gates)
        skipped_text = f", {skipped} skipped" if skipped else ""  # a skipped gate is never a passed one
        gate_text = f"{len(gates) - failed - skipped} ok, {failed} failed{skipped_text}" if gates else "none"
        size = ((report.get("artifacts") or {}).get("int8") or {}).get("bytes")
        rows.append(
            [
                r.job.name,
                str(r.code),
                f"{size:,}" if size is not None else "-",
                accuracy if r.report else (r.error or "no report"),
                gate_text if r.report else "-",
                f"{r.seconds:.1f}s",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


@main.command()
@recipe_option
@set_option
@debug_option
def validate(recipe_path: Path, overrides: tuple[str, ...], debug: bool) -> None:
    """Check a recipe without converting anything."""

    def run() -> int:
        from converter.recipe import load_recipe

        recipe = load_recipe(recipe_path, list(overrides))
        click.echo(
            f"{recipe_path}: ok (recipe '{recipe.name}', targets: {', '.join(t.device for t in recipe.target_specs())})"
        )
        return EXIT_OK

    guarded(debug, run)


@main.command()
@click.option(
    "--report",
    "report_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="report.json of a conversion.",
)
@baseline_option
@click.option("--json", "as_json", is_flag=True, help="Print the gates as JSON.")
@debug_option
def check(report_path: Path, baseline_path: str | None, as_json: bool, debug: bool) -> None:
    """Evaluate the budgets of an existing report.json; write junit.xml, report.md and report.html beside it."""
    setup_logging(debug)

    def run() -> int:
        from converter.artifacts import sha256_of, update_outputs
        from converter.errors import UserInputError
        from converter.reports.ci_outputs import finalize, images_in
        from converter.reports.gates import load_baseline, read_report
        from converter.reports.report import dumps

        read = sha256_of(report_path)  # before reading: a report rewritten after this is not overwritten
        report = read_report(report_path, f"--report {report_path}")
        baseline = load_baseline(baseline_path) if baseline_path else None
        folder = report_path.parent
        try:
            files = finalize(report, images_in(folder, report), baseline, baseline_path)
        except (KeyError, TypeError, AttributeError, ValueError, IndexError, ZeroDivisionError) as e:
            # check_report covers what the gates read; this is the net for deeper sections the renderers read.
            raise UserInputError(
                f"--report {report_path}: cannot render it ({type(e).__name__}: {e}); a section is not shaped as "
                "edgeconv writes it. Run edgeconv convert again to regenerate it (if the file is unchanged from "
                "convert, this is a bug in edgeconv: please report it)"
            ) from e
        files[report_path.name] = dumps(report)
        update_outputs(
            folder,
            files,
            where=f"--report {report_path}",
            fix="Make the folder writable, or copy the report into a writable folder and check it there",
            again="run edgeconv check again",
            based_on={report_path.name: read},
        )
        if as_json:
            click.echo(json.dumps({"passed": report["passed"], "gates": report["gates"]}, indent=2))
        else:
            click.echo(gates_table(report))
        _step_summary(folder / "report.md")
        return EXIT_GATE if report["passed"] is False else EXIT_OK

    guarded(debug, run)


@main.command("batch-worker", hidden=True)
def batch_worker() -> None:
    """Convert the recipes a batch hands over stdin, one after another, in this process (``cli.batch``)."""
    from converter.cli.batch import serve

    quiet_tensorflow()
    serve()


@main.command()
def schema() -> None:
    """Print the recipe JSON Schema (for editor completion)."""
    from converter.recipe import recipe_json_schema

    click.echo(json.dumps(recipe_json_schema(), indent=2))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def accuracy_lines(acc: dict[str, Any]) -> list[str]:
    """The accuracy in the metric that fits the model; agreement only for a model that classifies."""
    from converter.reports.render import accuracy_figure, output_figures

    if not acc.get("metric"):
        out = ["  accuracy: not measured (no data.evaluation in the recipe)"]
        if acc.get("data") and acc.get("outputs"):  # fidelity on calibration samples held out instead
            out.append(f"  int8 vs float, {acc['data']}: {output_figures(acc['outputs'])}")
        return out
    head = f"  accuracy ({acc['where']}, {acc['metric']}, {acc['samples']} samples): "
    agreement = f", agreement {_pct(acc['agreement'])}" if acc.get("agreement") is not None else ""
    out = [head + accuracy_figure(acc) + agreement]
    if acc.get("outputs") and (acc["metric"] != "top1" or len(acc["outputs"]) > 1):
        out.append(f"  int8 vs float: {output_figures(acc['outputs'])}")
    recon = acc.get("reconstruction")
    if recon:
        out.append(
            f"  reconstruction error (MSE against the input): float {recon['float_mse']:.4g}, "
            f"int8 {recon['int8_mse']:.4g}"
        )
    return out


def _io_line(q: dict[str, Any]) -> str:
    """The int8 model's I/O types; every input by name when there are several."""
    inputs, outputs = q.get("inputs") or [q["input"]], q.get("outputs") or [q["output"]]
    if len(inputs) == 1 and len(outputs) == 1:
        i = q["input"]
        return f"  I/O    {i['dtype']} in{_io_input(i)}, {q['output']['dtype']} out"
    ins = ", ".join(f"{i['name']} {i['dtype']}{_io_input(i)}" for i in inputs)
    outs = ", ".join(f"{o['name']} {o['dtype']}" for o in outputs)
    return f"  I/O    {len(inputs)} in: {ins}; {len(outputs)} out: {outs}"


def _io_input(i: dict[str, Any]) -> str:
    """How one model input is fed, in brackets: its scale and zero point where quantized, raw integers where an
    integer input has none (token ids, indices); nothing for a float input, which takes float values as they are."""
    if i["scale"] is not None:
        return f" (scale {i['scale']}, zero point {i['zero_point']})"
    if str(i["dtype"]).startswith(("float", "bfloat")):
        return ""
    return " (ids/indices, fed as integers)"


def summary(out_dir: Path, report: dict[str, Any]) -> str:
    """A few lines for humans: sizes, accuracy, where the files are."""
    from converter.reports.render import (
        device_accuracy_lines,
        latency_text,
        latency_where,
        layer_label,
        ms_text,
        npu_line,
        runs_on,
        tail_warning,
        tuning_goal,
    )

    art = report["artifacts"]
    f_bytes, q_bytes = art["float"]["bytes"], art["int8"]["bytes"]
    q = report["quantization"]
    lines = [
        f"edgeconv {report['tool']['version']} · {report['recipe']['name']}",
        f"  float  {art['float']['path']:<20} {f_bytes:>11,} bytes",
        f"  int8   {art['int8']['path']:<20} {q_bytes:>11,} bytes ({100 * q_bytes / f_bytes:.1f}% of float"
        + ("; 16x8: int16 activations, int8 weights)" if q.get("activations") == "int16" else ")"),
        _io_line(q),
        f"  calibration {report['calibration']['method']} on {report['calibration']['samples']} samples "
        f"in {report['calibration']['seconds']:.1f}s",
    ]
    lines += accuracy_lines(report["accuracy"])
    tuning = report.get("tuning") or {}
    if tuning.get("ran") or tuning.get("worst_layers"):
        chosen = next(a for a in tuning["attempts"] if a["chosen"])
        lines.append(
            f"  tuning for {tuning_goal(tuning, report['accuracy'].get('unit'))}: "
            f"{len(tuning['attempts'])} attempts, "
            f"chose '{chosen['step']}' ({tuning['outcome']})"
        )
        for layer in (tuning.get("worst_layers") or [])[:3]:
            label = layer_label(layer["name"])
            lines.append(f"    worst layer: {layer['op']} {label} ({layer['sqnr_db']:.1f} dB SQNR)")
    for name, lat in (report.get("latency") or {}).items():
        npu = npu_line(name, report["targets"].get(name) or {})
        if npu is not None and lat is None:
            lines.append(f"  npu {npu}")
            continue
        if lat is None:
            t = report["targets"][name]
            estimate = ((t.get("cost") or {}).get("latency_estimate")) or None
            if estimate is not None:
                lines.append(
                    f"  latency {name}: estimate {ms_text(estimate['latency_ms'])} ({estimate['basis']}); "
                    "not measured from here"
                )
            else:
                lines.append(f"  latency {name}: not measured ({t['reason']})")
            continue
        lines.append(f"  latency {name} ({latency_where(lat)}): {latency_text(lat)}; {runs_on(lat['int8'])}")
        lines += device_accuracy_lines(report, name)
        warning = tail_warning(lat)
        if warning:
            lines.append(f"    {warning}")
    lines.append(f"  files in {out_dir}/")
    return "\n".join(lines)


for _command in (bench, deploy, analyze, setup, matrix, report, devices, init):
    main.add_command(_command)
