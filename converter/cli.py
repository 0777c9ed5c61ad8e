"""The command line: the only place that prints for users and chooses exit codes.

Exit codes: 0 ok, 1 a gate failed, 2 bad recipe/usage/input, 3 a pipeline step failed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import ConverterError

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_STEP = 0, 1, 2, 3


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ logging and oneDNN banners drown the summary; errors still surface.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM raises like Ctrl-C, so ``finally`` blocks run: temp folders and child processes go, the lock too."""
    from .artifacts import Interrupted

    signal.signal(signal.SIGTERM, lambda *_: None)  # once: the cleanup that follows must not be cut short
    raise Interrupted(signum)


def _guarded(debug: bool, fn: Callable[[], int]) -> None:
    """Run ``fn``; turn our errors into one paragraph and an exit code (tracebacks only with --debug)."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        previous = None
    try:
        code = fn()
    except ConverterError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        # The output folder knows what it holds; other commands have nothing half-published to report.
        outcome = getattr(e, "outcome", None) or "nothing was written for the unfinished step"
        signum = getattr(e, "signum", signal.SIGINT)
        click.echo(f"interrupted ({signal.Signals(signum).name}); {outcome}", err=True)
        sys.exit(128 + signum)
    except Exception as e:  # noqa: BLE001 - the last line of defence for a clean message
        if debug:
            traceback.print_exc()
        click.echo(
            f"error: unexpected failure ({type(e).__name__}: {e}); rerun with --debug for the traceback", err=True
        )
        sys.exit(EXIT_STEP)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code)


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("tensorflow", "absl", "h5py", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING if debug else logging.ERROR)


recipe_option = click.option(
    "--recipe", "recipe_path", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Recipe YAML file."
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key, e.g. calibration.samples=100.",
)
debug_option = click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
out_option = click.option(
    "--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), help="Output folder [build/<name>]."
)
baseline_option = click.option(
    "--baseline", "baseline_path", metavar="REPORT", help="A previous report.json: show deltas, check relative budgets."
)


def _step_summary(markdown_file: Path) -> None:
    """Append report.md to GitHub's job summary when running in GitHub Actions."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target and markdown_file.is_file():
        with Path(target).open("a", encoding="utf-8") as f:
            f.write(markdown_file.read_text(encoding="utf-8") + "\n")


def gates_table(report: dict[str, Any]) -> str:
    """The gates as a compact console table."""
    from .render import gate_line

    gates = report.get("gates") or []
    if not gates:
        return "  gates: none (no budgets in the recipe or its device profiles)"
    failed = sum(g["status"] == "failed" for g in gates)
    skipped = sum(g["status"] == "skipped" for g in gates)
    head = f"  gates: {len(gates) - failed - skipped} passed, {failed} failed, {skipped} skipped"
    marks = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip"}
    return "\n".join([head, *(f"    {marks[g['status']]} {gate_line(g)}" for g in gates)])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeconv")
def main() -> None:
    """edgeconv: convert TensorFlow/Keras models to full-integer TFLite for MCUs and NPUs."""


@main.command()
@recipe_option
@set_option
@out_option
@click.option("--force", is_flag=True, help="Overwrite an output folder that holds another recipe's artifacts.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout instead of the summary.")
@baseline_option
@debug_option
def convert(
    recipe_path: Path,
    overrides: tuple[str, ...],
    out_dir: Path | None,
    force: bool,
    as_json: bool,
    baseline_path: str | None,
    debug: bool,
) -> None:
    """Convert the recipe's model to full-integer TFLite, measure it and check its budgets."""
    _quiet_tensorflow()
    _setup_logging(debug)

    def run() -> int:
        from .gates import load_baseline
        from .pipeline import convert as run_pipeline
        from .recipe import load_recipe

        recipe = load_recipe(recipe_path, list(overrides))
        baseline = load_baseline(baseline_path) if baseline_path else None
        result = run_pipeline(recipe, out_dir, force=force, baseline=baseline, baseline_path=baseline_path)
        if as_json:
            click.echo(json.dumps(result.report, indent=2))
        else:
            click.echo(summary(result.out_dir, result.report))
            click.echo(gates_table(result.report))
        _step_summary(result.out_dir / "report.md")
        return EXIT_GATE if result.report["passed"] is False else EXIT_OK

    _guarded(debug, run)


@main.command()
@recipe_option
@set_option
@debug_option
def validate(recipe_path: Path, overrides: tuple[str, ...], debug: bool) -> None:
    """Check a recipe without converting anything."""

    def run() -> int:
        from .recipe import load_recipe

        recipe = load_recipe(recipe_path, list(overrides))
        click.echo(
            f"{recipe_path}: ok (recipe '{recipe.name}', targets: {', '.join(t.device for t in recipe.target_specs())})"
        )
        return EXIT_OK

    _guarded(debug, run)


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
    _setup_logging(debug)

    def run() -> int:
        from .artifacts import write_atomic
        from .ci_outputs import finalize, images_in
        from .errors import UserInputError
        from .gates import load_baseline
        from .report import dumps

        try:
            report = json.loads(report_path.read_text())
        except (OSError, ValueError) as e:
            raise UserInputError(f"--report {report_path}: cannot read it: {e}") from e
        missing = [
            k
            for k in ("schema_version", "recipe", "artifacts", "tool")
            if not isinstance(report, dict) or k not in report
        ]
        if missing:
            raise UserInputError(f"--report {report_path}: not an edgeconv report.json (missing {', '.join(missing)})")
        baseline = load_baseline(baseline_path) if baseline_path else None
        folder = report_path.parent
        files = finalize(report, images_in(folder, report), baseline, baseline_path)
        for name, data in files.items():
            write_atomic(folder / name, data)
        write_atomic(report_path, dumps(report))
        if as_json:
            click.echo(json.dumps({"passed": report["passed"], "gates": report["gates"]}, indent=2))
        else:
            click.echo(gates_table(report))
        _step_summary(folder / "report.md")
        return EXIT_GATE if report["passed"] is False else EXIT_OK

    _guarded(debug, run)


@main.command()
def schema() -> None:
    """Print the recipe JSON Schema (for editor completion)."""
    from .recipe import recipe_json_schema

    click.echo(json.dumps(recipe_json_schema(), indent=2))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def summary(out_dir: Path, report: dict[str, Any]) -> str:
    """A few lines for humans: sizes, accuracy, where the files are."""
    art = report["artifacts"]
    f_bytes, q_bytes = art["float"]["bytes"], art["int8"]["bytes"]
    q = report["quantization"]
    lines = [
        f"edgeconv {report['tool']['version']} · {report['recipe']['name']}",
        f"  float  {art['float']['path']:<20} {f_bytes:>11,} bytes",
        f"  int8   {art['int8']['path']:<20} {q_bytes:>11,} bytes ({100 * q_bytes / f_bytes:.1f}% of float)",
        f"  I/O    {q['input']['dtype']} in (scale {q['input']['scale']}, zero point {q['input']['zero_point']}), "
        f"{q['output']['dtype']} out",
        f"  calibration {report['calibration']['method']} on {report['calibration']['samples']} samples "
        f"in {report['calibration']['seconds']:.1f}s",
    ]
    acc = report["accuracy"]
    if acc["metric"]:
        lines.append(
            f"  accuracy ({acc['where']}, {acc['metric']}, {acc['samples']} samples): float {_pct(acc['float'])}, "
            f"int8 {_pct(acc['int8'])}, drop {100 * acc['drop']:.2f} points, agreement {_pct(acc['agreement'])}"
        )
    elif acc["agreement"] is not None:
        lines.append(f"  float/int8 top-1 agreement ({acc['samples']} samples): {_pct(acc['agreement'])}")
    else:
        lines.append("  accuracy: not measured (no evaluation data with labels)")
    tuning = report.get("tuning") or {}
    if tuning.get("ran") or tuning.get("worst_layers"):
        chosen = next(a for a in tuning["attempts"] if a["chosen"])
        lines.append(
            f"  tuning for drop <= {100 * tuning['budget']:.2f} points: {len(tuning['attempts'])} attempts, "
            f"chose '{chosen['step']}' ({tuning['outcome']})"
        )
        for layer in (tuning.get("worst_layers") or [])[:3]:
            lines.append(f"    worst layer: {layer['op']} {layer['name'][-60:]} ({layer['sqnr_db']:.1f} dB SQNR)")
    for name, lat in (report.get("latency") or {}).items():
        if lat is None:
            lines.append(f"  latency {name}: not measured ({report['targets'][name]['reason']})")
            continue
        text = f"  latency {name} ({lat['where']}): int8 p50 {lat['int8']['p50_ms']:.3f} ms"
        if lat.get("float"):
            text += f", float p50 {lat['float']['p50_ms']:.3f} ms ({lat['int8_speedup_p50']:.2f}x)"
        lines.append(text + f", {lat['int8']['threads']} threads, {lat['int8']['delegate']}")
    lines.append(f"  files in {out_dir}/")
    return "\n".join(lines)


from . import cli_device  # noqa: E402,F401 - registers bench and deploy on main
