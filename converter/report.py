"""report.json: everything a run measured, with provenance; what was not measured is null."""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

from . import __version__
from .runtime.interpreter import interpreter_module

SCHEMA_VERSION = 1


def _version(package: str) -> str | None:
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
        "tensorflow": _version("tensorflow"),
        "interpreter": f"{interpreter} {_version(interpreter) or ''}".strip(),
    }


def dumps(report: dict[str, Any]) -> bytes:
    """Stable JSON text of a report (keys in insertion order, 2-space indent)."""
    return (json.dumps(report, indent=2, allow_nan=False) + "\n").encode()
