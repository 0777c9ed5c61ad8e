"""Where a measurement ran: the machine, its Python and its interpreter; the process's peak memory."""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from typing import Any

from .interpreter import interpreter_module


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:  # noqa: PTH123 - runtime stays dependency-free
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info() -> dict[str, Any]:
    """Facts about this machine that make a latency figure meaningful."""
    _, package = interpreter_module()
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        version = None
    return {
        "hostname": socket.gethostname(),
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "interpreter": {"package": package, "version": version},
    }
