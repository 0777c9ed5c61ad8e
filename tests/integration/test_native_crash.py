"""A crash in native code is a clear error that names the step, with real crashes and real kills.

``edgeconv convert`` runs under its supervisor (``converter.supervise``); these tests start it as users do
(``python -m converter``), crash or kill the process that runs TensorFlow/LiteRT, and read what the user
gets. Before the supervisor, each of the first three was exit 139 or 137 with nothing on stderr.
Waits poll the step file (``EDGECONV_STEP_FILE``) with a generous deadline; nothing here depends on timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from converter.supervise import running_step
from tests.conftest import ROOT, sigint_default
from tests.integration.test_onnx import onnx_models  # noqa: F401 - a fixture

DEMO = ROOT / "recipes" / "mobilenet.yaml"
ADD_ONE = ROOT / "tests" / "data" / "add_one_float.tflite"
SEGV = ROOT / "tests" / "data" / "segv_on_open.tflite"  # see tests/data/README.md
DEADLINE_S = 600.0


def _start(
    recipe: Path, out: Path, steps: Path, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "converter", "convert", "--recipe", str(recipe), "--out", str(out), *args]
    full = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECONV_STEP_FILE": str(steps), **(env or {})}
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )


def _wait_for(proc: subprocess.Popen[str], ready: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = ready()
        if found:
            return found
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{what} never happened: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)


def _step_lines(steps: Path) -> list[tuple[int, str]]:
    if not steps.is_file():
        return []
    lines = []
    for line in steps.read_text().splitlines():
        pid, _, step = line.partition(" ")
        lines.append((int(pid), step))
    return lines


def _child_in(steps: Path, prefix: str) -> Callable[[], int | None]:
    """The pid of the process that has entered a step starting with ``prefix`` (and has not left it)."""

    def ready() -> int | None:
        lines = _step_lines(steps)
        return lines[-1][0] if lines and lines[-1][1].startswith(prefix) else None

    return ready


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        kids = [p for p, parent in parents.items() if parent == current]
        found += kids
        todo += kids
    return found


def _process_running(root: int, marker: str) -> Callable[[], int | None]:
    """A descendant of ``root`` whose command line contains ``marker``."""

    def ready() -> int | None:
        for pid in _descendants(root):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline:
                return pid
        return None

    return ready


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


def _tiny_tflite_recipe(folder: Path, model: Path, name: str | None = None) -> Path:
    np.savez(folder / "cal.npz", x=np.random.default_rng(0).uniform(0, 1, (20, 2)).astype(np.float32))
    recipe = {
        "version": 1,
        "name": name or model.stem,
        "model": str(model),
        "data": {"calibration": {"path": str(folder / "cal.npz"), "samples": 20}},
        "benchmark": {"warmup": 1, "runs": 5, "min_seconds": 0.0},
    }
    path = folder / f"{model.stem}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_model_that_segfaults_the_interpreter_is_a_clear_error(tmp_path: Path) -> None:
    """A real SIGSEGV in LiteRT's native code (a crafted .tflite): exit 3 naming the step, the folder unchanged."""
    good, bad = _tiny_tflite_recipe(tmp_path, ADD_ONE, "addone"), _tiny_tflite_recipe(tmp_path, SEGV, "addone")
    out, steps = tmp_path / "out", tmp_path / "steps"
    first = _start(good, out, steps)
    _, stderr = first.communicate(timeout=DEADLINE_S)
    assert first.returncode == 0, stderr
    before = _files(out)
    crash = _start(bad, out, steps)
    stdout, stderr = crash.communicate(timeout=DEADLINE_S)
    # Before the supervisor: exit -11 (the shell's 139), stderr empty.
    assert crash.returncode == 3, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    error = stderr.splitlines()[-1]
    assert error.startswith(
        "error: edgeconv convert crashed (SIGSEGV, a segmentation fault: an invalid memory access) during step "
        '"load: opening the .tflite in the LiteRT interpreter". This is a crash inside native code '
        "(TensorFlow/LiteRT), not an error edgeconv found in your input. Please report it with the recipe, "
    ), stderr
    assert error.endswith(
        "Nothing of this run was published: the output folder is as it was before the run (the next run clears "
        "the staging folder and lock this one left beside it)"
    ), stderr
    assert _files(out) == before
    again = _start(good, out, steps)
    _, stderr = again.communicate(timeout=DEADLINE_S)
    assert again.returncode == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []  # leftovers cleared


def _batch(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``edgeconv convert`` of several recipes, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "converter", "convert", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )


def test_a_crashed_recipe_of_a_batch_names_its_step(tmp_path: Path) -> None:
    """``convert --jobs``: a worker that crashes costs its recipe only, and the row says what crashed where."""
    good, bad = _tiny_tflite_recipe(tmp_path, ADD_ONE), _tiny_tflite_recipe(tmp_path, SEGV)
    done = _batch([str(good), str(bad), "--jobs", "2", "--out", str(tmp_path / "build")])
    assert done.returncode == 3, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert rows["add_one_float"].split()[1] == "0"
    assert rows["segv_on_open"].split()[1] == "3"
    assert (
        "error: edgeconv convert crashed (SIGSEGV, a segmentation fault: an invalid memory access) during step "
        '"load: opening the .tflite in the LiteRT interpreter"' in rows["segv_on_open"]
    ), done.stdout
    published = [p.name for p in (tmp_path / "build").iterdir() if not p.name.startswith(".")]
    assert published == ["add_one_float"]  # the crashed one's lock and staging folder wait for its next run
    # One worker, the crash first: a fresh worker converts the recipe after it.
    again = _batch([str(bad), str(good), "--jobs", "1", "--force", "--out", str(tmp_path / "serial")])
    codes = {line.split()[0]: line.split()[1] for line in again.stdout.splitlines()[1:]}
    assert again.returncode == 3 and codes == {"segv_on_open": "3", "add_one_float": "0"}, again.stdout


@pytest.mark.full  # converts the MobileNet demo until killed; the other crash tests stay in the default tier
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_the_demo_killed_during_calibration_names_the_step(tmp_path: Path, sig: signal.Signals) -> None:
    """The kernel's own kill (what the OOM killer sends) and a SIGSEGV, sent to the process running the
    calibration of the README's demo; a re-run converts."""
    out, steps = tmp_path / "out", tmp_path / "steps"
    proc = _start(DEMO, out, steps, "--set", "calibration.cache=false")
    child = _wait_for(proc, _child_in(steps, "calibrate"), "the calibration step")
    assert child != proc.pid  # the step runs in the supervised child, not in the process the user started
    os.kill(child, sig)
    stdout, stderr = proc.communicate(timeout=DEADLINE_S)
    # Before the supervisor: exit -9 / -11 (the shell's 137 / 139), stderr without an error line.
    assert proc.returncode == 3, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    step, _ = running_step(steps.read_text(), child)
    assert step is not None and step.startswith("calibrate")
    error = stderr.splitlines()[-1]
    if sig == signal.SIGKILL:
        assert error.startswith(
            f'error: edgeconv convert was killed (SIGKILL) during step "{step}". SIGKILL comes from outside the '
            "process, most likely from the kernel's out-of-memory killer (its peak memory was "
        ), stderr
    else:
        assert error.startswith(
            f"error: edgeconv convert crashed (SIGSEGV, a segmentation fault: an invalid memory access) during "
            f'step "{step}". This is a crash inside native code (TensorFlow/LiteRT)'
        ), stderr
    assert not out.exists()  # nothing of this run published
    if sig == signal.SIGKILL:
        again = _start(DEMO, out, steps)
        _, stderr = again.communicate(timeout=DEADLINE_S)
        assert again.returncode == 0, stderr
        assert (out / "model_int8.tflite").is_file()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_killing_edgeconv_ends_the_conversion_too(tmp_path: Path) -> None:
    """SIGKILL to the process the user started (nothing can explain it then) takes the conversion with it,
    as it did when they were one process."""
    out, steps = tmp_path / "out", tmp_path / "steps"
    proc = _start(DEMO, out, steps, "--set", "calibration.cache=false")
    child = _wait_for(proc, _child_in(steps, "load"), "the load step")
    proc.kill()
    proc.communicate(timeout=DEADLINE_S)  # returns once the child, which holds the pipes too, is gone
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + DEADLINE_S
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    """Running (a zombie nobody has reaped yet is dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_worker_during_load(tmp_path: Path, model: Path, x: np.ndarray, marker: str) -> tuple[int, str]:
    """Convert ``model``; SIGKILL its worker process (command line contains ``marker``) while it converts."""
    np.savez(tmp_path / "cal.npz", x=x)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"version": 1, "name": model.stem, "model": str(model), "data": {"calibration": {"path": "cal.npz"}}}
        )
    )
    out = tmp_path / "out"
    proc = _start(recipe, out, tmp_path / "steps", cwd=tmp_path)
    worker = _wait_for(proc, _process_running(proc.pid, marker), f"a process running {marker}")
    os.kill(worker, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=DEADLINE_S)
    assert stdout == ""
    assert "Traceback" not in stderr
    assert not out.exists()
    return proc.returncode, stderr


def test_onnx_worker_killed_is_a_clear_error(
    onnx_env: Path,
    onnx_models: dict[str, tuple[Any, Path]],  # noqa: F811
    tmp_path: Path,
) -> None:
    _, model = onnx_models["seq"]
    x = np.random.default_rng(0).uniform(0, 1, (20, 12, 8)).astype(np.float32)
    code, stderr = _kill_worker_during_load(tmp_path, model, x, "onnx_worker.py")
    assert code == 3, stderr
    assert stderr.splitlines()[-1].startswith("error: onnx2tf crashed (SIGKILL) converting the model; its last words:")


@pytest.mark.full  # the onnx2tf worker's crash stays in the default tier
def test_torch_worker_killed_is_a_clear_error(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("litert_torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(module, (torch.zeros(1, 8),)), str(path))
    x = np.random.default_rng(0).uniform(0, 1, (20, 8)).astype(np.float32)
    code, stderr = _kill_worker_during_load(tmp_path, path, x, "converter.sources.torch_worker")
    assert code == 3, stderr
    assert stderr.splitlines()[-1].startswith(
        f"error: model: {path}: converting the PyTorch model with litert-torch (child process) crashed (SIGKILL) "
        "in native code; edgeconv's own process is unharmed."
    ), stderr
