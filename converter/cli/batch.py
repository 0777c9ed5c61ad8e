"""Many recipes in one ``edgeconv convert``: a bounded number of long-lived worker processes, a recipe at a time each.

Each worker is ``python -m converter batch-worker``: it converts the recipes it is handed one after another,
in-process, exactly as ``edgeconv convert --recipe R --out O`` would (the same command, its exit code, its
artifacts byte for byte), so TensorFlow and the other heavy imports are paid once per worker instead of once
per recipe (about 5 s each on 2 cores). A recipe's stderr goes to a file of its own; its stdout nowhere (the
batch prints one table). A worker that dies (a native crash, a kill) costs the recipe it was running exit 3,
with its last stderr line, and a fresh worker takes the next one; no recipe's failure reaches another's
output. The workers share the content-addressed caches (``EDGECONV_CACHE_DIR``): entries are written
atomically (temporary file, then rename) and checked against their sha256 when read, so two workers computing
the same entry both write the same bytes and a torn or corrupt entry is a miss, never a wrong model. A batch
runs under one set of flags (``--allow-custom-objects`` included), so what one recipe may import, the others
of the batch may too.

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
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.artifacts import signals_deferred
from converter.boards.bench import die_with_parent
from converter.errors import UserInputError
from converter.reports.report import REPORT_NAME
from converter.supervise import CRASHES, crash_message, running_step
from converter.yamlio import not_regular

STOP_GRACE_S = 5.0  # an interrupted recipe's time to end as a single convert does, before its worker is killed
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what an interrupted convert exits with
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


class _Worker:
    """One ``batch-worker`` process and the pipes it takes recipes and gives exit codes on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # the timer's kill and the batch thread's may meet
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, arguments as a list
            [sys.executable, "-m", "converter", "batch-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # each recipe's stderr goes to its own file
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )

        self.peak_kb = 0
        self.busy = False  # a recipe handed over and its exit code not yet back

    def convert(self, argv: list[str], stderr: Path, steps: Path) -> int | None:
        """Run one ``edgeconv`` command line; its exit code, or None when the worker died on it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None  # noqa: S101 - PIPE above
        self.busy = True
        try:
            try:
                self.proc.stdin.write(json.dumps({"argv": argv, "stderr": str(stderr), "steps": str(steps)}) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                return None
            line = self.proc.stdout.readline()
            if not line:
                return None
            return int(json.loads(line)["code"])
        finally:
            self.busy = False

    def interrupt(self) -> None:
        """SIGINT to the worker's group, as Ctrl-C gives a single convert: the recipe it runs ends as one does
        (its output folder's staging removed, nothing published) and the worker answers 130."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)

    def kill(self) -> int:
        """End the worker and its whole group (the runtime bundle's children too); its exit status (Popen's sign).

        Reaped with ``wait4`` for its peak RSS, which a crash message gives when the kernel killed it.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with self.lock:
            if self.proc.returncode is None:
                try:
                    _, status, usage = os.wait4(self.proc.pid, 0)
                except ChildProcessError:
                    return self.proc.wait()
                self.peak_kb = int(usage.ru_maxrss)
                self.proc.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return self.proc.returncode

    def close(self) -> None:
        """No more recipes: the worker reads end-of-input and exits."""
        with contextlib.suppress(BrokenPipeError, OSError):
            assert self.proc.stdin is not None  # noqa: S101
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


class _Children:
    """The running workers, one per batch thread, so an interrupted batch can end them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.workers: dict[int, _Worker] = {}
        self.stopping = False

    def run(self, argv: list[str], timeout: float) -> tuple[int, str]:
        """Exit code and stderr of one command line, run by this thread's worker (started on first use)."""
        thread = threading.get_ident()
        with self.lock:
            if self.stopping:
                return EXIT_INTERRUPTED, "error: not started: the batch was interrupted"
            worker = self.workers.get(thread)
            if worker is None or worker.proc.poll() is not None:
                worker = self.workers[thread] = _Worker()
        with tempfile.TemporaryDirectory(prefix="edgeconv-job-") as tmp:
            return self._run(worker, thread, argv, Path(tmp) / "stderr", Path(tmp) / "steps", timeout)

    def _run(
        self, worker: _Worker, thread: int, argv: list[str], stderr_path: Path, steps: Path, timeout: float
    ) -> tuple[int, str]:
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            worker.kill()

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            code = worker.convert(argv, stderr_path, steps)
        finally:
            timer.cancel()
        stderr = stderr_path.read_text(encoding="utf-8", errors="replace") if stderr_path.exists() else ""
        if code is not None:
            return code, stderr
        status = worker.kill()  # it died on this recipe: a fresh worker takes the next
        with self.lock:
            self.workers.pop(thread, None)
        if expired.is_set():
            return 3, stderr + f"\nerror: did not finish within {timeout:.0f} s"
        if self.stopping:  # ended by the batch's own stop: an interruption, not a crash
            return EXIT_INTERRUPTED, stderr + f"\nerror: {INTERRUPTED}"
        if status < 0 and signal.Signals(-status) in CRASHES and not self.stopping:
            log = steps.read_text(encoding="utf-8", errors="replace") if steps.exists() else ""
            step, last = running_step(log, worker.proc.pid)
            return 3, stderr + f"\nerror: {crash_message(argv[0], -status, step, last, worker.peak_kb)}"
        return status if status != 0 else 3, stderr

    def close_all(self) -> None:
        with self.lock:
            workers, self.workers = list(self.workers.values()), {}
        for worker in workers:
            worker.close()

    def stop_all(self, grace: float = STOP_GRACE_S) -> None:
        """Start nothing more; interrupt the recipes running, give them ``grace`` seconds to end as an interrupted
        convert does (nothing published, staging removed), then end every worker."""
        with self.lock:
            self.stopping = True
            workers = list(self.workers.values())
        running = [w for w in workers if w.busy]
        for worker in running:
            worker.interrupt()
        deadline = time.monotonic() + grace
        while any(w.busy for w in running) and time.monotonic() < deadline:
            time.sleep(0.05)
        for worker in workers:  # idle now, or past the grace (a native step that did not return): killed
            worker.kill()
        with self.lock:
            self.workers = {}


def serve() -> None:
    """The worker's loop: a JSON line ``{"argv": [...], "stderr": path}`` in, ``{"code": n}`` out, until end of input.

    Each command runs in this process as ``edgeconv`` would run it; its stdout is discarded (the batch prints
    the table) and its stderr written to ``path``. Between recipes the memory the last one held is handed back.
    """
    from converter import progress
    from converter.cli.main import main
    from converter.sources.load import release_memory

    results = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")  # the protocol's own copy of stdout
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the commands' stdout
    os.close(devnull)
    for line in sys.stdin:
        job = json.loads(line)
        steps = os.open(job["steps"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        progress.announce_to(steps)  # the steps this recipe enters, for the crash message if it dies in one
        try:
            code = _run_command(main, list(job["argv"]), Path(job["stderr"]))
        finally:
            progress.announce_to(None)
            os.close(steps)
        results.write(json.dumps({"code": code}) + "\n")
        if "keras" in sys.modules:
            with contextlib.suppress(Exception):
                sys.modules["keras"].backend.clear_session()
        release_memory()


def _run_command(command: Any, argv: list[str], stderr: Path) -> int:
    """``command`` (the ``edgeconv`` group) with ``argv``, stderr (fd 2, native output too) into ``stderr``."""
    import click

    sys.stderr.flush()
    saved = os.dup(2)
    with stderr.open("wb") as f:
        os.dup2(f.fileno(), 2)
        try:
            command.main(args=argv, prog_name="edgeconv", standalone_mode=False)
            code = 0
        except SystemExit as e:  # ``guarded`` ends every command with sys.exit(code)
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 3)
        except click.ClickException as e:  # usage errors: what click would print, and its exit code
            e.show()
            code = e.exit_code
        except Exception as e:  # noqa: BLE001 - the worker must answer for every recipe
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            code = 3
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    return code


def run_one(job: Job, args: Sequence[str], children: _Children) -> JobResult:
    """Convert one recipe in a worker process; its report is read back from its output folder."""
    command = ["convert", "--recipe", str(job.recipe), "--out", str(job.out)]
    start = time.perf_counter()
    code, stderr = children.run([*command, *args], TIMEOUT_S)
    seconds = time.perf_counter() - start
    if code < 0 or (code > 3 and code != EXIT_INTERRUPTED):  # killed by a signal, an interpreter failure
        stderr += f"\nerror: the convert worker ended with {code}"
        code = 3
    report = None
    path = job.out / REPORT_NAME
    if code in (0, 1) and path.is_file():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = None
    return JobResult(job, code, seconds, report, None if code in (0, 1) else _last_error(stderr))


INTERRUPTED = (
    "interrupted: the batch was stopped (Ctrl-C or SIGTERM) before this recipe finished; nothing of it was published"
)


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
        results = list(pool.map(one, jobs))
    except BaseException as stopped:  # Ctrl-C or SIGTERM: end every running convert now, start no other
        # Not cut short by the next signal: Ctrl-C reaches this process twice (from the terminal, and forwarded
        # by the supervising parent), and a stop abandoned halfway left a worker converting and publishing.
        with signals_deferred():
            children.stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(stopped, KeyboardInterrupt):
            stopped.outcome = (  # type: ignore[attr-defined]
                "recipes shown done with exit 0 or 1 above were published; every other one published nothing"
            )
        raise
    pool.shutdown(wait=True)
    children.close_all()
    return results


def worst(codes: Sequence[int]) -> int:
    """The batch's exit code: 0 < 1 (a gate failed) < 2 (bad input) < 3 (a failed step)."""
    return max(codes, default=0)
