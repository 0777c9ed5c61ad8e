"""A progress bar on stderr for long steps; silent when stderr is not a terminal (CI logs)."""

from __future__ import annotations

import sys
import time
from types import TracebackType


class Progress:
    """``with Progress("calibrate", total) as p: p.advance(n)`` -- redraws at most 10 times a second."""

    def __init__(self, label: str, total: int, enabled: bool | None = None) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last = 0.0
        self._start = time.perf_counter()

    def __enter__(self) -> Progress:
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            width = 30
            filled = int(width * self.done / self.total)
            sys.stderr.write(
                f"\r{self.label:<10} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{now - self._start:5.1f}s"
            )
            sys.stderr.flush()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()
