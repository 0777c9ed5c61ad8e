"""Keep what TensorFlow, LiteRT and the quantizer print from C++ off the user's terminal.

TensorFlow's start-up banners (oneDNN, CUDA's "failed call to cuInit", absl's "log messages before
InitializeLog"), the quantizer's ``fully_quantize: 0, inference_type: 6`` lines and the converter's
"Skipping runtime version metadata" come from C++, written straight to file descriptors 1 and 2: no
Python setting silences all of them. While a command runs, those descriptors point at a temporary file;
Python's own ``sys.stdout``/``sys.stderr`` (our step lines, the summary, click's messages) keep writing
to the terminal through duplicates of the original descriptors. The captured text is shown when the
command fails (exit 3, or any unexpected error) or with ``--debug`` (then nothing is captured at all).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

TAIL_LINES = 60
_shared: int | None = None  # the supervisor's file (``share``): its parent reads the tail after a crash


def share(fd: int | None) -> None:
    """Capture into ``fd`` (emptied first) instead of a private temporary file, so the process that
    supervises this one can show the tail when native code kills it (``supervise``)."""
    global _shared
    _shared = fd


def _capture_file() -> IO[bytes]:
    if _shared is None:
        return tempfile.TemporaryFile(prefix="edgeconv-native-")  # noqa: SIM115 - closed by the caller's with
    os.ftruncate(_shared, 0)
    os.lseek(_shared, 0, os.SEEK_SET)
    return open(os.dup(_shared), "w+b")  # noqa: SIM115, PTH123 - closed by the caller's with


class Captured:
    """The native output of the run so far (empty when nothing was captured)."""

    def __init__(self, file: IO[bytes] | None) -> None:
        self._file = file

    def text(self) -> str:
        if self._file is None:
            return ""
        self._file.flush()
        self._file.seek(0)
        return self._file.read().decode(errors="replace")

    def tail(self, lines: int = TAIL_LINES) -> str:
        kept = [line for line in self.text().splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


def _real_descriptors() -> bool:
    """Only a real process writes to fds 1 and 2 (click's CliRunner and pytest's capture swap the streams)."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextmanager
def captured(enabled: bool = True) -> Iterator[Captured]:
    """Send fds 1 and 2 to a temporary file while Python's streams keep the terminal; restore on exit."""
    if not enabled or not _real_descriptors():
        yield Captured(None)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    old_out, old_err = sys.stdout, sys.stderr
    out = open(saved_out, "w", buffering=1, encoding=old_out.encoding, errors="replace", closefd=False)  # noqa: SIM115
    err = open(saved_err, "w", buffering=1, encoding=old_err.encoding, errors="replace", closefd=False)  # noqa: SIM115
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream in (old_out, old_err)
    ]
    previous = {h: h.stream for h in handlers}
    with _capture_file() as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
        sys.stdout, sys.stderr = out, err
        for h in handlers:
            h.setStream(err if previous[h] is old_err else out)
        try:
            yield Captured(file)
        finally:
            out.flush()
            err.flush()
            sys.stdout, sys.stderr = old_out, old_err
            for h, stream in previous.items():
                h.setStream(stream)
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            out.close()
            err.close()
