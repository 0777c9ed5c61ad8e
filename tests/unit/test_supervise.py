"""The supervisor's step file and message; its real crashes are in tests/integration/test_native_crash.py."""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from converter import supervise
from converter.supervise import _heavy_command, crash_message, exit_status, run_program, running_step


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


def test_exit_status_is_what_sys_exit_would_end_with(capsys: pytest.CaptureFixture[str]) -> None:
    assert [exit_status(None), exit_status(0), exit_status(2), exit_status(130)] == [0, 0, 2, 130]
    assert exit_status("error: no recipe") == 1
    assert capsys.readouterr().err == "error: no recipe\n"


@pytest.mark.parametrize(("ending", "status"), [("return", 0), ("exit 4", 4), ("exit None", 0)])
def test_a_supervised_child_ends_after_its_threads_and_exit_handlers(tmp_path: Path, ending: str, status: int) -> None:
    """The quick end keeps what Python's exit does that matters: threads joined, then atexit handlers, then
    the streams flushed; and the command's exit status."""
    log = tmp_path / "log"
    kept: list[ThreadPoolExecutor] = []  # alive until the end, as a pool held by a module would be

    def command() -> None:
        def late() -> None:
            time.sleep(0.2)
            with log.open("a") as f:
                f.write("thread\n")

        threading.Thread(target=late).start()  # not a daemon: the exit waits for it
        pool = ThreadPoolExecutor(max_workers=1)  # left open: its idle worker must be told to stop, not waited for
        pool.submit(lambda: None).result()
        kept.append(pool)
        atexit.register(lambda: log.open("a").write("atexit\n"))
        sys.stdout.write("unflushed")  # buffered: only the flush before os._exit shows it
        if ending != "return":
            sys.exit(None if ending == "exit None" else int(ending.split()[1]))

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, as a supervised one
        os.close(read)
        os.dup2(write, 1)
        sys.stdout = os.fdopen(1, "w", buffering=1 << 16)
        atexit._clear()  # the pytest worker's own exit handlers, copied by the fork, are not this child's to run
        supervise._supervisor = os.getppid()
        run_program(command)
    os.close(write)
    code = _wait(pid, timeout=60)  # before reading: a child that hangs keeps the pipe open
    with os.fdopen(read) as out:
        printed = out.read()
    assert os.waitstatus_to_exitcode(code) == status
    assert log.read_text() == "thread\natexit\n"
    assert printed == "unflushed"


def _wait(pid: int, timeout: float) -> int:
    """The child's wait status; a child still running after ``timeout`` seconds is killed and fails the test."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            return code
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the child did not end within {timeout:g} s")


def test_outside_a_supervised_child_the_program_ends_the_ordinary_way() -> None:
    with pytest.raises(SystemExit) as ended:
        run_program(lambda: sys.exit(6))
    assert ended.value.code == 6
    with pytest.raises(SystemExit) as ended:
        run_program(lambda: None)
    assert ended.value.code == 0
