"""A vendor toolkit's own virtualenv: built from a lock, checked by its worker's probe, then marked ready.

Shared by ``edgeconv setup rknn`` (``rknn_setup``) and ``edgeconv setup onnx`` (``onnx_setup``): each
describes its toolkit as a ``ToolkitVenv`` (the lock, its marker file, its worker) and this module does
the rest the same way for both. Every package of the lock is pinned and installed with ``--no-deps``
(no resolver: the same set on every machine); the virtualenv is built in place (its scripts name its
folder) and counts as installed only once the marker, written last after the probe, holds the lock's
digest, so an interrupted setup is redone from scratch. Only a folder setup made (either marker) or an
empty one is ever removed: ``--venv`` may name anything.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import ConverterError, UserInputError

PIP_TIMEOUT_S = 1800
PROBE_TIMEOUT_S = 300


class VenvSetupError(ConverterError):
    """Building a toolkit's virtualenv failed (pip or the import check); the message says which step."""


@dataclass(frozen=True)
class ToolkitVenv:
    """What differs between two toolkits' virtualenvs."""

    command: str  # "rknn": `edgeconv setup rknn`, messages "setup rknn: ..."
    toolkit: str  # the pinned toolkit as pip names it, e.g. "onnx2tf==1.29.24"
    kind: str  # "an RKNN virtualenv", for the message about a folder that is not one
    lock: tuple[str, ...]
    marker: str  # written last: its lock digest says the virtualenv is ready
    partial: str  # written first: a folder holding it is one of ours, safe to rebuild
    worker: Path  # answers {"probe": true} with {"ok": true, "<answer_key>": version}
    answer_key: str
    python_version: tuple[int, int] = (3, 11)
    error: type[ConverterError] = VenvSetupError

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.lock).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Provisioned:
    """A ready virtualenv and what setting it up cost."""

    venv: Path
    toolkit: str
    created: bool
    seconds: float
    bytes: int


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed(spec: ToolkitVenv, venv: Path) -> Path | None:
    """The virtualenv's Python when setup finished there for this lock, else None."""
    try:
        marker = json.loads((venv / spec.marker).read_text())
    except (OSError, ValueError):
        return None
    python = venv_python(venv)
    return python if marker.get("lock") == spec.digest() and python.exists() else None


def python_for_venv(spec: ToolkitVenv, python: str | None) -> str:
    """A CPython of the lock's version to base the virtualenv on: ``--python``, this one, or pythonX.Y on PATH."""
    major, minor = spec.python_version
    candidates = [python] if python else [sys.executable, shutil.which(f"python{major}.{minor}")]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            done = subprocess.run(
                [candidate, "-c", f"import sys; print(sys.version_info[:2] == ({major}, {minor}))"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except OSError:
            continue
        if done.stdout.strip() == "True":
            return candidate
    raise UserInputError(
        f"--python: {spec.toolkit.split('==')[0]}'s pinned set needs CPython {major}.{minor}, and "
        f"{python or f'neither this Python nor python{major}.{minor} on PATH'} is not one; install Python "
        f"{major}.{minor} and pass its path with --python"
    )


def run_step(spec: ToolkitVenv, command: list[str], step: str, timeout_s: float, hint: str = "") -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise spec.error(f"setup {spec.command}: {step} did not finish within {timeout_s:g} s") from e
    if done.returncode != 0:
        tail = " ".join(
            line.strip() for line in (done.stderr or done.stdout).splitlines()[-6:] if "is ignored" not in line
        )
        raise spec.error(f"setup {spec.command}: {step} failed (exit {done.returncode}): {tail or 'no message'}{hint}")


def probe(spec: ToolkitVenv, python: Path, timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Run the worker's probe in the virtualenv: the toolkit imports, and its version."""
    name = spec.toolkit.split("==")[0]
    try:
        done = subprocess.run(
            [str(python), "-I", str(spec.worker)],
            input=json.dumps({"probe": True}),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise spec.error(f"setup {spec.command}: importing {name} took more than {timeout_s:g} s") from e
    lines = done.stdout.strip().splitlines()
    answer: dict[str, Any] = json.loads(lines[-1]) if done.returncode == 0 and lines else {}
    if not answer.get("ok"):
        tail = " ".join(done.stderr.strip().splitlines()[-3:])
        raise spec.error(f"setup {spec.command}: {name} does not import in {python} (exit {done.returncode}): {tail}")
    return answer


def ours_or_empty(spec: ToolkitVenv, folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return (folder / spec.marker).is_file() or (folder / spec.partial).is_file() or not any(folder.iterdir())


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def provision(
    spec: ToolkitVenv,
    venv: Path,
    python: str | None = None,
    pip_args: tuple[str, ...] = (),
    hint: str = "",
    force: bool = False,
) -> Provisioned:
    """Create the virtualenv unless it is ready (idempotent); checked by the probe before it counts as installed."""
    start = time.perf_counter()
    ready = installed(spec, venv)
    if ready is not None and not force:
        answer = probe(spec, ready)
        return Provisioned(venv, answer[spec.answer_key], False, time.perf_counter() - start, folder_size(venv))
    base = python_for_venv(spec, python)
    if venv.exists() and not ours_or_empty(spec, venv):
        raise UserInputError(
            f"--venv: {venv} exists and is not {spec.kind} made by edgeconv setup {spec.command}; "
            "name a new or empty folder (nothing in this one was touched)"
        )
    shutil.rmtree(venv, ignore_errors=True)
    venv.mkdir(parents=True)
    (venv / spec.partial).write_text(f"made by edgeconv setup {spec.command}\n")
    try:
        run_step(spec, [base, "-m", "venv", str(venv)], "creating the virtualenv", 300)
        pip = [str(venv_python(venv)), "-m", "pip", "--disable-pip-version-check", "install", "--no-deps", "-q"]
        run_step(spec, [*pip, *pip_args, *spec.lock], "pip install of the pinned packages", PIP_TIMEOUT_S, hint)
        answer = probe(spec, venv_python(venv))
        marker = {"lock": spec.digest(), "packages": list(spec.lock), spec.answer_key: answer[spec.answer_key]}
        (venv / spec.marker).write_text(json.dumps(marker, indent=1))
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    return Provisioned(venv, answer[spec.answer_key], True, time.perf_counter() - start, folder_size(venv))
