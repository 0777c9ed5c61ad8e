"""ruff and mypy are part of the suite, so CI fails on a lint or type error like on a test."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_clean() -> None:
    result = _run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean() -> None:
    result = _run("mypy", "converter")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean_on_tests_and_tools() -> None:
    """The tests and tools are held to the same strict config: a wrong annotation there hides a wrong claim."""
    result = _run("mypy", "tests", "tools")
    assert result.returncode == 0, result.stdout + result.stderr
