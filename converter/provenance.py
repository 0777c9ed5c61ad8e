"""What produced a result: edgeconv's version and the versions of what it converts and runs with.

Kept below ``report`` and ``calib_cache`` (both stamp their output with it) so neither imports the other.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from converter import __version__
from converter.runtime.interpreter import interpreter_module


def package_version(package: str) -> str | None:
    """The installed version of ``package``, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def tool_info() -> dict[str, Any]:
    """Versions of edgeconv and of what it converts and runs with."""
    _, interpreter = interpreter_module()
    return {
        "name": "edgeconv",
        "version": __version__,
        "tensorflow": package_version("tensorflow"),
        "interpreter": f"{interpreter} {package_version(interpreter) or ''}".strip(),
    }
