"""What every command shares: exit codes, the error guard, logging, and common options.

Kept below ``cli`` (convert, validate, check, schema) and ``cli_device`` (bench, deploy, analyze)
so imports flow one way: cli -> cli_device -> cli_common.

Exit codes: 0 ok, 1 a gate failed, 2 bad recipe/usage/input (or a missing extra), 3 a bug or a
failed step in edgeconv.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from converter import __version__
from converter.errors import ConverterError
from converter.extras import INSTALL_CONVERT, missing_extra
from converter.native_output import TAIL_LINES, Captured, captured

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_STEP = 0, 1, 2, 3


def quiet_tensorflow() -> None:
    """TensorFlow's C++ logging and oneDNN banners drown the summary; errors still surface."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def _clear_progress(record: logging.LogRecord) -> bool:
    """A log line erases the terminal's progress line first, so it starts at column 0."""
    from converter.progress import clear_line

    clear_line()
    return True


def setup_logging(debug: bool) -> None:
    """Step lines on stderr; third-party chatter only with --debug."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_clear_progress)
    logging.captureWarnings(True)  # TensorFlow's Python warnings ("Statistics for quantized inputs ...")
    for noisy in ("tensorflow", "absl", "h5py", "PIL", "py.warnings"):
        logging.getLogger(noisy).setLevel(logging.WARNING if debug else logging.ERROR)


def _command() -> str:
    ctx = click.get_current_context(silent=True)
    return f"edgeconv {ctx.info_name}" if ctx is not None and ctx.info_name else "this command"


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM raises like Ctrl-C, so ``finally`` blocks run: temp folders and child processes go, the lock too."""
    from converter.artifacts import Interrupted

    signal.signal(signal.SIGTERM, lambda *_: None)  # once: the cleanup that follows must not be cut short
    raise Interrupted(signum)


def guarded(debug: bool, fn: Callable[[], int], capture: bool = False) -> None:
    """Run ``fn``; turn errors into one paragraph and an exit code (tracebacks only with --debug).

    With ``capture`` (commands that load TensorFlow), what C++ code prints is kept off the terminal
    and shown only when the command fails with exit 3, or live with --debug (``native_output``).
    """
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        previous = None
    try:
        with captured(capture and not debug) as native:
            code = _run(debug, fn, native)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code)


def _show_native(native: Captured) -> None:
    """Before an exit-3 message: what TensorFlow/LiteRT printed, which may name the cause."""
    tail = native.tail()
    if tail:
        click.echo(f"--- printed by TensorFlow/LiteRT during this run (last {TAIL_LINES} lines) ---", err=True)
        click.echo(tail, err=True)
        click.echo("---", err=True)


def _run(debug: bool, fn: Callable[[], int], native: Captured | None = None) -> int:
    from converter.runtime.interpreter import InterpreterUnavailable

    native = native or Captured(None)
    try:
        return fn()
    except ConverterError as e:
        if debug:
            traceback.print_exc()
        if e.exit_code == EXIT_STEP:
            _show_native(native)
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt as e:
        # The output folder knows what it holds; other commands have nothing half-published to report.
        outcome = getattr(e, "outcome", None) or "nothing was written for the unfinished step"
        signum = getattr(e, "signum", signal.SIGINT)
        click.echo(f"interrupted ({signal.Signals(signum).name}); {outcome}", err=True)
        return 128 + int(signum)
    except InterpreterUnavailable as e:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {e}", err=True)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (``edgeconv devices | head -1``): stop quietly, as Unix tools do, with
        # 128 + SIGPIPE; stdout goes to /dev/null so the interpreter's last flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + int(signal.SIGPIPE)
    except Exception as e:  # noqa: BLE001 - the last line of defence for a clean message
        if debug:
            traceback.print_exc()
        package = missing_extra(e)
        if package is not None:
            click.echo(
                f"error: {_command()} needs the '{package}' package, which is missing or broken in this "
                f"install ({type(e).__name__}: {e}); it comes with the converter extra: {INSTALL_CONVERT}",
                err=True,
            )
            return EXIT_USAGE
        _show_native(native)
        how = (
            "the traceback is above"
            if debug
            else "rerun the same command with --debug and include the traceback it prints"
        )
        click.echo(
            f"error: unexpected failure ({type(e).__name__}: {e}). This is a bug in edgeconv {__version__}, "
            f"not a problem with your input: please report it with the command you ran; {how}.",
            err=True,
        )
        return EXIT_STEP


class Bounded(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2
    """A finite number in [minimum, maximum]; the error says what the option means and gives an example."""

    def __init__(
        self,
        kind: type[int] | type[float],
        minimum: float,
        meaning: str,
        example: str,
        maximum: float | None = None,
    ) -> None:
        self.kind, self.minimum, self.maximum, self.meaning, self.example = kind, minimum, maximum, meaning, example
        self.name = "integer" if kind is int else "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = value if isinstance(value, self.kind) and not isinstance(value, bool) else self.kind(value)
        except (TypeError, ValueError):
            kind = "an integer" if self.kind is int else "a number"
            self.fail(f"{value!r} is not {kind}; {self.example}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number; {self.example}", param, ctx)
        if number < self.minimum or (self.maximum is not None and number > self.maximum):
            bounds = f"at least {self.minimum:g}" if self.maximum is None else f"{self.minimum:g}..{self.maximum:g}"
            self.fail(f"{value} is out of range ({bounds}): {self.meaning}; {self.example}", param, ctx)
        return number

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        upper = "" if self.maximum is None else f"..{self.maximum:g}"
        return f"{self.name.upper()} {self.minimum:g}{upper or '+'}"


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
