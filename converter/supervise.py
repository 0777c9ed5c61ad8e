"""A crash in native code becomes a clear error that names the step, not a dead process.

TensorFlow's converter and quantizer and the LiteRT interpreter are C++ running in edgeconv's own
process: a SIGSEGV or SIGABRT there, or the kernel's out-of-memory killer (SIGKILL), would end
``edgeconv`` with no message at all (the shell prints "Segmentation fault", exit 139). So the
heavy commands (``HEAVY``) run in a child forked by the ``edgeconv`` entry point before anything
heavy is imported (the parent has loaded click and edgeconv's light modules, no numpy, no
TensorFlow, no thread). The child announces each step it enters (``progress.announce_to``: the
same named steps as the console lines and the ticker) in an inherited file, and captures what
native code prints in another (``native_output.share``). The parent only waits; when the child
dies by a signal it prints one paragraph: the command, the step, the signal, the tail of the native
output, what to do; exit 3. Any other end of the child is passed on unchanged: its exit code, or
the same signal (SIGINT, SIGTERM, ...) raised on the parent so the shell sees what it saw before.
Run as the program (``run_program``), the child ends with ``os._exit`` once the command has returned
and its exit handlers have run (``quick_exit``), which spares TensorFlow's teardown.

Signals: the parent blocks SIGINT, SIGTERM and SIGHUP and takes them with ``sigtimedwait``, which
says who sent them. One from the terminal (Ctrl-C, a hang-up) reaches the child too, since both are
in the terminal's foreground process group, so the parent does not pass it on (the child would get it
twice); one sent by a process (``kill <pid>``) is forwarded. The child dies with the parent
(``PR_SET_PDEATHSIG``): killing ``edgeconv`` kills the conversion, as it did when they were one.

Only the entry point supervises (``SupervisedGroup.__call__``, what the console script and
``python -m converter`` call). Click's ``CliRunner`` and other in-process callers use ``main.main()``
and run as before: they hold no terminal to protect and often read state back from the process.
``EDGECONV_SUPERVISOR=off`` runs a command in one process (e.g. under a debugger).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, NoReturn

import click

HEAVY = frozenset({"convert", "analyze", "bench", "deploy"})
WRITERS = frozenset({"convert", "analyze", "deploy"})  # the commands that publish into an output folder
EXIT_STEP = 3
OFF_ENV = "EDGECONV_SUPERVISOR"
# Set to a path, the running steps are also appended there, one "<pid> <step>" line each (empty step:
# between steps), so a watchdog or a test can see which step a run is in and which process runs it.
STEP_FILE_ENV = "EDGECONV_STEP_FILE"
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Signals that end a process running native code by themselves: a crash, or the kernel's kill.
CRASHES = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGKILL, signal.SIGSYS}
)
_MEANING = {
    signal.SIGSEGV: "a segmentation fault: an invalid memory access",
    signal.SIGBUS: "a bus error: an invalid memory access",
    signal.SIGILL: "an illegal instruction",
    signal.SIGFPE: "an arithmetic fault",
    signal.SIGABRT: "an abort: a check inside the native library failed",
    signal.SIGSYS: "a bad system call",
}
_PR_SET_PDEATHSIG = 1
_supervisor: int | None = None  # in the supervised child: the pid of the process the user started


def run_pid() -> int:
    """The pid that stands for this run (the lock file names it): the process the user started and sees."""
    return _supervisor or os.getpid()


class SupervisedGroup(click.Group):
    """The ``edgeconv`` group; called as a program (not through ``main()``), it runs heavy commands supervised."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        command = _heavy_command(sys.argv[1:])
        if command is None or not _can_supervise():
            return super().__call__(*args, **kwargs)
        return supervise(command, lambda: super(SupervisedGroup, self).__call__(*args, **kwargs))


def _heavy_command(argv: list[str]) -> str | None:
    """The heavy command ``argv`` runs, or None (a light command, help, version, or supervision off)."""
    if os.environ.get(OFF_ENV, "").lower() in ("off", "0", "no", "false"):
        return None
    if not argv or argv[0] not in HEAVY or "--help" in argv or "-h" in argv:
        return None
    return argv[0]


def _can_supervise() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork") and hasattr(signal, "sigtimedwait")


def _file(path: str | None) -> int:
    """A file both processes share: ``path`` to append to, or an anonymous temporary file (gone when closed)."""
    if path:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    fd, name = tempfile.mkstemp(prefix="edgeconv-supervise-")
    Path(name).unlink()
    return fd


def supervise(command: str, run: Any) -> Any:
    """Run ``run`` (click's whole command line) in a forked child; explain its death by a signal."""
    from converter import native_output, progress

    steps_fd = _file(os.environ.get(STEP_FILE_ENV))
    native_fd = _file(None)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*_FORWARDED, signal.SIGCHLD})
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: the command itself, as before
        global _supervisor
        _supervisor = parent
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        _die_with_parent(parent)
        progress.announce_to(steps_fd)
        native_output.share(native_fd)
        return run()
    status, peak_kb = _wait(pid)
    code = _outcome(command, pid, status, peak_kb, steps_fd, native_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # nothing of the parent needs cleaning up (its files are anonymous); spares a teardown


def run_program(group: Any) -> NoReturn:
    """The ``edgeconv`` program (the console script, ``python -m converter``): ``group`` run as click runs it.

    In a supervised child the command's ``SystemExit`` ends the process with ``quick_exit``; anywhere else it
    ends it the ordinary way. Callers of ``main()`` itself keep the ordinary end in the child too (a test that
    looks at the child's modules after the command, an embedding program).
    """
    try:
        group()
        code = 0
    except SystemExit as e:
        if _supervisor is None:
            raise
        code = exit_status(e.code)
    if _supervisor is None:
        sys.exit(code)
    quick_exit(code)


def quick_exit(code: int) -> NoReturn:
    """End this process with ``os._exit`` after what Python's exit does that matters, in Python's order.

    The threads that are not daemons are joined as the interpreter joins them (``threading._shutdown``, which
    first tells thread pools left open to stop), the ``atexit`` handlers run (temporary folders, logging,
    TensorFlow's generated sources), the standard streams flushed. What Python does besides is skipped: a
    full garbage collection of everything TensorFlow made and the teardown of its modules and C++ libraries,
    0.7-1.0 s after a MobileNetV2-224 conversion, with nothing left for them to write. Used by the supervised
    child (forked without exec, where ``os._exit`` is the documented end) and by the PyTorch worker.
    """
    threading._shutdown()  # type: ignore[attr-defined]  # noqa: SLF001 - the interpreter's own first exit step
    atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter runs next; no public name
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: the interpreter would ignore it too
            stream.flush()
    os._exit(code)


def exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` ends a process with (None: 0; other than an int: printed, then 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _die_with_parent(parent: int) -> None:
    """The child gets SIGKILL when the parent dies (a SIGKILLed ``edgeconv`` must not leave a conversion running)."""
    import ctypes

    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # pragma: no cover - the parent died before the call
        os._exit(EXIT_STEP)


def _wait(pid: int) -> tuple[int, int]:
    """Wait for the child, passing on the signals a process (not the terminal) sent; its status and peak RSS (kB)."""
    waited = {*_FORWARDED, signal.SIGCHLD}
    while True:
        info = signal.sigtimedwait(waited, 1.0)
        if info is not None and info.si_signo in _FORWARDED:
            # From the terminal (si_pid 0) the child got it too; from the child itself, nothing to pass on.
            if info.si_pid not in (0, pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, info.si_signo)
            continue
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done == pid:
            return status, int(usage.ru_maxrss)


def _outcome(command: str, pid: int, status: int, peak_kb: int, steps_fd: int, native_fd: int) -> int:
    """The parent's exit code for the child's ``status``; a crash is explained on stderr first."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    signum = os.WTERMSIG(status)
    if signum not in CRASHES:  # ended by SIGINT, SIGTERM, SIGHUP, ...: end the same way
        _die_like(signum)
        return 128 + signum
    step, last = running_step(_read(steps_fd), pid)
    tail = _tail(_read(native_fd))
    if tail:
        from converter.native_output import TAIL_LINES

        click.echo(f"--- printed by TensorFlow/LiteRT during this run (last {TAIL_LINES} lines) ---", err=True)
        click.echo(tail, err=True)
        click.echo("---", err=True)
    click.echo(f"error: {crash_message(command, signum, step, last, peak_kb, bool(tail))}", err=True)
    return EXIT_STEP


def _die_like(signum: int) -> None:
    """Raise ``signum`` on ourselves with its default action, so the caller sees the child's end."""
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)


def _read(fd: int) -> str:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0).decode(errors="replace") if size else ""


def _tail(text: str) -> str:
    from converter.native_output import TAIL_LINES

    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-TAIL_LINES:])


def running_step(log: str, pid: int) -> tuple[str | None, str | None]:
    """From the step file: the step ``pid`` was in when it died (None: between steps), and the last one it entered."""
    current: str | None = None
    last: str | None = None
    prefix = f"{pid} "
    for line in log.splitlines():
        if line == str(pid) or line.startswith(prefix):
            step = line[len(prefix) :].strip() or None
            current = step
            last = step or last
    return current, last


def _memory_total_kb() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:  # noqa: PTH123
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gb(kb: int) -> str:
    return f"{kb / 1024**2:.1f} GB"


def crash_message(
    command: str, signum: int, step: str | None, last: str | None, peak_kb: int, shown: bool = False
) -> str:
    """One paragraph: which command, which step, which signal, whose fault, what to do."""
    name = signal.Signals(signum).name
    if step:
        where = f'during step "{step}"'
    else:
        where = f'after step "{last}", before the next one' if last else "outside any named step"
    if signum == signal.SIGKILL:
        total = _memory_total_kb()
        memory = f"its peak memory was {_gb(peak_kb)}" + (f" of this machine's {_gb(total)}" if total else "")
        what = (
            f"edgeconv {command} was killed ({name}) {where}. SIGKILL comes from outside the process, "
            f"most likely from the kernel's out-of-memory killer ({memory}): free memory for it (close other "
            "work, convert fewer recipes at once with --jobs, lower calibration.samples or analysis.samples) "
            "and run it again; if memory was not short, something else on this machine killed it"
        )
    else:
        above = " and the native output above" if shown else ""
        inputs = "recipe, the model" if command == "convert" else "command line, the model"
        what = (
            f"edgeconv {command} crashed ({name}, {_MEANING.get(signal.Signals(signum), 'a fatal signal')}) "
            f"{where}. This is a crash inside native code (TensorFlow/LiteRT), not an error edgeconv "
            f"found in your input. Please report it with the {inputs} and this message{above} (--debug "
            "shows all native output live); changing the model (another layer, a "
            "recurrent layer unrolled) may avoid it meanwhile"
        )
    if command not in WRITERS:
        return what
    return (
        f"{what}. Nothing of this run was published: the output folder is as it was before the run (the next "
        "run clears the staging folder and lock this one left beside it)"
    )
