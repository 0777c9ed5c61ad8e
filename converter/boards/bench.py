"""Measure models where they run: this machine, or a device over SSH -- with the same bundle.

The host side only ships files and reads JSON back; every number comes from the
runtime bundle (``converter/runtime`` as a zipapp) in a fresh process, so a host figure
and a device figure are measured by the same code, and neither includes this process's
TensorFlow in its memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.boards.bundle import write_bundle
from converter.boards.deploy import RemoteSession, SSHTarget, remote_session
from converter.errors import DeployError, DeviceInputError, EvaluationError
from converter.runtime.preprocess import Preprocess


@dataclass(frozen=True)
class BenchRequest:
    """What to measure and how; paths are local."""

    model: Path
    float_model: Path | None = None
    npu_model: Path | None = None  # a .rknn built from ``model``, run with rknn-toolkit-lite2 on the device
    data: Path | None = None  # .npz of raw samples (x) and labels (y), preprocessed on the device
    preprocess: Preprocess = Preprocess()
    threads: int | None = None
    delegate: str = "xnnpack"
    warmup: int = 10
    runs: int = 50
    min_seconds: float = 1.0
    max_runs: int = 100_000
    top_k: int | None = None
    label: str = "host"

    def runtime_args(self, where: dict[Path, str]) -> list[str]:
        """Arguments of the bundle's ``bench`` command, with files renamed by ``where``."""
        args = [
            "bench",
            "--model",
            where[self.model],
            "--delegate",
            self.delegate,
            "--label",
            self.label,
            "--warmup",
            str(self.warmup),
            "--runs",
            str(self.runs),
            "--min-seconds",
            str(self.min_seconds),
            "--max-runs",
            str(self.max_runs),
        ]
        if self.float_model:
            args += ["--float", where[self.float_model]]
            if self.delegate == "edgetpu":
                args += ["--float-delegate", "xnnpack"]
        if self.npu_model:
            args += ["--rknn", where[self.npu_model]]
        if self.data:
            args += [
                "--data",
                where[self.data],
                "--scale",
                repr(self.preprocess.scale),
                "--offset",
                repr(self.preprocess.offset),
            ]
            if self.preprocess.resize:
                args += ["--resize", *map(str, self.preprocess.resize)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if self.top_k:
            args += ["--top-k", str(self.top_k)]
        return args

    def files(self) -> list[Path]:
        return [p for p in (self.model, self.float_model, self.npu_model, self.data) if p is not None]


def write_eval_npz(path: Path, x: np.ndarray, y: np.ndarray | None) -> Path:
    """Raw evaluation samples for a device (preprocessing happens there, by the runtime).

    Packed samples (several inputs) are stored as one array per input, keyed by input tensor name.
    """
    arrays = {name: x[name] for name in x.dtype.names} if x.dtype.names else {"x": x}
    if y is not None:
        arrays["y"] = y
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _parse(step: str, stdout: str, where: str) -> dict[str, Any]:
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        raise DeployError(step, f"{where}: the runtime printed no result")
    try:
        doc: dict[str, Any] = json.loads(lines[-1])
    except ValueError as e:
        raise DeployError(step, f"{where}: unreadable result: {e}") from e
    error = doc.get("error")
    if error:
        if error.get("kind") == "bad_input":
            raise DeviceInputError(f"{where}: {error['message']}")
        raise DeployError("run", f"{where}: {error['message']}")
    return doc


def run_local(request: BenchRequest) -> dict[str, Any]:
    """Run the bundle on this machine in a fresh Python process."""
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as tmp:
        bundle = write_bundle(Path(tmp))
        where = {p: str(p.resolve()) for p in request.files()}
        cmd = [sys.executable, str(bundle), *request.runtime_args(where)]
        try:
            result = run_child(cmd, timeout=3600)
        except subprocess.TimeoutExpired as e:
            raise EvaluationError(f"benchmark on this machine took longer than {e.timeout:.0f}s") from e
    return _parse("run", result.stdout, "host") if result.stdout else _raise_local(result)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGKILL when edgeconv dies (Linux ``prctl``); None elsewhere.

    The child runs in its own session, so no signal to edgeconv's process group reaches it, and a
    SIGKILLed edgeconv runs no ``finally``: without this the benchmark would run on, an orphan.
    Everything is looked up before the fork; the child only makes the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return None
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # edgeconv died before the call: the signal will never come
            os._exit(1)

    return arm


def run_child(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own process group; if we stop waiting (timeout, SIGINT, SIGTERM) the whole group dies.

    ``subprocess.run`` kills only the direct child, and a child of that child would live on as an orphan.
    If edgeconv itself is killed (SIGKILL: no cleanup runs), the kernel kills the child (``die_with_parent``).
    """
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # only a prepared foreign call runs between fork and exec
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group id is the child's pid (start_new_session)
            proc.wait()
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _raise_local(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The benchmark child printed no result: its death by a signal is named (a crash in LiteRT's native code)."""
    said = result.stderr.strip()[-500:]
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        raise EvaluationError(
            f"the benchmark process on this machine crashed ({name}) inside native code (LiteRT) while running the "
            f"models; this is a crash of the runtime, not an error edgeconv found in your input: please report it "
            f"with the recipe and the model (its last output: {said or 'none'})"
        )
    raise EvaluationError(f"the runtime failed on this machine (exit {result.returncode}): {said}")


def run_remote(request: BenchRequest, target: SSHTarget, keep: bool = False) -> dict[str, Any]:
    """Copy the bundle, models and data to the device, run there, and bring the JSON back."""
    with tempfile.TemporaryDirectory(prefix="edgeconv-deploy-") as tmp, remote_session(target, keep) as session:
        bundle = write_bundle(Path(tmp))
        files = [bundle, *request.files()]
        _check_unique_names(files)
        session.copy(files)
        where = {p: f"{session.workdir}/{p.name}" for p in request.files()}
        result = session.run_runtime(target.python, f"{session.workdir}/{bundle.name}", *request.runtime_args(where))
        doc = _remote_result(session, result)
    # What the figures went through, kept with them (report.json: latency.<target>.retries / ssh_warnings).
    if session.retries:
        doc["retries"] = session.retries
    if session.warnings:
        doc["ssh_warnings"] = session.warnings
    return doc


def _remote_result(session: RemoteSession, result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    if result.stdout.strip():
        return _parse("fetch", result.stdout, session.target.label)
    session.check("run", result)  # no JSON at all: report ssh's or Python's own error
    raise DeployError("fetch", f"{session.target.label}: the runtime printed no result")


def _check_unique_names(files: list[Path]) -> None:
    names = [p.name for p in files]
    if len(set(names)) != len(names):
        raise DeployError("copy", f"two files share a name in the remote folder: {names}")
