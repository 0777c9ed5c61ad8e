"""Progress on stderr for people at a terminal; nothing at all when stderr is not one (CI logs, pipes).

Two kinds: ``Progress`` (a bar for loops with a known count: calibration, evaluation) and ``Ticker``
(the running step's name and elapsed time, for steps with no count: importing TensorFlow, loading,
compiling for a target). Both redraw one line in place and erase it when done, so what stays on the
screen is exactly what a log shows: the step lines and the summary. Log records clear the line first
(``clear_line``, called by the logging filter ``cli_common`` installs), so they never land mid-line.

The same names tell the supervisor (``supervise``) which step runs: every Ticker, Progress and
``step`` announces itself in the file ``announce_to`` gave, with or without a terminal, so a crash in
native code can be reported with the step it happened in ("calibrate: statistics pass").
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import ParamSpec, TypeVar

WIDTH = 72
_lock = threading.Lock()
_active: Ticker | None = None
_channel: int | None = None  # where the running steps are announced (``announce_to``); None: nowhere
_running: list[str] = []
_steps_lock = threading.Lock()
P = ParamSpec("P")
R = TypeVar("R")


def announce_to(fd: int | None) -> None:
    """Announce every step entered or left from now on in ``fd``, one "<pid> <step>" line each."""
    global _channel
    _channel = fd


def _announce() -> None:
    if _channel is None:
        return
    names = [n for i, n in enumerate(_running) if i == 0 or n != _running[i - 1]]  # "calibrate" once, not twice
    with contextlib.suppress(OSError):  # a full disk must not fail the step itself
        os.write(_channel, f"{os.getpid()} {': '.join(names)}\n".encode(errors="replace"))


def _enter(name: str) -> None:
    with _steps_lock:
        _running.append(name)
        _announce()


def _leave(name: str) -> None:
    with _steps_lock:
        if name in _running:
            del _running[len(_running) - 1 - _running[::-1].index(name)]
        _announce()


@contextmanager
def step(name: str) -> Iterator[None]:
    """A named part of a step (not shown on the terminal): where a crash in native code is reported to be."""
    _enter(name)
    try:
        yield
    finally:
        _leave(name)


def named(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: the function runs as ``step(name)``."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with step(name):
                return fn(*args, **kwargs)

        return inner

    return wrap


def _erase() -> None:
    sys.stderr.write("\r" + " " * WIDTH + "\r")
    sys.stderr.flush()


def clear_line() -> None:
    """Erase the ticker's line (it redraws on its next tick), so a log line starts at column 0."""
    ticker = _active
    if ticker is not None and ticker.enabled:
        with _lock:
            if ticker.drawn:
                _erase()
                ticker.drawn = False


class Ticker:
    """``with Ticker("load"):`` -- "load  3.2s …" redrawn 4 times a second while the block runs."""

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.drawn = False
        self.paused = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = time.perf_counter()

    def __enter__(self) -> Ticker:
        global _active
        _enter(self.label)
        if self.enabled and _active is None:  # one line at a time: an inner step does not start another
            _active = self
            self._thread = threading.Thread(target=self._run, name="edgeconv-ticker", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            with _lock:
                if not self.paused:
                    elapsed = time.perf_counter() - self._start
                    sys.stderr.write(f"\r{self.label:<10} {elapsed:6.1f}s …")
                    sys.stderr.flush()
                    self.drawn = True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        global _active
        _leave(self.label)
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        with _lock:
            if self.drawn:
                _erase()
                self.drawn = False
        _active = None


class Progress:
    """``with Progress("calibrate", total) as p: p.advance(n)`` -- redraws at most 10 times a second."""

    def __init__(self, label: str, total: int, enabled: bool | None = None) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0
        self._start = time.perf_counter()
        self._ticker: Ticker | None = None

    def __enter__(self) -> Progress:
        _enter(self.label)
        if self.enabled and _active is not None:  # the bar takes the step's line while it runs
            self._ticker = _active
            clear_line()
            self._ticker.paused = True
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            width = 30
            filled = int(width * self.done / self.total)
            with _lock:
                sys.stderr.write(
                    f"\r{self.label:<10} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                    f"{now - self._start:5.1f}s"
                )
                sys.stderr.flush()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _leave(self.label)
        if self.enabled:
            with _lock:
                _erase()
        if self._ticker is not None:
            self._ticker.paused = False
