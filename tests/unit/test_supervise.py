"""The supervisor's step file and message; its real crashes are in tests/integration/test_native_crash.py."""

from __future__ import annotations

import signal

from converter.supervise import _heavy_command, crash_message, running_step


def test_running_step_is_the_last_line_of_that_process() -> None:
    log = "7 load\n7 \n9 load\n7 calibrate\n7 calibrate: statistics pass (LiteRT interpreter)\n9 \n"
    assert running_step(log, 7) == (
        "calibrate: statistics pass (LiteRT interpreter)",
        "calibrate: statistics pass (LiteRT interpreter)",
    )
    assert running_step(log, 9) == (None, "load")  # between steps, after load
    assert running_step(log, 8) == (None, None)


def test_only_heavy_commands_are_supervised() -> None:
    assert _heavy_command(["convert", "--recipe", "r.yaml"]) == "convert"
    assert _heavy_command(["analyze", "--recipe", "r.yaml"]) == "analyze"
    assert _heavy_command(["validate", "--recipe", "r.yaml"]) is None
    assert _heavy_command(["convert", "--help"]) is None
    assert _heavy_command(["--version"]) is None
    assert _heavy_command([]) is None


def test_an_abort_between_steps_says_after_which() -> None:
    text = crash_message("bench", signal.SIGABRT, None, "benchmark", 1024, shown=True)
    assert text == (
        'edgeconv bench crashed (SIGABRT, an abort: a check inside the native library failed) after step "benchmark", '
        "before the next one. This is a crash inside native code (TensorFlow/LiteRT), not an error edgeconv found "
        "in your input. Please report it with the command line, the model and this message and the native output "
        "above (--debug shows all native output live); changing the model (another layer, a recurrent layer "
        "unrolled) may avoid it meanwhile"
    ), text
    assert "output folder" not in text  # bench writes none
    assert crash_message("convert", signal.SIGKILL, None, None, 2 * 1024**2).startswith(
        "edgeconv convert was killed (SIGKILL) outside any named step. SIGKILL comes from outside the process, most "
        "likely from the kernel's out-of-memory killer (its peak memory was 2.0 GB of this machine's "
    )
