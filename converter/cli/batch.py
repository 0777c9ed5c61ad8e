"""Many recipes in one ``edgeconv convert``: each in its own process, a bounded number at a time.

Each recipe runs as ``python -m converter convert --recipe R --out O`` in a child process, so one
recipe's crash, memory or TensorFlow state never reaches another, and a recipe's artifacts are the
bytes a single ``convert`` would write. The children share the content-addressed caches
(``EDGECONV_CACHE_DIR``): entries are written atomically (temporary file, then rename) and checked
against their sha256 when read, so two children computing the same entry both write the same bytes
and a torn or corrupt entry is a miss, never a wrong model.

The default number of jobs is one per core, bounded by memory: the MemAvailable of /proc/meminfo
divided by ``JOB_MEMORY`` (the peak RSS of one convert of a MobileNet-sized model, about 1.4 GB
measured, rounded up), at least one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.boards.bench import die_with_parent
from converter.errors import UserInputError
from converter.reports.report import REPORT_NAME
from converter.yamlio import not_regular

JOB_MEMORY = 2 * 1024**3  # bytes one convert may peak at (1.4 GB measured on MobileNetV2-224), rounded up
RECIPE_SUFFIXES = (".yaml", ".yml")
TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class Job:
    """One recipe to convert, and where."""

    recipe: Path
    name: str
    out: Path


@dataclass
class JobResult:
    """What one child did: its exit code, time, report (when it wrote one) and its last error line."""

    job: Job
    code: int
    seconds: float
    report: dict[str, Any] | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        report = self.report or {}
        return {
            "recipe": str(self.job.recipe),
            "name": self.job.name,
            "out": str(self.job.out),
            "exit_code": self.code,
            "seconds": round(self.seconds, 3),
            "passed": report.get("passed"),
            "int8_bytes": ((report.get("artifacts") or {}).get("int8") or {}).get("bytes"),
            "accuracy": report.get("accuracy"),
            "gates": [{k: g.get(k) for k in ("name", "target", "status")} for g in report.get("gates") or []],
            "error": self.error,
        }


def find_recipes(paths: Sequence[Path]) -> list[Path]:
    """Recipe files from files and folders (a folder's *.yaml/*.yml, not recursive, sorted)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix in RECIPE_SUFFIXES and p.is_file())
            if not inside:
                raise UserInputError(f"{path}: a folder with no recipe (*.yaml, *.yml) in it")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            problem = not_regular(path)
            if problem is None or problem == "not found":
                raise UserInputError(f"{path}: no such recipe file or folder")
            raise UserInputError(f"{path}: {problem}; give recipe files (*.yaml) or folders that hold them")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return [Path(p) for p in unique]


def default_jobs() -> tuple[int, str]:
    """One job per core, bounded by available memory; and how that was decided, for the log."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    available = _mem_available()
    if available is None:
        return cores, f"{cores} (one per core; available memory unknown)"
    by_memory = max(1, available // JOB_MEMORY)
    jobs = max(1, min(cores, by_memory))
    return jobs, (
        f"{jobs} (one per core: {cores}; memory: {available / 1024**3:.1f} GB available / "
        f"{JOB_MEMORY / 1024**3:.0f} GB per job = {by_memory})"
    )


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:  # noqa: PTH123
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def plan(recipes: Sequence[Path], names: Sequence[str], out_parent: Path | None) -> list[Job]:
    """Each recipe's output folder: ``<out>/<name>`` (default ``build/<name>``); two recipes may not share one."""
    parent = out_parent or Path("build")
    jobs = [Job(r, n, parent / n) for r, n in zip(recipes, names, strict=True)]
    seen: dict[Path, Path] = {}
    for job in jobs:
        if job.out in seen:
            raise UserInputError(
                f"{job.recipe} and {seen[job.out]} are both named '{job.name}' and would write to {job.out}; "
                "give one of them another name: (the recipe's name: key)"
            )
        seen[job.out] = job.recipe
    return jobs


def _last_error(stderr: str) -> str | None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines)[-1] if lines else None


class _Children:
    """The running convert processes, so an interrupted batch can end them all (they run in their own sessions)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen[str]] = set()
        self.stopping = False

    def run(self, command: list[str], timeout: float) -> tuple[int, str]:
        with self.lock:
            if self.stopping:
                return 3, "error: not started: the batch was interrupted"
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, arguments as a list
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
            self.running.add(proc)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            return 3, f"error: did not finish within {timeout:.0f} s"
        finally:
            with self.lock:
                self.running.discard(proc)
        return proc.returncode, stderr

    @staticmethod
    def kill(proc: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its whole group: the runtime bundle's children too
        proc.wait()

    def stop_all(self) -> None:
        with self.lock:
            self.stopping = True
            running = list(self.running)
        for proc in running:
            self.kill(proc)


def run_one(job: Job, args: Sequence[str], children: _Children | None = None) -> JobResult:
    """Convert one recipe in a child process; its report is read back from its output folder."""
    command = [sys.executable, "-m", "converter", "convert", "--recipe", str(job.recipe), "--out", str(job.out)]
    start = time.perf_counter()
    code, stderr = (children or _Children()).run([*command, *args], TIMEOUT_S)
    seconds = time.perf_counter() - start
    if code < 0 or code > 3:  # killed by a signal, or an interpreter failure: a failed step
        stderr += f"\nerror: the convert process ended with {code}"
        code = 3
    report = None
    path = job.out / REPORT_NAME
    if code in (0, 1) and path.is_file():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = None
    return JobResult(job, code, seconds, report, None if code in (0, 1) else _last_error(stderr))


def run_all(
    jobs: Sequence[Job], workers: int, args: Sequence[str], done: Callable[[JobResult], None]
) -> list[JobResult]:
    """Every job, ``workers`` at a time; ``done`` is called (serialised) as each finishes."""
    lock = threading.Lock()
    children = _Children()

    def one(job: Job) -> JobResult:
        result = run_one(job, args, children)
        with lock:
            done(result)
        return result

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="edgeconv-job")
    try:
        return list(pool.map(one, jobs))
    except BaseException:  # Ctrl-C or SIGTERM: end every running convert now, start no other
        children.stop_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def worst(codes: Sequence[int]) -> int:
    """The batch's exit code: 0 < 1 (a gate failed) < 2 (bad input) < 3 (a failed step)."""
    return max(codes, default=0)
